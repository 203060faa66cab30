"""Recovery after give-ups over UDP: what each side does when retries run out.

At 20% loss each way a round trip fails with p = 0.36, so the default
``max_retries`` (6: seven tries) gives up about once per 1,300 datagrams, and
a 3 x 100 chat sends about 1,200. ``python -m chat_sync.bench udp`` lost or
reordered messages in 2 runs of 9. The causes, each pinned below with the
datagrams that showed it (no sockets, a fake clock):

1. Client, a new session: what the old stream held after a hole was
   delivered, so ``since`` moved past the hole and the rejoin never asked
   for it (a message missing, "1 message lost").
2. Client, the stash: an old duplicate of a low ``n``, kept aside for ever,
   stood in for the new session's datagram with that ``n``; the real one
   (a ``not_joined``) was dropped as a duplicate, a second "new session"
   started, and the refused message went out again much later, after the
   lines that followed it (two lines in the wrong order at every client).
3. Client, give-up: a request whose retries ran out while the server was
   answering was dropped and called "not delivered"; the server never had
   it (a message missing), or had applied it (a false alarm).
4. Server, the drop: the client's retransmission of a request the old
   session had applied opened the new session with an empty ``DedupWindow``,
   was applied again as refused (``not_joined``), and the client sent it
   again under a new id (a duplicate at every client).
5. Server, the give-up: a peer that was acking every other datagram was
   dropped for one unlucky datagram; it found out only at its next request,
   and an idle one not at all (messages missing, silently), and the history
   (20 broadcasts) could not cover the absence ("history_gap").

Then live: three clients through a seeded 20%-loss relay with the default
retries, exactly once and in order; and a client cut off until the server
drops it, whose message in flight is applied once.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_sync import udp_server_core
from chat_sync import protocol as p
from chat_sync.config import UdpClientConfig
from chat_sync.udp_server_core import Address, Send, UdpChat
from chat_sync.faultrelay import (Action, Direction, FaultDecider, FaultPlan, FaultRelay,
                                  FaultSchedule)
from chat_sync.rooms import ChatCore
from chat_sync.serving import ServerHandle
from chat_sync.udp_client import ClientEvent, Notice, Received, UdpChatClient
from chat_sync.udp_server import serve
from chat_sync.udp_client_actions import (Acked, ClientState, Show, Note, SendAck,
                                          Transmit)
from chat_sync.udp_client_core import MAX_ROUNDS, UdpClientCore

EPOCH = "0000aaaa"
WALL = 1_700_000_000.0
ALICE: Address = ("127.0.0.1", 40001)
BOB: Address = ("127.0.0.1", 40002)


# == The client core, no sockets ==========================================================

def datagram(n: int, **fields: Any) -> bytes:
    return json.dumps({**fields, "n": n}).encode("utf-8")


def welcome(n: int = 1, seq: int = 0) -> bytes:
    return datagram(n, type="welcome", server="chat_sync", version="0.1.0", protocol=1,
                    seq=seq, epoch=EPOCH)


def chat(n: int, text: str, seq: int, user: str = "bob", **extra: Any) -> bytes:
    return datagram(n, type="message", room="lobby", user=user, text=text, seq=seq, ts=1.0,
                    **extra)


def joined(n: int, seq: int, rid: int, room: str = "lobby") -> bytes:
    """Our own join notice: the answer to join ``rid``."""
    return datagram(n, type="system", room=room, event="join", user="alice",
                    text="alice joined", seq=seq, ts=1.0, id=rid)


def not_joined(n: int, rid: int) -> bytes:
    return datagram(n, type="error", code="not_joined", text="join a room first", id=rid)


def ack(rid: int) -> bytes:
    return b'{"type":"ack","id":%d}' % rid


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.payload) for a in actions if isinstance(a, Transmit)]


def texts(actions: list[Any]) -> list[str]:
    """What the actions deliver: each message's text, or its type if it has none."""
    return [str(a.message.get("text", a.message.get("type")))
            for a in actions if isinstance(a, Show)]


def notes(actions: list[Any]) -> list[str]:
    return [a.text for a in actions if isinstance(a, Note)]


