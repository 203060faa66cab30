"""What chat_sync is measured against: a relay that only copies bytes."""
from __future__ import annotations

import selectors
import signal
import socket

from ..wakeup import Wakeup
from .measure import RECV_BYTES


def raw_relay(host: str, port: int) -> None:
    """Forward every complete line to every client; no parsing, no rooms, no log.

    The same loop shape as ``tcp_server`` (read, then one flush per dirty
    socket per turn) with everything else taken out.
    """
    listener = socket.create_server((host, port), backlog=1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    wakeup = Wakeup()
    selector.register(wakeup.reader, selectors.EVENT_READ, "wakeup")
    signal.signal(signal.SIGTERM, lambda *_: wakeup.wake())
    print(f"listening on {host}:{listener.getsockname()[1]}", flush=True)
    inbufs: dict[socket.socket, bytearray] = {}
    outbufs: dict[socket.socket, bytearray] = {}
    writing: set[socket.socket] = set()
    while True:
        dirty: set[socket.socket] = set()
        for key, mask in selector.select():
            if key.data == "wakeup":
                return
            if key.data is None:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ, "client")
                inbufs[conn], outbufs[conn] = bytearray(), bytearray()
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if mask & selectors.EVENT_WRITE:
                dirty.add(sock)
            if mask & selectors.EVENT_READ:
                data = sock.recv(RECV_BYTES)
                if not data:
                    selector.unregister(sock)
                    sock.close()
                    del inbufs[sock], outbufs[sock]
                    writing.discard(sock)
                    continue
                inbuf = inbufs[sock]
                inbuf += data
                end = inbuf.rfind(b"\n")
                if end >= 0:
                    lines = bytes(inbuf[:end + 1])
                    del inbuf[:end + 1]
                    for other, outbuf in outbufs.items():
                        outbuf += lines
                        dirty.add(other)
        for sock in dirty:
            if sock not in outbufs:
                continue
            outbuf = outbufs[sock]
            try:
                del outbuf[:sock.send(outbuf)]
            except BlockingIOError:
                pass
            want = bool(outbuf)
            if want != (sock in writing):
                selector.modify(sock, selectors.EVENT_READ |
                                (selectors.EVENT_WRITE if want else 0), "client")
                (writing.add if want else writing.discard)(sock)

