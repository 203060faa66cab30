"""UDP sessions: what the server keeps per client, and the defences that guard it.

Theory of operation
-------------------
A UDP client has no connection, so the server keeps one ``Peer`` per client:
a *session*. The first datagram from an address opens one; the server gives
it a random session id (``sid``, ``protocol.SESSION_ID_BYTES`` bytes, as 16
hex digits) and says it in the welcome and in every datagram after it; the
client puts it in every datagram it sends from then on. The id, not the
address, says who is speaking:

- An ack verifies an address (below) only if it carries the session's id:
  the id was in the welcome, so acking blind (guessing ``n=1``, which is
  always the welcome) verifies nothing.
- A verified session's datagram without its id is dropped and counted
  (``bad_sid``): a forged request cannot post as the user, and a forged id
  cannot move the ``DedupWindow`` floor. (A copy of a request already seen
  is still acked: an ack tells nothing and changes nothing.)
- A datagram that names a verified session from another address moves the
  session there (a NAT rebinding, a new socket): its datagrams in flight
  go out again to the new address.
- A datagram naming a session the server does not know (it restarted, or
  dropped the session) opens a new one whose welcome says ``forgot``: the
  old id. Only the server that saw the client's datagram can say it, so the
  client starts its new stream only on such a welcome.

Ids are checked against the window they must fall in: a request id more
than the ``DedupWindow`` size above its floor is refused
(``id_out_of_window``), not applied, so one datagram cannot move the floor
past every later real request; the client drops an ``n`` far beyond the one
it expects.

What the id does not protect: anyone who can read the traffic (on the path,
or on the same Wi-Fi) reads the id too, and can then forge, replay or move
the session. Only cryptography (DTLS) helps against that. The id keeps out
the blind: anyone who can forge a source address but not see the replies.

Anti-amplification and bounds before verification
---------------------------------------------------
- A source address can be forged, so a session is *unverified* until it
  acks, with its id, a datagram we did send it (RFC 9000 section 8). Until
  then it is sent at most ``AMPLIFICATION_FACTOR`` (3) times the bytes
  received from it, retransmissions included; a datagram that does not fit
  waits in ``Peer.held``, in ``n`` order. Its requests wait too, every one
  (ping and leave included), in ``Peer.deferred`` and unacked, so the
  client keeps retransmitting them and every copy raises the budget; once
  verified they apply in id order. So the first answer to a join is the
  welcome alone; a forged address gets at most the welcome and errors,
  within 3x, and no room ever hears of it.
- Rate limit: a token bucket per peer (``guard.TokenBucket``, with
  ``rate_limit_per_s`` and ``rate_burst``). A datagram over the limit is
  dropped, unacked and unanswered: answering a flood would feed it. An ack
  that retires a datagram is free: a busy room means one per datagram.
- Unverified peers count toward ``max_clients``; each is forgotten
  ``unverified_timeout_s`` after its first datagram; a new address takes
  the place of the oldest unverified one when the table is full, so forged
  addresses cannot lock real clients out. Strangers leave no state at all.
- Bounded: a peer holds at most ``MAX_UNACKED`` datagrams unacked (more, and
  it is dropped); the shell's retransmit timer holds ``max_clients`` x
  ``MAX_UNACKED``, so no peer can fill it for the others.

Give-ups, drops and what survives them
--------------------------------------
A give-up is evidence about one datagram, not always about the peer. At 20%
loss each way a round trip fails with p = 0.36, so all seven tries of the
default ``max_retries`` (6) fail about once per 1,300 datagrams, while the
peer goes on acking the others. Dropping it then would cost a rejoin whose
``since`` needs the room's history to cover the absence: 20 broadcasts,
which a busy room says in a second or two, and which never covers a
datagram the client missed twelve seconds (the whole retry span) before.
So:

- ``give_up`` drops the peer only if it is unreachable: it has acked no
  datagram sent after the one given up. If it has (``Peer.highest_acked``),
  it is alive and that datagram was unlucky: it goes out again with the
  same ``n``, a new round of retries, at most ``MAX_ROUNDS`` rounds, then
  the peer is dropped after all. The same ``n`` means no rejoin and no
  history are needed, and the client's ``ReorderBuffer`` delivers it once.
- A verified peer dropped by the timer, or for not acking, leaves a
  *tombstone*: its ``DedupWindow``, for ``client_timeout_s`` after it was
  last heard (at most ``max_clients`` of them). The address's next session
  starts from a copy of it, so a request the old session applied, whose ack
  was lost and which the client sends again into the new one, is acked, not
  applied a second time (it would be refused ``not_joined``, and the client
  would send it again under a new id: a duplicate). A new session that is
  dropped before it is verified (its welcome given up, or expired) puts the
  tombstone back as it found it: its own window also marks the requests it
  deferred and never applied. A new client process on a reused port starts
  with ``id`` 1, and a session opened by id 1 starts a fresh window (a
  client still waiting for its first join must have it applied). A
  ``leave`` leaves one too, marked ``left``: a late copy of a request sent
  before it is acked from it, with no new session (it would be applied
  after the leave). Silence leaves none: it lasted ``client_timeout_s``.

A first join for a name another session holds waits for that session to
answer a probe: ``udp_probes``.

Trade-off: the very first welcome can be raced by an off-path forger who
guesses the moment a client starts (the client takes the first welcome it
gets); a stateless cookie exchange before any state (DTLS
HelloVerifyRequest, QUIC Retry) would close that, at one more round trip.
"""
from __future__ import annotations

