"""The bus of a cluster: one Redis stream that every server appends to and reads back.

Theory of operation
-------------------
``cluster.ClusterChat`` needs a log with one order that every server sees.
A Redis stream is exactly that: ``XADD`` appends an entry and Redis, one
thread, gives it an id that grows; ``XREAD`` from the last id seen returns
what came after, blocking until something does. This module is the shell
around it, and the event loop never waits on it:

- ``publish`` (called by the loop) puts an entry in a bounded queue and
  returns at once; False when the bus is down or the queue is full, so the
  request is refused with ``unavailable`` instead of piling up.
- The **writer** thread takes everything that piled up and appends it in
  one pipelined round trip (``XADD`` per entry, not a round trip each). It
  also renews this server's heartbeat key (``PX`` ``heartbeat_ttl``) and
  checks the heartbeats of the other servers it has seen; for one that has
  expired it appends ``gone``, and every replica disconnects its users.
- The **reader** thread blocks in ``XREAD`` and hands what arrives to the
  loop: a bounded deque plus the loop's wake-up socketpair (``wakeup``),
  the way a signal wakes it. The loop calls ``take`` and applies it all.

Why two threads, not one: a connection blocked in ``XREAD`` cannot send
anything else, and redis-py connections are not shared between threads; so
each thread owns one connection. Neither polls: the reader waits in Redis,
the writer on a ``Condition`` until an entry or its next heartbeat.

When Redis goes away, both threads tell the loop (``BusDown``) and the
reader reconnects with back-off. Each log has a ``generation``, a random
name set when it starts. If Redis kept its data (the generation is the one
this server reads), it reads on from where it was: nothing is lost or
applied twice. If Redis lost it (a restart without persistence), the
cluster starts a new log from a snapshot: each server that finds no
generation offers its replica (``offer_snapshot``); the first to set the
snapshot and a new generation, in one transaction, wins; every server, the
winner too, restores the winner's (``BusUp(snapshot)``), skipping
``SEQ_GAP_AFTER_RESET`` seq numbers so no number is used twice for
different messages. A server that comes back after the new generation was
set just restores its snapshot. The ``epoch`` the clients see stays.
The periodic snapshot that lets the log be trimmed is stored only while
the log is still the generation it was built from (checked in Redis, by one
script), so a lagging server cannot put an old replica under a new log; and
the trim stops at the slowest live reader (each heartbeat holds how far its
server has read), so no server finds entries gone that it has not read.
"""
from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .config import ConfigError
from .rooms import ChatCore
from .cluster import ClusterChat, cluster_conn
from .cluster import Applied, BusDown, BusEvent, BusUp, Entry, Kind, ResetWanted, Unsent

try:
    import redis
    HAVE_REDIS = True
except ImportError:       # the optional extra: pip install 'chat_sync[bus]'
    HAVE_REDIS = False

log = logging.getLogger("chat_sync.bus")

PREFIX = "chat_sync:"
LOG_KEY = PREFIX + "log"
EPOCH_KEY = PREFIX + "epoch"
GENERATION_KEY = PREFIX + "generation"
SNAPSHOT_KEY = PREFIX + "snapshot"
ALIVE_KEY = PREFIX + "alive:"
HEARTBEAT_S = 1.0           # how often a server renews its heartbeat
HEARTBEAT_TTL_MS = 4000     # a server silent this long is gone
MAX_QUEUED = 10_000         # entries waiting for the writer, at most
MAX_INBOX = 100_000         # entries read, waiting for the loop, at most (then the reader waits)
READ_COUNT = 1000           # entries one XREAD returns, at most
RECONNECT_MAX_S = 2.0       # the longest wait between reconnect attempts
SNAPSHOT_WAIT_S = 5.0       # how long a reset waits for the loop's snapshot

