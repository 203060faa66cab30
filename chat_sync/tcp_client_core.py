"""The TCP chat client's sans-IO core: server messages in, actions out.

Theory of operation
-------------------
``ClientCore`` holds the client's state and no I/O: the room it is in, the
join it is waiting for, the last ``seq`` it saw in each room. Feed it each
decoded server message with ``receive``; it answers with actions (``Show``,
``Send``, ``Joined``, ``JoinRefused``, ``ServerShutdown``, ``Note``), which
the socket shell (``tcp_client.ChatClient``) carries out. ``Backoff`` is the
reconnect schedule, pure too: the random fraction is passed in.

Why a reconnect misses nothing and shows nothing twice: ``seq`` is one
counter for the whole server. The core remembers, per room, the highest
``seq`` it saw, and the shell's rejoin asks for ``since`` that seq; a
broadcast whose seq is not above the last one seen in its room is dropped
as a second line of defence. A new ``epoch`` in a welcome means the server
restarted and counts afresh, so the core forgets the old numbers.

A reconnect also reclaims the name: each welcome carries a ``resume`` token,
and the first join on the next connection shows the token of the connection
that held the name, so a server still holding that half-open ghost hands the
name over instead of refusing it (``name_taken``).

Lines never vanish in silence: each chat line and whisper is sent with an
``id`` and is ``unconfirmed`` until the answer carrying that id arrives (its
echo, or an error). When the connection is lost, ``connection_lost`` returns
the unconfirmed texts, for the shell to say they may not have arrived. They
are not resent: the server may have broadcast them already, and a line must
never arrive twice.
"""
from __future__ import annotations

import dataclasses
import enum
import itertools
from typing import Any, Union

from . import commands as cmd
from . import protocol as p
from .client_actions import (JoinRefused as JoinRefused, Joined as Joined, Note as Note,
                             Show as Show)
from .client_actions import RoomSeqs
from .terminal import escape


MAX_UNCONFIRMED = 1000       # lines remembered awaiting their echo, at most


# -- Back-off (pure) ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Backoff:
    """How long to wait before each reconnect attempt; see the module comment."""

    base_delay_s: float
    max_delay_s: float
    tries: int

    def delay(self, attempt: int, random_fraction: float) -> float:
        """Seconds to wait before attempt ``attempt`` (0 for the first).

        ``random_fraction`` is in [0, 1), e.g. ``random.random()``; passing it
        in keeps this function pure. Returns a value in [cap/2, cap].
        """
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        # 2.0 ** 1024 overflows a float; the cap is reached long before 60 doublings.
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(attempt, 60))
        return cap / 2 + cap / 2 * random_fraction


# -- The core (no I/O) -------------------------------------------------------------
class ClientState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"    # socket open, waiting for the welcome
    JOINING = "joining"          # this connection's first join sent, waiting for its answer
    JOINED = "joined"            # in a room; chat and commands may be sent


@dataclasses.dataclass(frozen=True)
class Send:
    """Send this request to the server."""

    request: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ServerShutdown:
    text: str


Action = Union[Show, Send, Joined, JoinRefused, ServerShutdown, Note]


