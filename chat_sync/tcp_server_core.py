"""The TCP server's sans-IO part: a connection's phases and output, the timer heap.

Theory of operation
-------------------
``tcp_server`` is the socket shell; what it keeps per connection and the
rules it keeps it by are here, with no socket call, so they can be read and
tested on their own. (The chat logic is ``rooms.ChatCore``; the
per-connection rules on rates, slow readers and timeouts are ``guard.Guard``.)

A connection goes through the phases of ``Phase``: TLS ones start in
``HELLO`` and ``HANDSHAKE`` (see ``tls``), plain ones start ``OPEN``; only an
open connection's lines are handled. ``CLOSING`` sends its last output (an
error, or the replies a half-closed peer still waits for) and ``LINGER``
drains its input after our side is shut, so the peer reads the error
instead of a reset. Both end at ``close_by`` at the latest.

Output is a list of shared encoded messages (``Connection.out``): a
broadcast to 1,000 members is 1,000 references to one ``bytes``. What the
kernel took is dropped from the front (``consume``); a chunk partly sent is
``started`` and is finished first. History replays are shared too
(``Replays``): every joiner of a room is sent the same lines, so each is
encoded once, not once per joiner. A turn's run of broadcasts to the same
members is one chunk, joined once and shared (``Batch``), so queuing it is
one step per member, not one per member per message.

Timers: one heap of ``(deadline, order, connection)`` for every connection
(``TimerHeap``), and ``select()`` sleeps exactly until the earliest. A
connection's deadline that moves later is not searched for in the heap: the
old entry stays and, when it comes up, is seen to be stale (it is not the
connection's ``timer_at``) and skipped ("lazy deletion"); a stale entry
costs one early wake-up, never a missed one. The heap is rebuilt when stale
entries outnumber the connections, so it stays bounded.

Bounds: beyond ``max_clients``, or ``max_clients_per_ip`` from one address,
a new connection is told ``server_full`` or ``too_many_connections``
(``refusal``) and closed.

Accepting: when the process runs out of file descriptors, ``accept`` fails
and the listener stays readable, so a loop that simply retries spins.
``AcceptGate`` says to stop watching the listener for ``ACCEPT_PAUSE_S``
and to log once per episode, as mature servers do on EMFILE.
"""
from __future__ import annotations

import collections
import enum
import heapq
import itertools
import selectors
import socket
from collections.abc import Iterator
from typing import Any

from . import config as cfg
from . import protocol as p
from .framing import LineBuffer
from .guard import Guard, GuardLimits
from .rooms import ConnId

LINGER_S = 1.0               # how long a closing connection's input is drained
LINGER_BYTES = 1024 * 1024   # ... and how much of it at most
CLOSING_S = 5.0              # the longest a connection may take to read its last output
TLS_SEND_BYTES = 64 * 1024   # chunks joined for one TLS send, at most (unless one is longer)
ACCEPT_PAUSE_S = 0.25        # out of descriptors: stop accepting this long, then retry
REPLAY_BYTES = 4 * 1024 * 1024   # encoded history lines kept for the next joiner, at most
BATCH_BYTES = 16 * 1024      # a run of broadcasts is queued at this size, at the latest

ErrorReply = tuple[p.ErrorCode, str]


class Phase(enum.Enum):
    """Where a connection is in its life."""

    HELLO = "hello"            # TLS: waiting for the first byte (plain text is refused)
    HANDSHAKE = "handshake"    # TLS: do_handshake() until it is done
    OPEN = "open"              # lines in, messages out
    CLOSING = "closing"        # its last output is being sent; input is discarded
    LINGER = "linger"          # our side is shut; its input is drained until EOF


