"""What the UDP client core answers with: its states and actions, and small helpers.

``udp_client_core.UdpClientCore`` returns these; ``udp_client`` performs them.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, TypeGuard, Union

from .client_actions import (JoinRefused as JoinRefused, Joined as Joined, Note as Note,
                             Show as Show)

TEXT_START_CHARS = 30      # how much of an undelivered message the user is shown

def is_int(value: object) -> TypeGuard[int]:
    """True for an integer that is not a bool: a ``seq``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: object) -> TypeGuard[int]:
    """True for a positive integer (and not a bool): a valid ``id`` or ``n``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**53


def text_start(text: str) -> str:
    """The first ``TEXT_START_CHARS`` characters of ``text``, with an ellipsis if cut."""
    if len(text) <= TEXT_START_CHARS:
        return text
    return text[:TEXT_START_CHARS] + "…"


def undelivered(rid: int, request: dict[str, Any], was: str, why: str) -> str:
    """``message 5 was not delivered: 'its start…' (why)``."""
    text = f"{request.get('type')} {rid} {was} delivered"
    if isinstance(request.get("text"), str):
        text += f": {text_start(request['text'])!r}"
    return f"{text} ({why})"


class ClientState(enum.Enum):
    JOINING = "joining"        # the first join is out, no answer yet
    JOINED = "joined"          # in a room
    REJOINING = "rejoining"    # the server forgot us; joining our room again
    LEFT = "left"              # leave sent: the session is over
    FAILED = "failed"          # the first join was refused or never answered, or a rejoin refused


@dataclasses.dataclass(frozen=True)
class Transmit:
    """A reliable request: register ``rid`` with the retransmit timer, then send."""

    rid: int
    payload: bytes


@dataclasses.dataclass(frozen=True)
class SendAck:
    """Ack the server's datagram ``n`` (unreliable: a lost one is answered again)."""

    n: int
    payload: bytes


@dataclasses.dataclass(frozen=True)
class Acked:
    """The server acked request ``rid``: stop retransmitting it."""

    rid: int


@dataclasses.dataclass(frozen=True)
class Failed:
    """The client cannot go on: no answer to the first join, or a rejoin refused."""

    reason: str


Action = Union[Transmit, SendAck, Acked, Show, Note, Joined, JoinRefused, Failed]
