"""Lesson 09: the token bucket and the slow-reader limits, on a fake clock.

The package is the oracle: ``chat_sync.guard.TokenBucket.take`` must answer
as your ``allow`` does, and ``chat_sync.guard.Guard`` (with only its output
rule on) must agree with your ``SlowReader`` on every call and on every
deadline. Time is a plain number: no test waits for a second to pass.

The random clocks move in steps of 1/16 s and the rates are multiples of
1/2, so every token count is exact in binary floating point: two correct
buckets that add in a different order still agree to the last bit.
"""
from __future__ import annotations

import random

import pytest

from chat_sync import guard
from chat_sync.guard import Guard, GuardLimits
from lesson_target import load

target = load(__file__)
pytestmark = pytest.mark.timeout(10)     # no socket, no thread: all of it runs in milliseconds


# -- TokenBucket ------------------------------------------------------------------------

def test_a_new_bucket_allows_a_burst_then_refuses() -> None:
    bucket = target.TokenBucket(2.0, 3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(5)] == [True, True, True, False, False]


def test_tokens_come_back_at_the_rate() -> None:
    bucket = target.TokenBucket(2.0, 3, now=0.0)
    for _ in range(3):
        bucket.allow(0.0)
    assert bucket.allow(0.25) is False           # half a token: not enough
    assert bucket.allow(0.5) is True             # the other half: one whole token
    assert bucket.allow(0.5) is False
    assert [bucket.allow(1.5) for _ in range(3)] == [True, True, False]


def test_a_refused_request_spends_nothing() -> None:
    bucket = target.TokenBucket(1.0, 1, now=0.0)
    assert bucket.allow(0.0) is True
    assert [bucket.allow(0.5) for _ in range(10)] == [False] * 10
    assert bucket.allow(1.0) is True             # half a token at 0.5, half since


def test_an_idle_bucket_keeps_at_most_burst_tokens() -> None:
    bucket = target.TokenBucket(10.0, 4, now=0.0)
    assert [bucket.allow(3600.0) for _ in range(6)] == [True] * 4 + [False] * 2


def test_a_clock_that_steps_back_earns_nothing() -> None:
    bucket = target.TokenBucket(1.0, 2, now=10.0)
    assert [bucket.allow(10.0) for _ in range(3)] == [True, True, False]
    assert bucket.allow(5.0) is False            # no error, and no tokens
    assert bucket.allow(6.0) is True             # counted from 5.0, the last call


