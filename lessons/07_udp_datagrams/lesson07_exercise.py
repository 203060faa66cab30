"""Lesson 07 exercise: duplicate suppression in bounded memory.

The receiver's half of reliable UDP: a request sent again because its ack
was lost must be acked but applied once. ``chat_sync/receiving.py`` has
the package's ``DedupWindow``; write it again here, tested id by id
against the package. Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/07_udp_datagrams
"""
from __future__ import annotations


class DedupWindow:
    """Which request ids of one client were seen already, in bounded memory.

    Ids start at 1. ``floor`` is the highest id such that it and every id
    below it count as seen; ids seen above the floor are remembered one by
    one, and at most ``size`` of them, from ``floor + 1`` to ``floor + size``.
    """

    def __init__(self, size: int) -> None:
        """Nothing seen yet: ``floor`` is 0, and no id above it is remembered."""
        raise NotImplementedError("exercise: write DedupWindow.__init__")

    def __len__(self) -> int:
        """How many ids above ``floor`` are remembered (never more than ``size``)."""
        raise NotImplementedError("exercise: write DedupWindow.__len__")

    def seen(self, request_id: int) -> bool:
        """Mark ``request_id`` as seen; return True if it already was (a duplicate).

        1. An id at or below ``floor``, or already remembered, is a duplicate.
        2. An id beyond ``floor + size`` moves the floor up to
           ``request_id - size`` first. Ids it passes count as seen even if
           they never came: a request that late is safer dropped than applied
           twice. Forget the remembered ids at or below the new floor.
        3. Remember the id. While ``floor + 1`` is remembered, raise the floor
           by one and forget that id, so memory stays small when ids come in
           order.
        """
        raise NotImplementedError("exercise: write DedupWindow.seen")
