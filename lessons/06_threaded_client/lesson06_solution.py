"""Lesson 06 reference solution: ``backoff_delay`` and ``is_new``.

The package's own are ``Backoff.delay`` in ``chat_sync/tcp_client_core.py``
and ``RoomSeqs.is_new`` in ``chat_sync/client_actions.py``.
"""
from __future__ import annotations

from typing import Any

from chat_sync.protocol import name_key

MAX_DOUBLINGS = 60      # base * 2**60 is past any sane cap, and 2.0**1024 overflows


def backoff_delay(attempt: int, base: float, cap: float, random_fraction: float) -> float:
    """A wait in [ceiling/2, ceiling], ceiling = min(cap, base * 2**attempt)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    ceiling = min(cap, base * 2.0 ** min(attempt, MAX_DOUBLINGS))
    return ceiling / 2 + ceiling / 2 * random_fraction


def is_new(last_seq: dict[str, int], message: dict[str, Any]) -> bool:
    """False for a room broadcast already seen; records the seq of a new one."""
    room, seq = message.get("room"), message.get("seq")
    if not isinstance(room, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return True                 # not a room broadcast: always shown
    key = name_key(room)
    last = last_seq.get(key)
    if last is not None and seq <= last:
        return False
    last_seq[key] = seq
    return True
