"""Lesson 01 exercise: read exactly what you need from a TCP stream.

``recv(n)`` returns whatever has arrived, from 1 to n bytes, or ``b""``
when the peer has closed. Write the two loops every TCP program needs.
Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/01_sockets
"""
from __future__ import annotations

import socket

MAX_LINE_BYTES = 1024


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Return exactly ``size`` bytes from ``sock``, however the stream splits them.

    Call ``sock.recv`` until ``size`` bytes have arrived, never asking for
    more than are still missing (the rest belongs to the next reader).
    ``recv_exactly(sock, 0)`` is ``b""``. Raise EOFError if the peer closes
    (``recv`` returns ``b""``) before ``size`` bytes have come.
    """
    raise NotImplementedError("exercise: write recv_exactly")


def read_line(sock: socket.socket, max_bytes: int = MAX_LINE_BYTES) -> bytes | None:
    """Return the next line from ``sock`` without its ``b"\\n"``, or None at end of stream.

    Read no byte past the newline: the next call must find the next line.
    Return None when the stream ends before the line's first byte; raise
    EOFError when it ends in the middle of a line, and ValueError as soon
    as more than ``max_bytes`` bytes have come without a newline.
    (Hint: ``recv_exactly(sock, 1)``.)
    """
    raise NotImplementedError("exercise: write read_line")
