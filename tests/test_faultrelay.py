"""Tests of chat_sync.faultrelay: the seeded decisions, the schedule, and one live relay."""
from __future__ import annotations

import socket
import threading

import pytest

from chat_sync.faultrelay import (
    Action,
    Decision,
    Direction,
    FaultDecider,
    FaultPlan,
    FaultRelay,
    FaultSchedule,
    Outgoing,
)

UP, DOWN = Direction.UPSTREAM, Direction.DOWNSTREAM
CLIENT = ("127.0.0.1", 5000)
OTHER_CLIENT = ("127.0.0.1", 5001)
WAIT = 5.0   # the longest any test waits for a datagram or another thread


# -- FaultPlan and FaultDecider --------------------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize("plan", [dict(loss=-0.1), dict(duplicate=1.5),
                                  dict(reorder=2.0), dict(delay=(0.2, 0.1)),
                                  dict(delay=(-1.0, 0.0))])
def test_fault_plan_rejects_nonsense(plan: dict) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**plan)


@pytest.mark.timeout(10)
def test_decisions_are_deterministic_for_a_seed() -> None:
    plan = FaultPlan(loss=0.3, duplicate=0.2, reorder=0.2, delay=(0.0, 0.1))
    first = FaultDecider(plan, plan, seed=42)
    again = FaultDecider(plan, plan, seed=42)
    other = FaultDecider(plan, plan, seed=43)
    ours = [first.decide(UP) for _ in range(200)]
    assert ours == [again.decide(UP) for _ in range(200)]
    assert ours != [other.decide(UP) for _ in range(200)]


@pytest.mark.timeout(10)
def test_one_direction_does_not_disturb_the_other() -> None:
    plan = FaultPlan(loss=0.5)
    quiet = FaultDecider(plan, plan, seed=1)
    busy = FaultDecider(plan, plan, seed=1)
    alone = [quiet.decide(UP) for _ in range(100)]
    interleaved = []
    for _ in range(100):
        busy.decide(DOWN)
        busy.decide(DOWN)
        interleaved.append(busy.decide(UP))
    assert alone == interleaved


@pytest.mark.timeout(10)
def test_changing_the_loss_rate_does_not_reshuffle_the_other_faults() -> None:
    lossless = FaultDecider(FaultPlan(duplicate=0.3), seed=5)
    lossy = FaultDecider(FaultPlan(loss=0.5, duplicate=0.3), seed=5)
    for _ in range(500):
        clean, dirty = lossless.decide(UP), lossy.decide(UP)
        if not dirty.drop:
            assert dirty.duplicate == clean.duplicate


@pytest.mark.timeout(10)
def test_rates_match_the_plan_over_many_decisions() -> None:
    plan = FaultPlan(loss=0.2, duplicate=0.05, reorder=0.1, delay=(0.01, 0.05))
    decider = FaultDecider(upstream=plan, seed=2024)
    decisions = [decider.decide(UP) for _ in range(10_000)]
    kept = [d for d in decisions if not d.drop]
    assert len(kept) / len(decisions) == pytest.approx(0.8, abs=0.02)
    assert sum(d.duplicate for d in kept) / len(kept) == pytest.approx(0.05, abs=0.01)
    assert sum(d.reorder for d in kept) / len(kept) == pytest.approx(0.1, abs=0.015)
    delays = [d.delay for d in kept]
    assert all(0.01 <= delay <= 0.05 for delay in delays)
    assert sum(delays) / len(delays) == pytest.approx(0.03, abs=0.002)


@pytest.mark.timeout(10)
def test_extreme_rates_are_exact() -> None:
    decider = FaultDecider(upstream=FaultPlan(loss=1.0), downstream=FaultPlan(), seed=9)
    assert all(decider.decide(UP).drop for _ in range(1000))
    assert all(decider.decide(DOWN) == Decision() for _ in range(1000))


@pytest.mark.timeout(10)
def test_decision_actions_name_what_happens() -> None:
    assert Decision(drop=True).actions() == [Action.DROP]
    assert Decision().actions() == []
    assert Decision(duplicate=True, delay=0.1, reorder=True).actions() == [
        Action.DUPLICATE, Action.DELAY, Action.REORDER]


# -- FaultSchedule, with scripted decisions and a fake time --------------------
class ScriptedDecider(FaultDecider):
    """Returns the given decisions in turn, whatever the direction."""

    def __init__(self, *decisions: Decision) -> None:
        super().__init__()
        self.script = list(decisions)

    def decide(self, direction: Direction) -> Decision:
        return self.script.pop(0)


@pytest.mark.timeout(10)
def test_schedule_forwards_a_clean_datagram_at_once() -> None:
    schedule = FaultSchedule(ScriptedDecider(Decision()))
    schedule.receive(UP, CLIENT, b"hello", now=1.0)
    assert schedule.due(1.0) == [Outgoing(UP, CLIENT, b"hello")]
    assert schedule.next_deadline() is None
    assert [(e.time, e.direction, e.action, e.size) for e in schedule.events] == [
        (1.0, UP, Action.FORWARD, 5)]


