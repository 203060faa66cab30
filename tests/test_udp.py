"""The UDP chat end to end: UdpChatClient against the real server, directly and through
FaultRelay; first, the client core's rules with no sockets.

Timing: clients and servers here retransmit after 30 ms, doubling up to 0.3 s,
and give up after 12 tries (about 3 s): at 20% loss each way one round trip
fails with probability 0.36, and 0.36**13 is small enough for 3 x 300
deliveries. Nothing sleeps to synchronise: tests wait for events, queues or
predicates, each with a deadline; the one timed wait is the idle window.

``python -m pytest tests/test_udp.py -k figures -s`` prints the loss figures.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import StreamLines, wait_for

from chat_sync import protocol as p
from chat_sync import udp_client
from chat_sync.config import UdpClientConfig, UdpServerConfig
from chat_sync.faultrelay import (
    Action,
    Direction,
    FaultDecider,
    FaultPlan,
    FaultRelay,
    FaultSchedule,
)
from chat_sync.serving import ServerHandle
from chat_sync.udp_client import (
    Acked,
    ClientEvent,
    ClientState,
    Closed,
    Show,
    JoinError,
    Note,
    Notice,
    Received,
    SendAck,
    Transmit,
    UdpChatClient,
    UdpClientCore,
)
from chat_sync.udp_server import UdpServer, serve

REPO = Path(__file__).resolve().parent.parent
UP, DOWN = Direction.UPSTREAM, Direction.DOWNSTREAM
WAIT = 10.0                      # the longest a test waits for one thing
FAST = {"base_delay": 0.03, "max_delay": 0.3, "min_rto": 0.03, "max_retries": 12}
FASTER = {"base_delay": 0.02, "max_delay": 0.2, "min_rto": 0.02, "max_retries": 12}
LOSS = 0.2


# == The client core, no sockets =========================================================

EPOCH = "0000aaaa"


def datagram(n: int, **fields: Any) -> bytes:
    return json.dumps({**fields, "n": n}).encode("utf-8")


def welcome(n: int = 1, seq: int = 0, epoch: str = EPOCH) -> bytes:
    return datagram(n, type="welcome", server="chat_sync", version="0.1.0", protocol=1,
                    limits={}, seq=seq, epoch=epoch)


def chat(n: int, text: str, seq: int, user: str = "bob", **extra: Any) -> bytes:
    return datagram(n, type="message", room="lobby", user=user, text=text, seq=seq, ts=1.0,
                    **extra)


def notice(n: int, event: str, user: str, seq: int, **extra: Any) -> bytes:
    return datagram(n, type="system", room="lobby", event=event, user=user,
                    text=f"{user} {event}", seq=seq, ts=1.0, **extra)


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    """The requests a list of actions transmits."""
    return [json.loads(a.payload) for a in actions if isinstance(a, Transmit)]


def delivered(actions: list[Any]) -> list[dict[str, Any]]:
    return [a.message for a in actions if isinstance(a, Show)]


def notes(actions: list[Any]) -> list[str]:
    return [a.text for a in actions if isinstance(a, Note)]


def joined_core(**options: Any) -> UdpClientCore:
    """A core that has joined lobby as alice: stream at n=3, last seq 1."""
    core = UdpClientCore("alice", "lobby", **{"keepalive_s": 10.0, "gap_timeout_s": 2.0,
                                              **options})
    assert sent(core.start(0.0)) == [{"type": "join", "room": "lobby", "user": "alice",
                                      "id": 1}]
    assert core.receive(b'{"type":"ack","id":1}', 0.0) == [Acked(1)]
    core.receive(welcome(), 0.0)
    core.receive(notice(2, "join", "alice", 1, id=1), 0.0)
    assert core.state is ClientState.JOINED
    return core


@pytest.mark.timeout(10)
def test_core_acks_every_datagram_and_delivers_once_in_n_order() -> None:
    core = joined_core()
    out_of_order = core.receive(chat(4, "second", 3), 1.0)
    assert out_of_order == [SendAck(4, b'{"type":"ack","n":4}')]      # held back
    in_order = core.receive(chat(3, "first", 2), 1.0)
    assert [m["text"] for m in delivered(in_order)] == ["first", "second"]
    again = core.receive(chat(3, "first", 2), 1.0)                       # a duplicate
    assert again == [SendAck(3, b'{"type":"ack","n":3}')]
    assert core.counters()["duplicates"] == 1 and core.acks_sent == 5


@pytest.mark.timeout(10)
def test_core_reports_a_gap_that_outlives_its_timeout() -> None:
    core = joined_core(gap_timeout_s=2.0)
    core.receive(chat(5, "after the gap", 4), 1.0)
    assert core.next_deadline() == pytest.approx(3.0)
    assert delivered(core.handle_timer(2.9)) == []
    actions = core.handle_timer(3.0)
    assert notes(actions) == ["2 messages lost (stream numbers 3..4 never came)"]
    assert [m["text"] for m in delivered(actions)] == ["after the gap"]
    assert core.counters()["lost"] == 2


@pytest.mark.timeout(10)
def test_core_tells_which_message_was_not_delivered() -> None:
    core = joined_core()
    [transmit] = core.request({"type": "message", "text": "x" * 40}, 1.0)
    assert isinstance(transmit, Transmit) and transmit.rid == 2
    assert core.in_flight == 1
    assert notes(core.given_up(2, 5.0)) == [
        f"message 2 was not delivered: '{'x' * 30}…' (the server did not ack it)"]
    assert core.in_flight == 0 and core.given_up(2, 5.0) == []


@pytest.mark.timeout(10)
def test_core_refuses_locally_what_does_not_fit_one_datagram() -> None:
    core = joined_core(max_datagram_bytes=100)
    actions = core.request({"type": "message", "text": "z" * 100}, 1.0)
    assert sent(actions) == [] and "over the 100-byte datagram limit" in notes(actions)[0]
    assert core.in_flight == 0


@pytest.mark.timeout(10)
def test_core_pings_after_keepalive_idle_and_hides_the_pong() -> None:
    core = joined_core(keepalive_s=10.0)
    assert core.next_deadline() == pytest.approx(10.0)      # the last ack went out at 0
    core.receive(chat(3, "hi", 2), 4.0)                     # acking it counts as sending
    assert core.next_deadline() == pytest.approx(14.0)
    assert core.handle_timer(13.9) == []
    [ping] = sent(core.handle_timer(14.0))
    assert ping == {"type": "ping", "id": 2}
    core.receive(b'{"type":"ack","id":2}', 14.0)
    assert delivered(core.receive(datagram(4, type="pong", id=2), 14.0)) == []
    assert core.keepalives == 1


@pytest.mark.timeout(10)
def test_core_a_late_copy_of_the_old_welcome_is_only_a_duplicate() -> None:
    core = joined_core()
    assert core.receive(welcome(), 5.0) == [SendAck(1, b'{"type":"ack","n":1}')]
    assert core.state is ClientState.JOINED and core.sessions == 0


@pytest.mark.timeout(10)
def test_core_notices_a_server_that_forgot_it_and_rejoins_with_since() -> None:
    core = joined_core()
    core.receive(chat(3, "before", 7), 1.0)                 # last seq in lobby: 7
    [message] = sent(core.request({"type": "message", "text": "lost in a new session"}, 2.0))
    # The server timed us out; the message opened a new session: ack, welcome, error.
    assert core.receive(b'{"type":"ack","id":2}', 2.0) == [Acked(2)]
    assert delivered(core.receive(welcome(seq=9), 2.0)) == []         # stashed: n=1 < 4
    actions = core.receive(datagram(2, type="error", code="not_joined", text="join first",
                                    id=2), 2.0)
    assert [m["type"] for m in delivered(actions)] == ["welcome"]     # the error is handled
    assert notes(actions) == ["the server had forgotten us; rejoining lobby"]
    assert sent(actions) == [{"type": "join", "room": "lobby", "user": "alice", "since": 7,
                              "id": 3}]
    assert core.state is ClientState.REJOINING and core.sessions == 1
    assert core.receive(b'{"type":"ack","id":3}', 2.1) == [Acked(3)]   # nothing else yet
    back = core.receive(notice(3, "join", "alice", 10, id=3), 2.1)
    assert core.state is ClientState.JOINED
    assert notes(back) == ["rejoined lobby", "sending 1 request again"]
    assert sent(back) == [{"type": "message", "text": "lost in a new session", "id": 4}]


@pytest.mark.timeout(10)
def test_core_a_new_epoch_means_a_restart_and_a_join_without_since() -> None:
    core = joined_core()
    core.receive(chat(3, "before", 7), 1.0)
    actions = core.receive(welcome(seq=0, epoch="0000bbbb"), 2.0)     # a keepalive reached it
    assert notes(actions) == ["the server has restarted; its history starts afresh",
                              "the server had forgotten us; rejoining lobby"]
    assert sent(actions) == [{"type": "join", "room": "lobby", "user": "alice", "id": 2}]
    back = core.receive(notice(2, "join", "alice", 1, id=2), 2.0)
    assert [m["seq"] for m in delivered(back)] == [1]        # seq 1 is new in the new run


@pytest.mark.timeout(10)
def test_core_a_refused_first_join_fails_and_a_refused_room_switch_does_not() -> None:
    core = UdpClientCore("alice", "lobby")
    core.start(0.0)
    core.receive(welcome(), 0.0)
    actions = core.receive(datagram(2, type="error", code="name_taken", text="taken", id=1),
                           0.0)
    assert actions[1:] == [udp_client.JoinRefused("name_taken", "taken")]
    assert core.state is ClientState.FAILED
    joined = joined_core()
    [switch] = sent(joined.join("dev!", 1.0))
    refused = joined.receive(datagram(3, type="error", code="bad_message", text="room",
                                      id=switch["id"]), 1.0)
    assert [m["code"] for m in delivered(refused)] == ["bad_message"]
    assert joined.state is ClientState.JOINED and joined.room == "lobby"


# == End to end ===========================================================================

def client_config(port: int, user: str, host: str = "127.0.0.1",
                  **overrides: Any) -> UdpClientConfig:
    return UdpClientConfig(**{"host": host, "port": port, "user": user, "keepalive_s": 30.0,
                              **FAST, **overrides})


class Servers:
    """Starts UDP servers and stops every one at the end of a test."""

    def __init__(self) -> None:
        self.started: list[ServerHandle] = []

    def start(self, **overrides: Any) -> ServerHandle:
        handle = serve(**{"port": 0, "shutdown_grace_s": 0.3, **FAST, **overrides})
        self.started.append(handle)
        return handle

    def stop_all(self) -> None:
        for handle in self.started:
            handle.stop()                # a second stop of a stopped server is harmless


class Clients:
    """Makes UdpChatClients and closes them all at the end of a test."""

    def __init__(self) -> None:
        self.made: list[UdpChatClient] = []

    def connect(self, address: tuple[str, int], user: str, **overrides: Any) -> UdpChatClient:
        client = UdpChatClient(client_config(address[1], user, address[0], **overrides))
        self.made.append(client)
        client.connect(WAIT)
        return client

    def close_all(self) -> None:
        for client in self.made:
            client.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    made = Servers()
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    try:
        yield made
    finally:
        made.close_all()


def address(handle: ServerHandle | FaultRelay) -> tuple[str, int]:
    if isinstance(handle, FaultRelay):
        return handle.address
    return handle.host, handle.port


def until(client: UdpChatClient, predicate: Callable[[ClientEvent], bool],
          timeout: float = WAIT) -> list[ClientEvent]:
    """Events up to and including the first that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    seen: list[ClientEvent] = []
    while True:
        try:
            event = client.next_event(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"event not seen within {timeout} s; saw {seen}") from None
        seen.append(event)
        if predicate(event):
            return seen
        assert not isinstance(event, Closed), f"client closed early; saw {seen}"


