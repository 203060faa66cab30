"""Tests of chat_sync.retransmit: the sans-IO cores with a fake clock, the timer thread."""
from __future__ import annotations

import random
import threading

import pytest

from chat_sync.receiving import DedupWindow, Gap, ReorderBuffer
from chat_sync.retransmit import (
    AlreadyStarted,
    GiveUp,
    KeyAlreadyPending,
    Resend,
    RetransmitQueue,
    RetransmitStats,
    TimerThread,
    TooManyPending,
)

WAIT = 5.0   # the longest any test waits for another thread; never reached when green


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_to_end(queue: RetransmitQueue) -> list[tuple[float, list]]:
    """Jump from deadline to deadline until nothing is pending; return (time, due) pairs."""
    steps = []
    deadline = queue.next_deadline()
    while deadline is not None:
        steps.append((deadline, queue.poll(deadline)))
        deadline = queue.next_deadline()
    return steps


# -- RetransmitQueue ----------------------------------------------------------
@pytest.mark.timeout(10)
def test_first_deadline_is_base_delay_and_nothing_is_due_before_it() -> None:
    queue = RetransmitQueue(jitter=0)
    assert queue.next_deadline() is None
    queue.send("a", b"hello", now=10.0)
    assert queue.pending == 1
    assert queue.next_deadline() == pytest.approx(10.2)
    assert queue.poll(10.19) == []
    assert queue.poll(10.2) == [Resend("a", b"hello", 1)]


@pytest.mark.timeout(10)
def test_delay_doubles_up_to_the_cap_then_gives_up_after_max_retries() -> None:
    queue = RetransmitQueue(jitter=0)            # 0.2 s doubling, 3 s cap, 6 retries
    queue.send("a", b"x", now=0.0)
    steps = run_to_end(queue)
    times = [t for t, _ in steps]
    gaps = [round(later - earlier, 6) for earlier, later in zip([0.0] + times, times)]
    assert gaps == [0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0]
    actions = [due for _, step in steps for due in step]
    assert actions[:6] == [Resend("a", b"x", attempt) for attempt in range(1, 7)]
    assert actions[6] == GiveUp("a", b"x")
    assert queue.pending == 0
    assert queue.stats == RetransmitStats(sent=1, retransmitted=6, given_up=1)


@pytest.mark.timeout(10)
def test_max_retries_zero_gives_up_at_the_first_deadline() -> None:
    queue = RetransmitQueue(jitter=0, max_retries=0)
    queue.send(1, b"x", now=0.0)
    assert queue.poll(0.2) == [GiveUp(1, b"x")]
    assert queue.next_deadline() is None


@pytest.mark.timeout(10)
def test_jitter_stays_within_bounds_and_under_the_cap() -> None:
    rng = random.Random(7)
    firsts = []
    for _ in range(1000):
        queue = RetransmitQueue(jitter=0.1, rng=rng)
        queue.send("a", b"x", now=0.0)
        firsts.append(queue.next_deadline())
    assert all(0.18 <= d <= 0.22 for d in firsts)
    assert max(firsts) - min(firsts) > 0.03      # it does spread them
    queue = RetransmitQueue(jitter=0.1, rng=rng)
    queue.send("a", b"x", now=0.0)
    steps = run_to_end(queue)
    times = [0.0] + [t for t, _ in steps]
    waits = [later - earlier for earlier, later in zip(times, times[1:])]
    nominal = [0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0]
    assert len(waits) == len(nominal)
    for wait, expected in zip(waits, nominal):
        assert expected * 0.9 - 1e-9 <= wait <= min(expected * 1.1, 3.0) + 1e-9


@pytest.mark.timeout(10)
def test_jitter_is_deterministic_for_a_seed() -> None:
    def deadlines(seed: int) -> list[float]:
        queue = RetransmitQueue(rng=random.Random(seed))
        queue.send("a", b"x", now=0.0)
        return [t for t, _ in run_to_end(queue)]

    assert deadlines(3) == deadlines(3)
    assert deadlines(3) != deadlines(4)


