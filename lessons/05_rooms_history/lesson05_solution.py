"""Lesson 05 reference solution: ``replay`` and ``join_room``.

The package does both inside ``ChatCore._join`` (with ``_leave_room`` and
``_broadcast``), in ``chat_sync/rooms.py``, along with what this leaves
out: names, request ids, room limits.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from chat_sync import protocol
from chat_sync.protocol import SystemEvent
from chat_sync.rooms import Broadcast, ConnId, Output, Reply, Room


def replay(history: Iterable[dict[str, Any]], since: int | None) -> list[dict[str, Any]]:
    """Copies of the messages after ``since`` (all of them if None), marked as history."""
    after = since if since is not None else -1
    replayed = []
    for message in history:
        if message["seq"] > after:
            replayed.append({**message, "history": True})
    return replayed


def join_room(conn: ConnId, user: str, old: Room | None, new: Room, since: int | None,
              next_seq: Callable[[], int], now: float) -> list[Output]:
    """Leave ``old`` (if any), replay ``new``'s history after ``since``, join ``new``."""
    outputs: list[Output] = []
    if old is not None:
        notice = protocol.system(old.name, SystemEvent.LEAVE, user, f"{user} left",
                                 next_seq(), now)
        old.history.append(notice)
        outputs.append(Broadcast(tuple(old.members), notice, old.name))   # conn hears it too
        del old.members[conn]
    for message in replay(new.history, since):
        outputs.append(Reply(conn, message))
    new.members[conn] = user
    notice = protocol.system(new.name, SystemEvent.JOIN, user, f"{user} joined", next_seq(), now)
    new.history.append(notice)
    outputs.append(Broadcast(tuple(new.members), notice, new.name))
    return outputs