def message_from(user: str, text: str) -> Callable[[ClientEvent], bool]:
    def matches(event: ClientEvent) -> bool:
        return (isinstance(event, Received) and event.message.get("type") == "message"
                and event.message.get("user") == user and event.message.get("text") == text)
    return matches


def system(event_name: str, user: str) -> Callable[[ClientEvent], bool]:
    def matches(event: ClientEvent) -> bool:
        return (isinstance(event, Received) and event.message.get("type") == "system"
                and event.message.get("event") == event_name
                and event.message.get("user") == user)
    return matches


def notice_with(text: str) -> Callable[[ClientEvent], bool]:
    return lambda event: isinstance(event, Notice) and text in event.text


def chat_messages(events: list[ClientEvent]) -> list[dict[str, Any]]:
    return [e.message for e in events
            if isinstance(e, Received) and e.message.get("type") == "message"]


def collect_messages(client: UdpChatClient, count: int,
                     timeout: float = WAIT) -> tuple[list[dict[str, Any]], list[ClientEvent]]:
    """Wait for ``count`` chat messages; return them and every event seen meanwhile."""
    deadline = time.monotonic() + timeout
    events: list[ClientEvent] = []
    messages: list[dict[str, Any]] = []
    while len(messages) < count:
        try:
            event = client.next_event(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"{client.user}: {len(messages)} of {count} messages "
                                 f"within {timeout} s; stats {client.stats}") from None
        events.append(event)
        messages += chat_messages([event])
    return messages, events


