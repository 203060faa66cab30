"""Lesson 06: ``backoff_delay`` and ``is_new`` against the package, then a real outage.

The first tests hold the two functions to ``Backoff.delay`` and to
``ClientCore`` on plain values. The last runs a real server on 127.0.0.1
port 0 and the package's ``ChatClient`` backing off on your
``backoff_delay``, through the package's ``RecordingRelay``, which the test
cuts and resumes: every wait is for an event with a deadline, never a sleep.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_sync import protocol as p
from chat_sync.config import TcpClientConfig
from chat_sync.recorder import RecordingRelay
from chat_sync.tcp_client import ChatClient, ClientEvent, Closed, Notice, Received
from chat_sync.tcp_client_core import Backoff, ClientCore, Send, Show
from chat_sync.serving import ServerHandle
from chat_sync.tcp_server import serve
from lesson_target import load

target = load(__file__)
TIMEOUT_S = 5.0


# -- backoff_delay ----------------------------------------------------------------
ATTEMPTS = [0, 1, 2, 3, 4, 5, 8, 12, 30, 59, 60, 61, 100, 1023, 1024, 1025, 10**6]
SETTINGS = [(0.5, 10.0), (0.01, 3.0), (1.0, 1.0), (0.001, 60.0),
            (1e-12, 1e30)]      # a cap so far away that only the exponent's stop at 60 binds
FRACTIONS = [0.0, 0.25, 0.5, 0.999999]


@pytest.mark.parametrize(("base", "cap"), SETTINGS)
def test_backoff_delay_agrees_with_the_package(base: float, cap: float) -> None:
    backoff = Backoff(base_delay_s=base, max_delay_s=cap, tries=8)
    for attempt in ATTEMPTS:
        for fraction in FRACTIONS:
            got = target.backoff_delay(attempt, base, cap, fraction)
            wanted = backoff.delay(attempt, fraction)
            assert got == pytest.approx(wanted, rel=1e-12), (
                f"backoff_delay(attempt={attempt}, base={base}, cap={cap}, "
                f"random_fraction={fraction}) returned {got}, the package {wanted}")


def test_the_exponent_stops_at_60() -> None:
    """The docstring's edge: past 60 doublings the ceiling stays base * 2 ** 60."""
    base, cap = 1e-12, 1e30
    at_60 = base * 2.0 ** 60
    for attempt in (60, 61, 100, 1023, 1024, 10**6):
        assert target.backoff_delay(attempt, base, cap, 0.0) == pytest.approx(at_60 / 2), (
            f"attempt={attempt}: the ceiling is min(cap, base * 2 ** min(attempt, 60))")
    assert target.backoff_delay(59, base, cap, 0.0) == pytest.approx(at_60 / 4)


def test_backoff_delay_doubles_up_to_the_cap() -> None:
    lowest = [target.backoff_delay(n, 0.5, 10.0, 0.0) for n in range(8)]
    highest = [target.backoff_delay(n, 0.5, 10.0, 0.999999) for n in range(8)]
    assert lowest == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])
    assert highest == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0], rel=1e-5)
    assert target.backoff_delay(3, 0.5, 10.0, 0.5) == pytest.approx(3.0)


def test_backoff_delay_survives_huge_attempts_and_refuses_negative_ones() -> None:
    for attempt in (1023, 1024, 10**6):
        assert target.backoff_delay(attempt, 0.01, 3.0, 0.5) == pytest.approx(2.25)
    with pytest.raises(ValueError):
        target.backoff_delay(-1, 0.5, 10.0, 0.5)


def test_equal_jitter_spreads_a_crowd() -> None:
    """A thousand clients dropped at once do not come back at the same instant."""
    rng = random.Random(6)
    delays = [target.backoff_delay(2, 0.5, 10.0, rng.random()) for _ in range(1000)]
    assert min(delays) >= 1.0 and max(delays) <= 2.0, "never under half the ceiling"
    per_10ms: dict[int, int] = {}
    for delay in delays:
        per_10ms[int(delay * 100)] = per_10ms.get(int(delay * 100), 0) + 1
    assert max(per_10ms.values()) < 40, "a thousand at once, without jitter"


# -- is_new --------------------------------------------------------------------------
def joined_core() -> ClientCore:
    """A ClientCore in lobby, as after its welcome and the answer to its join (seq 1)."""
    core = ClientCore("alice", "lobby")
    core.connection_made()
    actions = core.receive(p.welcome("0.1.0", p.Limits(), 0, "run1"))
    join = next(action.request for action in actions if isinstance(action, Send))
    notice = p.system("lobby", p.SystemEvent.JOIN, "alice", "alice joined", 1, 1.0)
    core.receive({**notice, "id": join["id"]})
    assert core.last_seq == {"lobby": 1}
    return core


def chat(room: str, seq: Any, text: str = "hi") -> dict[str, Any]:
    return {"type": "message", "room": room, "user": "bob", "text": text, "seq": seq, "ts": 1.0}


