"""Lesson 10 reference solution: ``OutQueue`` and ``flush``.

The package keeps the same queue in ``chat_sync/tcp_server_core.py``
(``Connection.out``, ``out_bytes``, ``started``, ``consume`` and
``tls_head``), and ``tcp_server``'s ``_flush`` and ``_send`` are ``flush``,
with TLS, logging and the selector's interest added.
"""
from __future__ import annotations

import socket

IOV_MAX = 1024          # the most chunks one sendmsg may take (Linux's limit)


class OutQueue:
    """Encoded messages waiting for one client, as shared ``bytes`` chunks."""

    def __init__(self) -> None:
        """Empty."""
        self.chunks: list[bytes] = []
        self.size = 0
        self.started = False

    def append(self, data: bytes) -> None:
        """Queue ``data`` itself, never a copy."""
        self.chunks.append(data)
        self.size += len(data)

    def offer(self, limit: int = IOV_MAX) -> list[bytes]:
        """The first ``limit`` chunks, for one sendmsg."""
        return self.chunks[:limit]

    def consume(self, sent: int, offered: int) -> bool:
        """Drop ``sent`` bytes from the front; True if the ``offered`` chunks all went whole."""
        self.size -= sent
        done = 0                                # chunks sent whole
        for chunk in self.chunks:
            if len(chunk) > sent:
                break
            sent -= len(chunk)
            done += 1
        del self.chunks[:done]
        self.started = sent > 0
        if sent:
            self.chunks[0] = self.chunks[0][sent:]
        return done == offered

    def tls_head(self, max_bytes: int) -> bytes:
        """The buffer for one TLS send: the head chunks joined, once, up to ``max_bytes``."""
        if not self.started:
            count, size = 1, len(self.chunks[0])
            while count < len(self.chunks) and size + len(self.chunks[count]) <= max_bytes:
                size += len(self.chunks[count])
                count += 1
            if count > 1:
                self.chunks[:count] = [b"".join(self.chunks[:count])]
            self.started = True
        return self.chunks[0]


def flush(sock: socket.socket, queue: OutQueue, limit: int = IOV_MAX) -> int:
    """Send what ``queue`` holds on the non-blocking ``sock``; return the bytes sent."""
    total = 0
    while queue.chunks:
        chunks = queue.offer(limit)
        try:
            sent = sock.sendmsg(chunks)
        except BlockingIOError:
            break
        total += sent
        if not queue.consume(sent, len(chunks)):
            break                               # the kernel's buffer is full
    return total
