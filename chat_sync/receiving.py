"""The receiving half of reliable UDP: duplicates dropped, a stream put back in order.

Theory of operation
-------------------
Two small sans-IO classes, one per concern of whoever receives reliable
datagrams (the sender's half, retransmission, is ``retransmit``):

- ``DedupWindow`` (server): a retransmitted request whose first copy did
  arrive (only the ack was lost) must be acked again but not applied twice.
  It remembers a floor and the ids seen above it, at most ``size`` of them,
  and refuses ids too far above the window, so no single datagram can move
  the floor far (a forged id 2**53 would otherwise make every real request
  a "duplicate").
- ``ReorderBuffer`` (client): releases the server's stream of datagrams,
  numbered ``n = 1, 2, 3 ...``, exactly once and in order, holding at most
  ``capacity`` early ones, and skips a gap that stays open ``gap_timeout``,
  reporting it as ``Gap``: a loss is told, not hidden.

Time is an argument; nothing here reads a clock, and neither is thread-safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

from .retransmit import AlreadyStarted, RetransmitStats

DEFAULT_DEDUP_WINDOW = 1024
DEFAULT_REORDER_BUFFER = 256
DEFAULT_GAP_TIMEOUT = 3.0

T = TypeVar("T")


class DedupWindow:
    """Which request ids of one client were already seen (server side).

    Remembers ``floor``, the highest id below which every id was seen, plus
    the ids seen above it, at most ``size`` ids above the floor. Ids start
    at 1. When an id arrives more than ``size`` above the floor, the floor
    moves up and ids it passes count as seen even if they never came: a
    request that late is safer dropped than applied twice. Answer a
    duplicate with an ack again; only its effect must not repeat.
    """

    def __init__(self, size: int = DEFAULT_DEDUP_WINDOW,
                 stats: RetransmitStats | None = None, *, first: int = 1) -> None:
        if size < 1 or first < 1:
            raise ValueError("need size >= 1 and first >= 1")
        self.size = size
        self.floor = first - 1              # every id <= floor counts as seen
        self.stats = stats
        self._above: set[int] = set()

    def __len__(self) -> int:
        return len(self._above)

    def in_window(self, request_id: int) -> bool:
        """Whether ``request_id`` may be taken: not more than ``size`` above the floor.

        One that is further would move the floor (below), and every real id
        after it would pass for a duplicate: refuse it instead.
        """
        return request_id <= self.floor + self.size

    def has(self, request_id: int) -> bool:
        """Whether ``request_id`` was seen, without marking it."""
        return request_id <= self.floor or request_id in self._above

    def seen(self, request_id: int) -> bool:
        """Mark ``request_id`` seen; return True if it already was (a duplicate)."""
        if request_id <= self.floor or request_id in self._above:
            if self.stats is not None:
                self.stats.duplicates_dropped += 1
            return True
        if request_id > self.floor + self.size:
            self._raise_floor(request_id - self.size)
        self._above.add(request_id)
        self._advance_floor()
        return False

    def _raise_floor(self, floor: int) -> None:
        self.floor = floor
        self._above = {rid for rid in self._above if rid > floor}

    def _advance_floor(self) -> None:
        while self.floor + 1 in self._above:
            self.floor += 1
            self._above.remove(self.floor)


@dataclass(frozen=True)
class Gap:
    """Stream numbers ``first_missing..last_missing`` never came and were skipped."""

    first_missing: int
    last_missing: int

    @property
    def count(self) -> int:
        return self.last_missing - self.first_missing + 1


class ReorderBuffer(Generic[T]):
    """Releases a stream's items exactly once, in order of their number ``n`` (client side).

    ``push`` and ``poll`` both return a list of released items and ``Gap``
    reports, in stream order. An item whose ``n`` was already released or is
    already buffered is dropped and counted in ``duplicates`` (a straggler
    from a skipped gap counts there too: delivering it late would break the
    order). A gap is skipped when it has been open ``gap_timeout`` seconds
    (measured from the arrival of the earliest item waiting behind it), or
    at once when ``max_buffered`` items wait, which bounds memory.

    ``first`` is the first ``n`` expected (streams start at 1). With
    ``first=None`` the first push, or ``start(n)``, sets it.
    """

    def __init__(self, *, gap_timeout: float = DEFAULT_GAP_TIMEOUT,
                 max_buffered: int = DEFAULT_REORDER_BUFFER, first: int | None = 1,
                 stats: RetransmitStats | None = None) -> None:
        if gap_timeout < 0 or max_buffered < 1:
            raise ValueError("need gap_timeout >= 0 and max_buffered >= 1")
        self.gap_timeout = gap_timeout
        self.max_buffered = max_buffered
        self.expected = first               # the next n to release
        self.stats = stats
        self.duplicates = 0
        self.gaps = 0                       # Gap reports so far
        self.skipped = 0                    # stream numbers skipped by them
        self._buffer: dict[int, tuple[T, float]] = {}   # n -> (item, arrival time)
        self._gap_since: float | None = None            # earliest arrival in _buffer
        self._pushed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def start(self, n: int) -> None:
        """Set the first ``n`` expected. Raises AlreadyStarted after a push."""
        if self._pushed:
            raise AlreadyStarted("the stream has begun; make a new ReorderBuffer")
        self.expected = n

    def next_deadline(self) -> float | None:
        """When the open gap times out, or None when no gap is open."""
        if self._gap_since is None:
            return None
        return self._gap_since + self.gap_timeout

    def push(self, n: int, item: T, now: float) -> list[T | Gap]:
        """Take the item numbered ``n``; return what can now be released in order."""
        self._pushed = True
        if self.expected is None:
            self.expected = n
        if n < self.expected or n in self._buffer:
            self._count_duplicate()
            return []
        self._buffer[n] = (item, now)
        if self._gap_since is None or now < self._gap_since:
            self._gap_since = now
        released = self._release_in_order()
        if len(self._buffer) > self.max_buffered:
            released.extend(self._skip_gap())   # full: give up on the gap now
        return released

    def poll(self, now: float) -> list[T | Gap]:
        """Skip every gap that has been open ``gap_timeout``; return what that releases."""
        released: list[T | Gap] = []
        while True:
            deadline = self.next_deadline()
            if deadline is None or now < deadline:
                return released
            released.extend(self._skip_gap())

    def _count_duplicate(self) -> None:
        self.duplicates += 1
        if self.stats is not None:
            self.stats.duplicates_dropped += 1

    def _skip_gap(self) -> list[T | Gap]:
        """Report the gap before the lowest buffered item, then release from there."""
        assert self.expected is not None and self._buffer
        lowest = min(self._buffer)
        gap = Gap(self.expected, lowest - 1)
        self.gaps += 1
        self.skipped += gap.count
        self.expected = lowest
        released: list[T | Gap] = [gap]
        released.extend(self._release_in_order())
        return released

    def _release_in_order(self) -> list[T | Gap]:
        assert self.expected is not None
        released: list[T | Gap] = []
        while self.expected in self._buffer:
            item, _ = self._buffer.pop(self.expected)
            released.append(item)
            self.expected += 1
        if not released:
            return released                 # the open gap, if any, is unchanged
        if self._buffer:
            # The new gap has been known since the earliest waiting item came.
            self._gap_since = min(arrival for _, arrival in self._buffer.values())
        else:
            self._gap_since = None
        return released