def joined_core() -> UdpClientCore:
    """Alice in lobby: stream at n=3, last seq 1, her session's welcome at seq 0."""
    core = UdpClientCore("alice", "lobby", keepalive_s=10.0, gap_timeout_s=5.0)
    core.start(0.0)
    core.receive(ack(1), 0.0)
    core.receive(welcome(), 0.0)
    core.receive(joined(2, 1, rid=1), 0.0)
    assert core.state is ClientState.JOINED
    return core


def message(text: str) -> dict[str, Any]:
    return {"type": "message", "text": text}


@pytest.mark.timeout(10)
def test_cause_1_a_hole_in_the_old_stream_is_not_skipped_so_since_still_covers_it() -> None:
    core = joined_core()
    core.receive(chat(3, "one", 2), 1.0)
    assert core.receive(chat(5, "three", 4), 1.0) == [SendAck(5, b'{"type":"ack","n":5}')]
    [mine] = sent(core.request(message("mine"), 2.0))           # "two" (n=4) never came
    # The server gave up on n=4 and forgot us; "mine" opened a new session.
    core.receive(ack(2), 2.0)
    assert texts(core.receive(welcome(seq=9), 2.0)) == []       # kept aside
    actions = core.receive(not_joined(2, rid=2), 2.0)
    assert texts(actions) == ["welcome"]                         # and not "three"
    assert notes(actions) == [
        ("1 datagram of the old session never came; the room's messages come back with "
         "its history"), "the server had forgotten us; rejoining lobby"]
    assert sent(actions) == [{"type": "join", "room": "lobby", "user": "alice", "since": 2,
                              "id": 3}]                          # since 2, not 4
    assert core.counters()["lost"] == 0
    core.receive(ack(3), 2.1)
    back = (core.receive(chat(3, "two", 3, history=True), 2.1)
            + core.receive(chat(4, "three", 4, history=True), 2.1)
            + core.receive(joined(5, 10, rid=3), 2.1))
    assert texts(back) == ["two", "three", "alice joined"]
    assert sent(back) == [{**mine, "id": 4}]


@pytest.mark.timeout(10)
def test_cause_2_an_old_duplicate_cannot_stand_in_for_the_new_sessions_datagram() -> None:
    core = joined_core()
    for n in range(3, 7):
        core.receive(chat(n, f"bob {n}", n - 1), 0.5)   # the stream is at n=7, last seq 5
    core.receive(joined(2, 1, rid=1), 0.5)             # a late copy of n=2: a duplicate
    [first] = sent(core.request(message("first"), 1.0))
    assert core.request(message("second"), 1.0) == []   # waits its turn
    # The server forgot us: "first" opens a new session, then "second"; both refused.
    core.receive(welcome(seq=9), 1.1)
    [second] = sent(core.receive(ack(2), 1.1))
    core.receive(ack(3), 1.1)
    overtaken = core.receive(not_joined(3, rid=3), 1.2)     # second's refusal comes first
    assert notes(overtaken) == ["the server had forgotten us; rejoining lobby"]
    [rejoin] = sent(overtaken)
    assert rejoin["since"] == 5 and core.sessions == 1
    assert core.receive(not_joined(2, rid=2), 1.2) == [SendAck(2, b'{"type":"ack","n":2}')]
    assert core.sessions == 1                          # n=2 was the new stream's, not a 3rd
    core.receive(ack(rejoin["id"]), 1.3)
    back = core.receive(joined(4, 10, rid=rejoin["id"]), 1.3)
    assert notes(back) == ["rejoined lobby", "sending 2 requests again"]
    again = sent(back)
    again += sent(core.receive(ack(again[0]["id"]), 1.4))
    assert [(r["text"], r["id"]) for r in again] == [("first", 5), ("second", 6)]
    assert first["id"] < second["id"]


