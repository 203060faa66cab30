"""The UDP chat client: a sans-IO core, one socket with a reader and a timer thread, a terminal.

Theory of operation
-------------------
Three layers, as in the TCP client:

1. ``UdpClientCore`` holds the client's state and does no I/O. Feed it each
   datagram (``receive``), each give-up of the retransmit timer
   (``given_up``) and the time (``handle_timer`` when ``next_deadline`` has
   passed); it answers with actions: ``Transmit`` (a reliable request: hand
   it to the timer, then send it), ``SendAck``, ``Acked``, ``Deliver``,
   ``Note``, ``Joined``, ``JoinRefused``, ``Failed``.
2. ``UdpChatClient`` owns one UDP socket ``connect()``-ed to the server, so
   the kernel only lets the server's datagrams in. Three threads: the
   reader waits in ``select()`` for a datagram, a wake-up, or the core's
   next deadline (keepalive, gap timeout); the ``TimerThread`` retransmits
   unacked requests (key = request ``id``) and reports give-ups; and any
   caller (the stdin thread, a test) sends. One lock guards the core.
3. ``main`` is the terminal program, the same shape as the TCP client's.

The rules of the wire (the README's UDP section is the spec):

- Every request carries ``id`` = 1, 2, 3 ..., given as it goes out; it is
  retransmitted until the server's ``{"type":"ack","id":N}`` comes, and a
  give-up is told to the user: "message N was not delivered", with the
  start of its text.
- One request is out at a time; the rest wait in a bounded queue. The server
  applies requests in the order they arrive, so with several out a lost one
  would be overtaken by the next, and a person's lines would reach the room
  out of order. The price is TCP's: a lost request holds up those behind it.
- Every server datagram but an ack carries ``n``, this client's stream
  counter. Each is acked (``{"type":"ack","n":N}``), a duplicate too, since
  the first ack may have been lost. A ``ReorderBuffer`` delivers the stream
  once, in ``n`` order; a hole still open after ``gap_timeout_s`` is skipped
  and reported ("N messages lost"). The server resends a datagram until it
  gives up on us and drops us, so the timeout must outlast its retries.
- The ``seq`` of room broadcasts rides inside; as in the TCP client, the
  highest one seen per room is kept, for rejoining with ``since``.
- A ``ping`` goes out after ``keepalive_s`` with nothing sent, so the server
  does not time us out. Its ``pong`` is not shown.

A new session. The server forgets an address after a restart, a timeout or
a give-up. Our next datagram then opens a new session there: a ``welcome``
with ``n`` = 1 and the reply to that datagram (``not_joined`` for a message)
with ``n`` = 2. Those numbers are behind our stream, so they look like
duplicates. Two things tell them apart. A welcome with another ``epoch``
comes from a new run of the server. And a reply carries the ``id`` of our
request: a duplicate of a datagram we delivered cannot answer a request
whose reply we have not delivered yet (this catches a server that merely
forgot us, whose epoch is unchanged). Such a datagram starts a fresh
``ReorderBuffer``; the low-numbered datagrams that came just before it (the
welcome) were kept aside in a small stash and go in first. The new welcome
makes the core join its room again with ``since`` (without it after a
restart: the old ``seq`` means nothing there, as in the TCP client), and
the requests refused with ``not_joined`` meanwhile are sent again once it
is back in. Trade-off: a duplicate of an old low-numbered datagram can sit
in the stash in place of a new one that has not arrived yet.

Closing: ``close`` waits up to ``CLOSE_WAIT_S`` for requests in flight, sends
``leave`` (which ends the session on the server) and waits up to
``CLOSE_WAIT_S`` more for its ack, then stops both threads.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import logging
import os
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeGuard, Union

from . import commands as cmd
from . import config as cfg
from . import protocol as p
from .retransmit import Gap, ReorderBuffer, RetransmitQueue, RetransmitStats, TimerThread
from .retransmit import TooManyPending
from .terminal import Terminal, escape, main_streams, render
from .wakeup import Wakeup

log = logging.getLogger("chat_sync.udp_client")

EXIT_OK = 0
EXIT_FAILED = 2
CLOSE_WAIT_S = 1.0         # close(): longest wait for acks in flight, then for the leave's ack
RECV_BYTES = 65_535        # any datagram fits; the server promises max_datagram_bytes
DATAGRAMS_PER_TURN = 256   # bound one turn of the reader, so deadlines are not starved
STASH_MAX_N = 64           # low stream numbers kept aside in case a new session starts
MAX_AWAITING = 1024        # requests remembered while their reply is awaited
MAX_RESEND = 64            # requests kept to send again after a rejoin
MAX_QUEUED = 256           # requests waiting for their turn to go out
_BIG_ID = 2**53 - 1        # stands in for an id when checking a request's size
_KEEPALIVE = "_keepalive"  # marks a queued ping as ours; never sent
TEXT_START_CHARS = 30      # how much of an undelivered message the user is shown

STATS_HELP = "  /stats           retransmit and reorder counters of this client"
HELP = cmd.HELP.replace("  /quit", STATS_HELP + "\n  /quit", 1)


def _is_count(value: object) -> TypeGuard[int]:
    """True for a positive integer (and not a bool): a valid ``id`` or ``n``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**53


