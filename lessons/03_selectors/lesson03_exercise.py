"""Lesson 03 exercise: send buffered output without ever blocking the loop.

The broadcast server keeps each client's unsent bytes in ``peer.out`` and
calls ``flush`` after queuing more, and whenever ``select()`` says the
socket is writable. Write it. Check it with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/03_selectors

and run the server on it with
``CHAT_SYNC_LESSON=~/chat_sync_work python lessons/03_selectors/lesson03_broadcast_server.py``.
"""
from __future__ import annotations

import selectors
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # for the type hint only: the server imports this module
    from lesson03_broadcast_server import Peer


def flush(selector: selectors.BaseSelector, peer: Peer) -> None:
    """Send what the kernel will take of ``peer.out`` now; watch for room while some is left.

    ``peer.sock`` is non-blocking and registered with ``selector``, with
    ``peer`` as its data.

    1. If ``peer.out`` holds bytes, call ``peer.sock.send(peer.out)`` once and
       delete from the front of ``peer.out`` the bytes it took.
       ``BlockingIOError`` means it took none. Let any other ``OSError``
       (the client reset the connection) propagate: the server drops it.
    2. While bytes are left, the socket must be registered for
       ``EVENT_READ | EVENT_WRITE``, so that ``select()`` says when the kernel
       has room again; with none left, for ``EVENT_READ`` alone, or every
       ``select()`` would return at once, forever. ``peer.writing`` says which
       it is now; call ``selector.modify(peer.sock, events, peer)`` only when
       that must change, and keep ``peer.writing`` up to date.
    """
    raise NotImplementedError("exercise: write flush")
