"""Lesson 08: the retransmission rules, on a fake clock.

The package is the oracle. ``RetransmitQueue(jitter=0)`` must do what your
``Retransmitter`` does, step for step. Time is an argument everywhere: the
tests jump the clock to a deadline and never wait for one.
"""
from __future__ import annotations

import random

import pytest

from chat_sync.retransmit import GiveUp, KeyAlreadyPending, Resend, RetransmitQueue
from lesson_target import load

target = load(__file__)

PAYLOAD = b'{"type":"message","text":"hi","id":1}'


def package_queue(base: float, cap: float, max_retries: int) -> RetransmitQueue:
    return RetransmitQueue(base_delay=base, max_delay=cap, max_retries=max_retries, jitter=0)


def package_waits(base: float, cap: float, max_retries: int) -> list[float]:
    """The package's wait before each retransmission of a datagram nobody acks."""
    queue = package_queue(base, cap, max_retries)
    queue.send("k", PAYLOAD, 0.0)
    waits = []
    now = 0.0
    while queue.pending:
        deadline = queue.next_deadline()
        assert deadline is not None
        waits.append(deadline - now)
        now = deadline
        queue.poll(now)
    return waits[:max_retries]


# -- next_delay -------------------------------------------------------------------------

@pytest.mark.parametrize("attempt, expected", [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.6),
                                               (4, 3.0), (5, 3.0), (30, 3.0)])
def test_next_delay_doubles_up_to_the_cap(attempt: int, expected: float) -> None:
    assert target.next_delay(attempt, 0.2, 3.0) == pytest.approx(expected)


@pytest.mark.parametrize("base, cap", [(0.2, 3.0), (0.03, 0.3), (1.0, 1.0), (0.25, 2.0)])
def test_next_delay_agrees_with_the_package(base: float, cap: float) -> None:
    mine = [target.next_delay(attempt, base, cap) for attempt in range(8)]
    assert mine == pytest.approx(package_waits(base, cap, 8))


# -- Retransmitter ----------------------------------------------------------------------

def test_a_datagram_nobody_acks_is_resent_backing_off_then_given_up() -> None:
    mine = target.Retransmitter(0.2, 3.0, 6)
    mine.send("m1", PAYLOAD, 0.0)
    timeline = []
    while (deadline := mine.next_deadline()) is not None:
        timeline.append((round(deadline, 6), mine.due(deadline)))
    assert timeline == [(0.2, [Resend("m1", PAYLOAD, 1)]),
                        (0.6, [Resend("m1", PAYLOAD, 2)]),
                        (1.4, [Resend("m1", PAYLOAD, 3)]),
                        (3.0, [Resend("m1", PAYLOAD, 4)]),
                        (6.0, [Resend("m1", PAYLOAD, 5)]),      # 3.2 capped at 3.0
                        (9.0, [Resend("m1", PAYLOAD, 6)]),
                        (12.0, [GiveUp("m1", PAYLOAD)])]


def test_nothing_is_due_before_the_deadline() -> None:
    mine = target.Retransmitter(0.2, 3.0, 6)
    assert mine.next_deadline() is None and mine.due(100.0) == []
    mine.send(1, PAYLOAD, 10.0)
    assert mine.next_deadline() == pytest.approx(10.2)
    assert mine.due(10.19) == []
    assert mine.due(10.2) == [Resend(1, PAYLOAD, 1)]


def test_an_ack_stops_the_retransmissions() -> None:
    mine = target.Retransmitter(0.2, 3.0, 6)
    mine.send(1, PAYLOAD, 0.0)
    mine.send(2, PAYLOAD, 0.0)
    assert mine.ack(1) is True
    assert mine.ack(1) is False                   # a duplicate ack
    assert mine.ack(99) is False                  # never sent
    assert mine.due(0.2) == [Resend(2, PAYLOAD, 1)]
    assert mine.ack(2) is True
    assert mine.next_deadline() is None and mine.due(1000.0) == []


def test_an_ack_after_the_give_up_is_too_late() -> None:
    mine = target.Retransmitter(0.1, 1.0, 0)     # no retransmission at all
    mine.send("join", PAYLOAD, 0.0)
    assert mine.due(0.1) == [GiveUp("join", PAYLOAD)]
    assert mine.ack("join") is False
    assert mine.next_deadline() is None


def test_a_key_still_pending_cannot_be_sent_again() -> None:
    mine = target.Retransmitter(0.2, 3.0, 6)
    mine.send(7, PAYLOAD, 0.0)
    with pytest.raises(KeyAlreadyPending):
        mine.send(7, b"other", 0.1)
    assert mine.ack(7)
    mine.send(7, b"again", 1.0)                  # acked: the key is free again
    assert mine.due(1.2) == [Resend(7, b"again", 1)]


def test_a_late_call_backs_off_from_now_not_from_the_missed_deadline() -> None:
    mine = target.Retransmitter(0.2, 3.0, 6)
    mine.send(1, PAYLOAD, 0.0)
    assert mine.due(5.0) == [Resend(1, PAYLOAD, 1)]   # due at 0.2; the caller was late
    assert mine.next_deadline() == pytest.approx(5.4)
    assert mine.due(5.39) == []


def test_due_is_in_deadline_order_and_ties_in_send_order() -> None:
    mine = target.Retransmitter(0.2, 3.0, 6)
    mine.send("c", b"c", 0.0)
    mine.send("a", b"a", 0.0)                    # same deadline as "c": after it
    mine.send("b", b"b", -0.1)                   # earlier deadline: first
    assert mine.due(0.2) == [Resend("b", b"b", 1), Resend("c", b"c", 1), Resend("a", b"a", 1)]


@pytest.mark.parametrize("seed", range(8))
def test_retransmitter_agrees_with_the_package_step_by_step(seed: int) -> None:
    """Random sends, acks and clock jumps; every answer must equal the package's."""
    rng = random.Random(seed)
    base, cap, retries = rng.choice([(0.2, 3.0, 6), (0.03, 0.3, 12), (0.5, 0.5, 2)])
    mine = target.Retransmitter(base, cap, retries)
    package = package_queue(base, cap, retries)
    now = 0.0
    next_key = 1
    for step in range(400):
        roll = rng.random()
        if roll < 0.3:
            mine.send(next_key, b"%d" % next_key, now)
            package.send(next_key, b"%d" % next_key, now)
            next_key += 1
        elif roll < 0.5 and next_key > 1:
            key = rng.randrange(1, next_key + 2)     # pending, done, or never sent
            assert mine.ack(key) == package.ack(key, now), f"step {step}: ack({key})"
        else:
            deadline = package.next_deadline()
            if deadline is not None and rng.random() < 0.5:
                now = deadline                       # exactly on the deadline
            else:
                now += rng.uniform(0.0, 2 * cap)
            assert mine.due(now) == package.poll(now), f"step {step}: due({now})"
        assert mine.next_deadline() == package.next_deadline(), f"step {step}"