@pytest.mark.timeout(10)
def test_ack_cancels_the_pending_send() -> None:
    queue = RetransmitQueue(jitter=0)
    queue.send("a", b"A", now=0.0)
    queue.send("b", b"B", now=0.0)
    assert queue.ack("a", now=0.1) is True
    assert queue.ack("a", now=0.1) is False       # a duplicate ack
    assert queue.ack("nobody", now=0.1) is False
    assert queue.pending == 1
    assert queue.poll(1.0) == [Resend("b", b"B", 1)]
    assert queue.stats.acked == 1


@pytest.mark.timeout(10)
def test_a_key_can_be_reused_after_its_ack() -> None:
    queue = RetransmitQueue(jitter=0)
    queue.send("a", b"old", now=0.0)
    queue.ack("a", now=0.1)
    queue.send("a", b"new", now=0.1)
    assert queue.poll(0.25) == []                 # the old entry is stale
    assert queue.poll(0.31) == [Resend("a", b"new", 1)]


@pytest.mark.timeout(10)
def test_sending_a_pending_key_again_is_a_local_error() -> None:
    queue = RetransmitQueue()
    queue.send("a", b"x", now=0.0)
    with pytest.raises(KeyAlreadyPending):
        queue.send("a", b"y", now=0.0)


@pytest.mark.timeout(10)
def test_max_pending_raises_instead_of_growing() -> None:
    queue = RetransmitQueue(max_pending=2)
    queue.send(1, b"x", now=0.0)
    queue.send(2, b"x", now=0.0)
    with pytest.raises(TooManyPending):
        queue.send(3, b"x", now=0.0)
    assert queue.pending == 2
    queue.ack(1, now=0.1)
    queue.send(3, b"x", now=0.1)                   # room again
    assert queue.pending == 2


@pytest.mark.timeout(10)
def test_stale_heap_entries_are_compacted() -> None:
    queue = RetransmitQueue(max_pending=5000)
    for key in range(5000):
        queue.send(key, b"x", now=0.0)
    for key in range(4999):
        queue.ack(key, now=0.01)
        assert queue.heap_size <= max(2 * queue.pending, queue.pending + 32)
    assert queue.pending == 1
    assert queue.next_deadline() is not None
    assert queue.poll(1.0) == [Resend(4999, b"x", 1)]


@pytest.mark.timeout(10)
def test_karn_no_rtt_sample_from_a_retransmitted_datagram() -> None:
    queue = RetransmitQueue(jitter=0, adaptive_rto=True, min_rto=0.01)
    queue.send("a", b"x", now=0.0)
    assert queue.poll(0.2) == [Resend("a", b"x", 1)]
    assert queue.ack("a", now=0.25) is True        # which copy? cannot tell
    assert queue.srtt is None
    queue.send("b", b"x", now=1.0)
    queue.ack("b", now=1.05)
    assert queue.srtt == pytest.approx(0.05)


@pytest.mark.timeout(10)
def test_rfc6298_estimates_after_known_samples() -> None:
    queue = RetransmitQueue(jitter=0, adaptive_rto=True, min_rto=0.01)
    assert queue.rto == pytest.approx(0.2)          # base_delay until a sample
    queue.send(1, b"x", now=0.0)
    queue.ack(1, now=0.1)                           # R = 0.1
    assert queue.srtt == pytest.approx(0.1)
    assert queue.rttvar == pytest.approx(0.05)
    assert queue.rto == pytest.approx(0.1 + 4 * 0.05)
    queue.send(2, b"x", now=1.0)
    queue.ack(2, now=1.2)                           # R' = 0.2
    rttvar = 0.75 * 0.05 + 0.25 * abs(0.1 - 0.2)    # uses the old SRTT
    srtt = 0.875 * 0.1 + 0.125 * 0.2
    assert queue.rttvar == pytest.approx(rttvar)
    assert queue.srtt == pytest.approx(srtt)
    assert queue.rto == pytest.approx(srtt + 4 * rttvar)
    queue.send(3, b"x", now=2.0)                    # a new send waits one RTO
    assert queue.next_deadline() == pytest.approx(2.0 + srtt + 4 * rttvar)


