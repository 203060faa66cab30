"""Lesson 11 reference: ``for_this_server`` and ``server_gone``, as ``chat_sync.cluster`` does."""
from __future__ import annotations

from chat_sync.rooms import Broadcast, ChatCore, ConnId, Output, Reply


def for_this_server(outputs: list[Output], server: str) -> list[Output]:
    """Keep what ``outputs`` says to ``server``'s clients, named by their numbers."""
    mine: list[Output] = []
    for output in outputs:
        if isinstance(output, Reply):
            to_server, number = output.to
            if to_server == server:
                mine.append(Reply(number, output.message))
            continue
        numbers: list[ConnId] = []
        for to_server, number in output.to:
            if to_server == server:
                numbers.append(number)
        own = None
        if output.own is not None:
            (to_server, number), rid = output.own
            if to_server == server:
                own = (number, rid)
        mine.append(Broadcast(tuple(numbers), output.message, output.room, own))
    return mine


def server_gone(core: ChatCore, server: str, ts: float) -> list[Output]:
    """Disconnect every connection of ``server``, in ``core.members`` order."""
    outputs: list[Output] = []
    for conn in [conn for conn in core.members if conn[0] == server]:
        outputs += core.disconnect(conn, ts)
    return outputs
