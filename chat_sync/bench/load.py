"""The load generator: many non-blocking clients on one selector, and the rounds that sync them."""
from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import protocol as p
from .measure import RECV_BYTES, progress


@dataclass(eq=False)
class LoadClient:
    index: int
    sock: socket.socket
    name: str
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    writing: bool = False
    sent: int = 0              # own messages sent
    echoed: int = 0            # own messages received back
    received: int = 0          # messages received, all senders
    last_seq: int = 0
    joined: bool = False
    ponged: bool = False
    expected: dict[int, int] = field(default_factory=dict)   # sender -> next k

    def reset(self) -> None:
        """Ready for another load on the same connection (``seq`` keeps rising across them)."""
        self.sent = self.echoed = self.received = 0
        self.expected.clear()


class LoadGenerator:
    """Clients on one selector; ``run_until`` pumps bytes and hands lines to a callback."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.clients: list[LoadClient] = []

    def connect(self, address: tuple[str, int], count: int, prefix: str = "u") -> None:
        for _ in range(count):
            index = len(self.clients)
            sock = socket.create_connection(address, timeout=30)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = LoadClient(index, sock, f"{prefix}{index:05d}")
            self.selector.register(sock, selectors.EVENT_READ, client)
            self.clients.append(client)
            if count >= 1000 and index % 1000 == 999:
                progress(f"connected {index + 1}")

    def send(self, client: LoadClient, message: dict[str, Any]) -> None:
        client.outbuf += p.encode(message)
        self._flush(client)

    def _flush(self, client: LoadClient) -> None:
        try:
            sent = client.sock.send(client.outbuf)
        except BlockingIOError:
            sent = 0
        del client.outbuf[:sent]
        want = bool(client.outbuf)
        if want != client.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.selector.modify(client.sock, events, client)
            client.writing = want

    def run_until(self, done: Callable[[], bool], on_line: Callable[[LoadClient, bytes], None],
                  timeout: float, tick: Callable[[], float] | None = None) -> None:
        """Pump until ``done()``; raises TimeoutError after ``timeout`` seconds.

        ``tick``, called every turn, may send and returns how long the turn
        may wait for input at most (a paced load's next send).
        """
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the load did not complete in time")
            wait = min(remaining, 1.0) if tick is None else min(remaining, 1.0, tick())
            for key, mask in self.selector.select(max(0.0, wait)):
                client: LoadClient = key.data
                if mask & selectors.EVENT_WRITE:
                    self._flush(client)
                if mask & selectors.EVENT_READ:
                    self._read(client, on_line)

    def _read(self, client: LoadClient, on_line: Callable[[LoadClient, bytes], None]) -> None:
        try:
            data = client.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError(f"{client.name}: server closed the connection")
        client.inbuf += data
        end = client.inbuf.rfind(b"\n")
        if end < 0:
            return
        chunk = bytes(client.inbuf[:end])
        del client.inbuf[:end + 1]
        for line in chunk.split(b"\n"):
            on_line(client, line)

    def close(self) -> None:
        for client in self.clients:
            self.selector.unregister(client.sock)
            client.sock.close()
        self.selector.close()
        self.clients.clear()



def join_all(load: LoadGenerator, rooms: Callable[[LoadClient], str], timeout: float) -> None:
    """Join every client; return once all are joined and nothing is left in flight.

    Two rounds: everyone joins and sees its own join notice; then everyone
    pings. A pong comes after everything queued for that client before it,
    so once all have their pong, every join notice has been delivered.
    """
    def on_line(client: LoadClient, line: bytes) -> None:
        message = json.loads(line)
        if message["type"] == "system" and message.get("user") == client.name \
                and not message.get("history"):
            client.joined = True
        elif message["type"] == "pong":
            client.ponged = True
        elif message["type"] == "error":
            raise RuntimeError(f"{client.name}: {message}")

    for client in load.clients:
        load.send(client, {"type": "join", "room": rooms(client), "user": client.name})
    load.run_until(lambda: all(c.joined for c in load.clients), on_line, timeout)
    ping_all(load, timeout)


def ping_all(load: LoadGenerator, timeout: float) -> None:
    """Every client pings and waits for its pong: nothing queued before it is left."""
    def on_line(client: LoadClient, line: bytes) -> None:
        if line.startswith(b'{"type":"pong"'):
            client.ponged = True
        elif line.startswith(b'{"type":"error"'):
            raise RuntimeError(f"{client.name}: {line!r}")

    for client in load.clients:
        client.ponged = False
        load.send(client, {"type": "ping"})
    load.run_until(lambda: all(c.ponged for c in load.clients), on_line, timeout)


def sync_raw(load: LoadGenerator, timeout: float) -> None:
    """Raw relay: wait until every client is accepted (each sees one of client 0's lines).

    A connect completes in the kernel before the relay's ``accept``; a line
    sent then misses the clients not accepted yet, so it is sent again
    every half second until all have seen one.
    """
    seen: set[int] = set()

    def on_line(client: LoadClient, line: bytes) -> None:
        seen.add(client.index)

    deadline = time.monotonic() + timeout
    while True:
        load.send(load.clients[0], {"type": "sync"})
        try:
            load.run_until(lambda: len(seen) == len(load.clients), on_line,
                           min(0.5, max(0.0, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise



class ServerAbsent(Exception):
    """Nothing accepted connections at the address within the wait."""


def wait_for_server(address: tuple[str, int], wait_s: float) -> None:
    """Return once a connection to ``address`` succeeds; ServerAbsent after ``wait_s``.

    A server started in the background a moment ago (under a profiler, say)
    may not listen yet; there is no event to wait on from here, so this
    tries again every 0.1 s until the deadline.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            socket.create_connection(address, timeout=max(0.1, wait_s)).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                host, port = address
                raise ServerAbsent(f"no server at {host}:{port} (waited {wait_s:g} s: "
                                   f"{exc.strerror or exc}); start it first, or give "
                                   f"--wait-s more time") from None
        threading.Event().wait(0.1)         # a retry interval; the deadline bounds it