class ClientCore:
    """The client's state machine: messages in, actions out. Not thread-safe."""

    def __init__(self, user: str, room: str) -> None:
        self.user = user
        self.room = room                  # the room we are in, or are about to join
        self.state = ClientState.DISCONNECTED
        self.seqs = RoomSeqs()               # the highest seq seen in each room: since
        self.epoch: object = None            # the server run those seqs belong to
        self._ids = itertools.count(1)
        self._pending_join: tuple[int, str] | None = None   # (request id, room)
        self._token: str | None = None       # this connection's resume token
        self._ghost_token: str | None = None # the token of the connection that joined last
        self._unconfirmed: dict[int, str] = {}   # request id -> text, awaiting its answer

    @property
    def last_seq(self) -> dict[str, int]:
        """name_key(room) -> the highest seq seen there."""
        return self.seqs.last

    def connection_made(self) -> None:
        self.state = ClientState.CONNECTING
        self._pending_join = None

    def connection_lost(self) -> list[str]:
        """The connection is gone; returns the texts sent on it that were never answered."""
        self.state = ClientState.DISCONNECTED
        self._pending_join = None
        lost, self._unconfirmed = list(self._unconfirmed.values()), {}
        return lost

    def track(self, request: dict[str, Any]) -> dict[str, Any]:
        """A message or whisper, given an ``id``: unconfirmed until answered."""
        if request.get("type") not in (p.MessageType.MESSAGE, p.MessageType.WHISPER):
            return request
        rid = next(self._ids)
        if len(self._unconfirmed) >= MAX_UNCONFIRMED:     # a server that never answers
            del self._unconfirmed[next(iter(self._unconfirmed))]
        self._unconfirmed[rid] = str(request.get("text", ""))
        return {**request, "id": rid}

    def forget(self, request: dict[str, Any]) -> None:
        """``request`` was not sent after all (the shell said so): not unconfirmed."""
        self._unconfirmed.pop(request.get("id"), None)    # type: ignore[arg-type]

    def join(self, room: str) -> dict[str, Any]:
        """The request that joins ``room``, with ``since`` if we have been there before.

        Its ``id`` lets ``receive`` tell the answer to this join from other traffic.
        """
        rid = next(self._ids)
        self._pending_join = (rid, room)
        return cmd.join_request(room, self.user, self.seqs.since(room), rid)

    def receive(self, message: dict[str, Any]) -> list[Action]:
        """Act on one decoded server message."""
        kind = message.get("type")
        rid = message.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            self._unconfirmed.pop(rid, None)        # answered: it arrived
        if self.state is ClientState.CONNECTING:
            if kind == p.MessageType.WELCOME:
                return self._welcome(message)
            return [Show(message)]        # e.g. server_full; the server closes next
        if kind == p.MessageType.SYSTEM and message.get("event") == p.SystemEvent.SHUTDOWN:
            return [Show(message), ServerShutdown(str(message.get("text", "")))]
        pending = self._pending_join
        if pending is not None and message.get("id") == pending[0]:
            return self._join_answer(message)
        if not self.seqs.is_new(message):
            return []
        return [Show(message)]

    def _welcome(self, message: dict[str, Any]) -> list[Action]:
        actions: list[Action] = [Show(message)]
        if message.get("protocol") != p.PROTOCOL_VERSION:
            actions.append(Note(f"the server speaks protocol {escape(str(message.get('protocol')))}"
                                f", this client {p.PROTOCOL_VERSION}; expect trouble"))
        epoch = message.get("epoch")
        if self.epoch is not None and epoch != self.epoch:
            self.seqs.clear()
            actions.append(Note("the server has restarted; its history starts afresh"))
        self.epoch = epoch
        self.state = ClientState.JOINING
        join = self.join(self.room)
        if self._ghost_token is not None:
            join["resume"] = self._ghost_token
        token = message.get("resume")
        self._token = token if isinstance(token, str) else None
        actions.append(Send(join))
        return actions

    def _join_answer(self, message: dict[str, Any]) -> list[Action]:
        """``message`` carries the id of our pending join: an error, or our join notice."""
        assert self._pending_join is not None
        room = self._pending_join[1]
        self._pending_join = None
        if message.get("type") == p.MessageType.ERROR:
            if self.state is ClientState.JOINING:
                return [JoinRefused(str(message.get("code")), str(message.get("text")))]
            return [Show(message)]        # a /join refused: we stay where we were
        room_name = message.get("room")
        self.room = room_name if isinstance(room_name, str) else room
        self._ghost_token = self._token     # if this connection dies, it holds the name
        self.state = ClientState.JOINED
        self.seqs.is_new(message)             # record its seq
        return [Joined(self.room), Show(message)]
