"""Reliable delivery over UDP: retransmission, duplicate suppression, reordering.

Theory of operation
-------------------
UDP may lose, duplicate and reorder datagrams. chat_sync makes the datagrams
that matter reliable with three small pieces, one per concern:

- ``RetransmitQueue`` (sender side, both client and server). Every reliable
  datagram gets a key (a request id, or a ``(client address, n)`` pair) and
  is remembered until the peer acks that key. The caller sends a datagram
  the first time itself; the queue answers two questions, aioquic-style:
  ``next_deadline()`` ("when must I wake up?") and ``poll(now)`` ("what is
  due now?"), which returns ``Resend`` and ``GiveUp`` actions. Rules:

  * The wait before the first retransmission is the RTO: ``base_delay``,
    or with ``adaptive_rto=True`` an estimate from measured round trips
    (RFC 6298: SRTT, RTTVAR, RTO = SRTT + 4 * RTTVAR, clamped to
    ``[min_rto, max_delay]``). Each retransmission doubles the wait, up to
    ``max_delay``. A random jitter of +-``jitter`` (10%) spreads retries
    so that many clients that lost the same burst do not retry in step;
    ``max_delay`` stays a hard ceiling.
  * After ``max_retries`` retransmissions with no ack the datagram is given
    up: ``poll`` returns ``GiveUp`` and forgets it.
  * Karn's rule: an ack for a datagram that was retransmitted cannot say
    which copy it answers, so it gives no round-trip sample. The other half
    of Karn's algorithm: the backed-off wait is kept for new datagrams until
    a clean sample arrives, so a too-small RTO cannot starve itself of
    samples.
  * Bounded: at most ``max_pending`` datagrams wait for an ack. One more
    raises ``TooManyPending``; that is back-pressure for the caller (stop
    reading input, or tell the user), never silent growth.
  * The pending datagrams sit in a heap ordered by deadline. An ack does not
    dig its entry out of the heap (that is O(n)); it forgets the key, and the
    heap entry, now stale, is skipped when it reaches the top. When stale
    entries outnumber live ones the heap is rebuilt, so it stays bounded.

- ``TimerThread``: the one timer thread per endpoint. It turns the queue's
  questions into ``Condition.wait(deadline - clock())`` and calls the
  ``transmit`` / ``on_give_up`` callbacks, outside its lock. With nothing
  pending it waits with no timeout at all: an idle endpoint never wakes up.

- Receive side, in ``receiving``: ``DedupWindow`` (server): a retransmitted
  request whose first copy did arrive (only the ack was lost) must be acked
  again but not applied twice. ``ReorderBuffer`` (client): releases the
  server's reliable datagrams exactly once and in order, and skips a gap
  that stays open too long, reporting it as ``Gap``.

Why a stream counter ``n`` and not the chat ``seq``: the server's ``seq`` is
one counter shared by all rooms, so one client sees holes in ``seq`` that are
not losses (messages of rooms it is not in). The server therefore numbers
each client's reliable stream separately, ``n = 1, 2, 3, ...``, with no holes;
``ReorderBuffer`` works on ``n`` and carries the chat message, ``seq``
included, as an opaque item.

Everything here except ``TimerThread`` is sans-IO: no sockets, no threads, no
clock reads; time is always an argument. None of the sans-IO classes is
thread-safe: each belongs to one thread (``TimerThread`` guards its queue).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Generic, Hashable, TypeVar, Union

log = logging.getLogger(__name__)

# RFC 6298 section 2 constants.
RTT_ALPHA = 1 / 8     # gain of SRTT
RTT_BETA = 1 / 4      # gain of RTTVAR
RTT_K = 4             # RTO = SRTT + K * RTTVAR

DEFAULT_BASE_DELAY = 0.2
DEFAULT_MAX_DELAY = 3.0
DEFAULT_MIN_RTO = 0.1
DEFAULT_MAX_RETRIES = 6
DEFAULT_JITTER = 0.1
DEFAULT_MAX_PENDING = 1024

_COMPACT_MIN_STALE = 32   # never rebuild the heap for fewer stale entries than this

Key = Hashable
T = TypeVar("T")


# -- Errors: we misused the API (local), never the peer's fault --------------
class RetransmitError(Exception):
    """The caller misused a retransmit object; a bug or back-pressure."""


class TooManyPending(RetransmitError):
    """``max_pending`` datagrams already wait for an ack: slow down."""


class KeyAlreadyPending(RetransmitError):
    """A key was sent twice while its first datagram still waits for an ack."""


class AlreadyStarted(RetransmitError):
    """``ReorderBuffer.start`` was called after the stream had begun."""


# -- Counters -------------------------------------------------------------------
@dataclass
class RetransmitStats:
    """What one endpoint's reliability layer did; the client's ``/stats`` prints it.

    ``duplicates_dropped`` is counted by ``DedupWindow`` / ``ReorderBuffer``
    when they are given this object, or by the caller.
    """

    sent: int = 0
    retransmitted: int = 0
    acked: int = 0
    duplicates_dropped: int = 0
    given_up: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        """One line such as ``sent=3 retransmitted=1 acked=3 ...``."""
        return " ".join(f"{name}={value}" for name, value in self.as_dict().items())


# -- What poll() returns ----------------------------------------------------
@dataclass(frozen=True)
class Resend:
    """Send ``payload`` again; ``attempt`` is 1 for the first retransmission."""

    key: Key
    payload: bytes
    attempt: int


@dataclass(frozen=True)
class GiveUp:
    """No ack after ``max_retries`` retransmissions; the queue forgot ``key``."""

    key: Key
    payload: bytes


Due = Union[Resend, GiveUp]


@dataclass
class _Pending:
    payload: bytes
    first_sent: float
    attempt: int          # retransmissions so far
    delay: float          # current wait, before jitter
    deadline: float
    order: int            # identifies this datagram's live heap entry


class RetransmitQueue:
    """Sans-IO retransmission timers for reliable datagrams; see the module comment."""

    def __init__(self, *, base_delay: float = DEFAULT_BASE_DELAY,
                 max_delay: float = DEFAULT_MAX_DELAY,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 jitter: float = DEFAULT_JITTER,
                 rng: random.Random | None = None,
                 adaptive_rto: bool = False,
                 min_rto: float = DEFAULT_MIN_RTO,
                 max_pending: int = DEFAULT_MAX_PENDING,
                 stats: RetransmitStats | None = None) -> None:
        if not 0 < base_delay <= max_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        if not 0 < min_rto <= max_delay:
            raise ValueError("need 0 < min_rto <= max_delay")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if max_retries < 0 or max_pending < 1:
            raise ValueError("need max_retries >= 0 and max_pending >= 1")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retries = max_retries
        self.jitter = jitter
        self.adaptive_rto = adaptive_rto
        self.min_rto = min_rto
        self.max_pending = max_pending
        self.stats = stats if stats is not None else RetransmitStats()
        self.srtt: float | None = None      # smoothed round trip, once sampled
        self.rttvar: float | None = None    # its mean deviation
        self._rng = rng if rng is not None else random.Random()
        self._rto = base_delay              # first wait of a new datagram
        self._pending: dict[Key, _Pending] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._order = itertools.count()

    # -- questions ------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many datagrams wait for an ack."""
        return len(self._pending)

    @property
    def rto(self) -> float:
        """The wait before a new datagram's first retransmission (jitter aside)."""
        return self._rto

    def is_pending(self, key: Key) -> bool:
        return key in self._pending

    def next_deadline(self) -> float | None:
        """When ``poll`` next has work, or None when nothing is pending."""
        self._drop_stale_top()
        if not self._heap:
            return None
        return self._heap[0][0]

    # -- events -----------------------------------------------------------------
    def send(self, key: Key, payload: bytes, now: float) -> None:
        """Remember a reliable datagram the caller is sending for the first time.

        Raises TooManyPending when ``max_pending`` are already waiting, and
        KeyAlreadyPending when ``key`` is still waiting for its ack.
        """
        if key in self._pending:
            raise KeyAlreadyPending(f"key {key!r} is already waiting for an ack")
        if len(self._pending) >= self.max_pending:
            raise TooManyPending(f"{self.max_pending} datagrams already wait for an ack")
        delay = self._rto
        entry = _Pending(payload=payload, first_sent=now, attempt=0, delay=delay,
                         deadline=now + self._jittered(delay), order=next(self._order))
        self._pending[key] = entry
        heapq.heappush(self._heap, (entry.deadline, entry.order, key))
        self.stats.sent += 1

    def ack(self, key: Key, now: float) -> bool:
        """The peer acked ``key``: stop retransmitting it.

        Returns False when ``key`` was not pending (a duplicate or late ack,
        or one for a datagram already given up): nothing to do.
        """
        entry = self._pending.pop(key, None)
        if entry is None:
            return False
        self.stats.acked += 1
        if entry.attempt == 0:          # Karn: only never-retransmitted datagrams
            self._take_rtt_sample(now - entry.first_sent)
        self._maybe_compact()
        return True

    def cancel(self, key: Key) -> bool:
        """Stop retransmitting ``key`` without an ack (its peer is gone).

        Unlike ``ack`` it counts nothing and takes no round-trip sample.
        Returns False when ``key`` was not pending.
        """
        if self._pending.pop(key, None) is None:
            return False
        self._maybe_compact()
        return True

    def poll(self, now: float) -> list[Due]:
        """Everything due at ``now``, in deadline order.

        A ``Resend`` is rescheduled before it is returned (the caller must
        send it); a ``GiveUp`` is forgotten.
        """
        due: list[Due] = []
        while self._heap and self._heap[0][0] <= now:
            _, order, key = heapq.heappop(self._heap)
            entry = self._pending.get(key)
            if entry is None or entry.order != order:
                continue                 # stale: acked since it was pushed
            if entry.attempt >= self.max_retries:
                del self._pending[key]
                self.stats.given_up += 1
                due.append(GiveUp(key, entry.payload))
            else:
                self._reschedule(key, entry, now)
                self.stats.retransmitted += 1
                due.append(Resend(key, entry.payload, entry.attempt))
        return due

    # -- the rules ---------------------------------------------------------------
    def _reschedule(self, key: Key, entry: _Pending, now: float) -> None:
        """Back off: double this datagram's wait, up to ``max_delay``."""
        entry.attempt += 1
        entry.delay = min(entry.delay * 2, self.max_delay)
        entry.deadline = now + self._jittered(entry.delay)
        heapq.heappush(self._heap, (entry.deadline, entry.order, key))
        if self.adaptive_rto:
            # Karn, second half: keep the backed-off wait for new datagrams
            # until a clean sample says otherwise. max(), not *2, so a burst of
            # timeouts at once backs off once, not once per datagram.
            self._rto = max(self._rto, entry.delay)

    def _jittered(self, delay: float) -> float:
        factor = self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(delay * factor, self.max_delay)

    def _take_rtt_sample(self, rtt: float) -> None:
        """RFC 6298 section 2. SRTT is tracked even with a fixed delay, for stats."""
        rtt = max(rtt, 0.0)
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            # RTTVAR first: it uses the SRTT from before this sample.
            self.rttvar = (1 - RTT_BETA) * self.rttvar + RTT_BETA * abs(self.srtt - rtt)
            self.srtt = (1 - RTT_ALPHA) * self.srtt + RTT_ALPHA * rtt
        if self.adaptive_rto:
            rto = self.srtt + RTT_K * self.rttvar
            self._rto = min(max(rto, self.min_rto), self.max_delay)

    def _drop_stale_top(self) -> None:
        while self._heap:
            _, order, key = self._heap[0]
            entry = self._pending.get(key)
            if entry is not None and entry.order == order:
                return
            heapq.heappop(self._heap)

    def _maybe_compact(self) -> None:
        """Rebuild the heap when acked (stale) entries outnumber live ones.

        Each pending datagram has exactly one live heap entry, so the number
        of stale entries is the difference of the two sizes.
        """
        stale = len(self._heap) - len(self._pending)
        if stale >= _COMPACT_MIN_STALE and stale > len(self._pending):
            self._heap = [(entry.deadline, entry.order, key)
                          for key, entry in self._pending.items()]
            heapq.heapify(self._heap)

    @property
    def heap_size(self) -> int:
        """Heap entries, stale ones included; for tests of the bound."""
        return len(self._heap)


