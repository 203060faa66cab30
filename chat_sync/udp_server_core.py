"""The server side of chat over UDP, with no I/O: presence, dedup, acks, stream numbers.

Theory of operation
-------------------
UDP has no connections, so ``UdpChat`` keeps one ``Peer`` (a session) per
client, found by its source address ``(host, port)`` or by its session id,
and hands the chat itself to the same ``ChatCore`` the TCP server uses, with
the session id as the connection id. Its methods take a datagram (or the
time) and return actions for the shell (``udp_server_actions``): ``Send``,
``Acked``, ``Cancel``, ``Log``, ``Report``.

The timer decides *when* to retransmit, ``resend`` decides *whether*: the
shell passes every retransmission through it, because an unverified address
has a byte budget (below) and retransmissions spend it too.

Rules (the README's UDP section is the spec):

- Every server datagram carries ``sid``, the session id; every client
  datagram carries it too once the welcome has given it (``udp_sessions``).
- Every client datagram but an ``ack`` carries ``id``, increasing per client.
  Each one is acked (``{"type":"ack","id":N,"sid":S}``), a duplicate too, but a
  duplicate is never applied again (``DedupWindow``): a retransmission whose
  ack was lost must not produce a second broadcast.
- Every server datagram but an ``ack`` carries ``n``: this peer's stream
  counter, 1, 2, 3 ... with no holes, so the client can tell loss from the
  gaps that other rooms leave in ``seq``. The client acks ``n``. An ack is
  checked against what was really sent to *that* address: one for an ``n``
  never sent (or not sent yet) is ``unknown_ack``, one for an ``n`` already
  acked is ``duplicate_ack``; both are counted and change nothing.
- A broadcast is encoded once; each member's copy only appends its own ``n``
  to those bytes.
- Nothing is sent to an address that never sent a valid request: a bad
  datagram from an unknown address is dropped and counted. A known peer
  gets a typed error for the same mistake.
- Every datagram fits ``max_datagram_bytes``: a message or whisper whose
  delivery would not fit is refused with ``datagram_too_large``, and long
  ``rooms``/``who`` lists are cut, saying how many were left out.
- Bounded: at most ``max_clients`` peers; a peer with more than
  ``MAX_UNACKED`` datagrams unacked, one that stays silent for
  ``client_timeout_s``, or one the retransmit timer gave up on and that
  acks nothing newer (``udp_sessions``: give-ups) is dropped, and its room
  hears that it left.
  A ``leave`` ends a UDP session: with no connection to close, it is how a
  client says goodbye.
- A first join for a name another session holds waits until that session
  answers a ``ping`` (``Probe``) or stays silent ``probe_timeout_s``: then
  it is dropped and the join applies (``udp_sessions``). So does a first
  join without a session id from the address of a session silent for
  ``RESTART_SILENCE_S``: its client may have restarted on the same port.

Sessions, session ids and the defences against forged addresses and floods
are ``udp_sessions``'s: its module comment is the essay.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, cast

from . import protocol as p
from .guard import TokenBucket
from .receiving import DedupWindow
from .retransmit import RetransmitStats
from .rooms import ChatCore, Output, Reply, deliveries
# The actions, re-exported ("as"): the shell and the tests import them from here.
from .udp_server_actions import DROP_REASONS as DROP_REASONS
from .udp_server_actions import (Acked as Acked, Action as Action, Cancel as Cancel,
                                 Log as Log, Report as Report, Send as Send)
from .udp_sessions import AMPLIFICATION_FACTOR as AMPLIFICATION_FACTOR
from .udp_sessions import MAX_DEFERRED as MAX_DEFERRED
from .udp_sessions import MAX_UNACKED as MAX_UNACKED
from .udp_server_actions import Address as Address
from .udp_server_actions import Key as Key
from .udp_probes import PROBE_TIMEOUT_S, RESTART_SILENCE_S, Probe, Probes, holder_of
from .udp_sessions import (Peer, Tombstone, check_fits, copy_window,
                           datagram_id, defer, fit, new_session_id, server_full,
                           session_id)

MAX_ROUNDS = 3                   # extra rounds of retries for a datagram to a live peer
from .udp_sessions import TELL_EVERY_S as TELL_EVERY_S
DEFAULT_RATE_LIMIT_PER_S = 50.0
DEFAULT_RATE_BURST = 100
DEFAULT_UNVERIFIED_TIMEOUT_S = 5.0


class UdpChat:
    """The UDP server's logic: feed it datagrams and the time, perform what it returns."""

    def __init__(self, core: ChatCore, *, max_datagram_bytes: int = p.MAX_DATAGRAM_BYTES,
                 max_clients: int = p.MAX_CLIENTS, client_timeout_s: float = 60.0,
                 rate_limit_per_s: float = DEFAULT_RATE_LIMIT_PER_S,
                 rate_burst: int = DEFAULT_RATE_BURST, anti_amplification: bool = True,
                 unverified_timeout_s: float = DEFAULT_UNVERIFIED_TIMEOUT_S,
                 probe_timeout_s: float = PROBE_TIMEOUT_S,
                 stats: RetransmitStats | None = None) -> None:
        self.core = core
        if max_datagram_bytes < p.MIN_DATAGRAM_BYTES:
            raise ValueError(f"max_datagram_bytes must be at least {p.MIN_DATAGRAM_BYTES}: "
                             "a join notice must fit")
        self.max_datagram_bytes = max_datagram_bytes
        self.max_clients = max_clients
        self.client_timeout_s = client_timeout_s
        self.rate_limit_per_s = rate_limit_per_s       # 0: no limit
        self.rate_burst = rate_burst
        self.anti_amplification = anti_amplification   # False: every address is trusted
        self.unverified_timeout_s = unverified_timeout_s
        self.stats = stats if stats is not None else RetransmitStats()
        self.peers: collections.OrderedDict[Address, Peer] = collections.OrderedDict()
        self.sessions: dict[str, Peer] = {}   # the same peers by session id (ChatCore's key)
        self.unverified: collections.OrderedDict[Address, Peer] = collections.OrderedDict()
        self.dropped = collections.Counter({reason: 0 for reason in DROP_REASONS})
        # What the amplification limit did, all unverified addresses together: bytes
        # received from and sent to them; datagrams that could not go in the step
        # that made them (held), timer retransmissions not sent (skipped), held
        # datagrams never sent because the address was forgotten (discarded).
        self.amplification = collections.Counter(
            {"bytes_in": 0, "bytes_out": 0, "held": 0, "skipped": 0, "discarded": 0})
        self.tombstones: collections.OrderedDict[Address, Tombstone] = \
            collections.OrderedDict()          # oldest first
        self.rounds = 0                       # datagrams sent again after a give-up
        self._doomed: set[Peer] = set()       # stopped acking: dropped when the step ends
        self._touched: set[Peer] = set()      # unverified, with something new to release
        self.probes = Probes(probe_timeout_s)  # holders asked whether they are still there

    # -- datagrams in ------------------------------------------------------------
    def receive(self, addr: Address, data: bytes, now: float, wall: float) -> list[Action]:
        """Handle one datagram from ``addr``. ``now`` is monotonic, ``wall`` stamps messages."""
        return self._finish(self._receive(addr, data, now, wall), wall)

    def resend(self, key: Key, payload: bytes) -> list[Action]:
        """The timer wants to retransmit ``key``: a ``Send`` if it may, [] if not.

        Not to a dropped peer or for an acked datagram; to an unverified
        address only within its budget (a skipped retransmission is counted;
        the timer tries again later, or gives up).
        """
        peer = self.peers.get(key[0])
        if peer is None or key[1] not in peer.unacked:
            return []
        if peer.fits(len(payload)):
            peer.spend(len(payload), self.amplification)
            return [Send(peer.addr, payload)]
        self.amplification["skipped"] += 1
        return []

    def give_up(self, key: Key, wall: float) -> list[Action]:
        """The retransmit timer gave up on ``key``.

        If the peer has acked a datagram sent after it, it is alive: ``key``
        goes out again (a reliable ``Send``: register it with the timer
        afresh), at most ``MAX_ROUNDS`` times. Otherwise the peer is
        unreachable and dropped; its room hears that it left.
        """
        peer = self.peers.get(key[0])
        n = key[1]
        if peer is None or n not in peer.unacked:
            return []
        payload = peer.sent.get(n)
        if peer.highest_acked > n and peer.rounds[n] < MAX_ROUNDS and payload is not None:
            peer.rounds[n] += 1
            self.rounds += 1
            return [Send(peer.addr, payload, key)]
        return self._finish(self._drop(peer, wall, tombstone=True), wall)

    def expire(self, now: float, wall: float) -> list[Action]:
        """Drop every peer silent for ``client_timeout_s``, and every address still
        unverified ``unverified_timeout_s`` after its first datagram."""
        actions: list[Action] = []
        while self.unverified:
            oldest = next(iter(self.unverified.values()))
            if now - oldest.first_heard < self.unverified_timeout_s:
                break
            actions += self._forget_unverified(oldest, "unverified_timeout", wall)
        while self.peers:
            quietest = next(iter(self.peers.values()))
            if now - quietest.last_heard < self.client_timeout_s:
                break
            actions += self._drop(quietest, wall, tombstone=False)
        self.probes.expire(now)
        while self.tombstones:
            tombstone = next(iter(self.tombstones.values()))
            if now - tombstone.last_heard < self.client_timeout_s:
                break
            self.tombstones.popitem(last=False)
        return self._finish(actions, wall)

    def next_expiry(self) -> float | None:
        """When ``expire`` next has work; None with no peers and no probe out."""
        deadlines = []
        if self.peers:
            deadlines.append(next(iter(self.peers.values())).last_heard + self.client_timeout_s)
        if self.unverified:
            deadlines.append(next(iter(self.unverified.values())).first_heard
                             + self.unverified_timeout_s)
        probe = self.probes.next_deadline()
        return min(deadlines + ([] if probe is None else [probe]), default=None)

    def shutdown(self, wall: float) -> list[Action]:
        """Tell every peer the server is stopping (reliably; within budget if unverified)."""
        return self._finish(self._perform([self.core.shutdown_notice(wall)]), wall)

    # -- the steps -------------------------------------------------------------------
    def _receive(self, addr: Address, data: bytes, now: float, wall: float) -> list[Action]:
        peer = self.peers.get(addr)
        if peer is not None and not peer.verified:
            peer.bytes_in += len(data)            # every byte in raises the budget
            self.amplification["bytes_in"] += len(data)
            self._touched.add(peer)
        # Decoded before the bucket is asked, so that an ack that retires a
        # datagram is never charged (decoding is bounded by the size check).
        try:
            if len(data) > self.max_datagram_bytes:
                raise p.ProtocolError(p.ErrorCode.DATAGRAM_TOO_LARGE,
                                      f"datagram of {len(data)} bytes is over the "
                                      f"{self.max_datagram_bytes}-byte limit")
            obj = p.decode(data)
            moved = self._session_of(addr, obj)
            if moved is not None:
                return self._rebind(moved, addr) + self._receive(addr, data, now, wall)
            if obj.get("type") == p.MessageType.ACK:
                return self._ack(peer, obj, now, wall)
            rid = datagram_id(obj)
        except p.ProtocolError as exc:
            if peer is None:
                self.dropped[exc.code.value] += 1
                return []
            if not peer.take_token(now):
                return self._over_limit(peer, now)
            self._heard(peer, now)
            return self._reply(peer, exc.to_message())
        actions: list[Action] = []
        tombstone = self.tombstones.get(addr) if peer is None else None
        if tombstone is not None and tombstone.left and rid != 1 and tombstone.dedup.has(rid):
            # A late copy of a request the session applied before its leave:
            # acked (never longer than the request), with no new session for it.
            return [Send(addr, p.encode_datagram({"type": p.MessageType.ACK.value, "id": rid}))]
        opened = peer is None                     # this datagram opens the session
        if peer is None:
            if len(self.peers) >= self.max_clients:
                if not self.unverified:
                    self.dropped[p.ErrorCode.SERVER_FULL.value] += 1
                    return list(server_full(addr, data, rid, self.max_clients,
                                            self.anti_amplification))
                oldest = next(iter(self.unverified.values()))
                actions += self._forget_unverified(oldest, "unverified_evicted", wall)
            peer = self._connect(addr, len(data), now, rid)
            peer.forgot = session_id(obj)
            actions += self._perform(self.core.connect(peer.sid))     # the welcome
        elif not peer.take_token(now):
            return self._over_limit(peer, now)
        sids = (peer.sid, peer.forgot or peer.sid)    # ours, or the one it had before us
        if peer.verified and not opened and session_id(obj) not in sids:
            return self._without_session(peer, rid, obj, now)
        self._heard(peer, now)
        if peer.verified:
            self.probes.settle(peer, alive=True)  # a probe it owes is answered
        if not peer.dedup.in_window(rid):
            return actions + self._out_of_window(peer, rid)
        if not peer.verified or peer.probe is not None:
            return actions + self._defer(peer, rid, obj, now)
        if peer.dedup.seen(rid):
            return [self._send_ack(peer, rid)] + actions   # acked again, applied once
        applied = self._apply(peer, rid, obj, wall, now)
        if peer.probe is not None:
            return actions + applied              # it waits, unacked
        return applied[:1] + actions + applied[1:]    # the ack first, then any welcome

    def _connect(self, addr: Address, size: int, now: float, rid: int) -> Peer:
        bucket = (TokenBucket(self.rate_limit_per_s, self.rate_burst, now)
                  if self.rate_limit_per_s > 0 else None)
        # A tombstone's ids carry over, unless id 1 opens the session: a new
        # client process, or one whose first join must be applied afresh.
        tombstone = self.tombstones.pop(addr, None)
        if rid == 1:
            tombstone = None
        # A fresh window starts at the first id: a client forgotten by a restart
        # goes on counting where it was.
        dedup = (copy_window(tombstone.dedup) if tombstone is not None
                 else DedupWindow(stats=self.stats, first=rid))
        sid = new_session_id()
        peer = Peer(addr, sid, now, now, dedup, bucket, verified=not self.anti_amplification)
        if not peer.verified:
            peer.inherited = tombstone
        if bucket is not None:
            bucket.take(now)                      # the datagram that introduced it
        self.peers[addr] = peer
        self.sessions[sid] = peer
        if not peer.verified:
            peer.bytes_in = size
            self.amplification["bytes_in"] += size
            self.unverified[addr] = peer
            self._touched.add(peer)
        return peer

    def _heard(self, peer: Peer, now: float) -> None:
        peer.last_heard = now
        self.peers.move_to_end(peer.addr)      # keeps the dict ordered by silence

    def _over_limit(self, peer: Peer, now: float) -> list[Action]:
        """A datagram the bucket refused: dropped; a verified peer is told, now and then."""
        self.dropped[p.ErrorCode.RATE_LIMITED.value] += 1
        peer.over_limit += 1
        actions = self._report(peer, "rate_limited", now, logging.WARNING,
                               f"rate limited: {peer.over_limit} datagrams dropped (over "
                               f"{self.rate_limit_per_s:g}/s, burst {self.rate_burst})")
        if not actions:
            return []
        peer.over_limit = 0
        if peer.verified:
            actions += self._reply(peer, p.error(
                p.ErrorCode.RATE_LIMITED, f"over {self.rate_limit_per_s:g} datagrams a second "
                f"(burst {self.rate_burst}): some were dropped unanswered"))
        return actions

    def _session_of(self, addr: Address, obj: dict[str, Any]) -> Peer | None:
        """The verified session ``obj`` names, if it now speaks from a new ``addr``."""
        peer = self.sessions.get(session_id(obj) or "")
        if peer is None or peer.addr == addr or not peer.verified or addr in self.peers:
            return None
        return peer

    def _rebind(self, peer: Peer, addr: Address) -> list[Action]:
        """The session's address changed (a NAT rebinding, a new socket): it moves along.

        Its datagrams in flight are resent to the new address under new keys.
        Only the session id proves it is the same client: see the README on
        what that does not protect against.
        """
        old = peer.addr
        self.peers.pop(old, None)
        peer.addr = addr
        self.peers[addr] = peer
        actions: list[Action] = [Report(addr, logging.INFO,
                                        f"session moved from {old[0]}:{old[1]}")]
        unsent = peer.first_unsent()
        for n in sorted(peer.unacked):
            if n < unsent and n in peer.sent:
                actions += [Cancel((old, n)), Send(addr, peer.sent[n], (addr, n))]
        return actions

    def _without_session(self, peer: Peer, rid: int, obj: dict[str, Any],
                         now: float) -> list[Action]:
        """A request from a verified peer's address without its session id: an id it
        used is acked again (that tells and changes nothing); others may be forged.

        A first join with no session id at all, once the session has been silent
        ``RESTART_SILENCE_S``, may be its client restarted on the same address and
        port: the session is probed, and the join waits unacked (the client sends it
        again) until the probe decides. Answered, it was the session's own late
        copy, and is acked; unanswered, the session is dropped and the next copy
        opens a new one. Forged, it costs the session a ping, once per silence. Every
        copy is counted ``bad_sid``: it is not applied.
        """
        if (rid == 1 and obj.get("type") == p.MessageType.JOIN and session_id(obj) is None
                and now - peer.last_heard >= RESTART_SILENCE_S):
            self.dropped["bad_sid"] += 1
            probe, actions = self._probe_out(peer, now, "a first join without a session id "
                                                       "came from its address")
            probe.own_join = True
            return actions
        if peer.dedup.has(rid):
            return [self._send_ack(peer, rid)]
        self.dropped["bad_sid"] += 1
        return []

    def _out_of_window(self, peer: Peer, rid: int) -> list[Action]:
        """An id too far ahead (forged, or a broken client): acked, refused, not applied."""
        self.dropped["id_out_of_window"] += 1
        return [self._send_ack(peer, rid)] + self._reply(peer, p.error(
            p.ErrorCode.ID_OUT_OF_WINDOW, f"id: {rid} is more than {peer.dedup.size} above "
            f"{peer.dedup.floor}, the highest id with none missing below it", field="id",
            id=rid))

    def _defer(self, peer: Peer, rid: int, obj: dict[str, Any], now: float) -> list[Action]:
        """A request that must wait, unacked: until its address is verified (see
        "Anti-amplification"), or until a probe decides its join (``udp_probes``).
        Every one waits, ping and leave too, so that all apply in id order."""
        outcome = defer(peer, rid, obj)
        if outcome == "ack":
            return [self._send_ack(peer, rid)]    # the old session's: acked, not applied
        if outcome == "again" and not peer.verified:
            return list(peer.rewelcome(self.amplification))   # the welcome may be lost
        if outcome == "full":
            self.dropped["deferred_full"] += 1    # not marked seen: it may come again
            return self._report(peer, "deferred_full", now, logging.INFO,
                                f"{MAX_DEFERRED} requests already wait for "
                                f"{'a probe' if peer.verified else 'verification'}; "
                                f"dropped one")
        return []

    def _ack(self, peer: Peer | None, obj: dict[str, Any], now: float,
             wall: float) -> list[Action]:
        n = obj.get("n")
        if peer is None or isinstance(n, bool) or not isinstance(n, int):
            self.dropped["bad_ack"] += 1
            return []
        sent = 0 < n < peer.first_unsent()
        if sent and session_id(obj) != peer.sid:
            self.dropped["bad_sid"] += 1          # blind, forged or stale: proves nothing
            return []
        if n in peer.unacked and sent:
            # Retires a datagram: free of the rate limit (a busy room means many).
            self._heard(peer, now)
            peer.unacked.discard(n)
            peer.sent.pop(n, None)
            peer.rounds.pop(n, None)
            peer.highest_acked = max(peer.highest_acked, n)
            self.probes.settle(peer, alive=True)
            actions: list[Action] = [Acked((peer.addr, n))]
            if not peer.verified:
                actions += self._verify(peer, now, wall)
            return actions
        if not peer.take_token(now):
            return self._over_limit(peer, now)
        if sent:
            self.dropped["duplicate_ack"] += 1    # its first ack came; a sign of life
            self._heard(peer, now)
            self.probes.settle(peer, alive=True)
            peer.highest_acked = max(peer.highest_acked, n)
            return []
        self.dropped["unknown_ack"] += 1          # never sent: proves nothing, changes nothing
        unsent = peer.first_unsent()
        which = f"n=1..{unsent - 1} were" if unsent > 1 else "none was"
        return self._report(peer, "unknown_ack", now, logging.INFO,
                            f"ignored an ack for n={n}: never sent to it ({which})")

    def _verify(self, peer: Peer, now: float, wall: float) -> list[Action]:
        """``peer`` acked a datagram it was sent: release what waited, apply its requests."""
        peer.verified = True
        peer.inherited = None                     # its own window is the one now
        self.unverified.pop(peer.addr, None)
        self._touched.discard(peer)
        actions: list[Action] = list(peer.held)   # now unlimited, still in n order
        peer.held.clear()
        deferred, peer.deferred = sorted(peer.deferred, key=lambda item: item[0]), []
        for rid, obj in deferred:
            if peer.addr not in self.peers:
                break
            actions += self._apply(peer, rid, obj, wall, now)
        return actions

    # -- a name's holder is probed (see udp_probes) ----------------------------------
    def _apply(self, peer: Peer, rid: int, obj: dict[str, Any], wall: float,
               now: float | None) -> list[Action]:
        """Ack and apply a new request of a verified peer, in id order.

        With ``now``, a first join asking for a name another session holds
        waits, unacked, with all after it, until that session answers a probe.
        """
        holder = holder_of(self.core, self.sessions, peer, obj) if now is not None else None
        if peer.probe is None and holder is None:
            return [self._send_ack(peer, rid)] + self._request(peer, obj, wall)
        peer.deferred.append((rid, obj))          # unacked: the client sends it again
        if peer.probe is not None or holder is None or now is None:
            return []
        return self._probe(holder, peer, now)

    def _probe(self, holder: Peer, peer: Peer, now: float) -> list[Action]:
        """Ask ``holder`` whether it is there; ``peer`` waits on the answer."""
        probe, actions = self._probe_out(holder, now, f"{peer.addr[0]}:{peer.addr[1]} asks "
                                                      f"for its name")
        self.probes.wait(probe, peer)
        return actions

    def _probe_out(self, holder: Peer, now: float, why: str) -> tuple[Probe, list[Action]]:
        """The probe out to ``holder``: the one already out, or a new ``ping``, reliable."""
        probe = self.probes.out.get(holder.sid)
        if probe is not None:
            return probe, []
        actions = self._stamp(holder, p.encode_datagram({"type": p.MessageType.PING.value}))
        probe = self.probes.start(holder, holder.next_n - 1 if actions else 0, now)
        return probe, actions + [Report(holder.addr, logging.INFO, f"probed: {why}")]

    def _settle(self, probe: Probe, wall: float) -> list[Action]:
        """The holder answered (the waiting joins get ``name_taken``), or did not: it
        is dropped, its room hears it leave, and the joins apply."""
        holder = probe.holder
        self.probes.close(probe)
        actions: list[Action] = []
        if not probe.alive and self.sessions.get(holder.sid) is holder:
            self.dropped["probe_unanswered"] += 1
            actions.append(Report(holder.addr, logging.INFO,
                                  f"dropped: no answer to a probe within "
                                  f"{self.probes.timeout_s:g} s; its name goes to another"))
            actions += self._drop(holder, wall, tombstone=True)
        elif probe.own_join and holder.dedup.has(1) and self.sessions.get(holder.sid) is holder:
            actions.append(self._send_ack(holder, 1))     # a late copy of its first join
        for peer in probe.waiting:
            if peer.probe is not probe or self.sessions.get(peer.sid) is not peer:
                continue
            peer.probe = None
            deferred, peer.deferred = peer.deferred, []
            for rid, obj in deferred:              # probed once: no second probe
                if peer.addr not in self.peers:
                    break
                actions += self._apply(peer, rid, obj, wall, None)
        return actions

    def _send_ack(self, peer: Peer, rid: int) -> Send:
        """The ack of request ``rid``. Never longer than the request, so it always fits."""
        ack = Send(peer.addr, p.encode_datagram({"type": p.MessageType.ACK.value, "id": rid,
                                                 "sid": peer.sid}))
        peer.spend(len(ack.payload), self.amplification)
        return ack

    def _request(self, peer: Peer, obj: dict[str, Any], wall: float) -> list[Action]:
        try:
            request = p.parse_request(obj, self.core.limits)
            if isinstance(request, p.Leave):
                # The peer is forgotten before the notices go out: nothing is sent
                # (and retransmitted) to an address that said goodbye. A leave ends
                # the session even outside a room (say, after a refused first join):
                # otherwise the address would linger until client_timeout_s.
                in_room = self.core.members[peer.sid].room is not None
                outputs = self.core.handle(peer.sid, request, wall) if in_room else []
                # Its window outlives it (a tombstone): a late retransmission of
                # a request sent before the leave is acked, not applied again.
                return self._perform(outputs, drop=peer) + self._drop(
                    peer, wall, tombstone=True, left=True)
            check_fits(self.core, peer.sid, request, wall, self.max_datagram_bytes)
            return self._perform(self.core.handle(peer.sid, request, wall))
        except p.ProtocolError as exc:
            return self._reply(peer, exc.to_message())

    def _forget_unverified(self, peer: Peer, reason: str, wall: float) -> list[Action]:
        self.dropped[reason] += 1
        report = Report(peer.addr, logging.INFO,
                        f"forgotten ({reason}): never acked; received {peer.bytes_in} bytes, "
                        f"sent {peer.bytes_out}, {len(peer.held)} datagrams never sent")
        return [report] + self._drop(peer, wall, tombstone=True)

    def _drop(self, peer: Peer, wall: float, *, tombstone: bool,
              left: bool = False) -> list[Action]:
        """Forget ``peer``. With ``tombstone``, the ids a verified peer's requests
        used outlive it, and an unverified one puts back the tombstone it inherited
        (its own window also marks requests deferred, never applied)."""
        self.peers.pop(peer.addr, None)
        self.sessions.pop(peer.sid, None)
        self.unverified.pop(peer.addr, None)
        self._touched.discard(peer)
        self.probes.settle(peer, alive=False)     # gone: the name is free
        kept = peer.dedup if peer.verified else (
            peer.inherited.dedup if peer.inherited is not None else None)
        if tombstone and kept is not None:
            self.tombstones.pop(peer.addr, None)
            self.tombstones[peer.addr] = Tombstone(kept, peer.last_heard, left)
            while len(self.tombstones) > self.max_clients:
                self.tombstones.popitem(last=False)
        # Stop retransmitting to a forgotten peer. Should the address come back,
        # its new stream starts again at n=1; old datagrams still being resent
        # would pass for the new ones, and the acks for them would cancel them.
        # Held datagrams never reached the timer: they are only counted.
        self.amplification["discarded"] += len(peer.held)
        unsent = peer.first_unsent()
        cancelled: list[Action] = [Cancel((peer.addr, n)) for n in sorted(peer.unacked)
                                   if n < unsent]
        peer.unacked.clear()
        peer.sent.clear()
        peer.held.clear()
        peer.deferred.clear()
        return cancelled + self._perform(self.core.disconnect(peer.sid, wall))

    def _report(self, peer: Peer, what: str, now: float, level: int,
                text: str) -> list[Action]:
        """A ``Report`` about ``peer``, at most once per ``TELL_EVERY_S`` for each ``what``."""
        return [Report(peer.addr, level, text)] if peer.due(what, now) else []

    def _finish(self, actions: list[Action], wall: float) -> list[Action]:
        """End a step: drop the peers that stopped acking (their rooms hear that they
        left), settle the probes answered or given up, then send unverified peers
        what their budgets now allow."""
        while self._doomed or self.probes.settled:
            while self._doomed:
                peer = self._doomed.pop()
                if peer.addr in self.peers:
                    self.dropped["not_acking"] += 1
                    actions += self._drop(peer, wall, tombstone=True)
            while self.probes.settled:
                actions += self._settle(self.probes.settled.pop(0), wall)
        while self._touched:
            actions += self._touched.pop().release(self.amplification)
        return actions

    # -- datagrams out ---------------------------------------------------------------
    def _perform(self, outputs: list[Output], drop: Peer | None = None) -> list[Action]:
        if drop is not None:
            self.peers.pop(drop.addr, None)
            self.sessions.pop(drop.sid, None)
        actions: list[Action] = []
        for output in outputs:
            if isinstance(output, Reply):
                peer = self.sessions.get(cast(str, output.to))
                if peer is not None:
                    actions += self._reply(peer, output.message)
                continue
            body = p.encode_datagram(output.message)       # once, for every member
            for sid, message in deliveries(output):
                peer = self.sessions.get(cast(str, sid))
                if peer is None:
                    continue
                if message is output.message:
                    actions += self._stamp(peer, body)
                else:                                       # the sender's, with its id
                    actions += self._reply(peer, message)
            if output.room is not None:
                message = output.message
                user = message["user"] if message["type"] == p.MessageType.MESSAGE else None
                actions.append(Log(output.room, user, message["text"], message["ts"]))
        return actions

    def _reply(self, peer: Peer, message: dict[str, Any]) -> list[Action]:
        if message.get("type") == p.MessageType.WELCOME:
            # Over UDP the limits that matter are the datagram's, and a refusal
            # names them; without ``limits`` the welcome fits 3x the smallest join.
            message = {key: value for key, value in message.items() if key != "limits"}
            if peer.forgot is not None:
                message["forgot"] = peer.forgot   # proof we saw the session it had
        return self._stamp(peer, p.encode_datagram(fit(message, self.max_datagram_bytes)))

    def _stamp(self, peer: Peer, body: bytes) -> list[Action]:
        """Append this peer's next ``n`` to an encoded object: a reliable Send, or one
        held until an unverified peer's budget allows it."""
        if len(peer.unacked) >= MAX_UNACKED:
            self._doomed.add(peer)   # dropped once the current step is done
            return []
        send = peer.stamp(body)
        if peer.verified:
            return [send]
        peer.held.append(send)                    # _finish sends it when it fits
        self._touched.add(peer)
        return []