def text_start(text: str) -> str:
    """The first ``TEXT_START_CHARS`` characters of ``text``, with an ellipsis if cut."""
    if len(text) <= TEXT_START_CHARS:
        return text
    return text[:TEXT_START_CHARS] + "…"


# -- The core (no I/O) ----------------------------------------------------------------
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
class Deliver:
    """A server message, in stream order, exactly once: show it."""

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
    """The first join was refused: the client cannot chat."""

    code: str
    text: str


@dataclasses.dataclass(frozen=True)
class Failed:
    """The client cannot go on: no answer to the first join, or a rejoin refused."""

    reason: str


Action = Union[Transmit, SendAck, Acked, Deliver, Note, Joined, JoinRefused, Failed]


class UdpClientCore:
    """The UDP client's state machine: datagrams and time in, actions out. Not thread-safe."""

    def __init__(self, user: str, room: str, *, keepalive_s: float = 15.0,
                 gap_timeout_s: float = 15.0,
                 max_datagram_bytes: int = p.MAX_DATAGRAM_BYTES,
                 stats: RetransmitStats | None = None) -> None:
        self.user = user
        self.room = room                    # the room we are in, or are joining
        self.keepalive_s = keepalive_s
        self.gap_timeout_s = gap_timeout_s
        self.max_datagram_bytes = max_datagram_bytes
        self.stats = stats if stats is not None else RetransmitStats()
        self.state = ClientState.JOINING
        self.last_seq: dict[str, int] = {}  # name_key(room) -> highest seq seen there
        self.epoch: object = None           # the server run those seqs belong to
        self.leave_id: int | None = None
        self.heard_from_server = False
        # counters
        self.delivered = 0                  # messages delivered to the application
        self.acks_sent = 0
        self.bad_datagrams = 0              # undecodable, or without a valid n
        self.sessions = 0                   # new sessions the server opened for us
        self.keepalives = 0                 # pings sent because we were idle
        self._next_id = 1                   # ids are given when a request goes out
        self._queue: collections.deque[dict[str, Any]] = collections.deque()   # its turn next
        self._unacked: dict[int, dict[str, Any]] = {}    # rid -> request: out, not acked
        self._awaiting: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._keepalive_ids: set[int] = set()
        self._pending_join: tuple[int, str] | None = None     # (request id, room): out
        self._join_queued = False           # a join waits at the head of the queue
        self._resend: list[dict[str, Any]] = []               # refused while forgotten
        self._reorder = self._new_reorder()
        self._retired = collections.Counter[str]()   # counters of replaced reorder buffers
        self._stash: dict[int, dict[str, Any]] = {}  # low n that looked stale
        self._last_sent: float | None = None

    # -- questions ---------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests not acked yet: the one out (or two, with a leave) and those queued."""
        return len(self._unacked) + len(self._queue)

    @property
    def reorder(self) -> ReorderBuffer[dict[str, Any]]:
        """The buffer of the current session's stream."""
        return self._reorder

    def counters(self) -> dict[str, int]:
        """Receive-side counters, summed over every session's stream."""
        return {"delivered": self.delivered,
                "duplicates": self._retired["duplicates"] + self._reorder.duplicates,
                "gaps": self._retired["gaps"] + self._reorder.gaps,
                "lost": self._retired["skipped"] + self._reorder.skipped,
                "buffered": self._reorder.buffered,
                "queued": len(self._queue),
                "acks_sent": self.acks_sent,
                "bad_datagrams": self.bad_datagrams,
                "sessions": self.sessions,
                "keepalives": self.keepalives}

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work: a gap times out, or a keepalive is due."""
        deadlines = []
        gap = self._reorder.next_deadline()
        if gap is not None:
            deadlines.append(gap)
        keepalive = self._keepalive_deadline()
        if keepalive is not None:
            deadlines.append(keepalive)
        return min(deadlines) if deadlines else None

    # -- requests out ----------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        """The first join, which opens the session on the server."""
        return self._queue_join(self.room, now)

    def request(self, request: dict[str, Any], now: float) -> list[Action]:
        """Send ``request`` (a dict from ``commands``, without ``id``) reliably, in turn.

        Returns ``[Transmit]`` when it goes out now, ``[]`` when it waits for the
        request before it, or ``[Note]`` saying why it will not be sent.
        """
        if self.state in (ClientState.LEFT, ClientState.FAILED):
            return [Note("not sent: the session is over")]
        return self._submit(request, now)

    def join(self, room: str, now: float) -> list[Action]:
        """Move to ``room`` (``/join``); only once we are in a room."""
        if self.state is not ClientState.JOINED or self._joining():
            return [Note("cannot join now: not in a room yet")]
        self._join_queued = True
        return self._submit(cmd.join_request(room, self.user,
                                             self.last_seq.get(p.name_key(room))), now)

    def leave(self, now: float) -> list[Action]:
        """End the session: the server forgets us when it gets this.

        It goes out at once, past anything queued; what was queued is dropped.
        """
        if self.state is ClientState.LEFT:
            return []
        self.state = ClientState.LEFT
        actions: list[Action] = []
        if self._queue:
            plural = "s" if len(self._queue) != 1 else ""
            actions.append(Note(f"{len(self._queue)} request{plural} not sent: leaving"))
            self._queue.clear()
        self.leave_id = self._next_id
        return actions + self._transmit(cmd.leave_request(), now, reply=False)

    def cancel(self, rid: int) -> list[Action]:
        """Forget request ``rid``, which the caller could not send after all."""
        self._unacked.pop(rid, None)
        self._awaiting.pop(rid, None)
        self._keepalive_ids.discard(rid)
        if self._pending_join is not None and self._pending_join[0] == rid:
            self._pending_join = None
        return []

    # -- events in ---------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[Action]:
        """Handle one datagram from the server."""
        try:
            obj = p.decode(data)
        except p.ProtocolError as exc:
            self.bad_datagrams += 1
            return [Note(f"ignored a bad datagram from the server: {exc}")]
        self.heard_from_server = True
        if obj.get("type") == p.MessageType.ACK:
            rid = obj.get("id")
            if not _is_count(rid):
                self.bad_datagrams += 1
                return []
            if self._unacked.pop(rid, None) is None:
                return []                   # a duplicate ack, or one for a request given up
            return [Acked(rid)] + self._pump(now)
        n = obj.get("n")
        if not _is_count(n):
            self.bad_datagrams += 1
            return [Note("ignored a datagram from the server without a valid n")]
        actions: list[Action] = [self._ack(n, now)]
        return actions + self._stream(n, obj, now)

    def given_up(self, rid: int, now: float) -> list[Action]:
        """The retransmit timer gave up on request ``rid``: the server never acked it."""
        request = self._unacked.pop(rid, None)
        self._awaiting.pop(rid, None)
        keepalive = rid in self._keepalive_ids
        self._keepalive_ids.discard(rid)
        if request is None or rid == self.leave_id:
            return []
        if self._pending_join is not None and self._pending_join[0] == rid:
            self._pending_join = None
            if self.state is ClientState.JOINING:
                self.state = ClientState.FAILED
                return [Failed("no answer from the server to our join")]
        if keepalive:
            actions: list[Action] = [
                Note(f"the server is not answering (ping {rid} was not acked)")]
        else:
            text = f"{request.get('type')} {rid} was not delivered"
            if isinstance(request.get("text"), str):
                text += f": {text_start(request['text'])!r}"
            actions = [Note(text + " (the server did not ack it)")]
        return actions + self._pump(now)

    def handle_timer(self, now: float) -> list[Action]:
        """Skip gaps that timed out; when idle for ``keepalive_s``, ping (or rejoin)."""
        actions = self._release(self._reorder.poll(now), now)
        keepalive = self._keepalive_deadline()
        if keepalive is not None and now >= keepalive:
            self.keepalives += 1
            if self.state is ClientState.REJOINING and not self._joining():
                actions += self._queue_join(self.room, now)   # the last rejoin was lost
            else:
                actions += self._submit(cmd.ping_request(), now, keepalive=True)
        return actions

    # -- sending in turn ---------------------------------------------------------------------
    # One request is out at a time, so the server applies them in the order they
    # were made, whatever the network reorders: a person's lines stay in order.
    # The price is TCP's: a lost request holds up the ones behind it.

    def _submit(self, request: dict[str, Any], now: float, *, front: bool = False,
                keepalive: bool = False) -> list[Action]:
        size = len(p.encode_datagram({**request, "id": _BIG_ID}))
        if size > self.max_datagram_bytes:
            return [Note(f"not sent: {size} bytes, over the "
                         f"{self.max_datagram_bytes}-byte datagram limit")]
        if len(self._queue) >= MAX_QUEUED:
            return [Note(f"not sent: {MAX_QUEUED} requests already wait their turn")]
        if keepalive:
            request = {**request, _KEEPALIVE: True}
        if front:
            self._queue.appendleft(request)
        else:
            self._queue.append(request)
        return self._pump(now)

    def _pump(self, now: float) -> list[Action]:
        """Send the next queued request if none is out and its turn has come."""
        if self._unacked or not self._queue:
            return []
        if self.state in (ClientState.LEFT, ClientState.FAILED):
            return []
        is_join = self._queue[0].get("type") == p.MessageType.JOIN
        if self.state is not ClientState.JOINED and not is_join:
            return []                       # held until we are (back) in a room
        request = self._queue.popleft()
        keepalive = bool(request.pop(_KEEPALIVE, False))
        rid = self._next_id
        if is_join:
            self._join_queued = False
            self._pending_join = (rid, str(request.get("room")))
        if keepalive:
            self._keepalive_ids.add(rid)
        return self._transmit(request, now)

    def _transmit(self, request: dict[str, Any], now: float, *,
                  reply: bool = True) -> list[Action]:
        rid = self._next_id
        self._next_id += 1
        request = {**request, "id": rid}
        self._unacked[rid] = request
        if reply:
            self._awaiting[rid] = request
            while len(self._awaiting) > MAX_AWAITING:
                self._awaiting.popitem(last=False)
        self._last_sent = now
        return [Transmit(rid, p.encode_datagram(request))]

    def _queue_join(self, room: str, now: float) -> list[Action]:
        """Join ``room`` before anything else waiting (a first join, or a rejoin)."""
        self._join_queued = True
        request = cmd.join_request(room, self.user, self.last_seq.get(p.name_key(room)))
        return self._submit(request, now, front=True)

    def _joining(self) -> bool:
        return self._pending_join is not None or self._join_queued

    def _keepalive_deadline(self) -> float | None:
        """``keepalive_s`` after the last datagram we sent, while no request is out."""
        if (self.state not in (ClientState.JOINED, ClientState.REJOINING)
                or self._unacked or self._last_sent is None):
            return None
        return self._last_sent + self.keepalive_s

    # -- the stream ---------------------------------------------------------------------------
    def _ack(self, n: int, now: float) -> SendAck:
        self.acks_sent += 1
        self._last_sent = now
        return SendAck(n, p.encode_datagram({"type": p.MessageType.ACK.value, "n": n}))

    def _stream(self, n: int, message: dict[str, Any], now: float) -> list[Action]:
        expected = self._reorder.expected
        if expected is not None and n < expected:
            if self._starts_new_session(message):
                return self._new_session(n, message, now)
            if n <= STASH_MAX_N:
                self._stash[n] = message    # the latest copy of each low n
            self._reorder.push(n, message, now)     # counted as a duplicate
            return []
        return self._release(self._reorder.push(n, message, now), now)

    def _starts_new_session(self, message: dict[str, Any]) -> bool:
        """Whether a datagram behind our stream opens a new one; see the module comment."""
        if message.get("type") == p.MessageType.WELCOME:
            return self.epoch is not None and message.get("epoch") != self.epoch
        rid = message.get("id")
        return _is_count(rid) and rid in self._awaiting

    def _new_session(self, n: int, message: dict[str, Any], now: float) -> list[Action]:
        """The server has forgotten us and numbers a new stream; see the module comment."""
        self.sessions += 1
        old = self._reorder
        actions = self._release(old.poll(float("inf")), now)   # what the old stream still held
        self._retired.update(duplicates=old.duplicates, gaps=old.gaps, skipped=old.skipped)
        self._reorder = self._new_reorder()
        released: list[dict[str, Any] | Gap] = []
        for m in sorted(self._stash):
            if m < n:
                released += self._reorder.push(m, self._stash[m], now)
        self._stash.clear()
        released += self._reorder.push(n, message, now)
        return actions + self._release(released, now)

    def _release(self, items: list[dict[str, Any] | Gap], now: float) -> list[Action]:
        actions: list[Action] = []
        for item in items:
            if isinstance(item, Gap):
                plural = "s" if item.count != 1 else ""
                actions.append(Note(f"{item.count} message{plural} lost (stream numbers "
                                    f"{item.first_missing}..{item.last_missing} never came)"))
            else:
                actions += self._handle(item, now)
        return actions

    # -- one message, in stream order -------------------------------------------------------
    def _handle(self, message: dict[str, Any], now: float) -> list[Action]:
        kind = message.get("type")
        rid = message.get("id")
        request = self._awaiting.pop(rid, None) if _is_count(rid) else None
        if kind == p.MessageType.WELCOME:
            return self._welcome(message, now)
        if request is not None and rid in self._keepalive_ids:
            self._keepalive_ids.discard(rid)
            if kind == p.MessageType.PONG:
                return []                   # our own keepalive: nothing to show
        pending = self._pending_join
        if pending is not None and rid == pending[0]:
            return self._join_answer(message, now)
        if (kind == p.MessageType.ERROR and message.get("code") == p.ErrorCode.NOT_JOINED
                and request is not None
                and self.state in (ClientState.JOINED, ClientState.REJOINING)):
            return self._forgotten(request, now)
        if not self._is_new(message):
            return []
        self.delivered += 1
        return [Deliver(message)]

    def _welcome(self, message: dict[str, Any], now: float) -> list[Action]:
        self.delivered += 1
        actions: list[Action] = [Deliver(message)]
        if message.get("protocol") != p.PROTOCOL_VERSION:
            actions.append(Note(f"the server speaks protocol {escape(str(message.get('protocol')))}"
                                f", this client {p.PROTOCOL_VERSION}; expect trouble"))
        epoch = message.get("epoch")
        restarted = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        if self.state not in (ClientState.JOINED, ClientState.REJOINING):
            return actions                  # the first session: our join is already out
        if restarted:
            self.last_seq.clear()
            actions.append(Note("the server has restarted; its history starts afresh"))
        self.state = ClientState.REJOINING
        actions.append(Note(f"the server had forgotten us; rejoining {self.room}"))
        self._pending_join = None           # an answer to an older join cannot come now
        return actions + self._queue_join(self.room, now)

    def _forgotten(self, request: dict[str, Any], now: float) -> list[Action]:
        """``request`` was refused with ``not_joined``: the server does not know us."""
        again = {k: v for k, v in request.items() if k != "id"}
        if len(self._resend) >= MAX_RESEND:
            return [Note(f"{request.get('type')} {request.get('id')} was not delivered "
                         f"(the server had forgotten us)")]
        self._resend.append(again)
        if self._joining():
            return []                       # a rejoin is under way; it is resent after that
        actions: list[Action] = []
        if self.state is ClientState.JOINED:
            actions.append(Note(f"the server had forgotten us; rejoining {self.room}"))
        self.state = ClientState.REJOINING
        return actions + self._queue_join(self.room, now)

    def _join_answer(self, message: dict[str, Any], now: float) -> list[Action]:
        """``message`` carries the id of our pending join: an error, or our join notice."""
        assert self._pending_join is not None
        room = self._pending_join[1]
        self._pending_join = None
        if message.get("type") == p.MessageType.ERROR:
            code, text = str(message.get("code")), str(message.get("text"))
            if self.state is ClientState.JOINING:
                self.state = ClientState.FAILED
                return [JoinRefused(code, text)]
            if self.state is ClientState.REJOINING:
                self.state = ClientState.FAILED
                return [Deliver(message), Failed(f"rejoin refused: error {code}: {text}")]
            return [Deliver(message)]       # a /join refused: we stay where we were
        room_name = message.get("room")
        self.room = room_name if isinstance(room_name, str) else room
        rejoined = self.state is ClientState.REJOINING
        self.state = ClientState.JOINED
        self._is_new(message)               # record its seq
        self.delivered += 1
        actions: list[Action] = [Joined(self.room), Deliver(message)]
        if rejoined:
            actions.append(Note(f"rejoined {self.room}"))
            resend, self._resend = self._resend, []
            if resend:
                plural = "s" if len(resend) != 1 else ""
                actions.append(Note(f"sending {len(resend)} request{plural} again"))
            self._queue.extendleft(reversed(resend))    # first, in their old order
        return actions + self._pump(now)

    def _is_new(self, message: dict[str, Any]) -> bool:
        """False for a room broadcast already seen; records the seq of a new one."""
        room, seq = message.get("room"), message.get("seq")
        if not isinstance(room, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return True                     # not a room broadcast: replies, whispers...
        key = p.name_key(room)
        last = self.last_seq.get(key)
        if last is not None and seq <= last:
            return False
        self.last_seq[key] = seq
        return True

    def _new_reorder(self) -> ReorderBuffer[dict[str, Any]]:
        return ReorderBuffer(gap_timeout=self.gap_timeout_s, stats=self.stats)


# -- Events for the user of UdpChatClient ----------------------------------------------
@dataclasses.dataclass(frozen=True)
class Received:
    """A server message, delivered once and in order."""

    message: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Notice:
    """Local news: not delivered, messages lost, rejoining, help text, stats."""

    text: str


@dataclasses.dataclass(frozen=True)
class Closed:
    """The client has finished; this is always its last event."""

    exit_code: int
    reason: str


ClientEvent = Union[Received, Notice, Closed]


class JoinError(Exception):
    """The server refused the first join."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"error {code}: {text}")
        self.code = code
        self.text = text


