"""Lesson 08 exercise: the retransmission timer's rules.

Two pieces of ``chat_sync/retransmit.py``, written again without the
extras, and tested with a fake clock against the package: time is a number
you pass in, so a test can jump to a deadline instead of waiting for it.
Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/08_retransmission
"""
from __future__ import annotations

from collections.abc import Hashable

# What you will need: the package's actions and its error for a key sent twice.
from chat_sync.retransmit import GiveUp, KeyAlreadyPending, Resend  # noqa: F401


def next_delay(attempt: int, base: float, cap: float) -> float:
    """The wait before the next retransmission, after ``attempt`` retransmissions so far.

    Exponential back-off: ``base`` when nothing has been retransmitted yet
    (``attempt == 0``), twice as long after each retransmission, but never
    more than ``cap``. With base 0.2 and cap 3.0: 0.2, 0.4, 0.8, 1.6, 3.0,
    3.0, ...
    """
    raise NotImplementedError("exercise: write next_delay")


class Retransmitter:
    """Resend each reliable datagram until it is acked, backing off, then give up.

    The package's ``RetransmitQueue`` with ``jitter=0`` and without the
    adaptive RTO, the statistics and the bound: no socket, no thread, no
    clock. The caller sends a datagram itself, tells ``send`` about it, and
    calls ``due(now)`` when ``next_deadline()`` has come.
    """

    def __init__(self, base: float, cap: float, max_retries: int) -> None:
        """Start with nothing pending.

        ``base`` and ``cap`` are ``next_delay``'s; ``max_retries`` is how many
        retransmissions a datagram gets before it is given up.
        """
        raise NotImplementedError("exercise: write Retransmitter.__init__")

    def send(self, key: Hashable, payload: bytes, now: float) -> None:
        """Remember ``payload``, which the caller has just sent for the first time at ``now``.

        Its first retransmission is due ``next_delay(0, ...)`` after ``now``.
        Raise ``KeyAlreadyPending`` if ``key`` is still waiting for its ack:
        that is a bug in the caller. A key that was acked or given up may be
        sent again.
        """
        raise NotImplementedError("exercise: write Retransmitter.send")

    def ack(self, key: Hashable) -> bool:
        """The peer acked ``key``: forget it, so it is never resent.

        Return True if it was pending, False if not (a duplicate or late ack,
        or an ack for a datagram already given up).
        """
        raise NotImplementedError("exercise: write Retransmitter.ack")

    def next_deadline(self) -> float | None:
        """The earliest deadline of a pending datagram, or None when nothing is pending."""
        raise NotImplementedError("exercise: write Retransmitter.next_deadline")

    def due(self, now: float) -> list[Resend | GiveUp]:
        """What to do at ``now`` for every datagram whose deadline is ``<= now``.

        In deadline order; equal deadlines in the order their keys were sent.
        A datagram that has had ``max_retries`` retransmissions is forgotten
        and reported as ``GiveUp(key, payload)``. Any other becomes
        ``Resend(key, payload, attempt)``, ``attempt`` counting its
        retransmissions including this one (1 the first time); its next
        deadline is ``now + next_delay(attempt, ...)``: counted from ``now``,
        even if ``due`` was called late.
        """
        raise NotImplementedError("exercise: write Retransmitter.due")