@pytest.mark.timeout(10)
def test_cause_1b_a_late_broadcast_of_the_forgotten_session_is_ignored_and_not_acked() -> None:
    core = joined_core()
    core.request(message("mine"), 1.0)
    core.receive(ack(2), 1.0)
    core.receive(welcome(seq=9), 1.0)
    core.receive(not_joined(2, rid=2), 1.0)                 # the new session: seq 9 on
    # A copy the old session sent just before it forgot us, overtaken on the way:
    assert core.receive(chat(3, "old", 8), 1.1) == []       # no ack: n=3 is not its own
    assert core.counters()["stale"] == 1
    core.receive(ack(3), 1.1)
    back = core.receive(chat(3, "old", 8, history=True), 1.2) + core.receive(
        joined(4, 10, rid=3), 1.2)
    assert texts(back) == ["old", "alice joined"]


@pytest.mark.timeout(10)
def test_cause_3_a_request_out_of_retries_while_the_server_answers_goes_again() -> None:
    core = joined_core()
    [transmit] = core.request(message("first"), 1.0)
    assert isinstance(transmit, Transmit)
    assert core.request(message("second"), 1.0) == []
    for round_ in range(MAX_ROUNDS):
        core.receive(chat(3 + round_, f"bob {round_}", 2 + round_), 2.0 + 4 * round_)
        again = core.given_up(2, 5.0 + 4 * round_)     # the server was heard meanwhile
        assert again == [Transmit(2, transmit.payload)]  # same id: its dedup applies it once
        assert core.in_flight == 2                     # still the one out; "second" waits
    core.receive(chat(3 + MAX_ROUNDS, "bob last", 2 + MAX_ROUNDS), 20.0)
    final = core.given_up(2, 21.0)                     # a bound, even while answered
    assert notes(final) == ["message 2 was not delivered: 'first' (the server did not ack it)"]
    assert [r["text"] for r in sent(final)] == ["second"]
    # Silence during a round: the server is unreachable; told at once.
    core.receive(ack(3), 22.0)
    [third] = sent(core.request(message("third"), 23.0))
    assert notes(core.given_up(third["id"], 30.0)) == [
        f"message {third['id']} was not delivered: 'third' (the server did not ack it)"]
    assert core.counters()["rounds"] == MAX_ROUNDS


@pytest.mark.timeout(10)
def test_a_join_the_new_session_answers_ends_the_rejoin_and_the_queued_one_is_dropped(
        ) -> None:
    core = joined_core()
    [switch] = sent(core.join("dev", 1.0))
    # The server forgot us; the join's retransmission opened a new session, which
    # applied it: its answer comes in the new stream, with the welcome before it.
    core.receive(welcome(seq=9), 1.1)
    assert core.receive(ack(switch["id"]), 1.1) == [Acked(switch["id"])]
    actions = core.receive(joined(2, 10, rid=switch["id"], room="dev"), 1.2)
    assert notes(actions) == ["the server had forgotten us; rejoining lobby", "rejoined dev"]
    assert sent(actions) == []                         # no second join: it would move us back
    assert core.state is ClientState.JOINED and core.room == "dev"


# == The server core, no sockets ============================================================

class Net:
    """One UdpChat and a fake clock; ``join`` acks the welcome, as a real client does."""

    def __init__(self) -> None:
        self.chat = UdpChat(ChatCore(p.Limits(), history_size=20, epoch="e"))
        self.now = 100.0

    def sid(self, addr: Address) -> str | None:
        peer = self.chat.peers.get(addr)
        return None if peer is None else peer.sid

    def send(self, addr: Address, **fields: Any) -> list[udp_server_core.Action]:
        """A request, with the session id of the peer at ``addr`` if there is one."""
        if self.sid(addr) is not None:
            fields.setdefault("sid", self.sid(addr))
        return self.chat.receive(addr, json.dumps(fields).encode("utf-8"), self.now,
                                 WALL + self.now)

    def ack(self, addr: Address, n: int) -> list[udp_server_core.Action]:
        ack = {"type": "ack", "n": n, "sid": self.sid(addr)}
        return self.chat.receive(addr, json.dumps(ack).encode(), self.now, WALL)

    def join(self, addr: Address, user: str, rid: int = 1) -> None:
        for action in self.send(addr, type="join", room="lobby", user=user, id=rid) \
                + self.ack(addr, 1):
            self.ack_send(action)

    def ack_send(self, action: udp_server_core.Action) -> None:
        if isinstance(action, Send) and action.key is not None:
            self.ack(*action.key)