# -- The socket shell -------------------------------------------------------------------
class UdpChatClient:
    """A UDP chat session with its reader and timer threads, usable without a terminal.

    ``on_event`` is called with each ``ClientEvent`` from whichever thread
    produced it (reader, timer, or a caller); without it, events go to a
    queue read by ``next_event``. It must not call ``close``. After a
    ``Closed`` event with exit code 2 (a rejoin refused), call ``close`` to
    release the socket and stop the timer thread.
    """

    def __init__(self, config: cfg.UdpClientConfig, *,
                 on_event: Callable[[ClientEvent], None] | None = None) -> None:
        if config.user is None:
            raise ValueError("UdpClientConfig.user is required")
        self.config = config
        self.peer = f"{config.host}:{config.port}"
        retransmit = RetransmitQueue(base_delay=config.base_delay, max_delay=config.max_delay,
                                     max_retries=config.max_retries,
                                     adaptive_rto=config.adaptive_rto, min_rto=config.min_rto)
        self.timer = TimerThread(self._retransmit, self._on_give_up, queue=retransmit,
                                 name=f"udp-client-timer-{config.user}")
        self.core = UdpClientCore(config.user, config.room, keepalive_s=config.keepalive_s,
                                  gap_timeout_s=config.gap_timeout_s,
                                  max_datagram_bytes=config.max_datagram_bytes,
                                  stats=retransmit.stats)
        self.exit_code: int | None = None
        self.reader_wakeups = 0             # select() timeouts: keepalive and gap deadlines
        self.send_errors = 0                # sends refused (e.g. ICMP: nobody listening)
        self._lock = threading.Lock()       # guards the core
        self._changed = threading.Condition(self._lock)   # notified after each step
        self._events: queue.Queue[ClientEvent] = queue.Queue()
        self._on_event = on_event if on_event is not None else self._events.put
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wakeup: Wakeup | None = None
        self._reader: threading.Thread | None = None
        self._failure: Exception | None = None
        self._ready = threading.Event()     # connect() has returned: joined
        self._leave_acked = threading.Event()
        self._stopping = threading.Event()  # the reader must end
        self._finished = threading.Event()  # Closed has been emitted
        self._close_lock = threading.Lock()
        self._closed = False

    # -- public ---------------------------------------------------------------------------
    @property
    def user(self) -> str:
        return self.core.user

    @property
    def room(self) -> str:
        return self.core.room

    @property
    def state(self) -> ClientState:
        return self.core.state

    @property
    def address(self) -> tuple[str, int]:
        """Our own (host, port): how the server knows us."""
        if self._sock is None:
            raise RuntimeError("connect() first")
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self.core.in_flight

    @property
    def stats(self) -> dict[str, int]:
        """Retransmit counters, receive counters and wake-ups, for tests and the bench."""
        with self._lock:
            counters = self.core.counters()
        return {**self.timer.stats.as_dict(), **counters,
                "timer_wakeups": self.timer.wakeups, "reader_wakeups": self.reader_wakeups,
                "send_errors": self.send_errors}

    def describe_stats(self) -> str:
        """What ``/stats`` prints: the retransmit line, then the receive line."""
        stats = self.stats
        queue_ = self.timer.queue
        srtt = f"{queue_.srtt * 1000:.1f} ms" if queue_.srtt is not None else "-"
        return (f"sent: {self.timer.stats.describe()} (rto {queue_.rto * 1000:.0f} ms, "
                f"srtt {srtt})\n"
                f"received: delivered={stats['delivered']} duplicates={stats['duplicates']} "
                f"gaps={stats['gaps']} lost={stats['lost']} buffered={stats['buffered']} "
                f"acks_sent={stats['acks_sent']} sessions={stats['sessions']}")

    def connect(self, timeout: float | None = None) -> None:
        """Open the socket, start both threads, join ``config.room``; return once joined.

        Raises JoinError if the server refuses the join, ConnectionError if it
        never answers (the join's retransmissions gave up) or ``timeout``
        seconds pass, OSError if the address is unusable. The client is
        closed when it raises.
        """
        if self._reader is not None:
            raise RuntimeError("connect() may be called only once")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.connect((self.config.host, self.config.port))  # only the server gets in
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self._wakeup = Wakeup()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, "socket")
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ, "wakeup")
        self.timer.start()
        self._reader = threading.Thread(target=self._run, name=f"udp-client-{self.user}",
                                        daemon=True)
        self._reader.start()
        with self._lock:
            actions = self.core.start(time.monotonic())
        self._perform(actions)
        with self._changed:
            self._changed.wait_for(lambda: self.core.state is not ClientState.JOINING
                                   or self._stopping.is_set(), timeout)
            state, failure = self.core.state, self._failure
        if state is ClientState.JOINED:
            self._ready.set()
            return
        self.close()
        if failure is not None:
            raise failure
        raise ConnectionError(f"no answer from {self.peer} within {timeout} s")

    def execute(self, command: cmd.Command) -> bool:
        """Carry out one parsed command; returns False once the client is closed."""
        if isinstance(command, cmd.Quit):
            self.close()
            return False
        if isinstance(command, cmd.Help):
            self._emit(Notice(HELP))
        elif isinstance(command, cmd.Usage):
            self._emit(Notice(command.text))
        elif isinstance(command, cmd.Say):
            self.request(cmd.message_request(command.text))
        elif isinstance(command, cmd.Whisper):
            self.request(cmd.whisper_request(command.to, command.text))
        elif isinstance(command, cmd.ListRooms):
            self.request(cmd.rooms_request())
        elif isinstance(command, cmd.WhoIsHere):
            self.request(cmd.who_request())
        elif isinstance(command, cmd.JoinRoom):
            with self._lock:
                actions = self.core.join(command.room, time.monotonic())
            self._perform(actions)
        return not self._finished.is_set()

    def send_line(self, line: str) -> bool:
        """Parse and carry out one typed line (``/stats`` included); False once closed."""
        if line.strip().lower() == "/stats":
            self._emit(Notice(self.describe_stats()))
            return not self._finished.is_set()
        command = cmd.parse_command(line)
        if command is None:
            return not self._finished.is_set()
        return self.execute(command)

    def say(self, text: str) -> bool:
        """Send chat text to the room; False if it will not be sent (a Notice says why)."""
        return self.request(cmd.message_request(text))

    def request(self, request: dict[str, Any]) -> bool:
        """Send one request (from ``commands``, without ``id``) reliably, in turn.

        Returns True once it is sent or queued, False when it will not be sent
        (too large, too many queued, the session is over): a Notice says why.
        """
        with self._lock:
            actions = self.core.request(request, time.monotonic())
        self._perform(actions)
        return not any(isinstance(action, Note) for action in actions)

    def wait_sent(self, max_in_flight: int = 0, timeout: float | None = 5.0) -> bool:
        """Wait until at most ``max_in_flight`` requests wait for an ack.

        Returns False if ``timeout`` passed first or the client stopped. A
        request given up no longer counts. Senders use it as a window.
        """
        with self._changed:
            return self._changed.wait_for(
                lambda: self.core.in_flight <= max_in_flight or self._stopping.is_set(),
                timeout) and self.core.in_flight <= max_in_flight

    def next_event(self, timeout: float = 5.0) -> ClientEvent:
        """The next event from the queue (only without ``on_event``).

        Raises TimeoutError if none arrives within ``timeout`` seconds.
        """
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout} s") from None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the client has finished; its exit code, or None on timeout."""
        self._finished.wait(timeout)
        return self.exit_code

    def close(self) -> int:
        """Say goodbye (see the module comment), stop both threads, close the socket.

        Returns the exit code: 0, unless the client had already failed. Safe
        to call more than once and from any thread but the reader.
        """
        with self._close_lock:
            if self._closed:
                return self.exit_code if self.exit_code is not None else EXIT_OK
            self._closed = True
            reader = self._reader
            if reader is not None and reader.is_alive() and not self._stopping.is_set():
                self._say_goodbye()
            self._stopping.set()
            if self._wakeup is not None:
                self._wakeup.wake()
            if reader is not None and reader is not threading.current_thread():
                reader.join()
            self.timer.stop()
            for resource in (self._selector, self._sock, self._wakeup):
                if resource is not None:
                    resource.close()
            self._finish(EXIT_OK, "closed")
            assert self.exit_code is not None
            return self.exit_code

    # -- closing ----------------------------------------------------------------------------
    def _say_goodbye(self) -> None:
        self.wait_sent(0, CLOSE_WAIT_S)
        with self._lock:
            if not self.core.heard_from_server:
                return                      # the server never knew us: nothing to end
            actions = self.core.leave(time.monotonic())
        self._perform(actions)
        if any(isinstance(action, Transmit) for action in actions):
            self._leave_acked.wait(CLOSE_WAIT_S)

    def _fail(self, failure: Exception) -> None:
        """The client cannot go on: ``connect`` raises it, or the client ends with code 2."""
        with self._changed:
            self._failure = failure
            self._changed.notify_all()
        if self._ready.is_set():
            self._stopping.set()            # the reader ends; close() cleans up
            self._finish(EXIT_FAILED, str(failure))

    def _finish(self, code: int, reason: str) -> None:
        with self._lock:
            if self.exit_code is not None:
                return
            self.exit_code = code
        self._emit(Closed(code, reason))
        self._finished.set()

    # -- the reader thread ----------------------------------------------------------------------
    def _run(self) -> None:
        assert self._selector is not None and self._wakeup is not None
        try:
            while not self._stopping.is_set():
                with self._lock:
                    deadline = self.core.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = self._selector.select(timeout)
                if not ready:
                    self.reader_wakeups += 1
                for key, _ in ready:
                    if key.data == "socket":
                        self._read()
                    else:
                        self._wakeup.drain()
                with self._lock:
                    actions = self.core.handle_timer(time.monotonic())
                self._perform(actions)
        except BaseException as exc:        # a bug: still end with a Closed event
            self._stopping.set()
            self._finish(EXIT_FAILED, f"internal error: {exc!r}")
            raise

    def _read(self) -> None:
        assert self._sock is not None
        for _ in range(DATAGRAMS_PER_TURN):
            try:
                data = self._sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:          # ECONNREFUSED: an ICMP error for an earlier send
                log.debug("[%s] recv: %s", self.peer, exc)
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug("[%s] <- %r", self.peer, data)
            with self._lock:
                actions = self.core.receive(data, time.monotonic())
            self._perform(actions)

    # -- performing actions ----------------------------------------------------------------------
    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                try:
                    # Registered before the first send, so its ack always finds it.
                    self.timer.send(action.rid, action.payload)
                except TooManyPending:
                    with self._lock:
                        self.core.cancel(action.rid)
                    self._emit(Notice("not sent: too many requests wait for an ack"))
                    continue
                self._send(action.payload)
            elif isinstance(action, SendAck):
                self._send(action.payload)
            elif isinstance(action, Acked):
                self.timer.ack(action.rid)
                if action.rid == self.core.leave_id:
                    self._leave_acked.set()
            elif isinstance(action, Deliver):
                self._emit(Received(action.message))
            elif isinstance(action, Note):
                self._emit(Notice(action.text))
            elif isinstance(action, JoinRefused):
                self._fail(JoinError(action.code, action.text))
            elif isinstance(action, Failed):
                self._fail(ConnectionError(action.reason))
            # Joined needs nothing here: the join notice itself is delivered.
        with self._changed:
            self._changed.notify_all()

    def _send(self, payload: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s] -> %r", self.peer, payload)
        try:
            sock.send(payload)
        except OSError as exc:              # refused or full: a lost datagram; the timer resends
            self.send_errors += 1
            log.debug("[%s] send: %s", self.peer, exc)

    # -- the timer thread's callbacks ----------------------------------------------------------
    def _retransmit(self, key: Any, payload: bytes) -> None:
        self._send(payload)

    def _on_give_up(self, key: Any, payload: bytes) -> None:
        with self._lock:
            actions = self.core.given_up(key, time.monotonic())
        self._perform(actions)
        if self._wakeup is not None:
            self._wakeup.wake()             # with nothing out, a keepalive deadline is back

    def _emit(self, event: ClientEvent) -> None:
        self._on_event(event)


