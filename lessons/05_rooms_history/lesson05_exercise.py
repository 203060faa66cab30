"""Lesson 05 exercise: history replay, and moving a connection between rooms.

Both work on the package's own ``Room`` (a name, a bounded ``history``
deque, and ``members``: connection id -> user name, in join order) and
return the package's ``Reply`` and ``Broadcast``, so the tests can hold
them to what ``ChatCore`` itself does. No socket, no clock: ``now`` and
the next ``seq`` are handed in. Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/05_rooms_history
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# What you will need.
from chat_sync import protocol  # noqa: F401
from chat_sync.protocol import SystemEvent  # noqa: F401
from chat_sync.rooms import Broadcast, ConnId, Output, Reply, Room  # noqa: F401


def replay(history: Iterable[dict[str, Any]], since: int | None) -> list[dict[str, Any]]:
    """The messages of ``history`` a joiner must be sent, oldest first.

    Those whose ``seq`` is greater than ``since``; every one of them when
    ``since`` is None (a first visit). Each is a *copy* marked
    ``"history": True``: the messages in ``history`` must not change, since
    they are the very dicts that were broadcast live, and may be replayed
    again to someone else.
    """
    raise NotImplementedError("exercise: write replay")


def join_room(conn: ConnId, user: str, old: Room | None, new: Room, since: int | None,
              next_seq: Callable[[], int], now: float) -> list[Output]:
    """Move connection ``conn`` (user ``user``) from room ``old`` into room ``new``.

    ``old`` is None when the connection is in no room yet; otherwise it is
    not ``new``. Return the outputs in the order ``ChatCore`` sends them:

    1. If there is an old room: a leave notice,
       ``protocol.system(old.name, SystemEvent.LEAVE, user, f"{user} left", next_seq(), now)``,
       added to ``old.history`` and broadcast to every member of ``old``,
       ``conn`` included (``Broadcast(members, notice, old.name)``, members
       in join order). Then ``conn`` leaves ``old.members``.
    2. ``replay(new.history, since)``, each message a ``Reply`` to ``conn``.
    3. ``conn`` joins ``new.members`` as ``user``; a join notice (event
       ``SystemEvent.JOIN``, text ``f"{user} joined"``, the next seq) is
       added to ``new.history`` and broadcast to every member of ``new``,
       ``conn`` included.

    Call ``next_seq()`` once per notice, when you build it: the server's
    one counter must hand out its numbers in the order things happen.
    """
    raise NotImplementedError("exercise: write join_room")
