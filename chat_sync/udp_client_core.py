"""The UDP client's session with the server, with no I/O: ``UdpClientCore``.

Theory of operation
-------------------
``UdpClientCore`` holds the client's state. Feed it each datagram
(``receive``), each give-up of the retransmit timer (``given_up``) and the
time (``handle_timer`` when ``next_deadline`` has passed); it answers with
actions: ``Transmit`` (a reliable request: hand it to the timer, then send
it), ``SendAck``, ``Acked``, ``Show``, ``Note``, ``Joined``,
``JoinRefused``, ``Failed``. ``udp_client`` is the shell that moves its
datagrams.

The rules of the wire (the README's UDP section is the spec):

- Every request carries ``id`` = 1, 2, 3 ..., given as it goes out; it is
  retransmitted until the server's ``{"type":"ack","id":N,"sid":S}`` comes. When
  the retransmit timer gives up, the question is whether the server is
  there. If any datagram came from it during those retries, it is, and the
  request (or its ack) was unlucky: the same request, same id, goes out
  again for another round, at most ``MAX_ROUNDS`` rounds, still the one in
  flight, so nothing overtakes it and the server's ``DedupWindow`` applies
  it once. If nothing came, the server is unreachable: the user is told
  "message N was not delivered", with the start of its text, and the next
  request goes out. (Dropping an unlucky request instead loses it when the
  server never got it, and says "not delivered" of one it applied.)
- One request is out at a time; the rest wait in a bounded queue. The server
  applies requests in the order they arrive, so with several out a lost one
  would be overtaken by the next, and a person's lines would reach the room
  out of order. The price is TCP's: a lost request holds up those behind it.
- Every server datagram but an ack carries ``n``, this client's stream
  counter. Each is acked (``{"type":"ack","n":N}``), a duplicate too, since
  the first ack may have been lost. A ``ReorderBuffer`` delivers the stream
  once, in ``n`` order; a hole still open after ``gap_timeout_s`` is skipped
  and reported ("N messages lost"). The server resends a datagram for as
  long as we ack the ones after it (``udp_server_core``: rounds), or until it
  drops us, so the timeout must outlast a round of its retries (0.2 s
  doubling to 3 s, seven tries: about 12 s by default).
- The ``seq`` of room broadcasts rides inside; as in the TCP client, the
  highest one seen per room is kept, for rejoining with ``since``.
- A ``ping`` goes out after ``keepalive_s`` with nothing sent, so the server
  does not time us out. Its ``pong`` is not shown.

Session ids, and what happens when the server forgets us and opens a new
session, are ``udp_client_stream``'s: its module comment gives the rules.

A ``ping`` from the server (``n``, no ``id``) asks whether we are still
there, as a join asks for our name (``udp_probes``): acked, not shown. So
``name_taken`` is final, for the first join and for a rejoin alike: the
server says it only once the name's holder has answered such a probe, so
someone live has the name, and asking again would get the same answer.

Told the server is shutting down, or with a keepalive unanswered, the core
rejoins by itself, with the TCP client's back-off between tries, and holds
what the user says until it is back in (a rejoin refused because we are in
the room already means the server kept our session: that is back in too).
Trade-off: after a restart a
request the old run applied and did not ack is applied again by the new
run (its ``DedupWindow`` died with it).
"""
from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import Any

from . import commands as cmd
from . import protocol as p
from .receiving import Gap, ReorderBuffer
from .retransmit import RetransmitStats
from .tcp_client_core import Backoff
from .client_actions import RoomSeqs
from .udp_client_stream import ServerStream, opens_session, refuses_entry, still_in_room
from .udp_client_actions import TEXT_START_CHARS as TEXT_START_CHARS
from .udp_client_actions import text_start as text_start
from .udp_client_actions import (Acked, Action, ClientState, Failed, Joined,
                                 JoinRefused, Note, SendAck, Show, Transmit, is_count, is_int,
                                 undelivered)
from .terminal import escape