# -- The timer thread ---------------------------------------------------------
class TimerThread:
    """One thread per endpoint that retransmits what the peer has not acked.

    ``transmit(key, payload)`` sends a datagram again; ``on_give_up(key,
    payload)`` reports one that was never acked. Both run on the timer
    thread, outside its lock, so they may call ``send`` or ``ack``. An
    ``OSError`` from ``transmit`` (a full socket buffer, an ICMP refusal) is
    logged and the datagram stays scheduled; any other exception is a bug
    and ends the thread loudly.

    With a fake ``clock``, call ``wake()`` after moving the clock on, so the
    thread looks again.
    """

    def __init__(self, transmit: Callable[[Key, bytes], None],
                 on_give_up: Callable[[Key, bytes], None], *,
                 queue: RetransmitQueue | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 name: str = "retransmit-timer") -> None:
        self.queue = queue if queue is not None else RetransmitQueue()
        self.wakeups = 0                    # returns from Condition.wait
        self._transmit = transmit
        self._on_give_up = on_give_up
        self._clock = clock
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def stats(self) -> RetransmitStats:
        return self.queue.stats

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def pending(self) -> int:
        with self._cond:
            return self.queue.pending

    def send(self, key: Key, payload: bytes) -> None:
        """Register a reliable datagram; call it just before the first ``sendto``.

        Registering first means an ack that races back cannot arrive before
        the queue knows the key. Raises TooManyPending / KeyAlreadyPending.
        """
        with self._cond:
            self.queue.send(key, payload, self._clock())
            self._cond.notify()

    def ack(self, key: Key) -> bool:
        """The peer acked ``key``; returns False when it was not pending."""
        with self._cond:
            acked = self.queue.ack(key, self._clock())
            self._cond.notify()
        return acked

    def cancel(self, key: Key) -> bool:
        """Stop retransmitting ``key``, whose peer is gone; False if it was not pending."""
        with self._cond:
            cancelled = self.queue.cancel(key)
            self._cond.notify()
        return cancelled

    def wake(self) -> None:
        """Make the thread read the clock again (for tests with a fake clock)."""
        with self._cond:
            self._cond.notify()

    def start(self) -> TimerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and wait for it; pending datagrams are abandoned."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> TimerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._wait_for_due()
            if due is None:
                return
            self._dispatch(due)             # outside the lock

    def _wait_for_due(self) -> list[Due] | None:
        """Sleep until something is due; None means stop. Called holding the lock."""
        while not self._stopping:
            now = self._clock()
            due = self.queue.poll(now)
            if due:
                return due
            deadline = self.queue.next_deadline()
            if deadline is None:
                self._cond.wait()           # idle: no timeout, no wake-ups
            else:
                self._cond.wait(deadline - now)
            self.wakeups += 1
        return None

    def _dispatch(self, due: list[Due]) -> None:
        for action in due:
            if isinstance(action, Resend):
                try:
                    self._transmit(action.key, action.payload)
                except OSError as exc:
                    log.warning("retransmit of %r failed: %s", action.key, exc)
            else:
                self._on_give_up(action.key, action.payload)