@pytest.mark.timeout(10)
def test_schedule_drops_and_duplicates() -> None:
    schedule = FaultSchedule(ScriptedDecider(Decision(drop=True), Decision(duplicate=True)))
    schedule.receive(DOWN, CLIENT, b"lost", now=0.0)
    schedule.receive(DOWN, CLIENT, b"twice", now=0.0)
    assert schedule.due(0.0) == [Outgoing(DOWN, CLIENT, b"twice")] * 2
    assert schedule.count(DOWN, Action.DROP) == 1
    assert schedule.count(DOWN, Action.DUPLICATE) == 1
    assert schedule.count(DOWN, Action.FORWARD) == 2
    assert schedule.received[DOWN] == 2


@pytest.mark.timeout(10)
def test_schedule_delays_until_the_due_time() -> None:
    schedule = FaultSchedule(ScriptedDecider(Decision(delay=0.5), Decision()))
    schedule.receive(UP, CLIENT, b"slow", now=0.0)
    schedule.receive(UP, CLIENT, b"fast", now=0.1)
    assert schedule.due(0.1) == [Outgoing(UP, CLIENT, b"fast")]
    assert schedule.next_deadline() == pytest.approx(0.5)
    assert schedule.due(0.49) == []
    assert schedule.due(0.5) == [Outgoing(UP, CLIENT, b"slow")]
    assert schedule.count(UP, Action.DELAY) == 1


@pytest.mark.timeout(10)
def test_schedule_reorder_lets_the_next_datagram_overtake() -> None:
    schedule = FaultSchedule(ScriptedDecider(Decision(reorder=True), Decision()))
    schedule.receive(UP, CLIENT, b"first", now=0.0)
    assert schedule.due(0.0) == []
    schedule.receive(UP, CLIENT, b"second", now=0.01)
    assert schedule.due(0.01) == [Outgoing(UP, CLIENT, b"second"),
                                  Outgoing(UP, CLIENT, b"first")]
    assert schedule.count(UP, Action.REORDER) == 1


@pytest.mark.timeout(10)
def test_schedule_reorder_hold_is_bounded() -> None:
    schedule = FaultSchedule(ScriptedDecider(Decision(reorder=True), Decision()),
                             reorder_hold=0.05)
    schedule.receive(UP, CLIENT, b"held", now=0.0)
    schedule.receive(UP, OTHER_CLIENT, b"another flow", now=0.01)
    assert schedule.due(0.01) == [Outgoing(UP, OTHER_CLIENT, b"another flow")]
    assert schedule.next_deadline() == pytest.approx(0.05)
    assert schedule.due(0.04) == []
    assert schedule.due(0.05) == [Outgoing(UP, CLIENT, b"held")]
    assert schedule.next_deadline() is None


@pytest.mark.timeout(10)
def test_schedule_event_log_is_bounded_but_counts_are_exact() -> None:
    schedule = FaultSchedule(FaultDecider(seed=3), max_events=10)
    for _ in range(100):
        schedule.receive(UP, CLIENT, b"x", now=0.0)
    schedule.due(0.0)
    assert len(schedule.events) == 10
    assert schedule.count(UP, Action.FORWARD) == 100


# -- One live relay, on 127.0.0.1 port 0 ---------------------------------------
class EchoServer:
    """A UDP echo server in a thread; it remembers who sent what."""

    STOP = b"__stop__"

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            datagram, peer = self.sock.recvfrom(65535)
            if datagram == self.STOP:
                return
            self.received.append((datagram, peer))
            self.sock.sendto(datagram, peer)

    def __enter__(self) -> EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with udp_socket() as stopper:
            stopper.sendto(self.STOP, self.address)
        self.thread.join(WAIT)
        self.sock.close()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    return sock


@pytest.mark.timeout(10)
def test_relay_without_faults_forwards_both_ways() -> None:
    with EchoServer() as echo, FaultRelay(echo.address, seed=1) as relay:
        with udp_socket() as alice, udp_socket() as bob:
            for number in range(5):
                alice.sendto(b"alice %d" % number, relay.address)
                assert alice.recvfrom(100) == (b"alice %d" % number, relay.address)
            bob.sendto(b"bob", relay.address)
            assert bob.recvfrom(100) == (b"bob", relay.address)
        assert relay.wait_for(lambda: relay.count(DOWN, Action.FORWARD) == 6, WAIT)
    assert relay.count(UP, Action.FORWARD) == 6
    assert relay.count(UP, Action.DROP) == 0
    assert {event.action for event in relay.events} == {Action.FORWARD}
    assert len({peer for _, peer in echo.received}) == 2   # one upstream socket per client


@pytest.mark.timeout(10)
def test_relay_with_total_upstream_loss_drops_everything() -> None:
    with EchoServer() as echo, FaultRelay(echo.address, upstream=FaultPlan(loss=1.0),
                                          seed=1) as relay:
        with udp_socket() as client:
            for number in range(5):
                client.sendto(b"%d" % number, relay.address)
            assert relay.wait_for(lambda: relay.count(UP, Action.DROP) == 5, WAIT)
    events = relay.events
    assert [event.action for event in events] == [Action.DROP] * 5
    assert all(event.direction is UP for event in events)
    assert relay.count(UP, Action.FORWARD) == 0
    assert echo.received == []


@pytest.mark.timeout(10)
def test_relay_address_needs_start_and_stop_is_idempotent() -> None:
    relay = FaultRelay(("127.0.0.1", 9))
    with pytest.raises(RuntimeError):
        relay.address
    relay.start()
    assert relay.address[0] == "127.0.0.1"
    relay.stop()
    relay.stop()