def send_all(client: UdpChatClient, texts: list[str], window: int = 8) -> None:
    """Send ``texts`` with at most ``window`` unacked, then wait for the last ack."""
    for text in texts:
        assert client.say(text)
        assert client.wait_sent(window - 1, WAIT), f"{client.user}: acks stopped coming"
    assert client.wait_sent(0, WAIT)


def in_threads(*jobs: Callable[[], None]) -> None:
    """Run ``jobs`` at once; re-raise the first failure."""
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:      # reported in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
        assert not thread.is_alive(), "a sender hung"
    if errors:
        raise errors[0]


# -- Basic chat over UDP, no faults --------------------------------------------------------

@pytest.mark.timeout(20)
def test_two_clients_chat_whisper_who_rooms_and_stats(servers: Servers,
                                                      clients: Clients) -> None:
    server = servers.start()
    alice = clients.connect(address(server), "alice")
    bob = clients.connect(address(server), "bob")
    until(alice, system("join", "bob"))
    alice.send_line("hello bob")
    until(bob, message_from("alice", "hello bob"))
    bob.send_line("/msg alice psst")
    until(alice, lambda e: isinstance(e, Received) and e.message.get("type") == "whisper"
          and e.message.get("text") == "psst")
    alice.send_line("/who")
    [who] = [e for e in until(alice, lambda e: isinstance(e, Received)
                              and e.message.get("type") == "who")
             if isinstance(e, Received) and e.message.get("type") == "who"]
    assert who.message["users"] == ["alice", "bob"]
    alice.send_line("/join dev")
    until(alice, system("join", "alice"))
    until(bob, system("leave", "alice"))
    assert alice.room == "dev"
    alice.send_line("/rooms")
    until(alice, lambda e: isinstance(e, Received) and e.message.get("type") == "rooms")
    alice.send_line("/jion typo")
    until(alice, notice_with("unknown command /jion"))
    alice.send_line("/help")
    until(alice, notice_with("/stats"))
    alice.send_line("/stats")
    [stats] = [e for e in until(alice, notice_with("retransmitted=")) if isinstance(e, Notice)]
    assert "delivered=" in stats.text and "gaps=" in stats.text
    assert alice.close() == 0 and bob.close() == 0
    wait_for(lambda: not server.server.chat.peers, what="both sessions ended by leave")


@pytest.mark.timeout(20)
def test_a_refused_first_join_raises_and_ends_the_session(servers: Servers,
                                                         clients: Clients) -> None:
    server = servers.start()
    clients.connect(address(server), "alice")
    with pytest.raises(JoinError) as refused:
        clients.connect(address(server), "ALICE")
    assert refused.value.code == "name_taken"
    wait_for(lambda: len(server.server.chat.peers) == 1, what="the refused address forgotten")


@pytest.mark.timeout(20)
def test_no_server_at_all_fails_to_connect_with_a_clear_error() -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    client = UdpChatClient(client_config(port, "alice", max_retries=2))
    with pytest.raises(ConnectionError, match="no answer"):
        client.connect(WAIT)
    assert client.close() == 0 and not client.timer.running
    code = udp_client.main(["--user", "alice", "--port", str(port), "--max-retries", "1",
                            "--base-delay", "0.02", "--min-rto", "0.02", "--max-delay", "0.05"])
    assert code == udp_client.EXIT_FAILED


# -- Through the fault relay -------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_relay_every_client_gets_every_message_once_in_order(
        seed: int, servers: Servers, clients: Clients) -> None:
    plan = FaultPlan(loss=LOSS, duplicate=0.05, reorder=0.05)
    server = servers.start(**FASTER)
    with FaultRelay(address(server), upstream=plan, downstream=plan, seed=seed) as relay:
        run = chat_through(relay, server, clients, per_client=100, **FASTER)
        assert relay.count(UP, Action.DROP) > 0 and relay.count(DOWN, Action.DROP) > 0
        assert relay.count(UP, Action.DUPLICATE) > 0 and relay.count(DOWN, Action.REORDER) > 0
    assert run.exactly_once == 3 * 300


@dataclass
class Run:
    exactly_once: int                # (receiver, message) pairs delivered exactly once
    client_retransmitted: int
    client_sent: int
    server_retransmitted: int
    server_sent: int
    idle_wakeups: list[int]          # during idle_window, before the clients closed


