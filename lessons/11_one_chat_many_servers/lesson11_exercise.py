"""Lesson 11 exercise: the two functions that make one replica a server of a cluster.

Neither touches Redis or a socket: the tests feed them values. Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/11_one_chat_many_servers
"""
from __future__ import annotations

# What you will need.
from chat_sync.rooms import Broadcast, ChatCore, ConnId, Output, Reply  # noqa: F401


def for_this_server(outputs: list[Output], server: str) -> list[Output]:
    """Keep what ``outputs`` (from a replica's ``ChatCore``) says to ``server``'s clients.

    The replica names every connection ``(server id, number)``. Return, in
    order: each ``Reply`` to one of ``server``'s connections, as a ``Reply``
    to its number alone; and each ``Broadcast``, with ``to`` cut to the
    numbers of ``server``'s connections (in the order they were) and the
    same ``message`` and ``room`` - even when none of them is left, since
    the chat log wants every broadcast once - and its ``own``, the sender's
    ``(connection, id)``, as ``(number, id)`` if the sender is one of
    ``server``'s, else None. Replies to other servers' connections are left
    out: their own server sends them.
    """
    raise NotImplementedError("exercise: write for_this_server")


def server_gone(core: ChatCore, server: str, ts: float) -> list[Output]:
    """Disconnect every connection of ``server`` from ``core``; return what that says.

    Every replica applies the same ``gone`` at the same point of the log,
    so every replica must do exactly the same: disconnect that server's
    connections (``core.disconnect(conn, ts)``) in the order ``core.members``
    holds them, and return all the outputs, in that order. A second ``gone``
    for the same server finds nobody and returns ``[]``.
    """
    raise NotImplementedError("exercise: write server_gone")