TRAFFIC: list[dict[str, Any]] = [
    chat("lobby", 2), chat("lobby", 2), {**chat("lobby", 2), "history": True},
    chat("lobby", 1),                               # older than what we saw
    chat("Lobby", 3), chat("\uff2cobby", 3),          # one room, whatever its spelling
    {**chat("dev", 1), "history": True},            # another room: its own last seq
    chat("dev", 1), chat("dev", 5), chat("lobby", 4),
    chat("zero", 0), chat("zero", 0),
    {"type": "whisper", "from": "bob", "to": "alice", "text": "psst", "ts": 1.0},
    {"type": "whisper", "from": "bob", "to": "alice", "text": "psst", "ts": 1.0},
    {"type": "who", "room": "lobby", "users": ["alice", "bob"]},
    {"type": "who", "room": "lobby", "users": ["alice", "bob"]},
    chat("lobby", True), chat("lobby", "9"), chat("lobby", 2.5), chat("lobby", None),
    {"type": "message", "room": None, "seq": 2}, {"type": "message", "room": 7, "seq": 2},
    {"type": "error", "code": "not_joined", "text": "join a room first"},
    {"type": "pong"}, chat("lobby", 10**20),
]


def test_is_new_agrees_with_client_core_on_every_message() -> None:
    core = joined_core()
    last_seq = dict(core.last_seq)
    for number, message in enumerate(TRAFFIC):
        shown = core.receive(message) == [Show(message)]
        before = "\n  ".join(repr(m) for m in TRAFFIC[:number]) or "(none)"
        got = target.is_new(last_seq, message)
        assert got == shown, (f"message {number}: {message}\nis_new returned {got}, "
                              f"ClientCore says {shown}; the messages before it:\n  {before}")
        assert last_seq == core.last_seq, (f"after message {number}: {message}\n"
                                           f"last_seq={last_seq}, ClientCore's {core.last_seq}")


def test_is_new_keeps_one_last_seq_per_room() -> None:
    last_seq: dict[str, int] = {}
    assert target.is_new(last_seq, chat("lobby", 7))
    assert not target.is_new(last_seq, chat("LOBBY", 7))
    assert target.is_new(last_seq, {**chat("dev", 3), "history": True}), "a lower seq, elsewhere"
    assert not target.is_new(last_seq, chat("lobby", 5))
    assert last_seq == {"lobby": 7, "dev": 3}
    assert target.is_new(last_seq, {"type": "pong"}) and last_seq == {"lobby": 7, "dev": 3}


# -- a real outage ---------------------------------------------------------------------
class StudentBackoff(Backoff):
    """The package's Backoff, with ``target.backoff_delay`` inside."""

    def delay(self, attempt: int, random_fraction: float) -> float:
        return float(target.backoff_delay(attempt, self.base_delay_s, self.max_delay_s,
                                          random_fraction))


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    with serve(port=0) as handle:
        yield handle


def until(client: ChatClient, done: Callable[[ClientEvent], bool]) -> list[ClientEvent]:
    """``client``'s events up to the first that is ``done``; fails on Closed or a deadline."""
    events = []
    while True:
        event = client.next_event(TIMEOUT_S)
        events.append(event)
        assert not isinstance(event, Closed), f"the client ended: {event.reason}"
        if done(event):
            return events


def said(text: str) -> Callable[[ClientEvent], bool]:
    return lambda event: isinstance(event, Received) and event.message.get("text") == text


def texts(events: list[ClientEvent]) -> list[tuple[str, bool]]:
    return [(e.message["text"], e.message.get("history", False)) for e in events
            if isinstance(e, Received) and e.message.get("type") == "message"]


@pytest.mark.timeout(20)
def test_a_cut_client_backs_off_rejoins_and_misses_nothing(server: ServerHandle) -> None:
    base, cap = 0.02, 0.5
    first_wait = target.backoff_delay(0, base, cap, 0.5)
    with RecordingRelay((server.host, server.port)) as relay:
        alice = ChatClient(TcpClientConfig(port=relay.address[1], user="alice", reconnect_tries=5,
                                           reconnect_base_delay_s=base,
                                           reconnect_max_delay_s=cap),
                           random=lambda: 0.5)
        alice.backoff = StudentBackoff(base, cap, 5)
        bob = ChatClient(TcpClientConfig(port=server.port, user="bob"))
        try:
            alice.connect()
            bob.connect()
            bob.send_line("before")
            until(alice, said("before"))

            relay.cut()
            events = until(alice, lambda e: isinstance(e, Notice)
                           and e.text.startswith("reconnecting"))
            assert events[-1] == Notice(f"reconnecting in {first_wait:.2f} s (try 1 of 5)")
            until(bob, lambda e: isinstance(e, Received) and e.message.get("event") == "leave")
            bob.send_line("missed 1")
            bob.send_line("missed 2")
            until(bob, said("missed 2"))
            relay.resume()

            events = until(alice, lambda e: isinstance(e, Notice)
                           and e.text.startswith("reconnected"))
            bob.send_line("after")
            events += until(alice, said("after"))
            assert texts(events) == [("missed 1", True), ("missed 2", True), ("after", False)]
            seen: dict[str, int] = {}
            shown = [e.message for e in events if isinstance(e, Received)]
            assert all(target.is_new(seen, message) for message in shown), "nothing twice"
        finally:
            alice.close()
            bob.close()