def chat_through(relay: FaultRelay, server: ServerHandle, clients: Clients,
                 per_client: int, idle_window: float = 0.0, **overrides: Any) -> Run:
    """Three clients each send ``per_client`` messages through ``relay``; check delivery.

    Every client must receive every message exactly once, each sender's in the
    order sent, with ``seq`` strictly increasing; the server must have made one
    broadcast per message (its ``seq`` counts them). Then, with ``idle_window``,
    count timer wake-ups while everyone is quiet; then every client leaves.
    """
    users = ["u0", "u1", "u2"]
    chatters = [clients.connect(relay.address, user, **overrides) for user in users]
    for chatter in chatters[:-1]:
        until(chatter, system("join", users[-1]))
    seq_before = server.server.chat.core.seq
    texts = {user: [f"{user} says {i}" for i in range(per_client)] for user in users}
    in_threads(*[lambda c=chatter: send_all(c, texts[c.user]) for chatter in chatters])
    total = len(users) * per_client
    exactly_once = 0
    for chatter in chatters:
        messages, events = collect_messages(chatter, total)
        got = [(m["user"], m["text"]) for m in messages]
        assert len(set(got)) == total, f"{chatter.user}: a message came twice"
        for user in users:
            assert [text for sender, text in got if sender == user] == texts[user]
        seqs = [m["seq"] for m in messages]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert not [e for e in events if isinstance(e, Notice)], events
        assert chatter.stats["given_up"] == 0 and chatter.stats["lost"] == 0
        exactly_once += len(got)
    assert server.server.chat.core.seq == seq_before + total, "a broadcast was repeated"
    server_stats = server.server.stats
    assert server_stats["given_up"] == 0
    idle = measure_idle_window(server, chatters, idle_window) if idle_window else []
    for chatter in chatters:
        assert chatter.close() == 0         # leave goes out through the relay too
    wait_for(lambda: not server.server.chat.peers, what="every session ended by leave")
    return Run(exactly_once,
               sum(c.stats["retransmitted"] for c in chatters),
               sum(c.stats["sent"] for c in chatters),
               server_stats["retransmitted"], server_stats["sent"], idle)


class ScriptedSchedule(FaultSchedule):
    """The relay's schedule plus rules that drop exactly the datagrams a test names."""

    @dataclass
    class Rule:
        direction: Direction
        matches: Callable[[tuple[str, int], bytes], bool]
        remaining: int
        dropped: int = 0

    def __init__(self) -> None:
        super().__init__(FaultDecider())
        self.rules: list[ScriptedSchedule.Rule] = []

    def drop(self, direction: Direction, matches: Callable[[tuple[str, int], bytes], bool],
             count: int = 1) -> Rule:
        """Drop the next ``count`` datagrams going ``direction`` that ``matches``."""
        rule = self.Rule(direction, matches, count)
        self.rules.append(rule)
        return rule

    def receive(self, direction: Direction, flow: tuple[str, int], datagram: bytes,
                now: float) -> None:
        for rule in self.rules:
            if rule.remaining and rule.direction is direction and rule.matches(flow, datagram):
                rule.remaining -= 1
                rule.dropped += 1
                self.received[direction] += 1
                self._record(now, direction, Action.DROP, len(datagram))
                return
        super().receive(direction, flow, datagram, now)


def scripted_relay(server: ServerHandle) -> tuple[FaultRelay, ScriptedSchedule]:
    relay = FaultRelay(address(server))
    schedule = ScriptedSchedule()
    relay.schedule = schedule            # before start(): the relay thread owns it after
    return relay, schedule


@pytest.mark.timeout(20)
def test_a_lost_ack_means_a_retransmission_a_second_ack_and_one_broadcast(
        servers: Servers, clients: Clients) -> None:
    server = servers.start()
    relay, schedule = scripted_relay(server)
    with relay:
        alice = clients.connect(relay.address, "alice")
        bob = clients.connect(address(server), "bob")
        until(alice, system("join", "bob"))
        seq = server.server.chat.core.seq
        assert alice.in_flight == 0      # so the next ack with an id is the message's
        rule = schedule.drop(DOWN, lambda flow, d: d.startswith(b'{"type":"ack","id":'))
        assert alice.say("my ack gets lost")
        assert relay.wait_for(lambda: rule.dropped == 1, WAIT)
        assert alice.wait_sent(0, WAIT)
        assert alice.stats["retransmitted"] >= 1
        assert server.server.chat.stats.duplicates_dropped >= 1   # acked again, not applied
        alice.say("marker")
        events = until(bob, message_from("alice", "marker"))
        assert [m["text"] for m in chat_messages(events)] == ["my ack gets lost", "marker"]
        assert server.server.chat.core.seq == seq + 2
        own = chat_messages(until(alice, message_from("alice", "marker")))
        assert [m["text"] for m in own] == ["my ack gets lost", "marker"]
        assert own[1]["id"] == own[0]["id"] + 1     # the retransmission kept its id
        clients.close_all()                         # while the relay still carries the leave


@pytest.mark.timeout(20)
def test_a_message_that_loses_three_datagrams_in_a_row_still_arrives_once(
        servers: Servers, clients: Clients) -> None:
    server = servers.start()
    relay, schedule = scripted_relay(server)
    with relay:
        alice = clients.connect(relay.address, "alice")
        bob = clients.connect(relay.address, "bob")
        until(alice, system("join", "bob"))
        up = schedule.drop(UP, lambda flow, d: b'"text":"stubborn"' in d, count=3)
        down = schedule.drop(DOWN, lambda flow, d: flow == bob.address
                             and b'"text":"stubborn"' in d, count=4)
        alice.say("stubborn")
        assert relay.wait_for(lambda: up.dropped == 3 and down.dropped == 4, WAIT)
        alice.say("after it")
        events = until(bob, message_from("alice", "after it"))
        assert [m["text"] for m in chat_messages(events)] == ["stubborn", "after it"]
        assert alice.stats["retransmitted"] >= 3
        assert server.server.stats["retransmitted"] >= 4
        assert not [e for e in events if isinstance(e, Notice)]
        clients.close_all()                         # while the relay still carries the leave


# -- Presence: timeouts and keepalives --------------------------------------------------------