import collections
import copy
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import protocol as p
from .guard import TokenBucket
from .receiving import DedupWindow
from .tcp_server_core import clients

from .udp_server_actions import Address as Address
from .udp_server_actions import Key as Key
from .udp_server_actions import Send

if TYPE_CHECKING:
    from .rooms import ChatCore
    from .udp_probes import Probe

MAX_UNACKED = 256                # unacked datagrams one peer may hold before it is dropped
AMPLIFICATION_FACTOR = 3         # bytes out per byte in, to an unverified address (RFC 9000)
MAX_DEFERRED = 8                 # requests an unverified address may have waiting
TELL_EVERY_S = 1.0               # say rate_limited (and log a defence) at most this often
BIG_N = 2**31                    # stands in for n when measuring a datagram's size
ANY_SID = "0" * 2 * p.SESSION_ID_BYTES   # ... and for a session id
BIG_SEQ = 2**53                  # ... and for a seq


def new_session_id() -> str:
    """A random, unguessable session id."""
    return secrets.token_hex(p.SESSION_ID_BYTES)


@dataclass(frozen=True)
class Tombstone:
    """What outlives a dropped session: the ids its requests used (see the module comment)."""

    dedup: DedupWindow
    last_heard: float            # monotonic; kept ``client_timeout_s`` after it
    left: bool = False           # the session ended with a leave


