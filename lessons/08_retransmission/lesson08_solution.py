"""Lesson 08 reference solution: ``next_delay`` and ``Retransmitter``.

The package's version is in ``chat_sync/retransmit.py``: ``RetransmitQueue``
keeps its datagrams in a heap ordered by deadline, adds jitter and an
adaptive RTO, and bounds how many may wait.
"""
from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass

from chat_sync.retransmit import GiveUp, KeyAlreadyPending, Resend


def next_delay(attempt: int, base: float, cap: float) -> float:
    """``base`` doubled ``attempt`` times, at most ``cap``."""
    return min(base * 2.0 ** attempt, cap)


@dataclass
class _Pending:
    payload: bytes
    attempt: int          # retransmissions so far
    deadline: float
    order: int            # when it was sent, among all datagrams: breaks deadline ties


class Retransmitter:
    """Resend each reliable datagram until it is acked, backing off, then give up."""

    def __init__(self, base: float, cap: float, max_retries: int) -> None:
        """Start with nothing pending."""
        self.base = base
        self.cap = cap
        self.max_retries = max_retries
        self._pending: dict[Hashable, _Pending] = {}
        self._order = itertools.count()

    def send(self, key: Hashable, payload: bytes, now: float) -> None:
        """Remember a datagram sent for the first time; KeyAlreadyPending if ``key`` waits."""
        if key in self._pending:
            raise KeyAlreadyPending(f"key {key!r} is already waiting for an ack")
        deadline = now + next_delay(0, self.base, self.cap)
        self._pending[key] = _Pending(payload, 0, deadline, next(self._order))

    def ack(self, key: Hashable) -> bool:
        """Forget ``key``; True if it was pending."""
        return self._pending.pop(key, None) is not None

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when nothing is pending."""
        earliest: float | None = None
        for entry in self._pending.values():
            if earliest is None or entry.deadline < earliest:
                earliest = entry.deadline
        return earliest

    def due(self, now: float) -> list[Resend | GiveUp]:
        """A ``Resend`` or ``GiveUp`` for each datagram due at ``now``, in deadline order."""
        ready: list[tuple[float, int, Hashable]] = []
        for key, entry in self._pending.items():
            if entry.deadline <= now:
                ready.append((entry.deadline, entry.order, key))
        ready.sort()            # by deadline, then by order: the keys are never compared
        actions: list[Resend | GiveUp] = []
        for _, _, key in ready:
            entry = self._pending[key]
            if entry.attempt >= self.max_retries:
                del self._pending[key]
                actions.append(GiveUp(key, entry.payload))
                continue
            entry.attempt += 1
            entry.deadline = now + next_delay(entry.attempt, self.base, self.cap)
            actions.append(Resend(key, entry.payload, entry.attempt))
        return actions