# Store a snapshot and trim the log behind it, only if the log is still the
# generation the snapshot was built from (one script: Redis runs it at once). Trim
# only what every live server has read: each one's heartbeat holds the position its
# reader has reached, and a reader that lags behind the snapshot (a busy CPU starves
# its thread) would otherwise find the entries it had not read gone, and skip them.
# A heartbeat that is not a position (an older server) stops the trim.
STORE_SNAPSHOT = """
local function before(a, b)
    local am, as = string.match(a, '^(%d+)-(%d+)$')
    local bm, bs = string.match(b, '^(%d+)-(%d+)$')
    if not am then return true end
    am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
    return am < bm or (am == bm and as < bs)
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[2], ARGV[2])
local lowest = ARGV[3]
local cursor = '0'
repeat
    local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[4] .. '*', 'COUNT', 100)
    cursor = reply[1]
    for _, key in ipairs(reply[2]) do
        local read = redis.call('GET', key)
        if read and before(read, lowest) then
            lowest = string.match(read, '^%d+-%d+$') and read or '0-0'
        end
    end
until cursor == '0'
redis.call('XTRIM', KEYS[3], 'MINID', lowest)
return 1
"""


def join_cluster(url: str, core: ChatCore, wake: Callable[[], None]
                 ) -> tuple[ClusterChat, RedisBus]:
    """Make ``core`` a replica of the cluster on ``url``; returns it and its bus, started.

    ``wake`` wakes the server's loop when entries arrive. Raises BusError.
    """
    server_id = secrets.token_hex(4)
    bus = RedisBus(url, server_id, core.epoch, wake)
    core.epoch = bus.epoch                  # one epoch for the cluster: since works anywhere
    cluster = ClusterChat(core, server_id, bus)
    if bus.snapshot is not None:
        try:
            cluster.restore(bus.snapshot)
        except ValueError as exc:
            log.warning("bus: ignoring the stored snapshot: %s", exc)
    bus.start(cluster.position, {cluster_conn(conn)[0] for conn in core.members})
    log.info("bus: server %s on %s", server_id, url)
    return cluster, bus


class BusError(ConfigError):
    """``bus_url`` names a bus that cannot be used: no redis client, or Redis unreachable."""