@dataclass(eq=False)
class Peer:
    addr: Address
    sid: str                     # the session id: unguessable, in every datagram both ways
    first_heard: float
    last_heard: float
    dedup: DedupWindow
    bucket: TokenBucket | None
    verified: bool
    next_n: int = 1
    unacked: set[int] = field(default_factory=set)
    sent: dict[int, bytes] = field(default_factory=dict)   # n -> payload, while unacked
    highest_acked: int = 0       # the newest n it acked: it is reachable up to there
    rounds: collections.Counter[int] = field(default_factory=collections.Counter)
    inherited: Tombstone | None = None   # until verified: the old session's, untouched
    forgot: str | None = None    # the session id its first datagram carried, if unknown
    probe: Probe | None = None   # its requests wait, in ``deferred``, on this probe's answer
    # Until verified (see "Anti-amplification"), and while a probe decides its join:
    bytes_in: int = 0
    bytes_out: int = 0
    held: collections.deque[Send] = field(default_factory=collections.deque)
    deferred: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    welcome: bytes = b""         # n=1 as sent: the answer to a retransmitted request
    counted: int = 0             # how many of ``held`` are already counted as waiting
    # Reporting:
    over_limit: int = 0          # datagrams the bucket dropped since the last report
    told: dict[str, float] = field(default_factory=dict)   # what -> when last reported

    def take_token(self, now: float) -> bool:
        """Whether a datagram may be handled now: under the rate limit, or no limit."""
        return self.bucket is None or self.bucket.take(now)

    def due(self, what: str, now: float) -> bool:
        """Whether to report ``what`` now: at most once per ``TELL_EVERY_S`` for each."""
        last = self.told.get(what)
        if last is not None and now - last < TELL_EVERY_S:
            return False
        self.told[what] = now
        return True

    def stamp(self, body: bytes) -> Send:
        """Append this peer's next ``n`` (and its ``sid``) to an encoded object: a
        reliable Send, remembered until acked."""
        n = self.next_n
        self.next_n += 1
        self.unacked.add(n)
        send = Send(self.addr, body[:-1] + b',"sid":"%s","n":%d}' % (self.sid.encode(), n),
                    (self.addr, n))
        self.sent[n] = send.payload               # the timer's bytes, not a copy
        return send

    def first_unsent(self) -> int:
        """The lowest ``n`` not sent yet: every ``n`` below it has gone out."""
        return self.held[0].key[1] if self.held and self.held[0].key else self.next_n

    # -- the anti-amplification budget, while unverified --------------------------------
    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes may go to this peer now."""
        return self.verified or self.bytes_out + size <= AMPLIFICATION_FACTOR * self.bytes_in

    def spend(self, size: int, figures: collections.Counter[str]) -> None:
        """Count ``size`` bytes sent against the budget (and in ``figures``)."""
        if not self.verified:
            self.bytes_out += size
            figures["bytes_out"] += size

    def rewelcome(self, figures: collections.Counter[str]) -> list[Send]:
        """The welcome again, for a retransmitted request, if it was lost and fits."""
        if not self.welcome or 1 not in self.unacked or not self.fits(len(self.welcome)):
            return []                             # not sent yet (held), acked, or too big
        self.spend(len(self.welcome), figures)
        return [Send(self.addr, self.welcome)]

    def release(self, figures: collections.Counter[str]) -> list[Send]:
        """The held datagrams that now fit, in ``n`` order, spent; ``figures`` counts
        the ones that newly wait (``held``)."""
        released: list[Send] = []
        while self.held and self.fits(len(self.held[0].payload)):
            send = self.held.popleft()
            self.counted = max(0, self.counted - 1)
            if send.key is not None and send.key[1] == 1:
                self.welcome = send.payload
            self.spend(len(send.payload), figures)
            released.append(send)
        figures["held"] += len(self.held) - self.counted
        self.counted = len(self.held)
        return released


def defer(peer: Peer, rid: int, obj: dict[str, Any]) -> Literal["again", "ack", "full",
                                                                "waits"]:
    """Keep a request in ``peer.deferred``, to apply later in id order: ``waits``.

    ``again``: a retransmission of one that waits; ``ack``: one already
    applied (by the session whose ids it inherited, or before a probe);
    ``full``: ``MAX_DEFERRED`` already wait, and it is not marked seen.
    """
    if any(deferred_id == rid for deferred_id, _ in peer.deferred):
        return "again"
    if peer.dedup.has(rid):
        return "ack"
    if len(peer.deferred) >= MAX_DEFERRED:
        return "full"
    peer.dedup.seen(rid)
    peer.deferred.append((rid, obj))
    return "waits"


def copy_window(window: DedupWindow) -> DedupWindow:
    """A copy of ``window`` that still counts into the same stats."""
    return copy.deepcopy(window, {id(window.stats): window.stats})


def datagram_id(obj: dict[str, Any]) -> int:
    """The ``id`` every client datagram but an ack must carry: a positive integer."""
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 < rid < 2**53:
        raise p.ProtocolError(p.ErrorCode.BAD_MESSAGE,
                              "id: every datagram needs an integer id from 1 up",
                              field="id")
    return rid


def session_id(obj: dict[str, Any]) -> str | None:
    """The ``sid`` a client datagram carries, if it is one we could have made."""
    sid = obj.get("sid")
    if isinstance(sid, str) and len(sid) == 2 * p.SESSION_ID_BYTES:
        return sid
    return None


def fit(message: dict[str, Any], limit: int) -> dict[str, Any]:
    """Cut a ``rooms`` or ``who`` list until the reply fits one datagram."""
    key = {"rooms": "rooms", "who": "users"}.get(message.get("type", ""))
    if key is None:
        return message
    items = list(message[key])
    left_out = 0
    while items and len(p.encode_datagram({**message, key: items, "more": left_out,
                                           "sid": ANY_SID, "n": BIG_N})) > limit:
        items.pop()
        left_out += 1
    if not left_out:
        return message
    return {**message, key: items, "more": left_out}


def server_full(addr: Address, data: bytes, rid: int, max_clients: int,
                anti_amplification: bool) -> list[Send]:
    """Refuse a new address, once, unreliably, and never with more bytes than 3x its own."""
    payload = p.encode_datagram(p.error(p.ErrorCode.SERVER_FULL,
                                        f"server full: {clients(max_clients)}", id=rid))
    if anti_amplification and len(payload) > AMPLIFICATION_FACTOR * len(data):
        return []
    return [Send(addr, payload)]


def check_fits(core: ChatCore, sid: str, request: p.Request, wall: float, limit: int) -> None:
    """Refuse a message or whisper whose delivery would not fit in one datagram."""
    user = core.members[sid].user or ""
    if isinstance(request, p.Message):
        room = core.members[sid].room
        biggest = p.chat_message(room.name if room else "", user, request.text,
                                 BIG_SEQ, wall)
    elif isinstance(request, p.Whisper):
        # The delivery carries the target's own spelling, which may be longer
        # in bytes than the one typed ('ẞ' and 'ß' are the same name).
        target = core.user_named(request.to) or request.to
        biggest = p.whisper(user, target, request.text, wall)
    else:
        return
    size = len(p.encode_datagram({**biggest, "history": True, "id": request.id,
                                  "sid": ANY_SID, "n": BIG_N}))
    if size > limit:
        raise p.ProtocolError(p.ErrorCode.DATAGRAM_TOO_LARGE,
                              f"text: its delivery would take {size} bytes, over the "
                              f"{limit}-byte datagram limit",
                              field="text", id=request.id)
