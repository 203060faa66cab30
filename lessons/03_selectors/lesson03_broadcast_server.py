"""Lesson 03: one thread serves every client, with ``selectors``.

    python lessons/03_selectors/lesson03_broadcast_server.py --port 0

Each client is greeted with ``welcome: N connected``; every line it sends
then goes to every other client. Try it with
``python lessons/01_sockets/lesson01_nc.py --port PORT`` (or
``nc 127.0.0.1 PORT``) in two or three terminals. Ctrl-C (or SIGTERM) stops it.

One selector watches every socket, and each ``turn`` does only what will
not block: accept a client that is waiting, ``recv`` bytes that are there,
``send`` what the kernel has room for. ``flush``, the part that sends, is
the lesson's exercise: the server runs the reference, or yours with
``CHAT_SYNC_LESSON=WORKSPACE`` (see ``lessons/lesson_target.py``).
"""
from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys
from pathlib import Path

from chat_sync.framing import LineBuffer, LineTooLong

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # lessons/: lesson_target
from lesson_target import load  # noqa: E402

flush = load(__file__).flush            # the reference, or yours: CHAT_SYNC_LESSON

RECV_BYTES = 4096
MAX_LINE_BYTES = 1024
MAX_OUT_BYTES = 1024 * 1024    # unsent output held for one client before it is dropped


class Peer:
    """One client connection. It rides on the socket's ``SelectorKey.data``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lines = LineBuffer(MAX_LINE_BYTES)     # lesson 02: bytes in, lines out
        self.out = bytearray()                      # bytes the kernel has not taken yet
        self.writing = False                        # registered for EVENT_WRITE


class BroadcastServer:
    """Relay each client's lines to all the others, from one thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.listener = socket.create_server((host, port))
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        # stop() writes a byte here, so a select() sleeping in another thread returns.
        self.wakeup_reader, self.wakeup_writer = socket.socketpair()
        self.wakeup_reader.setblocking(False)
        self.wakeup_writer.setblocking(False)
        self.selector.register(self.wakeup_reader, selectors.EVENT_READ, "wakeup")
        self.peers: set[Peer] = set()
        self.stopping = False

    def stop(self) -> None:
        """Make ``serve_forever`` return; safe from another thread or a signal handler."""
        self.stopping = True
        try:
            self.wakeup_writer.send(b"\0")
        except OSError:
            pass                # full of wake-ups already: select() returns anyway

    def serve_forever(self) -> None:
        while not self.stopping:
            self.turn()
        self.close()

    def turn(self, timeout: float | None = None) -> None:
        """Wait until a socket is ready (at most ``timeout`` s); serve each ready one once."""
        for key, events in self.selector.select(timeout):
            if key.data == "listener":
                self.accept()
            elif key.data == "wakeup":
                self.wakeup_reader.recv(4096)
            elif key.data in self.peers:            # not dropped earlier in this turn
                peer: Peer = key.data
                if events & selectors.EVENT_READ:
                    self.read(peer)
                if events & selectors.EVENT_WRITE and peer in self.peers:
                    self.write(peer)

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:                     # the client gave up meanwhile
            return
        sock.setblocking(False)
        peer = Peer(sock)
        self.selector.register(sock, selectors.EVENT_READ, peer)
        self.peers.add(peer)
        self.send(peer, f"welcome: {len(self.peers)} connected\n".encode())

    def read(self, peer: Peer) -> None:
        try:
            data = peer.sock.recv(RECV_BYTES)
        except ConnectionError:                     # reset: the client is gone
            data = b""
        too_long = False
        try:
            lines = peer.lines.feed(data)
        except LineTooLong as exc:                  # relay the lines before it, then drop
            lines, too_long = exc.lines, True
        for line in lines:
            for other in list(self.peers):          # a copy: send() may drop a peer
                if other is not peer:
                    self.send(other, line + b"\n")
        if too_long or not data:                    # a line over the limit, or closed
            self.drop(peer)

    def send(self, peer: Peer, data: bytes) -> None:
        """Queue ``data`` for ``peer`` and send what the kernel takes now."""
        peer.out += data
        if len(peer.out) > MAX_OUT_BYTES:           # it stopped reading: drop it, not us
            self.drop(peer)
            return
        self.write(peer)

    def write(self, peer: Peer) -> None:
        try:
            flush(self.selector, peer)
        except OSError:                             # reset, broken pipe: it is gone
            self.drop(peer)

    def drop(self, peer: Peer) -> None:
        self.selector.unregister(peer.sock)
        peer.sock.close()
        self.peers.discard(peer)

    def close(self) -> None:
        for peer in list(self.peers):
            self.drop(peer)
        self.selector.close()
        self.listener.close()
        self.wakeup_reader.close()
        self.wakeup_writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Relay each client's lines to the others.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000, help="0 picks any free port")
    args = parser.parse_args(argv)
    server = BroadcastServer(args.host, args.port)
    # A signal handler runs between two bytecodes, and Python then resumes the
    # interrupted select() (PEP 475): only the wake-up byte makes it return.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    host, port = server.address
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