@pytest.mark.timeout(10)
def test_adaptive_rto_is_clamped_to_min_rto_and_max_delay() -> None:
    queue = RetransmitQueue(jitter=0, adaptive_rto=True, min_rto=0.1, max_delay=3.0)
    queue.send(1, b"x", now=0.0)
    queue.ack(1, now=0.001)
    assert queue.rto == pytest.approx(0.1)
    slow = RetransmitQueue(jitter=0, adaptive_rto=True, max_delay=3.0)
    slow.send(1, b"x", now=0.0)
    slow.ack(1, now=2.0)
    assert slow.rto == pytest.approx(3.0)


@pytest.mark.timeout(10)
def test_adaptive_backoff_is_kept_for_new_datagrams_until_a_clean_sample() -> None:
    queue = RetransmitQueue(jitter=0, adaptive_rto=True, min_rto=0.01)
    queue.send("a", b"x", now=0.0)
    queue.send("b", b"x", now=0.0)
    queue.poll(0.2)                                 # both time out together
    assert queue.rto == pytest.approx(0.4)          # backed off once, not twice
    queue.poll(0.61)
    assert queue.rto == pytest.approx(0.8)
    queue.send("c", b"x", now=1.0)
    queue.ack("c", now=1.1)                         # a clean sample resets it
    assert queue.rto == pytest.approx(0.3)


@pytest.mark.timeout(10)
def test_fixed_delay_ignores_rtt_but_still_tracks_srtt() -> None:
    queue = RetransmitQueue(jitter=0)
    queue.send(1, b"x", now=0.0)
    queue.ack(1, now=0.05)
    assert queue.srtt == pytest.approx(0.05)
    assert queue.rto == pytest.approx(0.2)


