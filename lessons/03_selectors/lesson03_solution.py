"""Lesson 03 reference solution: ``flush``."""
from __future__ import annotations

import selectors
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # for the type hint only: the server imports this module
    from lesson03_broadcast_server import Peer


def flush(selector: selectors.BaseSelector, peer: Peer) -> None:
    """Send what the kernel takes of ``peer.out``; EVENT_WRITE only while some is left.

    Raises OSError (other than BlockingIOError) when the connection is broken.
    """
    if peer.out:
        try:
            sent = peer.sock.send(peer.out)
        except BlockingIOError:             # the kernel's buffer is full
            sent = 0
        del peer.out[:sent]
    want_write = bool(peer.out)
    if want_write != peer.writing:
        events = selectors.EVENT_READ
        if want_write:
            events |= selectors.EVENT_WRITE
        selector.modify(peer.sock, events, peer)
        peer.writing = want_write