class RedisBus:
    """Two threads and two Redis connections between one server and the shared log."""

    def __init__(self, url: str, server: str, epoch: str, wake: Callable[[], None]) -> None:
        if not HAVE_REDIS:
            raise BusError("bus_url is set but the redis client is not installed: "
                           "pip install 'chat_sync[bus]'")
        self.url = url
        self.server = server
        self._wake = wake
        self._cond = threading.Condition()
        self._queue: collections.deque[Entry] = collections.deque()
        self._inbox: collections.deque[BusEvent] = collections.deque()
        self._servers: set[str] = set()       # others seen in the log, to watch
        self._reported: set[str] = set()      # ... whose gone we appended already
        self._snapshot_offer: bytes | None = None
        # (snapshot, position, generation) for the writer to store
        self._pending_snapshot: tuple[bytes, str, str | None] | None = None
        self._stop = False
        self.up = True
        try:
            self._writer_redis = redis.Redis.from_url(url, socket_connect_timeout=2.0,
                                                      socket_timeout=5.0)
            self._writer_redis.ping()
            self._writer_redis.set(EPOCH_KEY, epoch, nx=True)
            stored = self._writer_redis.get(EPOCH_KEY)
            self.epoch = _text(stored) or epoch
            self._writer_redis.set(GENERATION_KEY, secrets.token_hex(8), nx=True)
            self.generation = _text(self._writer_redis.get(GENERATION_KEY))
            self._applied_generation = self.generation   # of the entries the loop applies
            self._store_snapshot = self._writer_redis.register_script(STORE_SNAPSHOT)
            # Its heartbeat holds what its reader has read (see STORE_SNAPSHOT): nothing yet.
            self._writer_redis.set(ALIVE_KEY + server, "0-0", px=HEARTBEAT_TTL_MS)
            snapshot = self._writer_redis.get(SNAPSHOT_KEY)
            self.snapshot = snapshot if isinstance(snapshot, bytes) else None
        except redis.RedisError as exc:
            raise BusError(f"cannot use the bus at {url}: {exc}") from None
        self._reader_redis = redis.Redis.from_url(url, socket_connect_timeout=2.0,
                                                  socket_timeout=None)
        self.position = "0-0"
        self._threads = [threading.Thread(target=self._write_loop, name="bus-writer",
                                          daemon=True),
                         threading.Thread(target=self._read_loop, name="bus-reader",
                                          daemon=True)]

    def start(self, position: str, servers: Iterable[str]) -> None:
        """Read from after ``position`` (a snapshot's, or 0-0); watch ``servers``."""
        self.position = position
        self._servers.update(s for s in servers if s != self.server)
        for thread in self._threads:
            thread.start()

    # -- the loop's side -----------------------------------------------------------
    def publish(self, entry: Entry) -> bool:
        with self._cond:
            if not self.up or len(self._queue) >= MAX_QUEUED or self._stop:
                return False
            self._queue.append(entry)
            self._cond.notify()
        return True

    def take(self) -> list[BusEvent]:
        with self._cond:
            events = list(self._inbox)
            self._inbox.clear()
            self._cond.notify_all()           # a reader waiting for room may go on
        for event in events:                  # the loop's replica follows the log it reads
            if isinstance(event, BusUp) and event.generation is not None:
                self._applied_generation = event.generation
        return events

    def offer_snapshot(self, snapshot: bytes) -> None:
        """The loop's answer to a reset: its replica, to start the new log from."""
        with self._cond:
            self._snapshot_offer = snapshot
            self._cond.notify_all()

    def save_snapshot(self, snapshot: bytes, position: str) -> None:
        """Store a snapshot at ``position`` and trim the log behind it (writer thread).

        Tagged with the generation of the log the replica was built from: a
        server still applying the old log after a reset must not overwrite the
        new log's snapshot with its own (the writer checks, in Redis)."""
        with self._cond:
            self._pending_snapshot = (snapshot, position, self._applied_generation)
            self._cond.notify()

    def stop(self, timeout: float = 2.0) -> None:
        """Flush what is queued (bounded by ``timeout``), then end both threads."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._threads[0].join(timeout)
        try:
            self._reader_redis.connection_pool.disconnect()   # wakes the blocked XREAD
        except Exception:   # noqa: BLE001 - closing a connection that may be broken
            pass
        self._threads[1].join(timeout)
        self._writer_redis.connection_pool.disconnect()

    # -- the writer thread ------------------------------------------------------------
    def _write_loop(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_S
        while True:
            with self._cond:
                while not self._queue and not self._stop and self._pending_snapshot is None:
                    wait = next_beat - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                batch = list(self._queue)
                self._queue.clear()
                snapshot, self._pending_snapshot = self._pending_snapshot, None
                stopping = self._stop
            beat = time.monotonic() >= next_beat or stopping
            try:
                self._append(batch, snapshot, beat)
            except redis.RedisError as exc:
                self._lost(f"{exc}", batch)
            if beat:
                next_beat = time.monotonic() + HEARTBEAT_S
            if stopping:
                return

    def _append(self, batch: list[Entry], snapshot: tuple[bytes, str, str | None] | None,
                beat: bool) -> None:
        pipe = self._writer_redis.pipeline(transaction=False)
        for entry in batch:
            pipe.xadd(LOG_KEY, entry.fields())   # type: ignore[arg-type]
        if snapshot is not None:
            state, position, generation = snapshot
            self._store_snapshot(keys=[GENERATION_KEY, SNAPSHOT_KEY, LOG_KEY],
                                 args=[generation or "", state, position, ALIVE_KEY],
                                 client=pipe)
        watched: list[str] = []
        if beat:
            pipe.set(ALIVE_KEY + self.server, self.position, px=HEARTBEAT_TTL_MS)
            with self._cond:
                watched = sorted(self._servers - self._reported)
            for other in watched:
                pipe.exists(ALIVE_KEY + other)
        if not batch and snapshot is None and not beat:
            return
        results = pipe.execute()
        for other, alive in zip(watched, results[len(results) - len(watched):]):
            if not alive:
                log.warning("bus: server %s stopped its heartbeat; its users leave", other)
                self._writer_redis.xadd(LOG_KEY, Entry(Kind.GONE, other, 0,
                                                       time.time()).fields())  # type: ignore[arg-type]
                with self._cond:
                    self._reported.add(other)

    def _lost(self, reason: str, batch: list[Entry]) -> None:
        log.warning("bus: cannot append %d entries: %s", len(batch), reason)
        with self._cond:
            if self.up:
                self.up = False
                self._inbox.append(BusDown(reason, time.time()))
            self._inbox.append(Unsent(tuple(batch)))
        self._wake()
        try:   # the reader finds out too, and its reconnect brings the bus back up
            self._reader_redis.connection_pool.disconnect()
        except Exception:   # noqa: BLE001 - closing a connection that may be broken
            pass

    # -- the reader thread ------------------------------------------------------------
    def _read_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                reply: Any = self._reader_redis.xread({LOG_KEY: self.position}, count=READ_COUNT,
                                                      block=0)
                delay = 0.1
            # Not only RedisError: closing the connection under a blocked read (``stop``)
            # surfaces as whatever redis-py's parser meets, e.g. AttributeError.
            except Exception as exc:  # noqa: BLE001
                with self._cond:
                    if self._stop:
                        return
                    if self.up:
                        self.up = False
                        self._inbox.append(BusDown(str(exc) or type(exc).__name__, time.time()))
                self._wake()
                log.warning("bus: lost %s: %s", self.url, exc)
                time.sleep(delay)   # this thread has nothing else to do meanwhile
                delay = min(delay * 2, RECONNECT_MAX_S)
                self._reconnect()
                continue
            self._deliver(reply)

    def _deliver(self, reply: Any) -> None:
        events: list[BusEvent] = []
        for _stream, entries in reply or []:
            for position, fields in entries:
                self.position = position.decode()
                try:
                    entry = Entry.from_fields(fields)
                except ValueError as exc:
                    log.warning("bus: skipped entry %s: %s", self.position, exc)
                    continue
                with self._cond:              # whom to watch: the servers not yet gone
                    if entry.kind == Kind.GONE:
                        self._servers.discard(entry.server)
                    elif entry.kind == Kind.CONNECT and entry.server != self.server:
                        self._servers.add(entry.server)
                events.append(Applied(self.position, entry))
        with self._cond:
            # A replica that misses one entry is no copy: when the loop falls behind,
            # wait for room (the entries stay in Redis meanwhile), never drop.
            self._cond.wait_for(lambda: len(self._inbox) + len(events) <= MAX_INBOX
                                or self._stop)
            self._inbox.extend(events)
        self._wake()

    def _reconnect(self) -> None:
        """After a loss: back on, reading on (same log) or from a new one (a reset)."""
        try:
            generation = _text(self._reader_redis.get(GENERATION_KEY))
            snapshot: bytes | None = None
            if generation is None:                   # Redis lost the log: start a new one
                snapshot = self._reset()
                if snapshot is None:
                    return
            elif generation != self.generation:      # another server started it already
                stored = self._reader_redis.get(SNAPSHOT_KEY)
                snapshot = stored if isinstance(stored, bytes) else None
                if snapshot is None:
                    return
            self.generation = _text(self._reader_redis.get(GENERATION_KEY))
        except (redis.RedisError, OSError):
            return                                   # still down: the read loop tries again
        if snapshot is not None:
            self.position = "0-0"
        with self._cond:
            self.up = True
            self._inbox.append(BusUp(time.time(), snapshot, self.generation))
        log.info("bus: back on %s%s", self.url, " with a new log" if snapshot else "")
        self._wake()

    def _reset(self) -> bytes | None:
        """Offer this replica for the new log; returns the snapshot that won, or None."""
        with self._cond:
            self._snapshot_offer = None
            self._inbox.append(ResetWanted())
        self._wake()
        with self._cond:
            self._cond.wait_for(lambda: self._snapshot_offer is not None or self._stop,
                                SNAPSHOT_WAIT_S)
            offer = self._snapshot_offer
        if offer is None:
            return None
        pipe = self._reader_redis.pipeline(transaction=True)
        pipe.set(SNAPSHOT_KEY, offer, nx=True)
        pipe.set(GENERATION_KEY, secrets.token_hex(8), nx=True)
        pipe.set(EPOCH_KEY, self.epoch, nx=True)
        pipe.get(SNAPSHOT_KEY)
        won, _, _, snapshot = pipe.execute()
        log.warning("bus: Redis had lost the log; a new one starts from %s state",
                    "this server's" if won else "another server's")
        return snapshot if isinstance(snapshot, bytes) else None

def _text(value: object) -> str | None:
    """A Redis reply as text (redis-py gives bytes), or None."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None