# -- TimerThread ----------------------------------------------------------------
class Recorder:
    """Callback target that other threads report to; tests wait on it, never sleep."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[object, bytes]] = []
        self.fail_first = fail_first
        self.cond = threading.Condition()

    def __call__(self, key: object, payload: bytes) -> None:
        with self.cond:
            self.calls.append((key, payload))
            self.cond.notify_all()
            if len(self.calls) <= self.fail_first:
                raise OSError("network is unreachable")

    def wait_for(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.calls) >= count, WAIT)


@pytest.mark.timeout(10)
def test_timer_thread_resends_when_the_clock_passes_the_deadline() -> None:
    clock, transmitted, given_up = FakeClock(), Recorder(), Recorder()
    queue = RetransmitQueue(jitter=0)
    with TimerThread(transmitted, given_up, queue=queue, clock=clock) as timer:
        timer.send("a", b"hello")
        clock.advance(0.25)
        timer.wake()
        assert transmitted.wait_for(1)
    assert transmitted.calls == [("a", b"hello")]
    assert given_up.calls == []
    assert timer.stats.retransmitted == 1


@pytest.mark.timeout(10)
def test_timer_thread_ack_cancels() -> None:
    clock, transmitted, given_up = FakeClock(), Recorder(), Recorder()
    with TimerThread(transmitted, given_up, queue=RetransmitQueue(jitter=0),
                     clock=clock) as timer:
        timer.send("a", b"A")
        timer.send("b", b"B")
        assert timer.ack("a") is True
        assert timer.pending == 1
        clock.advance(0.25)
        timer.wake()
        assert transmitted.wait_for(1)              # "a" would be in the same batch
    assert transmitted.calls == [("b", b"B")]


@pytest.mark.timeout(10)
def test_timer_thread_reports_give_up() -> None:
    clock, transmitted, given_up = FakeClock(), Recorder(), Recorder()
    queue = RetransmitQueue(jitter=0, max_retries=1)
    with TimerThread(transmitted, given_up, queue=queue, clock=clock) as timer:
        timer.send(7, b"x")
        clock.advance(0.2)
        timer.wake()
        assert transmitted.wait_for(1)
        clock.advance(0.4)
        timer.wake()
        assert given_up.wait_for(1)
    assert given_up.calls == [(7, b"x")]
    assert timer.pending == 0


@pytest.mark.timeout(10)
def test_timer_thread_survives_an_oserror_from_transmit() -> None:
    clock, transmitted, given_up = FakeClock(), Recorder(fail_first=1), Recorder()
    with TimerThread(transmitted, given_up, queue=RetransmitQueue(jitter=0),
                     clock=clock) as timer:
        timer.send("a", b"x")
        clock.advance(0.2)
        timer.wake()
        assert transmitted.wait_for(1)              # this one raised
        clock.advance(0.4)
        timer.wake()
        assert transmitted.wait_for(2)
    assert [key for key, _ in transmitted.calls] == ["a", "a"]


@pytest.mark.timeout(10)
def test_timer_thread_idle_never_wakes_up() -> None:
    timer = TimerThread(Recorder(), Recorder()).start()   # the real clock
    try:
        # The one allowed wait: it measures idleness, it does not synchronise.
        threading.Event().wait(0.3)
        assert timer.wakeups == 0
    finally:
        timer.stop()
    assert not timer.running


@pytest.mark.timeout(10)
def test_timer_thread_send_raises_back_pressure_to_the_caller() -> None:
    with TimerThread(Recorder(), Recorder(), queue=RetransmitQueue(max_pending=1),
                     clock=FakeClock()) as timer:
        timer.send(1, b"x")
        with pytest.raises(TooManyPending):
            timer.send(2, b"x")


# -- DedupWindow -----------------------------------------------------------------
@pytest.mark.timeout(10)
def test_dedup_in_order_and_duplicates() -> None:
    stats = RetransmitStats()
    window = DedupWindow(stats=stats)
    assert [window.seen(i) for i in (1, 2, 3)] == [False, False, False]
    assert window.floor == 3 and len(window) == 0
    assert window.seen(2) is True
    assert window.seen(3) is True
    assert stats.duplicates_dropped == 2


@pytest.mark.timeout(10)
def test_dedup_out_of_order_fills_up_to_the_floor() -> None:
    window = DedupWindow()
    assert window.seen(3) is False
    assert window.seen(5) is False
    assert window.floor == 0 and len(window) == 2
    assert window.seen(3) is True
    assert window.seen(1) is False
    assert window.seen(2) is False
    assert window.floor == 3 and len(window) == 1   # only 5 above the floor
    assert window.seen(4) is False
    assert window.floor == 5 and len(window) == 0


@pytest.mark.timeout(10)
def test_dedup_ids_at_or_below_the_floor_count_as_seen() -> None:
    window = DedupWindow()
    assert window.seen(0) is True
    assert window.seen(-4) is True


@pytest.mark.timeout(10)
def test_dedup_is_bounded_and_slides_past_a_lost_id() -> None:
    window = DedupWindow(size=4)                    # ids floor+1 .. floor+4
    for request_id in (2, 3, 4):                    # 1 never comes (given up)
        assert window.seen(request_id) is False
    assert window.floor == 0 and len(window) == 3
    assert window.seen(5) is False                  # 5 > floor + size: slide past 1
    assert window.floor == 5 and len(window) == 0
    assert window.seen(1) is True                   # too late: dropped, not applied
    for request_id in range(8, 100):
        window.seen(request_id)
        assert len(window) <= 4


# -- ReorderBuffer -----------------------------------------------------------------
@pytest.mark.timeout(10)
def test_reorder_in_order_items_pass_straight_through() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer()
    assert buffer.push(1, "a", 0.0) == ["a"]
    assert buffer.push(2, "b", 0.0) == ["b"]
    assert buffer.next_deadline() is None


@pytest.mark.timeout(10)
def test_reorder_releases_in_order_once_the_hole_fills() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer()
    assert buffer.push(3, "c", 0.0) == []
    assert buffer.push(2, "b", 0.1) == []
    assert buffer.buffered == 2
    assert buffer.push(1, "a", 0.2) == ["a", "b", "c"]
    assert buffer.buffered == 0 and buffer.expected == 4


@pytest.mark.timeout(10)
def test_reorder_drops_and_counts_duplicates() -> None:
    stats = RetransmitStats()
    buffer: ReorderBuffer[str] = ReorderBuffer(stats=stats)
    buffer.push(1, "a", 0.0)
    assert buffer.push(1, "a", 0.0) == []           # already released
    buffer.push(3, "c", 0.0)
    assert buffer.push(3, "c", 0.0) == []           # already buffered
    assert buffer.duplicates == 2
    assert stats.duplicates_dropped == 2
    assert buffer.push(2, "b", 0.0) == ["b", "c"]


@pytest.mark.timeout(10)
def test_reorder_skips_a_gap_after_the_timeout() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(gap_timeout=2.0)
    buffer.push(1, "a", 0.0)
    buffer.push(4, "d", 1.0)                        # 2 and 3 are missing
    buffer.push(5, "e", 1.5)
    assert buffer.next_deadline() == pytest.approx(3.0)
    assert buffer.poll(2.9) == []
    assert buffer.poll(3.0) == [Gap(2, 3), "d", "e"]
    assert buffer.gaps == 1 and buffer.skipped == 2
    assert buffer.next_deadline() is None
    assert buffer.push(2, "b", 3.5) == []           # a straggler: too late
    assert buffer.push(6, "f", 4.0) == ["f"]


@pytest.mark.timeout(10)
def test_reorder_next_gap_is_timed_from_the_earliest_item_behind_it() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(gap_timeout=2.0)
    buffer.push(5, "e", 0.0)                        # the gap at 4 is known from t=0
    buffer.push(3, "c", 1.0)
    assert buffer.next_deadline() == pytest.approx(2.0)
    assert buffer.push(1, "a", 1.5) == ["a"]
    assert buffer.push(2, "b", 1.6) == ["b", "c"]
    assert buffer.next_deadline() == pytest.approx(2.0)
    assert buffer.poll(2.0) == [Gap(4, 4), "e"]


@pytest.mark.timeout(10)
def test_reorder_poll_skips_every_expired_gap() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(gap_timeout=1.0)
    buffer.push(3, "c", 0.0)
    buffer.push(6, "f", 0.5)
    assert buffer.poll(5.0) == [Gap(1, 2), "c", Gap(4, 5), "f"]


@pytest.mark.timeout(10)
def test_reorder_is_bounded_a_full_buffer_skips_the_gap() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(max_buffered=3)
    for n in (2, 3, 4):
        assert buffer.push(n, n, 0.0) == []
    assert buffer.push(6, 6, 0.0) == [Gap(1, 1), 2, 3, 4]
    assert buffer.buffered == 1
    assert buffer.push(5, 5, 0.0) == [5, 6]


@pytest.mark.timeout(10)
def test_reorder_first_push_sets_the_start_when_unknown() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(first=None)
    assert buffer.push(41, "x", 0.0) == ["x"]
    assert buffer.push(42, "y", 0.0) == ["y"]


@pytest.mark.timeout(10)
def test_reorder_start_sets_the_first_number_only_before_any_push() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(first=None)
    buffer.start(10)
    assert buffer.push(11, "b", 0.0) == []
    assert buffer.push(10, "a", 0.0) == ["a", "b"]
    with pytest.raises(AlreadyStarted):
        buffer.start(1)


@pytest.mark.timeout(10)
def test_cancel_stops_a_send_without_counting_an_ack_or_sampling_rtt() -> None:
    queue = RetransmitQueue(adaptive_rto=True, jitter=0.0)
    queue.send("k", b"x", 0.0)
    assert queue.cancel("k") is True and queue.cancel("k") is False
    assert queue.pending == 0 and queue.poll(100.0) == []
    assert queue.stats.acked == 0 and queue.srtt is None
