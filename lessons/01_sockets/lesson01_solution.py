"""Lesson 01 reference solution: ``recv_exactly`` and ``read_line``."""
from __future__ import annotations

import socket

MAX_LINE_BYTES = 1024


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Return exactly ``size`` bytes from ``sock``; EOFError if the stream ends first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))     # never more than is still missing
        if not chunk:
            raise EOFError(f"the stream ended after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def read_line(sock: socket.socket, max_bytes: int = MAX_LINE_BYTES) -> bytes | None:
    """Return the next line without its newline, or None at end of stream.

    Raises EOFError if the stream ends inside a line, ValueError if the line
    grows past ``max_bytes``. One ``recv`` per byte keeps the next line in
    the socket, at the cost of a system call per byte; lesson 02's
    ``LineBuffer`` keeps what it over-read instead.
    """
    line = bytearray()
    while True:
        try:
            byte = recv_exactly(sock, 1)
        except EOFError:
            if not line:
                return None
            raise EOFError(f"the stream ended inside a line: {bytes(line[:40])!r}") from None
        if byte == b"\n":
            return bytes(line)
        if len(line) == max_bytes:
            raise ValueError(f"no newline within {max_bytes} bytes")
        line += byte