# -- The terminal program ----------------------------------------------------------------------
def show_event(terminal: Terminal, user: str, event: ClientEvent) -> None:
    """Print one client event on the terminal."""
    if isinstance(event, Received):
        terminal.show(render(event.message, me=user, colour=terminal.colour))
    elif isinstance(event, Notice):
        for line in event.text.splitlines():
            terminal.show("-- " + escape(line))
    elif isinstance(event, Closed) and event.exit_code != EXIT_OK:
        terminal.show("-- " + escape(event.reason))


def pump_stdin(client: UdpChatClient, terminal: Terminal) -> None:
    """The stdin thread: each typed line becomes a command; EOF or /quit closes the client."""
    while True:
        line = terminal.read_line()
        if line is None:
            client.close()
            return
        if not client.send_line(line):
            return


def run(client: UdpChatClient, terminal: Terminal) -> int:
    """Chat until /quit, end of input, Ctrl-C or failure; returns the exit code.

    ``client`` must be connected. The stdin thread is a daemon: when the
    client fails, the program ends even though a ``read`` is still blocked.
    """
    stdin_thread = threading.Thread(target=pump_stdin, args=(client, terminal),
                                    name="stdin", daemon=True)
    stdin_thread.start()
    try:
        client.wait()
    except KeyboardInterrupt:
        pass
    return client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-sync udp-client",
                                     description="Chat on a chat_sync UDP server.")
    cfg.add_arguments(parser, cfg.UdpClientConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(cfg.UdpClientConfig, args)
    except cfg.ConfigError as exc:
        print(f"chat-sync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if config.user is None:
        print("chat-sync: a user name is required: --user NAME, or user: in the config file",
              file=sys.stderr)
        return EXIT_FAILED
    stdin, stdout = main_streams()
    terminal = Terminal.open(stdin, stdout, plain=config.plain, environ=os.environ)
    user = config.user
    client = UdpChatClient(config, on_event=lambda event: show_event(terminal, user, event))
    try:
        try:
            client.connect()
        except JoinError as exc:
            print(f"chat-sync: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:
            print(f"chat-sync: cannot reach {client.peer}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            client.close()
            return EXIT_OK
        return run(client, terminal)
    finally:
        terminal.close()


if __name__ == "__main__":
    sys.exit(main())
