"""A bounded log of records that one thread writes and others read or follow.

Theory of operation
-------------------
The recording relays (``recorder.RecordingRelay`` for TCP,
``datagram_recorder.RecordingFaultRelay`` for UDP) write down what passes
in their loop thread; tests, notebooks and ``chat-sync record`` read it from
another. ``RecordLog`` is the one place where that hand-over happens:

- It is bounded: it keeps the latest ``max_records``, holding at most
  ``max_bytes`` of data between them (``size`` says how much one holds),
  and counts the ones it dropped, so a relay left running cannot eat memory.
- Every record gets a number, its position in everything ever appended.
  ``follow(start)`` returns the records from number ``start`` on, waiting
  until there is one (or the log is closed), and the number to ask for
  next: the way a reader tails the log without copying it all each time.
  Records dropped before the reader got to them are simply missing; the
  reader sees the gap in the numbers.
- Waiting is on a ``threading.Condition`` notified by each append, never a
  poll: ``wait_for`` and ``follow`` take a timeout.
"""
from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Followed(NamedTuple, Generic[T]):
    """What ``follow`` returns: the new records, and the number to ask for next."""

    records: list[T]
    next: int
    dropped: int         # records between ``start`` and the first returned that are gone


class RecordLog(Generic[T]):
    """The latest ``max_records`` records, safe to read while another thread appends."""

    def __init__(self, max_records: int, max_bytes: int | None = None,
                 size: Callable[[T], int] = lambda record: 0) -> None:
        if max_records < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("max_records and max_bytes must be >= 1")
        self._records: deque[T] = deque()
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._size = size
        self._bytes = 0
        self._appended = 0
        self._closed = False
        # An RLock: ``close`` may be called by a signal handler in a thread inside ``follow``.
        self._changed = threading.Condition(threading.RLock())

    def append(self, record: T) -> None:
        with self._changed:
            self._records.append(record)
            self._bytes += self._size(record)
            while len(self._records) > self._max_records or (
                    self._max_bytes is not None and self._bytes > self._max_bytes
                    and len(self._records) > 1):
                self._bytes -= self._size(self._records.popleft())
            self._appended += 1
            self._changed.notify_all()

    def close(self) -> None:
        """No more records will come: wake every reader waiting in ``follow``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def records(self) -> list[T]:
        """A snapshot of the records kept, oldest first."""
        with self._changed:
            return list(self._records)

    @property
    def dropped(self) -> int:
        """How many of the oldest records were dropped to stay within ``max_records``."""
        with self._changed:
            return self._appended - len(self._records)

    def wait_for(self, predicate: Callable[[list[T]], bool], timeout: float) -> bool:
        """Wait until ``predicate(records)`` is true; returns False if ``timeout`` passes first."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(list(self._records)), timeout)

    def follow(self, start: int, timeout: float | None = None) -> Followed[T]:
        """The records numbered ``start`` on; waits up to ``timeout`` for one to come.

        Returns at once if there are some, or the log is closed; an empty list
        after ``timeout`` seconds (``None``: no limit) with nothing new.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._appended > start or self._closed, timeout)
            first_kept = self._appended - len(self._records)
            skip = max(0, start - first_kept)
            records = list(itertools.islice(self._records, skip, None))
            return Followed(records, self._appended, max(0, first_kept - start))

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed
