"""Lesson 09 exercise: a rate limit and a slow-reader limit, with time passed in.

Two rules of ``chat_sync/guard.py``, written again on their own: no socket,
no clock. Every method takes ``now``, a number of seconds, so the tests move
a fake clock instead of waiting, and hold your answers to the package's
``TokenBucket`` and ``Guard`` step by step. Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/09_hostile_clients
"""
from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept; each allowed request spends one.

    Lazy: nothing ticks in the background. Each call first adds the tokens
    earned since the previous call, ``(now - then) * rate``, never going over
    ``burst``, and then decides.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        """A full bucket (``burst`` tokens) at time ``now``: a new client may start with a burst.

        Raise ``ValueError`` unless ``rate > 0`` and ``burst >= 1``.
        """
        raise NotImplementedError("exercise: write TokenBucket.__init__")

    def allow(self, now: float) -> bool:
        """May a request that arrives at ``now`` go ahead?

        Add the tokens earned since the last call (or since ``__init__``),
        keeping at most ``burst``. Then, if at least one whole token is there,
        spend it and return True; otherwise spend nothing and return False.
        A clock that steps back (``now`` earlier than the last call) earns
        nothing: it is not an error, and the next call counts from the
        earlier ``now``.
        """
        raise NotImplementedError("exercise: write TokenBucket.allow")


class SlowReader:
    """Two limits on a client's unsent output: a hard one at once, a soft one after a grace.

    The server calls ``over_limit`` each time the number of bytes queued for
    the client changes, and again when ``deadline()`` comes; True means
    "close this connection".
    """

    def __init__(self, soft: int, hard: int, grace: float) -> None:
        """No output queued yet. ``soft`` and ``hard`` are byte counts, ``grace`` seconds."""
        raise NotImplementedError("exercise: write SlowReader.__init__")

    def over_limit(self, buffered_bytes: int, now: float) -> bool:
        """``buffered_bytes`` are queued at ``now``: must the client be cut off?

        - More than ``hard``: True at once.
        - ``soft`` or fewer: False, and the client is forgiven: the next time
          it goes over ``soft``, its grace starts afresh.
        - More than ``soft`` (but not more than ``hard``): remember when it
          went over, unless it already was over; True once it has been over
          for ``grace`` seconds or more, False until then.

        After True the server closes the connection; what later calls return
        does not matter.
        """
        raise NotImplementedError("exercise: write SlowReader.over_limit")

    def deadline(self) -> float | None:
        """When ``over_limit`` would turn True if nothing changed, or None if it would not.

        While the output is over ``soft``: the moment it went over, plus
        ``grace``. Otherwise None. The server puts this in its timer heap,
        so that a client that stops reading entirely (and so never changes
        its queue again) is still cut off on time.
        """
        raise NotImplementedError("exercise: write SlowReader.deadline")
