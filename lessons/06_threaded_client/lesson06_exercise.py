"""Lesson 06 exercise: how long to wait before reconnecting, and what not to show twice.

Both are pure functions: the randomness and the state are handed in, so the
tests call them with plain values and compare them with the package's
``Backoff.delay`` and ``ClientCore``. Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/06_threaded_client
"""
from __future__ import annotations

from typing import Any

# What you will need.
from chat_sync.protocol import name_key  # noqa: F401


def backoff_delay(attempt: int, base: float, cap: float, random_fraction: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 for the first).

    The ceiling doubles with each attempt, from ``base``, and never exceeds
    ``cap``: ``min(cap, base * 2 ** attempt)``, except that the doubling
    stops at attempt 60 (after that the ceiling stays
    ``min(cap, base * 2 ** 60)``). Return a point in ``[ceiling / 2, ceiling]``
    chosen by ``random_fraction`` (in [0, 1), as ``random.random()`` gives):
    ``ceiling / 2`` for 0, half-way for 0.5. This is "equal jitter": half of
    the wait is fixed, half is random.

    Raise ValueError for a negative ``attempt``. Any other attempt must
    work, however large: ``2.0 ** 1024`` does not fit in a float (try it).
    With any sensible ``base`` the ceiling is ``cap`` long before 60
    doublings; the tests also try a ``base`` and ``cap`` where it is not.
    """
    raise NotImplementedError("exercise: write backoff_delay")


def is_new(last_seq: dict[str, int], message: dict[str, Any]) -> bool:
    """Whether ``message`` is new to the client; records the seq of a new room broadcast.

    ``last_seq`` maps ``name_key(room)`` to the highest ``seq`` seen in that
    room. A room broadcast is a message whose ``room`` is a ``str`` and whose
    ``seq`` is an ``int`` (``True`` is an ``int`` in Python, and is not a
    seq). A room broadcast is new when its room has no entry yet, or its seq
    is above the entry; then store its seq there and return True. Return
    False for one already seen (a seq at or below the entry), leaving
    ``last_seq`` as it was. Anything that is not a room broadcast (a
    whisper, a ``who`` reply, an error) is always new and changes nothing.
    """
    raise NotImplementedError("exercise: write is_new")