def to(addr: Address, actions: list[udp_server_core.Action]) -> list[dict[str, Any]]:
    """What ``actions`` send to ``addr``, decoded, without the session id."""
    return [{k: v for k, v in p.decode(a.payload).items() if k != "sid"}
            for a in actions if isinstance(a, Send) and a.addr == addr]


def keyed(addr: Address, actions: list[udp_server_core.Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and a.addr == addr and a.key is not None]


def joined_pair() -> Net:
    net = Net()
    net.join(ALICE, "alice")
    net.join(BOB, "bob")
    for n in sorted(net.chat.peers[ALICE].unacked):      # bob's join notice
        net.ack(ALICE, n)
    return net


@pytest.mark.timeout(10)
def test_cause_5_a_give_up_on_a_peer_that_acks_later_datagrams_sends_it_again() -> None:
    net = joined_pair()
    [unlucky] = keyed(ALICE, net.send(BOB, type="message", text="unlucky", id=2))
    [later] = keyed(ALICE, net.send(BOB, type="message", text="later", id=3))
    assert later.key is not None and unlucky.key is not None
    net.ack(*later.key)                                 # alice is there
    for _ in range(udp_server_core.MAX_ROUNDS):
        assert net.chat.give_up(unlucky.key, WALL) == [unlucky]   # same n, same bytes
        assert ALICE in net.chat.peers
    dropped = net.chat.give_up(unlucky.key, WALL)       # a bound, even so
    assert ALICE not in net.chat.peers
    assert [m["event"] for m in to(BOB, dropped)] == ["leave"]


@pytest.mark.timeout(10)
def test_cause_4_the_dedup_window_outlives_a_drop_so_a_late_copy_is_not_applied_again(
        ) -> None:
    net = joined_pair()
    applied = net.send(ALICE, type="message", text="once", id=2)   # its ack is lost
    [own] = keyed(ALICE, applied)
    assert own.key is not None and [m["text"] for m in to(BOB, applied)] == ["once"]
    net.chat.give_up(own.key, WALL)                    # alice acked nothing newer: dropped
    assert ALICE not in net.chat.peers
    seq = net.chat.core.seq                            # bob heard that alice left
    again = net.send(ALICE, type="message", text="once", id=2)     # its retransmission
    assert {"type": "ack", "id": 2} in to(ALICE, again)            # acked, even unverified
    verified = net.ack(ALICE, 1) + net.ack(ALICE, 1)   # the new session's welcome: its
    assert [m["type"] for m in to(ALICE, verified)] == ["welcome"]   # bytes let it go
    assert net.chat.peers[ALICE].verified and net.chat.core.seq == seq  # not applied again
    refused = net.send(ALICE, type="message", text="new", id=3)
    assert [(m.get("code"), m.get("id")) for m in to(ALICE, refused)][1:] == [
        ("not_joined", 3)]                              # a request it never had: refused


@pytest.mark.timeout(10)
def test_cause_4b_a_new_session_dropped_before_it_is_verified_puts_the_tombstone_back(
        ) -> None:
    net = joined_pair()
    [own] = keyed(ALICE, net.send(ALICE, type="message", text="once", id=2))
    assert own.key is not None
    net.chat.give_up(own.key, WALL)
    seq = net.chat.core.seq
    # Alice's link is still down: her retransmission opens a session whose welcome
    # never reaches her, and which is given up in turn, unverified.
    [welcome_] = keyed(ALICE, net.send(ALICE, type="message", text="once", id=2)
                       + net.send(ALICE, type="message", text="once", id=2))   # 2 pay for it
    assert welcome_.key is not None
    net.send(ALICE, type="message", text="twice?", id=3)          # deferred, never applied
    net.chat.give_up(welcome_.key, WALL)
    assert ALICE not in net.chat.peers
    # The link is back: the next copy opens a third session, which still knows id 2.
    again = net.send(ALICE, type="message", text="once", id=2)
    assert {"type": "ack", "id": 2} in to(ALICE, again)
    assert net.chat.core.seq == seq
    later = net.send(ALICE, type="message", text="twice?", id=3)   # but not id 3
    assert {"type": "ack", "id": 3} not in to(ALICE, later)        # deferred: unverified
    verified = net.ack(ALICE, 1)
    assert [(m["type"], m.get("code"), m["id"]) for m in to(ALICE, verified)] == [
        ("ack", None, 3), ("error", "not_joined", 3)]  # applied now: it never was


@pytest.mark.timeout(10)
def test_a_session_opened_by_id_1_starts_a_fresh_window_and_a_leave_only_acks_late_copies(
        ) -> None:
    net = joined_pair()
    [own] = keyed(ALICE, net.send(ALICE, type="message", text="hi", id=2))
    assert own.key is not None
    net.chat.give_up(own.key, WALL)
    net.join(ALICE, "alice2")                          # a new process on the same port
    assert net.chat.core.members[net.chat.peers[ALICE].sid].room is not None
    assert ALICE not in net.chat.tombstones
    net.send(ALICE, type="leave", id=2)
    assert ALICE not in net.chat.peers and net.chat.tombstones[ALICE].left
    assert to(ALICE, net.send(ALICE, type="leave", id=2)) == [{"type": "ack", "id": 2}]
    assert ALICE not in net.chat.peers                 # a late copy: acked, no session
    net.now += 1000.0
    net.chat.expire(net.now, WALL)
    assert not net.chat.tombstones


# == Live: real sockets through the seeded relay ==============================================

# The defaults' shape (max_retries 6: seven tries), ten times faster, so a run is short.
TIMING = {"base_delay": 0.02, "max_delay": 0.2, "min_rto": 0.02, "max_retries": 6}
WAIT = 10.0


class Cuttable(FaultSchedule):
    """A seeded schedule that also drops every datagram to the clients in ``cut``."""

    def __init__(self, decider: FaultDecider) -> None:
        super().__init__(decider)
        self.cut: set[tuple[str, int]] = set()

    def receive(self, direction: Direction, flow: tuple[str, int], datagram: bytes,
                now: float) -> None:
        if direction is Direction.DOWNSTREAM and flow in self.cut:
            self.received[direction] += 1
            self._record(now, direction, Action.DROP, len(datagram))
            return
        super().receive(direction, flow, datagram, now)


class Chat:
    """A server, a relay and clients whose events are recorded as they come."""

    def __init__(self, plan: FaultPlan, seed: int) -> None:
        self.server: ServerHandle = serve(port=0, shutdown_grace_s=0.3, **TIMING)
        self.relay = FaultRelay((self.server.host, self.server.port))
        self.schedule = Cuttable(FaultDecider(plan, plan, seed))
        self.relay.schedule = self.schedule            # before start(): then the relay's
        self.relay.start()
        self.clients: list[UdpChatClient] = []
        self.events: dict[str, list[ClientEvent]] = {}
        self.changed = threading.Condition()

    def connect(self, user: str, **overrides: Any) -> UdpChatClient:
        self.events[user] = []

        def record(event: ClientEvent) -> None:
            with self.changed:
                self.events[user].append(event)
                self.changed.notify_all()

        config = UdpClientConfig(**{"host": self.relay.address[0],
                                    "port": self.relay.address[1], "user": user,
                                    "keepalive_s": 30.0, **TIMING, **overrides})
        client = UdpChatClient(config, on_event=record)
        self.clients.append(client)
        client.connect(WAIT)
        return client

    def messages(self, user: str) -> list[dict[str, Any]]:
        with self.changed:
            return [e.message for e in self.events[user] if isinstance(e, Received)
                    and e.message.get("type") == "message"]

    def notices(self, user: str) -> list[str]:
        with self.changed:
            return [e.text for e in self.events[user] if isinstance(e, Notice)]

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), "timed out"

    def close(self) -> None:
        closers = [threading.Thread(target=client.close) for client in self.clients]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()
        self.relay.stop()
        self.server.stop()