MAX_ROUNDS = 3             # extra rounds of retries for a request while the server answers
MAX_AWAITING = 1024        # requests remembered while their reply is awaited
MAX_RESEND = 64            # requests kept to send again after a rejoin
MAX_QUEUED = 256           # requests waiting for their turn to go out
STREAM_WINDOW = 1024       # how far ahead of the next expected n a datagram may be
TRYING_NOTE_S = 2.0        # silence after the first join before we say we are still trying
REJOIN_BACKOFF = Backoff(base_delay_s=1.0, max_delay_s=30.0, tries=0)   # between rejoin tries
_BIG_ID = 2**53 - 1        # stands in for an id when checking a request's size
_KEEPALIVE = "_keepalive"  # marks a queued ping as ours; never sent
_REJOIN = "_rejoin"        # marks a queued join as a rejoin; never sent


class UdpClientCore:
    """The UDP client's state machine: datagrams and time in, actions out. Not thread-safe."""

    def __init__(self, user: str, room: str, *, keepalive_s: float = 15.0,
                 gap_timeout_s: float = 15.0,
                 max_datagram_bytes: int = p.MAX_DATAGRAM_BYTES,
                 stats: RetransmitStats | None = None,
                 random_fraction: Callable[[], float] = random.random) -> None:
        self.user = user
        self.room = room                    # the room we are in, or are joining
        self.keepalive_s = keepalive_s
        self.gap_timeout_s = gap_timeout_s
        self.max_datagram_bytes = max_datagram_bytes
        self.stats = stats if stats is not None else RetransmitStats()
        self.state = ClientState.JOINING
        self.seqs = RoomSeqs()              # the highest seq seen in each room: since
        self.epoch: object = None           # the server run those seqs belong to
        self.leave_id: int | None = None
        self.heard_from_server = False
        # counters
        self.delivered = 0                  # messages delivered to the application
        self.acks_sent = 0
        self.bad_datagrams = 0              # undecodable, or without a valid n
        self.sessions = 0                   # new sessions the server opened for us
        self.keepalives = 0                 # pings sent because we were idle
        self.rounds = 0                     # requests sent again after a give-up
        self.stale = 0                      # broadcasts of an older session, ignored
        self.forged = 0                     # datagrams without our session id, or far ahead
        self.sid: str | None = None         # our session id, from the welcome
        self._early_ack: dict[str, Any] | None = None   # an ack that came before it
        self._next_id = 1                   # ids are given when a request goes out
        self._queue: collections.deque[dict[str, Any]] = collections.deque()   # its turn next
        self._unacked: dict[int, dict[str, Any]] = {}    # rid -> request: out, not acked
        self._awaiting: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._keepalive_ids: set[int] = set()
        self._pending_join: tuple[int, str] | None = None     # (request id, room): out
        self._join_queued = False           # a join waits at the head of the queue
        self._resend: list[dict[str, Any]] = []               # refused while forgotten
        self.stream = ServerStream(gap_timeout_s, self.stats)
        self._last_sent: float | None = None
        self._last_heard: float | None = None        # when the server's last datagram came
        self._rounds: collections.Counter[int] = collections.Counter()   # rid -> extra rounds
        self._round_began: dict[int, float] = {}     # rid -> when its retries last began
        self._random_fraction = random_fraction      # the back-off's jitter
        self._trying_at: float | None = None  # when to say the first join is unanswered
        self._probe_at: float | None = None   # when to try rejoining a server that is away
        self._probes = 0                      # rejoin tries without an answer so far

    # -- questions ---------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests not acked yet: the one out (or two, with a leave) and those queued."""
        return len(self._unacked) + len(self._queue)

    @property
    def reorder(self) -> ReorderBuffer[dict[str, Any]]:
        """The buffer of the current session's stream."""
        return self.stream.reorder

    def counters(self) -> dict[str, int]:
        """Receive-side counters, summed over every session's stream."""
        return {"delivered": self.delivered, **self.stream.counters(),
                "queued": len(self._queue), "acks_sent": self.acks_sent,
                "bad_datagrams": self.bad_datagrams, "sessions": self.sessions,
                "keepalives": self.keepalives, "rounds": self.rounds, "stale": self.stale,
                "forged": self.forged}

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work: a gap times out, or a keepalive is due."""
        deadlines = (self.stream.reorder.next_deadline(), self._keepalive_deadline(),
                     self._trying_at, self._probe_at)
        return min((t for t in deadlines if t is not None), default=None)

    # -- requests out ----------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        """The first join, which opens the session on the server."""
        self._trying_at = now + TRYING_NOTE_S
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
        return self._submit(cmd.join_request(room, self.user, self.seqs.since(room)), now)

    def leave(self, now: float) -> list[Action]:
        """End the session: the server forgets us when it gets this.

        It goes out at once, past anything queued; what was queued is dropped.
        """
        if self.state is ClientState.LEFT:
            return []
        self.state = ClientState.LEFT
        actions: list[Action] = []
        for rid, request in self._unacked.items():
            if rid not in self._keepalive_ids:
                actions.append(Note(undelivered(rid, request, "may not have been",
                                                      "no ack before leaving")))
        if self._queue:
            plural = "s" if len(self._queue) != 1 else ""
            actions.append(Note(f"{len(self._queue)} request{plural} not sent: leaving"))
            self._queue.clear()
        self.leave_id = self._next_id
        return actions + self._transmit(cmd.leave_request(), now, reply=False)

    def cancel(self, rid: int) -> list[Action]:
        """Forget request ``rid``, which the caller could not send after all."""
        self._forget(rid)
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
        if refuses_entry(obj, self.state is ClientState.JOINING, self._pending_join):
            self.state = ClientState.FAILED
            return [JoinRefused(str(obj.get("code")), str(obj.get("text")))]
        if (self.sid is None and isinstance(obj.get("sid"), str)
                and obj.get("type") != p.MessageType.WELCOME):
            return self._before_welcome(obj)
        if (self.sid is not None and obj.get("sid") != self.sid
                and not opens_session(obj, self.sid, self.state is ClientState.JOINING)):
            self.forged += 1                # forged, or a new session's before its welcome:
            return []                       # not acked, so a real one is sent again
        self.heard_from_server = True
        self._last_heard = now
        self._trying_at = None
        if obj.get("type") == p.MessageType.ACK:
            return self._acked(obj.get("id")) + self._pump(now)
        n = obj.get("n")
        if not is_count(n):
            self.bad_datagrams += 1
            return [Note("ignored a datagram from the server without a valid n")]
        expected = self.stream.reorder.expected
        if expected is not None and n > expected + STREAM_WINDOW:
            self.forged += 1                # would skip the stream far ahead
            return []
        sid = obj.get("sid")
        if obj.get("type") == p.MessageType.WELCOME and isinstance(sid, str):
            known, self.sid = self.sid, sid
            if known is not None and sid != known:   # it answers our old session id
                return [self._ack(n, now)] + self._new_session(n, obj, now) + self._pump(now)
        if self.stream.from_older_session(obj):
            self.stale += 1                 # not acked: its n would ack the new stream's
            return []
        actions: list[Action] = [self._ack(n, now)]
        actions += self._stream(n, obj, now)
        early, self._early_ack = self._early_ack, None
        if early is not None and early.get("sid") == self.sid:
            actions += self._acked(early.get("id"))       # it was ours
        return actions + self._pump(now)    # a rejoin queued while handling it goes now

    def _acked(self, rid: object) -> list[Action]:
        if not is_count(rid):
            self.bad_datagrams += 1
            return []
        if self._forget(rid) is None:
            return []                       # a duplicate ack, or one for a request given up
        return [Acked(rid)]

    def _before_welcome(self, obj: dict[str, Any]) -> list[Action]:
        """A datagram of a session whose welcome we have not had: our new session's,
        overtaking it, or the old session's at our address, if we restarted on the same
        port (``udp_probes``). An ack waits for the welcome to say whose it is; the
        rest is not acked, so that ours comes again and the old one's probe fails."""
        if obj.get("type") == p.MessageType.ACK:
            self._early_ack = obj
        else:
            self.forged += 1
        return []

    def given_up(self, rid: int, now: float) -> list[Action]:
        """The retransmit timer gave up on request ``rid``: the server never acked it.

        If the server was heard from during those retries, it is there and
        the request was unlucky: ``[Transmit]`` the same request, same id,
        once more (at most ``MAX_ROUNDS`` times); it stays the one in flight.
        Otherwise it is given up: the user is told, and the next goes out.
        """
        request = self._unacked.get(rid)
        if request is None:
            return []                       # acked meanwhile
        began = self._round_began.get(rid, now)
        heard = self._last_heard is not None and self._last_heard >= began
        keepalive = rid in self._keepalive_ids
        if (heard and not keepalive and rid != self.leave_id
                and self._rounds[rid] < MAX_ROUNDS):
            self._rounds[rid] += 1
            self._round_began[rid] = now
            self.rounds += 1
            self._last_sent = now
            return [Transmit(rid, self._encode(request))]
        self._forget(rid)
        self._awaiting.pop(rid, None)
        self._keepalive_ids.discard(rid)
        if rid == self.leave_id:
            return []
        if self._pending_join is not None and self._pending_join[0] == rid:
            self._pending_join = None
            if self.state is ClientState.JOINING:
                self.state = ClientState.FAILED
                return [Failed("no answer from the server to our join")]
        if self.state is ClientState.REJOINING and request.get("type") == p.MessageType.JOIN:
            return [Note(f"the server is not answering; trying again in "
                         f"{self._probe_later(now):.1f} s")]
        if keepalive:
            if heard:
                return self._pump(now)
            self.state = ClientState.REJOINING          # it may be back, under a new run
            return [Note(f"the server is not answering (ping {rid} was not acked); "
                         f"rejoining {self.room}")] + self._queue_join(self.room, now)
        actions: list[Action] = [Note(undelivered(rid, request, "was not",
                                                        "the server did not ack it"))]
        return actions + self._pump(now)

    def _probe_later(self, now: float) -> float:
        """Try rejoining after a back-off (the TCP client's); returns the delay."""
        delay = REJOIN_BACKOFF.delay(self._probes, self._random_fraction())
        self._probes += 1
        self._probe_at = now + delay
        return delay

    def handle_timer(self, now: float) -> list[Action]:
        """Skip gaps that timed out; when idle for ``keepalive_s``, ping (or rejoin)."""
        actions = self._release(self.stream.reorder.poll(now), now)
        if self._trying_at is not None and now >= self._trying_at:
            self._trying_at = None
            if self.state is ClientState.JOINING and not self.heard_from_server:
                actions.append(Note("no answer from the server yet; still trying"))
        if self._probe_at is not None and now >= self._probe_at:
            self._probe_at = None
            if self.state is ClientState.REJOINING and not self._joining():
                actions += self._queue_join(self.room, now)
        keepalive = self._keepalive_deadline()
        if keepalive is not None and now >= keepalive:
            self.keepalives += 1
            if self.state is ClientState.REJOINING and not self._joining():
                actions += self._queue_join(self.room, now)   # the last rejoin was lost
            else:
                actions += self._submit(cmd.ping_request(), now, keepalive=True)
        return actions + self._pump(now)

    # -- sending in turn ---------------------------------------------------------------------
    # One request is out at a time, so the server applies them in the order they
    # were made, whatever the network reorders: a person's lines stay in order.
    # The price is TCP's: a lost request holds up the ones behind it.

    def _submit(self, request: dict[str, Any], now: float, *, front: bool = False,
                keepalive: bool = False, rejoin: bool = False,
                pump: bool = True) -> list[Action]:
        size = len(p.encode_datagram({**request, "id": _BIG_ID}))
        if size > self.max_datagram_bytes:
            return [Note(f"not sent: {size} bytes, over the "
                         f"{self.max_datagram_bytes}-byte datagram limit")]
        if len(self._queue) >= MAX_QUEUED:
            return [Note(f"not sent: {MAX_QUEUED} requests already wait their turn")]
        if keepalive:
            request = {**request, _KEEPALIVE: True}
        if rejoin:
            request = {**request, _REJOIN: True}
        if front:
            self._queue.appendleft(request)
        else:
            self._queue.append(request)
        return self._pump(now) if pump else []

    def _pump(self, now: float) -> list[Action]:
        """Send the next queued request if none is out and its turn has come."""
        if self._unacked or not self._queue:
            return []
        if self.state in (ClientState.LEFT, ClientState.FAILED):
            return []
        if self._queue[0].get(_REJOIN) and self.state is ClientState.JOINED:
            self._queue.popleft()           # an earlier join's answer put us back already
            self._join_queued = False
            return self._pump(now)
        is_join = self._queue[0].get("type") == p.MessageType.JOIN
        if self.state is not ClientState.JOINED and not is_join:
            return []                       # held until we are (back) in a room
        request = self._queue.popleft()
        keepalive = bool(request.pop(_KEEPALIVE, False))
        if request.pop(_REJOIN, False):     # since as it is now, not when it was queued
            request = cmd.join_request(self.room, self.user,
                                       self.seqs.since(self.room))
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
        self._round_began[rid] = now
        if reply:
            self._awaiting[rid] = request
            while len(self._awaiting) > MAX_AWAITING:
                self._awaiting.popitem(last=False)
        self._last_sent = now
        return [Transmit(rid, self._encode(request))]

    def _encode(self, request: dict[str, Any]) -> bytes:
        """A request as it goes out: with our session id, once the welcome gave it."""
        if self.sid is None:
            return p.encode_datagram(request)
        return p.encode_datagram({**request, "sid": self.sid})

    def _queue_join(self, room: str, now: float, *, pump: bool = True) -> list[Action]:
        """Join ``room`` before anything else waiting (a first join, or a rejoin)."""
        self._join_queued = True
        request = cmd.join_request(room, self.user, self.seqs.since(room))
        return self._submit(request, now, front=True, pump=pump,
                            rejoin=self.state is ClientState.REJOINING)

    def _forget(self, rid: int) -> dict[str, Any] | None:
        """Stop retransmitting ``rid``; the request, or None if it was not out."""
        self._rounds.pop(rid, None)
        self._round_began.pop(rid, None)
        return self._unacked.pop(rid, None)

    def _joining(self) -> bool:
        return self._pending_join is not None or self._join_queued

    def _keepalive_deadline(self) -> float | None:
        """``keepalive_s`` after the last datagram we sent, while no request is out."""
        if (self.state not in (ClientState.JOINED, ClientState.REJOINING)
                or self._unacked or self._last_sent is None or self._probe_at is not None):
            return None
        return self._last_sent + self.keepalive_s

    # -- the stream ---------------------------------------------------------------------------
    def _ack(self, n: int, now: float) -> SendAck:
        self.acks_sent += 1
        self._last_sent = now
        ack: dict[str, Any] = {"type": p.MessageType.ACK.value, "n": n}
        if self.sid is not None:
            ack["sid"] = self.sid
        return SendAck(n, p.encode_datagram(ack))

    def _stream(self, n: int, message: dict[str, Any], now: float) -> list[Action]:
        expected = self.stream.reorder.expected
        if expected is not None and n < expected:
            if self.stream.starts_new_session(message, self.epoch, self._awaiting):
                return self._new_session(n, message, now)
            self.stream.keep_aside(n, message, self.epoch)
            self.stream.reorder.push(n, message, now)     # counted as a duplicate
            return []
        return self._release(self.stream.reorder.push(n, message, now), now)

    def _new_session(self, n: int, message: dict[str, Any], now: float) -> list[Action]:
        """The server has forgotten us and numbers a new stream; see the module comment."""
        self.sessions += 1
        stash = self.stream.stash
        welcome = message if message.get("type") == p.MessageType.WELCOME else stash.get(1)
        restarted = welcome is not None and welcome.get("epoch") != self.epoch
        actions = self._retire(self.stream.retire(restarted), restarted, now)
        return actions + self._release(self.stream.renew(n, message, now), now)

    def _retire(self, items: list[dict[str, Any] | Gap], restarted: bool,
                now: float) -> list[Action]:
        """What the old stream still holds, after a hole that never filled: from the
        same run, room broadcasts are dropped (``udp_client_stream``: "since"); after
        a restart, everything is delivered and the holes are reported lost."""
        if restarted:
            return self._release(items, now)
        actions: list[Action] = []
        missing = 0
        for item in items:
            if isinstance(item, Gap):
                missing += item.count
            elif is_int(item.get("seq")) and isinstance(item.get("room"), str):
                rid = item.get("id")
                if is_count(rid):
                    self._awaiting.pop(rid, None)   # answered: the request was applied
            else:
                actions += self._handle(item, now)
        if missing:
            plural = "s" if missing != 1 else ""
            actions.insert(0, Note(f"{missing} datagram{plural} of the old session never "
                                   f"came; the room's messages come back with its history"))
        return actions

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
        request = self._awaiting.pop(rid, None) if is_count(rid) else None
        if kind == p.MessageType.WELCOME:
            return self._welcome(message, now)
        if kind == p.MessageType.PING:
            return []                       # the server asks if we are there: acked, not shown
        if request is not None and rid in self._keepalive_ids:
            self._keepalive_ids.discard(rid)
            if kind == p.MessageType.PONG:
                return []                   # our own keepalive: nothing to show
        if request is not None and request.get("type") == p.MessageType.JOIN:
            return self._join_answer(rid, request, message, now)
        if (kind == p.MessageType.ERROR and message.get("code") == p.ErrorCode.NOT_JOINED
                and request is not None
                and self.state in (ClientState.JOINED, ClientState.REJOINING)):
            return self._forgotten(request, now)
        if not self.seqs.is_new(message):
            return []
        self.delivered += 1
        if (kind == p.MessageType.SYSTEM and message.get("event") == p.SystemEvent.SHUTDOWN
                and self.state is ClientState.JOINED):
            return [Show(message)] + self._server_away(now)
        return [Show(message)]

    def _server_away(self, now: float) -> list[Action]:
        """The server said it is stopping: rejoin by ourselves once it may be back."""
        self.state = ClientState.REJOINING
        self._probes = 0
        delay = self._probe_later(now)
        return [Note(f"the server is stopping; rejoining {self.room} when it is back "
                     f"(first try in {delay:.1f} s)")]

    def _welcome(self, message: dict[str, Any], now: float) -> list[Action]:
        self.delivered += 1
        actions: list[Action] = [Show(message)]
        if message.get("protocol") != p.PROTOCOL_VERSION:
            actions.append(Note(f"the server speaks protocol {escape(str(message.get('protocol')))}"
                                f", this client {p.PROTOCOL_VERSION}; expect trouble"))
        epoch = message.get("epoch")
        restarted = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        seq = message.get("seq")
        self.stream.session_seq = seq if is_int(seq) else None
        if self.state not in (ClientState.JOINED, ClientState.REJOINING):
            return actions                  # the first session: our join is already out
        if restarted:
            self.seqs.clear()
            actions.append(Note("the server has restarted; its history starts afresh"))
        self.state = ClientState.REJOINING
        actions.append(Note(f"the server had forgotten us; rejoining {self.room}"))
        # A join still out may yet be answered by the new session (_join_answer);
        # if it was applied by the old one, only the rejoin queued here answers.
        # Not sent yet: an answer to it may come in the same batch (receive sends it).
        self._pending_join = None
        if self._join_queued:
            return actions                  # a join already waits its turn
        return actions + self._queue_join(self.room, now, pump=False)

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

    def _join_answer(self, rid: object, request: dict[str, Any], message: dict[str, Any],
                     now: float) -> list[Action]:
        """``message`` answers our join ``request``: an error, or our join notice.

        Usually the pending join; after a new session, possibly one sent
        before it that the new session applied (the rejoin queued behind it
        is then dropped unsent).
        """
        room = str(request.get("room"))
        if self._pending_join is not None and self._pending_join[0] == rid:
            self._pending_join = None
        if message.get("type") == p.MessageType.ERROR:
            code, text = str(message.get("code")), str(message.get("text"))
            if self.state is ClientState.JOINING:
                self.state = ClientState.FAILED
                return [JoinRefused(code, text)]
            if self.state is ClientState.REJOINING and still_in_room(message):
                # A long outage, but the server kept our session, and with it our room
                # (and the stream of what was said there): nothing to rejoin.
                return self._rejoined([Joined(self.room)], f"still in {self.room}", now)
            if self.state is ClientState.REJOINING:
                self.state = ClientState.FAILED
                return [Show(message), Failed(f"rejoin refused: error {code}: {text}")]
            return [Show(message)]       # a /join refused: we stay where we were
        room_name = message.get("room")
        self.room = room_name if isinstance(room_name, str) else room
        self.seqs.is_new(message)           # record its seq
        self.delivered += 1
        actions: list[Action] = [Joined(self.room), Show(message)]
        if self.state is ClientState.REJOINING:
            return self._rejoined(actions, f"rejoined {self.room}", now)
        self.state = ClientState.JOINED
        self._probes, self._probe_at = 0, None
        return actions + self._pump(now)

    def _rejoined(self, actions: list[Action], note: str, now: float) -> list[Action]:
        """Back in our room after a rejoin: what waited for it goes out first."""
        self.state = ClientState.JOINED
        self._probes, self._probe_at = 0, None
        actions.append(Note(note))
        resend, self._resend = self._resend, []
        if resend:
            plural = "s" if len(resend) != 1 else ""
            actions.append(Note(f"sending {len(resend)} request{plural} again"))
        self._queue.extendleft(reversed(resend))    # first, in their old order
        return actions + self._pump(now)