@pytest.mark.parametrize("rate, burst", [(0.0, 5), (-1.0, 5), (1.0, 0)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        target.TokenBucket(rate, burst, now=0.0)


def last_calls(calls: list[str], keep: int = 12) -> str:
    """The first call (the constructor) and the last ``keep``, one a line, for a failure."""
    shown = calls if len(calls) <= keep + 1 else [calls[0], "...", *calls[-keep:]]
    return "\n".join(f"  {call}" for call in shown)


@pytest.mark.parametrize("seed", range(8))
def test_token_bucket_agrees_with_the_package(seed: int) -> None:
    """Floods, pauses and a clock that sometimes steps back; every answer as the package's."""
    rng = random.Random(seed)
    rate = rng.choice([0.5, 1.0, 2.0, 4.0, 20.0])
    burst = rng.choice([1, 3, 5, 40])
    now = 0.0
    mine = target.TokenBucket(rate, burst, now)
    package = guard.TokenBucket(rate, burst, now)
    calls = [f"TokenBucket(rate={rate}, burst={burst}, now=0.0)"]
    for step in range(2000):
        roll = rng.random()
        if roll < 0.6:
            pass                                 # a flood: another request at the same time
        elif roll < 0.97:
            now += rng.randint(1, 64) / 16       # up to 4 s later
        else:
            now -= rng.randint(1, 16) / 16       # the clock stepped back
        got, wanted = mine.allow(now), package.take(now)
        calls.append(f"step {step}: allow(now={now}) -> {wanted}")
        assert got == wanted, (f"allow(now={now}) returned {got}, the package {wanted}; "
                               f"the calls that led here:\n{last_calls(calls)}")


# -- SlowReader -------------------------------------------------------------------------

def test_over_the_hard_limit_is_cut_off_at_once() -> None:
    assert target.SlowReader(100, 1000, 5.0).over_limit(1001, 0.0) is True
    assert target.SlowReader(100, 1000, 5.0).over_limit(1000, 0.0) is False   # not *over* it


def test_over_the_soft_limit_is_kept_for_the_grace_period() -> None:
    reader = target.SlowReader(100, 1000, 5.0)
    assert reader.over_limit(100, 0.0) is False  # at the soft limit is not over it
    assert reader.over_limit(500, 1.0) is False  # over: the grace starts at 1.0
    assert reader.over_limit(900, 5.9) is False  # still over, still within the grace
    assert reader.over_limit(500, 6.0) is True   # over for 5 s


def test_a_burst_that_drains_is_forgiven_and_the_grace_starts_afresh() -> None:
    reader = target.SlowReader(100, 1000, 5.0)
    assert reader.over_limit(800, 0.0) is False
    assert reader.over_limit(100, 4.0) is False  # caught up just in time: forgiven
    assert reader.over_limit(800, 6.0) is False  # over again: a new grace, from 6.0
    assert reader.over_limit(800, 10.9) is False
    assert reader.over_limit(800, 11.0) is True


def test_the_deadline_is_when_the_grace_runs_out() -> None:
    reader = target.SlowReader(100, 1000, 5.0)
    assert reader.deadline() is None             # nothing queued
    reader.over_limit(50, 1.0)
    assert reader.deadline() is None             # under the soft limit: no deadline
    reader.over_limit(500, 2.0)
    assert reader.deadline() == 7.0
    reader.over_limit(900, 3.0)
    assert reader.deadline() == 7.0              # still over since 2.0: the same deadline
    reader.over_limit(0, 4.0)
    assert reader.deadline() is None


def test_a_reader_that_stops_reading_is_cut_off_at_its_deadline() -> None:
    """Its queue never changes again, so only the timer calls over_limit."""
    reader = target.SlowReader(100, 1000, 5.0)
    assert reader.over_limit(300, 10.0) is False
    deadline = reader.deadline()
    assert deadline == 15.0
    assert reader.over_limit(300, deadline) is True


def test_a_soft_limit_at_or_above_the_hard_one_does_nothing() -> None:
    reader = target.SlowReader(1000, 1000, 5.0)
    assert reader.over_limit(1000, 0.0) is False
    assert reader.over_limit(1000, 100.0) is False
    assert reader.deadline() is None
    assert reader.over_limit(1001, 100.0) is True


def output_only_guard(soft: int, hard: int, grace: float, now: float) -> Guard:
    """The package's Guard with every rule off but the slow-reader limits."""
    limits = GuardLimits(rate_per_s=0, join_timeout_s=0, partial_line_timeout_s=0,
                         soft_bytes=soft, hard_bytes=hard, grace_s=grace)
    return Guard(limits, now)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("soft, hard", [(100, 1000), (256 * 1024, 1024 * 1024), (1000, 1000),
                                        (2000, 1000)])
def test_slow_reader_agrees_with_the_guard(seed: int, soft: int, hard: int) -> None:
    """Random queue sizes around both limits, and timers that fire at the deadline.

    A True closes the connection: both sides then start again with a new one.
    """
    rng = random.Random(seed)
    grace = rng.choice([0.5, 2.0, 10.0])
    sizes = [0, soft - 1, soft, soft + 1, hard - 1, hard, hard + 1]
    now = 0.0
    mine = target.SlowReader(soft, hard, grace)
    package = output_only_guard(soft, hard, grace, now)
    queued = 0
    closed = 0
    calls = [f"SlowReader(soft={soft}, hard={hard}, grace={grace})"]

    def story() -> str:
        return f"the calls that led here (since the last new SlowReader):\n{last_calls(calls)}"
    for step in range(1500):
        deadline = package.deadline()
        if deadline is not None and rng.random() < 0.3:
            now = max(now, deadline)             # the timer fires; the queue is unchanged
            cut = package.expired(now) is not None
        else:
            now += rng.randint(0, 32) / 16
            queued = rng.choice(sizes) if rng.random() < 0.7 else rng.randint(0, 2 * hard)
            cut = package.output(queued, now) is not None
        got = mine.over_limit(queued, now)
        calls.append(f"step {step}: over_limit(buffered_bytes={queued}, now={now}) -> {cut}")
        assert got == cut, f"over_limit returned {got}, the package {cut}; {story()}"
        if cut:
            closed += 1
            mine = target.SlowReader(soft, hard, grace)
            package = output_only_guard(soft, hard, grace, now)
            queued = 0
            calls = [f"SlowReader(soft={soft}, hard={hard}, grace={grace}) at now={now}"]
        got_deadline, wanted_deadline = mine.deadline(), package.deadline()
        assert got_deadline == wanted_deadline, (
            f"deadline() returned {got_deadline}, the package {wanted_deadline}; {story()}")
    assert closed > 0