@pytest.fixture
def make_chat() -> Iterator[Callable[[FaultPlan, int], Chat]]:
    made: list[Chat] = []

    def make(plan: FaultPlan, seed: int) -> Chat:
        made.append(Chat(plan, seed))
        return made[-1]

    yield make
    for chat_ in made:
        chat_.close()


def check_exactly_once(chat_: Chat, users: list[str], sent_: dict[str, list[str]]) -> None:
    for user in users:
        got = [(m["user"], m["text"]) for m in chat_.messages(user)]
        copies = Counter(got)
        assert [pair for pair, count in copies.items() if count > 1] == [], user
        for sender in users:
            assert [text for who, text in got if who == sender] == sent_[sender], (user, sender)
        seqs = [m["seq"] for m in chat_.messages(user)]
        assert seqs == sorted(seqs), user
        assert not [text for text in chat_.notices(user)
                    if "not delivered" in text or "lost" in text], user


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_three_clients_100_messages_each_at_20_percent_loss_with_the_default_retries(
        seed: int, make_chat: Callable[[FaultPlan, int], Chat]) -> None:
    chat_ = make_chat(FaultPlan(loss=0.2), seed)
    users = ["u0", "u1", "u2"]
    # A client the server dropped with nothing more to send would only find out at
    # its keepalive: 1 s here (15 s by default, which the bench waits out).
    clients = [chat_.connect(user, keepalive_s=1.0) for user in users]
    seq_before = chat_.server.server.chat.core.seq
    sent_ = {user: [f"{user} says {i}" for i in range(100)] for user in users}

    def send_all(client: UdpChatClient) -> None:
        for text in sent_[client.user]:
            assert client.say(text)
            assert client.wait_sent(7, WAIT)

    threads = [threading.Thread(target=send_all, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    total = len(users) * 100
    chat_.wait(lambda: all(len(chat_.messages(u)) >= total for u in users), WAIT)
    check_exactly_once(chat_, users, sent_)
    assert chat_.server.server.chat.core.seq - seq_before >= total
    broadcasts = [m for m in chat_.messages("u0") if m["seq"] > seq_before]
    assert len(broadcasts) == total                    # none applied twice


@pytest.mark.timeout(20)
def test_a_client_cut_off_until_dropped_comes_back_and_its_message_in_flight_counts_once(
        make_chat: Callable[[FaultPlan, int], Chat]) -> None:
    chat_ = make_chat(FaultPlan(), 1)
    alice = chat_.connect("alice")
    carol = chat_.connect("carol", max_retries=12)     # her request outlasts the server's
    chat_.wait(lambda: any(m.get("event") == "join" and m.get("user") == "carol"
                           for e in chat_.events["alice"] if isinstance(e, Received)
                           for m in [e.message]))
    chat_.schedule.cut.add(carol.address)              # nothing reaches carol
    assert alice.say("while carol is away")
    assert alice.wait_sent(0, WAIT)
    assert carol.say("sent into the cut")              # applied; its ack never comes
    # The server gives up on carol and drops her (her retransmissions may open new
    # sessions meanwhile, given up in turn while the cut lasts).
    chat_.wait(lambda: any(m.get("event") == "leave" and m.get("user") == "carol"
                           for e in chat_.events["alice"] if isinstance(e, Received)
                           for m in [e.message]))
    chat_.schedule.cut.clear()
    assert carol.wait_sent(0, WAIT)                    # acked by the new session: seen
    assert carol.say("back")
    chat_.wait(lambda: [m["text"] for m in chat_.messages("carol")][-1:] == ["back"])
    chat_.wait(lambda: [m["text"] for m in chat_.messages("alice")][-1:] == ["back"])
    expected = ["while carol is away", "sent into the cut", "back"]
    for user in ("alice", "carol"):
        assert [m["text"] for m in chat_.messages(user)] == expected, user
    replayed = [m["text"] for m in chat_.messages("carol") if m.get("history")]
    assert replayed == expected[:2]
    # The new session's welcome names carol's old session id: she rejoins at once,
    # before any request of hers is refused.
    assert chat_.notices("carol")[:2] == ["the server had forgotten us; rejoining lobby",
                                          "rejoined lobby"]