class Connection:
    """One client socket and its buffers; rides on ``SelectorKey.data``.

    ``__slots__``: with ten thousand connections, no per-object ``__dict__``.
    """

    __slots__ = ("id", "sock", "ip", "peer", "phase", "accepting", "lines", "out", "out_bytes",
                 "started", "events", "guard", "refusal", "eof", "doomed", "closed", "drained",
                 "why", "close_by", "timer_at")

    def __init__(self, conn_id: int, sock: socket.socket, ip: str, peer: str,
                 max_line_bytes: int, guard: Guard, phase: Phase) -> None:
        self.id = conn_id
        self.sock = sock
        self.ip = ip                  # the max_clients_per_ip key
        self.peer = peer              # "host:port", for the log
        self.phase = phase
        # Open and not doomed: its lines are handled and output is queued for it. An
        # attribute, not a property, because a broadcast reads it once per member; only
        # open(), start_closing() and doom() change phase or doomed, and they keep it.
        self.accepting = False
        self.lines = LineBuffer(max_line_bytes)
        self.out: list[bytes] = []    # shared encoded messages (a list: a deque keeps
                                      # up to 16 spare 528-byte blocks for ever)
        self.out_bytes = 0            # their total length: the slow-reader bound
        self.started = False          # out[0] was partly sent (TLS: offered): finish it first
        self.events = selectors.EVENT_READ   # what the selector watches for
        self.guard = guard
        self.refusal: ErrorReply | None = None   # over a limit: say so once open, then close
        self.eof = False              # the peer has shut its sending side
        self.doomed = False           # to be closed at the end of this step
        self.closed = False
        self.drained = 0              # bytes discarded while closing
        self.why = ""                 # the reason logged when it finally closes
        self.close_by: float | None = None   # CLOSING, LINGER: closed at this time regardless
        self.timer_at: float | None = None   # its live entry in the timer heap

    def open(self) -> None:
        """OPEN: the connection can talk (TLS: its handshake is done)."""
        self.phase = Phase.OPEN
        self.accepting = not self.doomed

    def doom(self) -> None:
        """To be closed at the end of this step: nothing more is handled for it."""
        self.doomed = True
        self.accepting = False

    def deadline(self) -> float | None:
        """When a timer must look at this connection next, or None."""
        if self.close_by is not None:           # CLOSING or LINGER (no enum lookup: hot)
            return self.close_by
        return self.guard.deadline()

    def start_closing(self, reason: str, close_by: float) -> None:
        """CLOSING: no more input handled or output queued; what is queued is sent.

        ``close_by``: a peer that never reads its last output must not hold a
        slot for ever.
        """
        self.phase = Phase.CLOSING
        self.accepting = False
        self.why = reason
        self.close_by = close_by

    def append(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)

    def last_words(self, error: bytes, *, drop_unsent: bool) -> None:
        """Queue ``error`` as the last output; ``drop_unsent`` keeps of the backlog only
        the chunk it is in the middle of (a slow reader would not read the rest)."""
        if drop_unsent:
            del self.out[1 if self.started else 0:]
            self.out_bytes = sum(len(chunk) for chunk in self.out)
        self.append(error)

    def tls_head(self) -> bytes:
        """The buffer for one TLS send: chunks joined at the head of the queue.

        TLS has no sendmsg; and after SSLWantWriteError OpenSSL wants that same
        buffer again, so once offered it is ``started`` and not joined again.
        """
        if not self.started:
            count, size = 1, len(self.out[0])
            while count < len(self.out) and size + len(self.out[count]) <= TLS_SEND_BYTES:
                size += len(self.out[count])
                count += 1
            if count > 1:
                self.out[:count] = [b"".join(self.out[:count])]
            self.started = True
        return self.out[0]

    def consume(self, sent: int, offered: int) -> bool:
        """Drop ``sent`` bytes from the front of the queue; True if the
        ``offered`` chunks all went whole."""
        if sent == self.out_bytes and offered == len(self.out):   # all of it: the usual case
            self.out.clear()
            self.out_bytes = 0
            self.started = False
            return True
        self.out_bytes -= sent
        done = 0                                # chunks sent whole
        for chunk in self.out:
            if len(chunk) > sent:
                break
            sent -= len(chunk)
            done += 1
        del self.out[:done]
        self.started = bool(sent)
        if sent:
            self.out[0] = self.out[0][sent:]
        return done == offered


