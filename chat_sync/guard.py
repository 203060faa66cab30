"""Per-connection limits of the TCP server, with no I/O: how much one peer may take.

Theory of operation
-------------------
A server that many people share must not let one peer use up what the
others need: the loop's time (a flood of requests), its memory (output the
peer never reads, a line it never finishes) or a connection slot (a peer
that connects and says nothing). ``Guard`` holds, for one connection, the
little state each rule needs, and is asked two kinds of question:

- **events**: ``request(now)`` before each line is handled;
  ``output(queued, now)`` when the unsent output has changed;
  ``input(pending, completed, now)`` after each read; ``opened(now)`` when
  the connection can talk (after TLS, if any) and ``joined()`` once it has
  a name. A question that can trip a rule returns ``None`` (carry on) or a
  ``Breach``: the error to send, and whether to close after it.
- **timers**: ``deadline()`` is the earliest moment a rule could trip with
  nothing else happening (or ``None``); ``expired(now)`` says whether one
  has. The server keeps one heap of these deadlines for all connections and
  sleeps in ``select()`` until the earliest: no polling, no timer thread.

Time is an input: ``now`` is ``time.monotonic()`` in the server and a plain
number in the tests, which run every rule on a fake clock in microseconds.

The rules
---------
- **Flood** (``rate_per_s``, ``burst``): a token bucket. It holds up to
  ``burst`` tokens and gains ``rate_per_s`` a second; each request takes
  one. A request that finds the bucket empty is not applied and gets
  ``rate_limited``. Refusals are counted, and the count is forgiven when
  the bucket is full again, that is once the peer has kept under the rate
  for a while. More than ``abuse_limit`` refusals without that (the peer
  keeps sending though every request is refused) close the connection, as
  IRC servers do on "excess flood". Trade-off: a peer a little over the
  rate for a long time is cut off too, after ``abuse_limit`` refusals; it
  was told each time.
- **Slow reader** (``soft_bytes``, ``grace_s``, ``hard_bytes``): unsent
  output above ``hard_bytes`` closes at once; above ``soft_bytes`` it may
  stay for ``grace_s``, so a healthy client that falls behind during a
  burst and then catches up is kept (Redis' client-output-buffer-limit has
  the same two limits). A soft limit at or above the hard one does nothing.
- **Silence**: a TLS handshake must be done within ``handshake_timeout_s``;
  an open connection must join within ``join_timeout_s``; a line may stay
  unfinished for at most ``partial_line_timeout_s``, counted from the read
  that began it. A joined client that is idle between lines is kept: only
  a half-sent line costs the server anything. A timeout of 0 turns its
  rule off; so does a ``rate_per_s`` of 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import protocol as p


@dataclass(frozen=True)
class GuardLimits:
    """The numbers the rules use; the server builds one from its config."""

    rate_per_s: float = p.RATE_LIMIT_PER_S
    burst: int = p.RATE_BURST
    abuse_limit: int = p.RATE_ABUSE_LIMIT
    soft_bytes: int = p.SEND_BUFFER_SOFT_BYTES
    grace_s: float = p.SLOW_READER_GRACE_S
    hard_bytes: int = p.MAX_SEND_BUFFER_BYTES
    join_timeout_s: float = p.JOIN_TIMEOUT_S
    partial_line_timeout_s: float = p.PARTIAL_LINE_TIMEOUT_S
    handshake_timeout_s: float = p.TLS_HANDSHAKE_TIMEOUT_S


@dataclass(frozen=True)
class Breach:
    """A rule tripped: answer with ``error(code, text)``; then close if ``close``."""

    code: p.ErrorCode
    text: str
    close: bool


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept; ``take`` spends one.

    Refilled lazily: the tokens earned since the last call are added when
    asked, so an idle bucket costs nothing. The UDP server (``udp_server_core``)
    keeps one per peer too.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)          # a new peer may start with a burst
        self.stamp = now

    def refill(self, now: float) -> float:
        """Add the tokens earned since the last call; returns how many there are."""
        elapsed = max(0.0, now - self.stamp)    # a clock that steps back earns nothing
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False if the bucket is empty."""
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Guard:
    """Every per-connection limit of one TCP connection; see the module comment."""

    __slots__ = ("limits", "bucket", "strikes", "handshake_by", "join_by", "partial_since",
                 "over_since")

    def __init__(self, limits: GuardLimits, now: float, *, tls: bool = False) -> None:
        self.limits = limits
        self.bucket = (TokenBucket(limits.rate_per_s, limits.burst, now)
                       if limits.rate_per_s > 0 else None)
        self.strikes = 0                        # requests refused since the bucket was full
        self.handshake_by: float | None = None  # TLS handshake deadline
        self.join_by: float | None = None       # join deadline
        self.partial_since: float | None = None # when the unfinished line began
        self.over_since: float | None = None    # when output went over the soft limit
        if tls:
            self.handshake_by = now + limits.handshake_timeout_s
        else:
            self.opened(now)

    # -- events ------------------------------------------------------------------
    def opened(self, now: float) -> None:
        """The connection can talk (its TLS handshake is done): the join clock starts."""
        self.handshake_by = None
        if self.limits.join_timeout_s > 0:
            self.join_by = now + self.limits.join_timeout_s

    def joined(self) -> None:
        """The connection has a name: it may idle as long as it likes."""
        self.join_by = None

    def request(self, now: float) -> Breach | None:
        """One request (one line) arrived: None to handle it, or a Breach to send instead."""
        bucket = self.bucket
        if bucket is None:
            return None
        if bucket.refill(now) >= bucket.burst:
            self.strikes = 0                    # under the rate again: forgiven
        if bucket.take(now):
            return None
        self.strikes += 1
        if self.strikes > self.limits.abuse_limit:
            return Breach(p.ErrorCode.RATE_LIMITED,
                          f"excess flood: more than {self.limits.abuse_limit} requests "
                          "refused in a row", close=True)
        return Breach(p.ErrorCode.RATE_LIMITED,
                      f"over {self.limits.rate_per_s:g} requests a second (burst "
                      f"{self.limits.burst}): not applied", close=False)

    def input(self, pending: int, completed: bool, now: float) -> None:
        """After a read: ``pending`` bytes of an unfinished line are held; ``completed``
        says whether a line ended in this read (so the unfinished one began in it)."""
        if not pending:
            self.partial_since = None
        elif completed or self.partial_since is None:
            self.partial_since = now

    def output(self, queued: int, now: float) -> Breach | None:
        """The unsent output is now ``queued`` bytes: None, or a Breach that closes."""
        limits = self.limits
        if queued > limits.hard_bytes:
            return Breach(p.ErrorCode.SLOW_READER,
                          f"more than {limits.hard_bytes} bytes unsent", close=True)
        if queued <= limits.soft_bytes:
            self.over_since = None              # caught up: the grace starts afresh next time
            return None
        if self.over_since is None:
            self.over_since = now
        return self._slow(now)

    # -- timers --------------------------------------------------------------------
    def deadline(self) -> float | None:
        """The earliest moment at which ``expired`` could return a Breach, or None."""
        limits = self.limits
        times = [self.handshake_by, self.join_by]
        if self.partial_since is not None and limits.partial_line_timeout_s > 0:
            times.append(self.partial_since + limits.partial_line_timeout_s)
        if self.over_since is not None:
            times.append(self.over_since + limits.grace_s)
        return min((t for t in times if t is not None), default=None)

    def expired(self, now: float) -> Breach | None:
        """A Breach (which closes) if a deadline has passed, else None."""
        limits = self.limits
        if self.handshake_by is not None and now >= self.handshake_by:
            return Breach(p.ErrorCode.TIMEOUT, f"no TLS handshake within "
                          f"{limits.handshake_timeout_s:g} s", close=True)
        if self.join_by is not None and now >= self.join_by:
            return Breach(p.ErrorCode.TIMEOUT, f"no join within {limits.join_timeout_s:g} s",
                          close=True)
        if (self.partial_since is not None and limits.partial_line_timeout_s > 0
                and now >= self.partial_since + limits.partial_line_timeout_s):
            return Breach(p.ErrorCode.TIMEOUT, f"a line left unfinished for "
                          f"{limits.partial_line_timeout_s:g} s", close=True)
        if self.over_since is not None:
            return self._slow(now)
        return None

    def _slow(self, now: float) -> Breach | None:
        assert self.over_since is not None
        if now - self.over_since >= self.limits.grace_s:
            return Breach(p.ErrorCode.SLOW_READER,
                          f"more than {self.limits.soft_bytes} bytes unsent for "
                          f"{self.limits.grace_s:g} s", close=True)
        return None
