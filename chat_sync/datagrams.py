"""The server side of chat over UDP, with no I/O: presence, dedup, acks, stream numbers.

Theory of operation
-------------------
UDP has no connections, so ``UdpChat`` keeps one ``Peer`` per source
address ``(host, port)`` and hands the chat itself to the same ``ChatCore``
the TCP server uses, with the address as the connection id. Its methods take
a datagram (or the time) and return actions for the shell:

- ``Send(addr, payload, key)``: send ``payload`` to ``addr``. With a ``key``
  it is reliable: register it with the retransmit timer first.
- ``Acked(key)``: the peer acked ``key``; stop retransmitting it.
- ``Cancel(key)``: the peer was dropped; stop retransmitting ``key`` too.
- ``Log(room, user, text, ts)``: a room broadcast for the chat log.

Rules (the README's UDP section is the spec):

- Every client datagram but an ``ack`` carries ``id``, increasing per client.
  Each one is acked (``{"type":"ack","id":N}``), a duplicate too, but a
  duplicate is never applied again (``DedupWindow``): a retransmission whose
  ack was lost must not produce a second broadcast.
- Every server datagram but an ``ack`` carries ``n``: this peer's stream
  counter, 1, 2, 3 ... with no holes, so the client can tell loss from the
  gaps that other rooms leave in ``seq``. The client acks ``n``.
- A broadcast is encoded once; each member's copy only appends its own ``n``
  to those bytes.
- Nothing is sent to an address that never sent a valid request: a bad
  datagram from an unknown address is dropped and counted, so the server
  cannot be used to bounce errors at a forged address. A known peer gets a
  typed error for the same mistake.
- Every datagram fits ``max_datagram_bytes``: a message or whisper whose
  delivery would not fit is refused with ``datagram_too_large``, and long
  ``rooms``/``who`` lists are cut, saying how many were left out.
- Bounded: at most ``max_clients`` peers; a peer with more than
  ``MAX_UNACKED`` datagrams unacked, one that stays silent for
  ``client_timeout_s``, or one the retransmit timer gave up on is dropped,
  and its room hears that it left. A ``leave`` ends a UDP session: with no
  connection to close, it is how a client says goodbye.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Union, cast

from . import protocol as p
from .retransmit import DedupWindow, RetransmitStats
from .rooms import Broadcast, ChatCore, Output, Reply

Address = tuple[str, int]
Key = tuple[Address, int]        # (peer address, n): one reliable server datagram

MAX_UNACKED = 256                # unacked datagrams one peer may hold before it is dropped
_BIG_N = 2**31                   # stands in for n when measuring a datagram's size
_BIG_SEQ = 2**53


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


Action = Union[Send, Acked, Cancel, Log]


@dataclass(eq=False)
class Peer:
    addr: Address
    last_heard: float
    dedup: DedupWindow
    next_n: int = 1
    unacked: set[int] = field(default_factory=set)


class UdpChat:
    """The UDP server's logic: feed it datagrams and the time, perform what it returns."""

    def __init__(self, core: ChatCore, *, max_datagram_bytes: int = p.MAX_DATAGRAM_BYTES,
                 max_clients: int = p.MAX_CLIENTS, client_timeout_s: float = 60.0,
                 stats: RetransmitStats | None = None) -> None:
        self.core = core
        self.max_datagram_bytes = max_datagram_bytes
        self.max_clients = max_clients
        self.client_timeout_s = client_timeout_s
        self.stats = stats if stats is not None else RetransmitStats()
        self.peers: collections.OrderedDict[Address, Peer] = collections.OrderedDict()
        self.dropped: collections.Counter[str] = collections.Counter()   # reason -> datagrams
        self._doomed: set[Peer] = set()

    # -- datagrams in ------------------------------------------------------------
    def receive(self, addr: Address, data: bytes, now: float, wall: float) -> list[Action]:
        """Handle one datagram from ``addr``. ``now`` is monotonic, ``wall`` stamps messages."""
        peer = self.peers.get(addr)
        try:
            if len(data) > self.max_datagram_bytes:
                raise p.ProtocolError(p.ErrorCode.DATAGRAM_TOO_LARGE,
                                      f"datagram of {len(data)} bytes is over the "
                                      f"{self.max_datagram_bytes}-byte limit")
            obj = p.decode(data)
            if obj.get("type") == p.MessageType.ACK:
                return self._ack(peer, obj, now)
            rid = _datagram_id(obj)
        except p.ProtocolError as exc:
            if peer is None:
                self.dropped[exc.code.value] += 1
                return []
            self._heard(peer, now)
            return self._reply(peer, exc.to_message())
        if peer is None:
            if len(self.peers) >= self.max_clients:
                self.dropped[p.ErrorCode.SERVER_FULL.value] += 1
                return [Send(addr, p.encode_datagram(p.error(
                    p.ErrorCode.SERVER_FULL, f"server full: {self.max_clients} clients", id=rid)))]
            peer = self._connect(addr, now)
            actions = [self._send_ack(addr, rid)] + self._perform(self.core.connect(addr))
        else:
            actions = [self._send_ack(addr, rid)]
        self._heard(peer, now)
        if peer.dedup.seen(rid):
            return actions            # acked again, applied once
        return self._reap(actions + self._request(peer, obj, wall), wall)

    def give_up(self, key: Key, wall: float) -> list[Action]:
        """The retransmit timer gave up on ``key``: that peer is unreachable."""
        peer = self.peers.get(key[0])
        if peer is None or key[1] not in peer.unacked:
            return []
        return self._reap(self._drop(peer, wall), wall)

    def expire(self, now: float, wall: float) -> list[Action]:
        """Drop every peer silent for ``client_timeout_s``."""
        actions: list[Action] = []
        while self.peers:
            oldest = next(iter(self.peers.values()))
            if now - oldest.last_heard < self.client_timeout_s:
                break
            actions += self._drop(oldest, wall)
        return self._reap(actions, wall)

    def next_expiry(self) -> float | None:
        """When the quietest peer times out; None with no peers."""
        if not self.peers:
            return None
        return next(iter(self.peers.values())).last_heard + self.client_timeout_s

    def shutdown(self, wall: float) -> list[Action]:
        """Tell every peer the server is stopping (reliably)."""
        return self._reap(self._perform([self.core.shutdown_notice(wall)]), wall)

    # -- the steps -------------------------------------------------------------------
    def _connect(self, addr: Address, now: float) -> Peer:
        peer = Peer(addr, now, DedupWindow(stats=self.stats))
        self.peers[addr] = peer
        return peer

    def _heard(self, peer: Peer, now: float) -> None:
        peer.last_heard = now
        self.peers.move_to_end(peer.addr)      # keeps the dict ordered by silence

    def _ack(self, peer: Peer | None, obj: dict[str, Any], now: float) -> list[Action]:
        n = obj.get("n")
        if peer is None or isinstance(n, bool) or not isinstance(n, int):
            self.dropped["bad_ack"] += 1
            return []
        self._heard(peer, now)
        if n not in peer.unacked:
            return []                          # a duplicate ack, or for a datagram given up
        peer.unacked.discard(n)
        return [Acked((peer.addr, n))]

    def _send_ack(self, addr: Address, rid: int) -> Send:
        return Send(addr, p.encode_datagram({"type": p.MessageType.ACK.value, "id": rid}))

    def _request(self, peer: Peer, obj: dict[str, Any], wall: float) -> list[Action]:
        try:
            request = p.parse_request(obj, self.core.limits)
            if isinstance(request, p.Leave):
                # The peer is forgotten before the notices go out: nothing is sent
                # (and retransmitted) to an address that said goodbye. A leave ends
                # the session even outside a room (say, after a refused first join):
                # otherwise the address would linger until client_timeout_s.
                in_room = self.core.members[peer.addr].room is not None
                outputs = self.core.handle(peer.addr, request, wall) if in_room else []
                return self._perform(outputs, drop=peer) + self._drop(peer, wall)
            self._check_fits(peer, request, wall)
            return self._perform(self.core.handle(peer.addr, request, wall))
        except p.ProtocolError as exc:
            return self._reply(peer, exc.to_message())

    def _check_fits(self, peer: Peer, request: p.Request, wall: float) -> None:
        """Refuse a message or whisper whose delivery would not fit in one datagram."""
        user = self.core.members[peer.addr].user or ""
        if isinstance(request, p.Message):
            room = self.core.members[peer.addr].room
            biggest = p.chat_message(room.name if room else "", user, request.text,
                                     _BIG_SEQ, wall)
        elif isinstance(request, p.Whisper):
            biggest = p.whisper(user, request.to, request.text, wall)
        else:
            return
        size = len(p.encode_datagram({**biggest, "history": True, "id": request.id,
                                      "n": _BIG_N}))
        if size > self.max_datagram_bytes:
            raise p.ProtocolError(p.ErrorCode.DATAGRAM_TOO_LARGE,
                                  f"text: its delivery would take {size} bytes, over the "
                                  f"{self.max_datagram_bytes}-byte datagram limit",
                                  field="text", id=request.id)

    def _drop(self, peer: Peer, wall: float) -> list[Action]:
        self.peers.pop(peer.addr, None)
        # Stop retransmitting to a forgotten peer. Should the address come back,
        # its new stream starts again at n=1; old datagrams still being resent
        # would pass for the new ones, and the acks for them would cancel them.
        cancelled: list[Action] = [Cancel((peer.addr, n)) for n in sorted(peer.unacked)]
        peer.unacked.clear()
        return cancelled + self._perform(self.core.disconnect(peer.addr, wall))

    def _reap(self, actions: list[Action], wall: float) -> list[Action]:
        """Drop the peers that stopped acking; their rooms hear that they left."""
        while self._doomed:
            peer = self._doomed.pop()
            if peer.addr in self.peers:
                self.dropped["not_acking"] += 1
                actions += self._drop(peer, wall)
        return actions

    # -- datagrams out ---------------------------------------------------------------
    def _perform(self, outputs: list[Output], drop: Peer | None = None) -> list[Action]:
        if drop is not None:
            self.peers.pop(drop.addr, None)
        actions: list[Action] = []
        for output in outputs:
            if isinstance(output, Reply):
                peer = self.peers.get(cast(Address, output.to))
                if peer is not None:
                    actions += self._reply(peer, output.message)
                continue
            body = p.encode_datagram(output.message)       # once, for every member
            for addr in output.to:
                peer = self.peers.get(cast(Address, addr))
                if peer is not None:
                    actions += self._stamp(peer, body)
            if output.room is not None:
                message = output.message
                user = message["user"] if message["type"] == p.MessageType.MESSAGE else None
                actions.append(Log(output.room, user, message["text"], message["ts"]))
        return actions

    def _reply(self, peer: Peer, message: dict[str, Any]) -> list[Action]:
        return self._stamp(peer, p.encode_datagram(_fit(message, self.max_datagram_bytes)))

    def _stamp(self, peer: Peer, body: bytes) -> list[Action]:
        """Append this peer's next ``n`` to an encoded object; a reliable Send."""
        if len(peer.unacked) >= MAX_UNACKED:
            self._doomed.add(peer)   # dropped once the current step is done
            return []
        n = peer.next_n
        peer.next_n += 1
        peer.unacked.add(n)
        return [Send(peer.addr, body[:-1] + b',"n":%d}' % n, (peer.addr, n))]


def _datagram_id(obj: dict[str, Any]) -> int:
    """The ``id`` every client datagram but an ack must carry: a positive integer."""
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 < rid < 2**53:
        raise p.ProtocolError(p.ErrorCode.BAD_MESSAGE,
                              "id: every datagram needs an integer id from 1 up",
                              field="id")
    return rid


def _fit(message: dict[str, Any], limit: int) -> dict[str, Any]:
    """Cut a ``rooms`` or ``who`` list until the reply fits one datagram."""
    key = {"rooms": "rooms", "who": "users"}.get(message.get("type", ""))
    if key is None:
        return message
    items = list(message[key])
    left_out = 0
    while items and len(p.encode_datagram({**message, key: items, "more": left_out,
                                           "n": _BIG_N})) > limit:
        items.pop()
        left_out += 1
    if not left_out:
        return message
    return {**message, key: items, "more": left_out}