class Batch:
    """A run of broadcasts to the same members, queued to each member once.

    A busy room's turn reads several messages. Queued one at a time, each
    costs a step per member (50 members and 5 messages: 250 steps); queued as
    a run, joined into one chunk they all share, it is 50. A member that sent
    some of them gets a chunk of its own, its copies (with their ids) in place.

    The shell ends a run (``take``) before any other output, so each member
    gets its output in the order it was made; and at ``BATCH_BYTES``, so the
    slow-reader limits see a queue grow by no more than that at a time.
    """

    def __init__(self) -> None:
        self.to: tuple[ConnId, ...] = ()
        self.parts: list[bytes] = []
        self.size = 0
        self.own: dict[ConnId, dict[int, bytes]] = {}   # sender -> {part: its copy}

    def joins(self, to: tuple[ConnId, ...]) -> bool:
        """Whether a broadcast to ``to`` may join the run (else: ``take`` first)."""
        return not self.parts or (self.size < BATCH_BYTES and to == self.to)

    def add(self, data: bytes, to: tuple[ConnId, ...], own: tuple[ConnId, bytes] | None) -> None:
        """``data`` for each of ``to``, but ``own``'s bytes for ``own``'s id."""
        self.to = to
        if own is not None:
            self.own.setdefault(own[0], {})[len(self.parts)] = own[1]
        self.parts.append(data)
        self.size += len(data)

    def take(self) -> list[tuple[bytes, tuple[ConnId, ...]]]:
        """The run as (chunk, to) pairs, and empty again."""
        if not self.parts:
            return []
        taken = [(b"".join(self.parts), tuple(c for c in self.to if c not in self.own)
                  if self.own else self.to)]
        for sender, copies in self.own.items():
            taken.append((b"".join([copies.get(i, part) for i, part in enumerate(self.parts)]),
                          (sender,)))
        self.to, self.parts, self.size, self.own = (), [], 0, {}
        return taken


