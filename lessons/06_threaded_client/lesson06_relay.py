"""Lesson 06: a TCP relay that can cut every connection through it, like a network outage.

    client --> relay.port --> server

Each client the relay accepts gets its own connection to the server and two
threads, one per direction. Each thread blocks in ``recv`` on one socket
and ``sendall``s what comes to the other: the plain blocking style of lesson
01, one thread per thing to wait for, as in this lesson's client.

``cut()`` shuts down every relayed socket. That is what wakes the threads:
a ``recv`` blocked in another thread returns ``b""`` once its socket is
shut down, whereas closing the socket would leave it blocked. The server
and the client each see their connection end, and the server keeps running
with its history. While the relay is cut, new clients are accepted but held,
hearing nothing; ``resume()`` connects them to the server.

A test and a demo use it to cut a client off at a moment of their choosing,
so the client's reconnection can be watched step by step. It is not built
for load: two threads per connection, IPv4 only.
"""
from __future__ import annotations

import socket
import threading

RECV_BYTES = 64 * 1024
TIMEOUT_S = 5.0


def _shut(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways; a thread blocked in its ``recv`` gets ``b""``."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass                # not connected any more: nothing left to wake


class CuttingRelay:
    """Relay TCP connections from ``relay.port`` to ``server_port`` until cut."""

    def __init__(self, server_port: int, host: str = "127.0.0.1") -> None:
        self.server_address = (host, server_port)
        self.listener = socket.create_server((host, 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.port = self.address[1]
        self._lock = threading.Lock()
        self._cut = False
        self._closing = False
        self._held: list[socket.socket] = []      # accepted while cut, not yet relayed
        self._links: list[tuple[socket.socket, socket.socket]] = []   # relayed now
        self._sockets: list[socket.socket] = []   # every socket, closed at the end
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, name="relay-accept",
                                          daemon=True)
        self._accepter.start()

    def cut(self) -> None:
        """End every relayed connection, and hold new ones until ``resume``."""
        with self._lock:
            self._cut = True
            links, self._links = self._links, []
        for client, server in links:
            _shut(client)
            _shut(server)

    def resume(self) -> None:
        """Relay again, starting with the clients held while cut."""
        with self._lock:
            self._cut = False
            held, self._held = self._held, []
        for client in held:
            self._link(client)

    def close(self) -> None:
        """Cut everything, stop every thread, close every socket."""
        with self._lock:
            self._closing = True
            held, self._held = self._held, []
        self.cut()
        for client in held:
            _shut(client)
        # accept() is woken the portable way: by one more client, which it drops.
        socket.create_connection(self.address, timeout=TIMEOUT_S).close()
        self._accepter.join(TIMEOUT_S)
        with self._lock:
            threads = [self._accepter, *self._threads]
        for thread in threads:
            thread.join(TIMEOUT_S)
            if thread.is_alive():
                raise RuntimeError(f"relay thread {thread.name} did not stop")
        for sock in self._sockets:
            sock.close()        # only now: no thread is using it any more
        self.listener.close()

    def __enter__(self) -> CuttingRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the threads ------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            client, _ = self.listener.accept()
            with self._lock:
                self._sockets.append(client)
                if self._closing:
                    return
                if self._cut:
                    self._held.append(client)
                    continue
            self._link(client)

    def _link(self, client: socket.socket) -> None:
        """Connect ``client`` to the server and start its two pumps."""
        try:
            server = socket.create_connection(self.server_address, timeout=TIMEOUT_S)
        except OSError:
            _shut(client)       # no server: the client sees its connection end
            return
        server.settimeout(None)
        with self._lock:
            self._sockets.append(server)
            relayed = not self._cut             # cut() may have come meanwhile
            if relayed:
                self._links.append((client, server))
                for source, target in ((client, server), (server, client)):
                    pump = threading.Thread(target=self._pump, args=(source, target),
                                            name="relay-pump", daemon=True)
                    self._threads.append(pump)
                    pump.start()
        if not relayed:
            _shut(client)
            _shut(server)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        """Copy ``source`` to ``target`` until either ends; then end both."""
        while True:
            try:
                data = source.recv(RECV_BYTES)
                if not data:
                    break
                target.sendall(data)
            except OSError:
                break
        _shut(source)
        _shut(target)