class RawPeer:
    """A bare UDP socket that speaks just enough of the protocol to join, then goes quiet."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(server)

    def join(self, user: str) -> None:
        self.sock.send(json.dumps({"type": "join", "room": "lobby", "user": user,
                                   "id": 1}).encode())
        while True:
            message = p.decode(self.sock.recv(65535))
            if "n" in message:      # acked with the session id the welcome gave
                self.sock.send(json.dumps({"type": "ack", "n": message["n"],
                                           "sid": message["sid"]}).encode())
            if message.get("event") == "join" and message.get("user") == user:
                return

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(20)
def test_a_silent_client_is_dropped_with_a_leave_notice(servers: Servers,
                                                        clients: Clients) -> None:
    server = servers.start(client_timeout_s=0.5)
    watcher = clients.connect(address(server), "watcher", keepalive_s=0.1)
    raw = RawPeer(address(server))
    try:
        raw.join("silent")
        until(watcher, system("join", "silent"))
        started = time.monotonic()
        until(watcher, system("leave", "silent"))
        assert time.monotonic() - started >= 0.25         # not at once: after the timeout
        assert raw.address not in server.server.chat.peers
        assert watcher.address in server.server.chat.peers
    finally:
        raw.close()


@pytest.mark.timeout(20)
def test_keepalives_keep_an_idle_client_joined_past_the_timeout(servers: Servers,
                                                                clients: Clients) -> None:
    server = servers.start(client_timeout_s=0.4)
    idle = clients.connect(address(server), "idle", keepalive_s=0.1)
    friend = clients.connect(address(server), "friend", keepalive_s=0.1)
    until(idle, system("join", "friend"))
    started = time.monotonic()
    wait_for(lambda: idle.stats["keepalives"] >= 10, what="ten keepalives")
    assert time.monotonic() - started > 2 * 0.4          # well past the timeout
    assert idle.address in server.server.chat.peers
    assert idle.state is ClientState.JOINED and idle.stats["sessions"] == 0
    idle.say("still here")
    events = until(friend, message_from("idle", "still here"))
    assert not [e for e in events if system("leave", "idle")(e)]
    pongs = [e for e in until(idle, message_from("idle", "still here"))
             if isinstance(e, Received) and e.message.get("type") == "pong"]
    assert pongs == []                                   # keepalive pongs are not shown


@pytest.mark.timeout(20)
def test_a_client_the_server_timed_out_comes_back_with_since(servers: Servers,
                                                             clients: Clients) -> None:
    server = servers.start(client_timeout_s=0.3)
    sleeper = clients.connect(address(server), "sleeper", keepalive_s=30.0)
    friend = clients.connect(address(server), "friend", keepalive_s=0.1)
    until(sleeper, system("join", "friend"))
    until(friend, system("leave", "sleeper"))         # timed out: the server forgot it
    friend.say("while you slept")
    sleeper.say("I am back")
    events = until(sleeper, message_from("sleeper", "I am back"))
    assert [e.text for e in events if isinstance(e, Notice)] == [
        "the server had forgotten us; rejoining lobby", "rejoined lobby",
        "sending 1 request again"]
    replayed = [e.message for e in events if isinstance(e, Received)
                and e.message.get("history") is True]
    assert [m.get("text") for m in replayed] == ["sleeper left", "while you slept"]
    assert sleeper.stats["sessions"] == 1
    friend_events = until(friend, message_from("sleeper", "I am back"))
    assert [m["text"] for m in chat_messages(friend_events)] == ["while you slept", "I am back"]


# -- Server restart ----------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_server_restart_holds_what_is_said_until_the_client_has_rejoined(
        servers: Servers, clients: Clients) -> None:
    first = servers.start()
    port = first.port
    alice = clients.connect(address(first), "alice", max_retries=3)
    alice.say("before")
    until(alice, message_from("alice", "before"))
    first.stop()
    until(alice, lambda e: isinstance(e, Received) and e.message.get("event") == "shutdown")
    alice.say("into the void")                     # waits: alice is rejoining
    assert alice.state is ClientState.REJOINING and alice.exit_code is None
    second = servers.start(port=port)
    events = until(alice, message_from("alice", "into the void"), timeout=20.0)
    texts = [e.text for e in events if isinstance(e, Notice)]
    assert texts[0].startswith("the server is stopping; rejoining lobby when it is back")
    assert texts[-3:] == ["the server has restarted; its history starts afresh",
                          "the server had forgotten us; rejoining lobby", "rejoined lobby"]
    assert not [text for text in texts if "not delivered" in text]
    bob = clients.connect(address(second), "bob")
    alice.say("after the restart")
    bob_events = until(bob, message_from("alice", "after the restart"))
    assert [m["text"] for m in chat_messages(bob_events)] == ["into the void",
                                                               "after the restart"]
    assert alice.stats["sessions"] == 1 and alice.state is ClientState.JOINED


# -- Garbage ------------------------------------------------------------------------------------

def garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        return b'{"type":"message","text":"' + b"x" * 5000 + b'","id":1}'
    if kind == 2:
        return b'{"type": "join", "room": '
    if kind == 3:
        return b'{"type":"ack","n":' + str(rng.randrange(10**6)).encode() + b"}"
    if kind == 4:
        return json.dumps({"type": "ping", "id": rng.choice([0, -1, "x", None, 1.5])}).encode()
    return b"[" * 10_000


@pytest.mark.timeout(30)
def test_garbage_from_many_sockets_does_not_disturb_a_chatting_pair(servers: Servers,
                                                                   clients: Clients) -> None:
    server = servers.start()
    alice = clients.connect(address(server), "alice")
    bob = clients.connect(address(server), "bob")
    until(alice, system("join", "bob"))
    vandals = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        known = vandals[0]          # joins first, so its garbage earns typed errors
        known.settimeout(WAIT)
        for _ in range(2):          # 2 x 3 x 22 bytes: enough for the welcome
            known.sendto(b'{"type":"ping","id":1}', address(server))
        welcome = p.decode(known.recv(65535))
        known.sendto(json.dumps({"type": "ack", "n": 1, "sid": welcome["sid"]}).encode(),
                     address(server))  # verified: the ping applies now
        assert p.decode(known.recv(65535)) == {"type": "ack", "id": 1, "sid": welcome["sid"]}

        def vandalise() -> None:
            rng = random.Random(7)
            for _ in range(300):
                for vandal in vandals:
                    vandal.sendto(garbage(rng), address(server))

        texts = {user: [f"{user} {i}" for i in range(50)] for user in ("alice", "bob")}
        in_threads(vandalise, lambda: send_all(alice, texts["alice"]),
                   lambda: send_all(bob, texts["bob"]))
        for chatter in (alice, bob):
            messages, _ = collect_messages(chatter, 100)
            got = [(m["user"], m["text"]) for m in messages]
            for user, sent_texts in texts.items():
                assert [text for sender, text in got if sender == user] == sent_texts
        assert server.server.stats["dropped"] > 0
        errors = 0
        known.settimeout(0.5)
        while errors == 0:
            message = p.decode(known.recv(65535))
            errors += message.get("type") == "error"
    finally:
        for vandal in vandals:
            vandal.close()


# -- Idle means idle ---------------------------------------------------------------------------

def wakeups(server: ServerHandle, chatters: list[UdpChatClient]) -> list[int]:
    counts = [server.server.timer.wakeups]
    for chatter in chatters:
        counts += [chatter.timer.wakeups, chatter.reader_wakeups]
    return counts


def measure_idle_window(server: ServerHandle, chatters: list[UdpChatClient],
                        window: float) -> list[int]:
    """Wake-ups of every timer during ``window`` seconds of silence, after settling."""
    wait_for(lambda: server.server.timer.pending == 0
             and all(c.timer.pending == 0 for c in chatters), what="everything acked")
    last: list[int] = []

    def settled() -> bool:          # a wake-up already signalled has been counted
        nonlocal last
        now, last = last, wakeups(server, chatters)
        return now == last

    wait_for(settled, what="timer threads settled")
    before = wakeups(server, chatters)
    threading.Event().wait(window)  # the one timed wait: nothing may happen in it
    return [after - start for after, start in zip(wakeups(server, chatters), before)]


@pytest.mark.timeout(20)
def test_idle_client_and_server_timers_never_wake_up(servers: Servers,
                                                     clients: Clients) -> None:
    server = servers.start()
    alice = clients.connect(address(server), "alice")
    bob = clients.connect(address(server), "bob")
    alice.say("then silence")
    until(bob, message_from("alice", "then silence"))
    assert server.server.timer.wakeups > 0 and alice.timer.wakeups > 0
    assert measure_idle_window(server, [alice, bob], 0.5) == [0] * 5


# -- The figures at 20% loss each way ----------------------------------------------------------

@pytest.mark.timeout(60)
def test_figures_at_20_percent_loss_each_way(servers: Servers, clients: Clients) -> None:
    """3 x 100 messages at 20% loss each way; prints the figures (run with -s)."""
    plan = FaultPlan(loss=LOSS)
    server = servers.start()
    with FaultRelay(address(server), upstream=plan, downstream=plan, seed=2024) as relay:
        run = chat_through(relay, server, clients, per_client=100, idle_window=0.5)
    idle = run.idle_wakeups
    ideal = 1 / (1 - LOSS) ** 2 - 1
    client_ratio = run.client_retransmitted / run.client_sent
    server_ratio = run.server_retransmitted / run.server_sent
    print(f"\n20% loss each way, 3 clients x 100 messages:\n"
          f"  delivered exactly once: {run.exactly_once} of {3 * 300}\n"
          f"  client retransmissions per request:  {client_ratio:.3f} "
          f"({run.client_retransmitted}/{run.client_sent})\n"
          f"  server retransmissions per datagram: {server_ratio:.3f} "
          f"({run.server_retransmitted}/{run.server_sent})\n"
          f"  ideal 1/(1-p)^2 - 1:                 {ideal:.4f}\n"
          f"  timer wake-ups in a 0.5 s idle window (server timer, then per client "
          f"timer and reader): {idle}")
    assert run.exactly_once == 3 * 300
    assert idle == [0] * 7
    for ratio in (client_ratio, server_ratio):
        assert ideal / 2 < ratio < ideal * 2


# -- The terminal program ----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_subprocess_client_chats_and_exits_0_on_eof(servers: Servers,
                                                    clients: Clients) -> None:
    server = servers.start()
    bob = clients.connect(address(server), "bob")
    proc, out = client_process(server.port, "x")
    try:
        assert proc.stdin is not None
        out.wait_for_line(lambda line: line == "[lobby] * x joined\n")
        proc.stdin.write("hello from x\n")
        proc.stdin.flush()
        until(bob, message_from("x", "hello from x"))
        bob.say("hi x \x1b[2J")
        out.wait_for_line(lambda line: line == "[lobby] bob: hi x \\u001b[2J\n")
        proc.stdin.write("/stats\n")
        proc.stdin.flush()
        out.wait_for_line(lambda line: line.startswith("-- sent: sent="))
        proc.stdin.close()
        assert proc.wait(WAIT) == 0
        until(bob, system("leave", "x"))
        assert "\x1b" not in out.rest()
        wait_for(lambda: len(server.server.chat.peers) == 1, what="x's session ended")
    finally:
        end_process(proc)


def udp_server_process(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "chat_sync.udp_server", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_server_program_serves_and_exits_0_on_a_signal(signum: signal.Signals) -> None:
    proc = udp_server_process("--port", "0")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = StreamLines(proc.stdout), StreamLines(proc.stderr)
        line = out.readline()
        assert line is not None and line.startswith("listening on 127.0.0.1:"), line
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(WAIT)
            sock.sendto(b'{"type":"join","room":"lobby","user":"a","id":1}',
                        ("127.0.0.1", int(line.rsplit(":", 1)[1])))
            assert p.decode(sock.recv(65_535))["type"] == "welcome"
        proc.send_signal(signum)      # the wake-up fd makes it land even just before select()
        assert proc.wait(WAIT) == 0
        assert "Traceback" not in err.rest()
    finally:
        end_process(proc)


@pytest.mark.timeout(30)
def test_the_server_program_on_a_port_in_use_exits_1_saying_so() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = udp_server_process("--port", str(port))
        try:
            assert proc.wait(WAIT) == 1
            assert proc.stderr is not None
            err = proc.stderr.read()
            assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
        finally:
            end_process(proc)


def test_the_server_offers_its_wake_up_pair_for_signals() -> None:
    server = UdpServer(UdpServerConfig(port=0))
    try:
        assert server.wakeup_fileno() == server._wakeup.writer.fileno()
    finally:
        server.stop()
        server.serve_forever()        # stops at once, closing the socket and the pair


# == Issue 8 item 6: a restarted client is back in its room; a live name stays taken ======

@pytest.mark.timeout(10)
def test_core_acks_a_probe_from_the_server_and_shows_nothing() -> None:
    core = session_core()
    probe = b'{"type":"ping","sid":"%s","n":3}' % SID.encode()
    assert core.receive(probe, 1.0) == [SendAck(3, b'{"type":"ack","n":3,"sid":"%s"}'
                                                % SID.encode())]
    assert core.receive(probe, 1.5) == [SendAck(3, b'{"type":"ack","n":3,"sid":"%s"}'
                                                % SID.encode())]    # a retransmission
    assert core.state is ClientState.JOINED and core.counters()["delivered"] == 2


def client_process(port: int, user: str) -> tuple[subprocess.Popen[str], StreamLines]:
    """``chat-sync udp-client`` as its own process, on its own socket."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chat_sync.udp_client", "--plain", "--user", user,
         "--port", str(port), "--base-delay", "0.03", "--min-rto", "0.03"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, encoding="utf-8", env=env, cwd=REPO)
    assert proc.stdout is not None
    return proc, StreamLines(proc.stdout)