class Replays:
    """The encoded line of each history replay, made once for every joiner it goes to.

    Encoded per joiner, 10,000 joiners of rooms with 20 lines of history were
    200,000 ``bytes`` in their output queues, and the allocator kept 2.4 KiB a
    client of them (``bench connections``); shared, they are each room's 20.
    Keyed by ``seq``, which names one broadcast; a line is used only for an
    equal message, so a seq counted again (a cluster's log reset) is merely
    encoded again. At most ``max_bytes`` of lines, the oldest dropped first.
    """

    def __init__(self, max_bytes: int = REPLAY_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lines: dict[Any, tuple[dict[str, Any], bytes]] = {}
        self._bytes = 0

    def encode(self, message: dict[str, Any]) -> bytes:
        seq = message.get("seq")
        entry = self._lines.get(seq)
        if entry is not None and entry[0] == message:
            return entry[1]
        data = p.encode(message)
        if entry is not None:
            self._bytes -= len(entry[1])
        self._lines[seq] = (message, data)
        self._bytes += len(data)
        while self._bytes > self.max_bytes:     # dicts keep insertion order: oldest first
            _, old = self._lines.pop(next(iter(self._lines)))
            self._bytes -= len(old)
        return data


class TimerHeap:
    """Every connection's next deadline, earliest first, with lazy deletion."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._order = itertools.count()             # tie-breaker

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, conn: Connection, live: int) -> None:
        """Make sure the heap holds ``conn``'s deadline, if it moved earlier.

        ``live`` is the number of open connections, to bound the stale entries.
        """
        when = conn.deadline()
        if when is None or (conn.timer_at is not None and conn.timer_at <= when):
            return          # none, or an entry at or before it will come up first
        conn.timer_at = when
        heapq.heappush(self._heap, (when, next(self._order), conn))
        self.compact(live)

    def compact(self, live: int) -> None:
        """Rebuild the heap without its stale entries once they outnumber the live ones.

        O(n), but it takes n more pushes or closes to be needed again.
        """
        if len(self._heap) > 2 * live + 64:
            self._heap = [entry for entry in self._heap
                          if not entry[2].closed and entry[0] == entry[2].timer_at]
            heapq.heapify(self._heap)

    def timeout(self, now: float, also: float | None = None) -> float | None:
        """How long select() may sleep: until the earliest deadline (or ``also``),
        or for ever."""
        when = self._heap[0][0] if self._heap else None
        if also is not None:
            when = also if when is None else min(when, also)
        return None if when is None else max(0.0, when - now)

    def due(self, now: float) -> Iterator[Connection]:
        """Pop every live entry up to ``now``; each yielded connection has no entry left."""
        while self._heap and self._heap[0][0] <= now:
            when, _, conn = heapq.heappop(self._heap)
            if conn.closed or when != conn.timer_at:
                continue                        # stale: its deadline moved or it closed
            conn.timer_at = None
            yield conn


def socket_options(config: cfg.TcpServerConfig) -> list[tuple[int, int, int]]:
    """``setsockopt`` arguments for an accepted socket: no Nagle delay, and TCP
    keepalive, so that a peer that vanished without a word (power, NAT, Wi-Fi)
    is found out, and its name freed, after idle + interval * probes seconds."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
               (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", config.keepalive_idle_s),
                        ("TCP_KEEPINTVL", config.keepalive_interval_s),
                        ("TCP_KEEPCNT", config.keepalive_probes)):
        if hasattr(socket, name):               # Linux; macOS has only some of them
            options.append((socket.IPPROTO_TCP, getattr(socket, name), max(1, int(value))))
    return options


def check_settings(config: cfg.TcpServerConfig) -> None:
    """Refuse settings that load but cannot work together. Raises ConfigError."""
    if config.tls_key is not None and config.tls_cert is None:
        raise cfg.ConfigError("tls_key is set but tls_cert is not: TLS needs a certificate")
    if config.workers > 1 and not config.bus_url:
        raise cfg.ConfigError(f"workers is {config.workers} but bus_url is not set: "
                              "separate processes are one chat only through a bus")


def guard_limits(config: cfg.TcpServerConfig) -> GuardLimits:
    """The per-connection rules of ``guard``, from the server's settings."""
    return GuardLimits(
        rate_per_s=config.rate_limit_per_s, burst=config.rate_burst,
        abuse_limit=config.rate_abuse_limit, soft_bytes=config.send_buffer_soft_bytes,
        grace_s=config.slow_reader_grace_s, hard_bytes=config.max_send_buffer_bytes,
        join_timeout_s=config.join_timeout_s,
        partial_line_timeout_s=config.partial_line_timeout_s,
        handshake_timeout_s=config.tls_handshake_timeout_s)


def clients(count: int) -> str:
    """``1 client``, ``2 clients``."""
    return f"{count} client" if count == 1 else f"{count} clients"


class Connections:
    """Every connection by id, and how many come from each address."""

    def __init__(self, config: cfg.TcpServerConfig) -> None:
        self.config = config
        self.by_id: dict[ConnId, Connection] = {}
        self.per_ip: collections.Counter[str] = collections.Counter()
        self._ids = itertools.count(1)

    def add(self, sock: socket.socket, addr: tuple[str, int], guard: Guard,
            phase: Phase) -> Connection:
        """A new connection, its ``refusal`` set if it is over a limit."""
        conn = Connection(next(self._ids), sock, addr[0], f"{addr[0]}:{addr[1]}",
                          self.config.max_line_bytes, guard, phase)
        self.by_id[conn.id] = conn
        self.per_ip[conn.ip] += 1
        conn.refusal = self._refusal(conn)
        return conn

    def remove(self, conn: Connection) -> None:
        del self.by_id[conn.id]
        self.per_ip[conn.ip] -= 1
        if not self.per_ip[conn.ip]:
            del self.per_ip[conn.ip]

    def _refusal(self, conn: Connection) -> ErrorReply | None:
        """The error a new connection gets if it is over a limit, or None."""
        if len(self.by_id) > self.config.max_clients:
            return p.ErrorCode.SERVER_FULL, f"server full: {clients(self.config.max_clients)}"
        limit = self.config.max_clients_per_ip
        if limit and self.per_ip[conn.ip] > limit:
            return (p.ErrorCode.TOO_MANY_CONNECTIONS,
                    f"too many connections from {conn.ip}: {limit} at most")
        return None


class AcceptGate:
    """Whether to watch the listener: paused for a moment when ``accept`` fails.

    An episode of failures (EMFILE, ENFILE, ENOBUFS) is logged once, at its
    start; ``failures`` counts the accepts that failed in it.
    """

    def __init__(self, pause_s: float = ACCEPT_PAUSE_S) -> None:
        self.pause_s = pause_s
        self.paused_until: float | None = None
        self.failures = 0

    def failed(self, now: float) -> bool:
        """``accept`` failed at ``now``: pause. True if this starts an episode (log it)."""
        self.paused_until = now + self.pause_s
        self.failures += 1
        return self.failures == 1

    def resume(self, now: float) -> bool:
        """True once a pause is over: watch the listener again."""
        if self.paused_until is None or now < self.paused_until:
            return False
        self.paused_until = None
        return True

    def accepted(self) -> int:
        """An accept worked: the episode, if any, is over. Returns its failure count."""
        failures, self.failures = self.failures, 0
        return failures
