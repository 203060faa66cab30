"""What both client cores answer with when they mean the same thing.

``tcp_client_core.ClientCore`` and ``udp_client_core.UdpClientCore`` are told
different things by their servers and answer with actions of their own
(``Send``, ``Transmit``, ``SendAck`` ...); these four mean the same for both,
so each shell handles them alike, and they are defined once, here, with the
table of seqs both keep (``RoomSeqs``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from . import protocol as p


@dataclasses.dataclass(frozen=True)
class Show:
    """A server message for the user, in order and once (UDP: in stream order)."""

    message: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Note:
    """Something the user should know that no server message says."""

    text: str


@dataclasses.dataclass(frozen=True)
class Joined:
    room: str


@dataclasses.dataclass(frozen=True)
class JoinRefused:
    """The join that opens the session was refused: this client cannot chat
    (asking again would get the same answer)."""

    code: str
    text: str


class RoomSeqs:
    """The highest ``seq`` seen in each room: what a rejoin asks ``since``."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}       # name_key(room) -> highest seq seen there

    def since(self, room: str) -> int | None:
        return self.last.get(p.name_key(room))

    def clear(self) -> None:
        """Forget them all: after a server restart, an old ``seq`` means nothing."""
        self.last.clear()

    def is_new(self, message: dict[str, Any]) -> bool:
        """False for a room broadcast already seen; records the seq of a new one."""
        room, seq = message.get("room"), message.get("seq")
        if not isinstance(room, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return True                     # not a room broadcast: replies, whispers...
        key = p.name_key(room)
        last = self.last.get(key)
        if last is not None and seq <= last:
            return False
        self.last[key] = seq
        return True