def end_process(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.timeout(60)
def test_a_killed_client_restarted_is_back_in_its_room_and_a_live_name_stays_taken(
        servers: Servers, clients: Clients) -> None:
    server = servers.start()                      # client_timeout_s: 60 s, as by default
    bob = clients.connect(address(server), "bob")
    first, out = client_process(server.port, "alice")
    try:
        out.wait_for_line(lambda line: line == "[lobby] * alice joined\n")
        until(bob, system("join", "alice"))
    finally:
        end_process(first)                        # SIGKILL: no leave, the session lingers
    again, out = client_process(server.port, "alice")   # a new socket: a new address
    try:
        out.wait_for_line(lambda line: line == "[lobby] * alice joined\n", timeout=WAIT)
        events = until(bob, system("join", "alice"))
        presence = [(e.message["event"], e.message["user"]) for e in events
                    if isinstance(e, Received) and e.message.get("type") == "system"]
        assert presence == [("leave", "alice"), ("join", "alice")]  # one leave, one join
        assert server.server.chat.dropped["probe_unanswered"] == 1
        # Alice's second process is alive: it acks the probe, and keeps its name.
        with pytest.raises(JoinError) as refused:
            clients.connect(address(server), "alice")
        assert refused.value.code == "name_taken"
        assert server.server.chat.dropped["probe_unanswered"] == 1
        bob.say("still there?")
        out.wait_for_line(lambda line: line == "[lobby] bob: still there?\n")
        assert "ping" not in "".join(out.seen)    # the probe was acked, never shown
    finally:
        end_process(again)


class BoundTo:
    """The socket module as ``udp_client`` sees it, except that a new socket is bound
    to ``port`` first: a client restarted on the port its old process had."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any) -> socket.socket:
        sock = socket.socket(*args)
        sock.bind(("127.0.0.1", self.port))
        return sock


@pytest.mark.timeout(40)
def test_a_client_killed_and_restarted_on_its_old_port_is_back_once_the_probe_fails(
        servers: Servers, clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    server = servers.start()
    bob = clients.connect(address(server), "bob")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    monkeypatch.setattr(udp_client, "socket", BoundTo(port))
    patient = {"base_delay": 0.2, "max_delay": 1.0, "max_retries": 12}   # ~11 s of tries
    first = clients.connect(address(server), "alice", **patient)
    until(bob, system("join", "alice"))
    peers = server.server.chat.peers
    old = first.address
    wait_for(lambda: not peers[old].unacked, WAIT, "alice acked everything")
    first._stopping.set()                       # killed: no leave, the session lingers
    first.close()
    again = clients.connect(address(server), "alice", **patient)   # the same address
    events = until(bob, system("join", "alice"))
    presence = [(e.message["event"], e.message["user"]) for e in events
                if isinstance(e, Received) and e.message.get("type") == "system"]
    assert presence == [("leave", "alice"), ("join", "alice")]
    assert again.address == old and again.state is ClientState.JOINED
    assert server.server.chat.dropped["probe_unanswered"] == 1
    assert again.stats["forged"] >= 1           # the probe of its old session, not acked
    again.say("back")
    until(bob, message_from("alice", "back"))


# == Issue 8 items 4 and 7, issue 11 item 4: the client core trusts only its session ====

SID = "5e55105e55105e55"


def session_core() -> UdpClientCore:
    """Alice joined to lobby over a session with id ``SID``: stream at n=3, seq 1."""
    core = UdpClientCore("alice", "lobby", keepalive_s=10.0, gap_timeout_s=2.0)
    core.start(0.0)
    core.receive(b'{"type":"ack","id":1,"sid":"%s"}' % SID.encode(), 0.0)
    core.receive(datagram(1, type="welcome", server="chat_sync", version="0.1.0", protocol=1,
                          seq=0, epoch=EPOCH, sid=SID), 0.0)
    core.receive(notice(2, "join", "alice", 1, id=1, sid=SID), 0.0)
    assert core.state is ClientState.JOINED
    return core


@pytest.mark.timeout(10)
def test_core_a_forged_datagram_without_our_session_id_is_neither_shown_nor_acked() -> None:
    core = session_core()
    assert core.receive(chat(3, "forged", 2), 1.0) == []               # no sid
    assert core.receive(chat(3, "forged", 2, sid="0" * 16), 1.0) == []  # a guessed one
    assert core.receive(chat(2**53 - 1, "far", 3, sid=SID), 1.0) == []  # far ahead
    real = core.receive(chat(3, "real", 2, sid=SID), 1.0)
    assert [m["text"] for m in delivered(real)] == ["real"]
    assert core.counters()["forged"] == 3
    assert sent(core.request({"type": "message", "text": "hi"}, 2.0)) == [
        {"type": "message", "text": "hi", "id": 2, "sid": SID}]        # and we send it


OLD_SID = "01d5e5510401d5e5"      # the session our address had before we restarted


def welcome_of(sid: str) -> bytes:
    return datagram(1, type="welcome", server="chat_sync", version="0.1.0", protocol=1,
                    seq=0, epoch=EPOCH, sid=sid)


@pytest.mark.timeout(10)
def test_core_an_ack_before_the_welcome_waits_for_it_to_say_whose_it_is() -> None:
    core = UdpClientCore("alice", "lobby")
    core.start(0.0)
    assert core.receive(b'{"type":"ack","id":1,"sid":"%s"}' % SID.encode(), 0.1) == []
    assert core.in_flight == 1                                  # not yet ours
    actions = core.receive(welcome_of(SID), 0.1)
    assert udp_client.Acked(1) in actions and core.in_flight == 0


@pytest.mark.timeout(10)
def test_core_restarted_on_its_old_address_ignores_the_old_sessions_ack_and_probe() -> None:
    """The server acks a first join from a session's address with that session's id,
    and probes it; a client that restarted there must take neither as its own."""
    core = UdpClientCore("alice", "lobby")
    core.start(0.0)
    assert core.receive(b'{"type":"ack","id":1,"sid":"%s"}' % OLD_SID.encode(), 0.1) == []
    assert core.receive(datagram(7, type="ping", sid=OLD_SID), 0.2) == []   # not acked
    assert core.counters()["forged"] == 1
    actions = core.receive(welcome_of(SID), 2.5)                # the new session, at last
    assert [a.n for a in actions if isinstance(a, udp_client.SendAck)] == [1]
    assert udp_client.Acked(1) not in actions and core.in_flight == 1   # the join: still out
    core.receive(b'{"type":"ack","id":1,"sid":"%s"}' % SID.encode(), 2.5)
    core.receive(notice(2, "join", "alice", 1, id=1, sid=SID), 2.5)
    assert core.state is ClientState.JOINED and core.in_flight == 0


@pytest.mark.timeout(10)
def test_core_server_full_refuses_the_first_join() -> None:
    core = UdpClientCore("alice", "lobby")
    core.start(0.0)
    actions = core.receive(b'{"type":"error","code":"server_full","text":"server full: '
                           b'1 client","id":1}', 0.1)
    assert actions == [udp_client.JoinRefused("server_full", "server full: 1 client")]
    assert core.state is ClientState.FAILED


@pytest.mark.timeout(10)
def test_core_leaving_with_a_message_unacked_says_it_may_not_have_been_delivered() -> None:
    core = session_core()
    core.request({"type": "message", "text": "last words"}, 1.0)       # out, not acked
    actions = core.leave(1.5)
    assert notes(actions) == ["message 2 may not have been delivered: 'last words' "
                              "(no ack before leaving)"]


@pytest.mark.timeout(10)
def test_core_says_it_is_trying_when_the_first_join_goes_unanswered() -> None:
    core = UdpClientCore("alice", "lobby")
    core.start(0.0)
    deadline = core.next_deadline()
    assert deadline is not None and deadline <= 2.0
    assert notes(core.handle_timer(deadline)) == [
        "no answer from the server yet; still trying"]
    assert core.handle_timer(deadline + 1.0) == []                        # said once


@pytest.mark.timeout(10)
def test_core_after_a_shutdown_notice_it_rejoins_by_itself_with_back_off() -> None:
    core = session_core()
    shutdown = notice(3, "shutdown", "x", 2, sid=SID)
    actions = core.receive(shutdown, 1.0)
    assert core.state is ClientState.REJOINING
    assert sent(actions) == []                             # not at once: it is stopping
    probe = core.next_deadline()
    assert probe is not None and 1.0 < probe <= 3.0
    [join] = sent(core.handle_timer(probe))
    assert (join["type"], join["sid"]) == ("join", SID)
    # Nobody answers: the timer gives up; the next try waits longer.
    given_up = core.given_up(join["id"], probe + 12.0)
    assert [n for n in notes(given_up) if "trying again in" in n]
    later = core.next_deadline()
    assert later is not None and later - (probe + 12.0) > probe - 1.0
    [again] = sent(core.handle_timer(later))
    assert again["type"] == "join"


@pytest.mark.timeout(10)
def test_core_an_unanswered_keepalive_starts_a_rejoin() -> None:
    core = session_core()
    [ping] = sent(core.handle_timer(10.0))
    actions = core.given_up(ping["id"], 22.0)              # nothing heard meanwhile
    assert core.state is ClientState.REJOINING
    assert [r["type"] for r in sent(actions + core.handle_timer(core.next_deadline() or 0))
            ] == ["join"]


@pytest.mark.timeout(10)
def test_core_a_rejoin_over_a_session_the_server_kept_is_not_fatal() -> None:
    """A long outage makes the client rejoin; if the server kept its session (and so
    its room), the join is refused 'already in room': that is a success, not the end."""
    core = session_core()
    [ping] = sent(core.handle_timer(10.0))
    [join] = sent(core.given_up(ping["id"], 22.0))
    assert join["type"] == "join"
    refusal = datagram(3, type="error", code="bad_message", field="room",
                       text="room: already in room 'lobby'", id=join["id"], sid=SID)
    core.receive(b'{"type":"ack","id":%d,"sid":"%s"}' % (join["id"], SID.encode()), 23.0)
    actions = core.receive(refusal, 23.0)
    assert core.state is ClientState.JOINED
    assert not [a for a in actions if type(a).__name__ == "Failed"]
    assert any("still in lobby" in text for text in notes(actions))
    assert sent(core.request({"type": "message", "text": "back"}, 24.0))[0]["text"] == "back"


@pytest.mark.timeout(30)
def test_an_idle_client_rejoins_by_itself_after_the_server_restarts(
        servers: Servers, clients: Clients) -> None:
    first = servers.start()
    alice = clients.connect(address(first), "alice")
    first.stop()
    until(alice, lambda e: isinstance(e, Received) and e.message.get("event") == "shutdown")
    second = servers.start(port=first.port)                  # the same address, a new run
    until(alice, notice_with("rejoined lobby"), timeout=20.0)
    bob = clients.connect(address(second), "bob")
    until(alice, system("join", "bob"))
    assert bob.say("welcome back")
    until(alice, message_from("bob", "welcome back"))
