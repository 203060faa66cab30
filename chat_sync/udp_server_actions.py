"""What the UDP server core answers with: the actions its shell performs.

``udp_server_core.UdpChat`` returns these; ``udp_server.UdpServer`` performs them:

- ``Send(addr, payload, key)``: send ``payload`` to ``addr``. With a ``key``
  it is reliable: register it with the retransmit timer first.
- ``Acked(key)``: the peer acked ``key``; stop retransmitting it.
- ``Cancel(key)``: the peer was dropped; stop retransmitting ``key`` too.
- ``Log(room, user, text, ts)``: a room broadcast for the chat log.
- ``Report(addr, level, text)``: a defence acted on ``addr``; for the log.

And ``DROP_REASONS``, every reason ``UdpChat.dropped`` counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from . import protocol as p

Address = tuple[str, int]
Key = tuple[Address, int]        # (peer address, n): one reliable server datagram

# Every reason ``dropped`` counts, present from the start (zero), so another
# thread may read the counts while the loop thread adds to them.
DROP_REASONS = tuple(code.value for code in (
    p.ErrorCode.BAD_UTF8, p.ErrorCode.BAD_JSON, p.ErrorCode.BAD_MESSAGE,
    p.ErrorCode.DATAGRAM_TOO_LARGE, p.ErrorCode.SERVER_FULL, p.ErrorCode.RATE_LIMITED)) + (
    "bad_ack", "unknown_ack", "duplicate_ack", "deferred_full", "id_out_of_window",
    "bad_sid",
    "not_acking", "unverified_timeout", "unverified_evicted",
    "probe_unanswered")                                          # the last four: peers


@dataclass(frozen=True)
class Send:
    addr: Address
    payload: bytes
    key: Key | None = None       # reliable when set


@dataclass(frozen=True)
class Acked:
    key: Key


@dataclass(frozen=True)
class Log:
    room: str
    user: str | None             # None: a system notice
    text: str
    ts: float


@dataclass(frozen=True)
class Cancel:
    key: Key


@dataclass(frozen=True)
class Report:
    addr: Address
    level: int                   # a ``logging`` level
    text: str


Action = Union[Send, Acked, Cancel, Log, Report]
