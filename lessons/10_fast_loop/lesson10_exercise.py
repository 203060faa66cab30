"""Lesson 10 exercise: a connection's output queue, for sendmsg and for TLS.

The part of ``chat_sync/tcp_server_core.py``'s ``Connection`` that holds what
is waiting to be sent: shared chunks in, what the kernel took out. No socket
in ``OutQueue`` itself; ``flush`` is the one function that touches one.
Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/10_fast_loop
"""
from __future__ import annotations

import socket

IOV_MAX = 1024          # the most chunks one sendmsg may take (Linux's limit)


class OutQueue:
    """Encoded messages waiting for one client, as shared ``bytes`` chunks.

    ``chunks`` is the list of what waits, oldest first; ``size`` the bytes in
    it (the slow-reader bound); ``started`` whether ``chunks[0]`` was partly
    sent (or, under TLS, offered), so that it must be finished before
    anything else is done to it.
    """

    def __init__(self) -> None:
        """Empty: no chunks, ``size`` 0, not ``started``."""
        raise NotImplementedError("exercise: write OutQueue.__init__")

    def append(self, data: bytes) -> None:
        """Queue ``data`` itself, never a copy: a broadcast to a room of 1,000 is
        1,000 references to one ``bytes`` object."""
        raise NotImplementedError("exercise: write OutQueue.append")

    def offer(self, limit: int = IOV_MAX) -> list[bytes]:
        """The chunks for one ``sendmsg``: the first ``limit`` of them (all if fewer),
        the same objects as queued, nothing joined."""
        raise NotImplementedError("exercise: write OutQueue.offer")

    def consume(self, sent: int, offered: int) -> bool:
        """The kernel took ``sent`` bytes of the ``offered`` chunks: drop them from the front.

        Chunks sent whole leave the queue; a chunk the kernel took part of is
        replaced by its unsent rest, and the queue is then ``started`` (else
        not). ``size`` goes down by ``sent``. Return True if all ``offered``
        chunks went whole (there may be room for more), False if the kernel
        stopped short (its buffer is full: wait until the socket is writable).
        """
        raise NotImplementedError("exercise: write OutQueue.consume")

    def tls_head(self, max_bytes: int) -> bytes:
        """The one buffer for a TLS ``send``, which has no ``sendmsg``.

        Unless ``started``: join the first chunks into one, as many as fit in
        ``max_bytes`` together (always at least the first, however long),
        put the joined chunk in their place, and mark the queue ``started``.
        Once started, return ``chunks[0]`` as it is: after
        ``SSLWantWriteError`` OpenSSL wants the very same buffer again, so
        it must not grow. (Joining one chunk is no join: keep it as it is.)
        """
        raise NotImplementedError("exercise: write OutQueue.tls_head")


def flush(sock: socket.socket, queue: OutQueue, limit: int = IOV_MAX) -> int:
    """Send what ``queue`` holds on the non-blocking ``sock``; return the bytes sent.

    One ``sock.sendmsg(queue.offer(limit))`` after another, each followed by
    ``consume``, until the queue is empty, the kernel stops short, or
    ``sendmsg`` raises ``BlockingIOError`` (nothing taken: stop, keep
    everything). Any other ``OSError`` is the caller's to handle.
    """
    raise NotImplementedError("exercise: write flush")
