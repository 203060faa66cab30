"""Lesson 09 reference solution: a rate limit and a slow-reader limit, with time passed in.

The package's versions are ``TokenBucket``, and ``Guard.output`` with
``Guard.deadline``, in ``chat_sync/guard.py``.
"""
from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept; each allowed request spends one."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        """A full bucket at time ``now``; ValueError unless ``rate > 0`` and ``burst >= 1``."""
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.then = now                 # when ``tokens`` was last brought up to date

    def allow(self, now: float) -> bool:
        """Refill for the time since the last call, then spend a token if there is one."""
        elapsed = now - self.then
        if elapsed > 0:                 # a clock that steps back earns nothing
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.then = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SlowReader:
    """A hard limit on unsent bytes at once, a soft one after ``grace`` seconds."""

    def __init__(self, soft: int, hard: int, grace: float) -> None:
        """No output queued yet."""
        self.soft = soft
        self.hard = hard
        self.grace = grace
        self.over_since: float | None = None    # when the output went over ``soft``

    def over_limit(self, buffered_bytes: int, now: float) -> bool:
        """True if a client with ``buffered_bytes`` unsent at ``now`` must be cut off."""
        if buffered_bytes > self.hard:
            return True
        if buffered_bytes <= self.soft:
            self.over_since = None              # caught up: forgiven
            return False
        if self.over_since is None:
            self.over_since = now               # the grace starts now
        return now - self.over_since >= self.grace

    def deadline(self) -> float | None:
        """When ``over_limit`` turns True with nothing changing, or None."""
        if self.over_since is None:
            return None
        return self.over_since + self.grace
