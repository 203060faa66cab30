"""Several servers, one chat: every server replays one shared log, no I/O here.

Theory of operation
-------------------
``ChatCore`` is pure: the same requests, in the same order, with the same
timestamps, leave it in the same state and make it say the same things. So
several servers become one chat if each of them feeds its own ``ChatCore``
the same sequence of inputs: a *replicated state machine*. The bus (Redis,
see ``bus``) is only the sequencer: a log that every server appends to and
every server reads back, in one order.

A server never applies its own clients' input directly. Each connect, line
and disconnect becomes an ``Entry`` (server id, connection number, wall
time, the raw line) that goes to the log; when the entry comes back from
the log, every server applies it to its replica. The replica knows a
connection as ``(server id, number)``, so every server holds every user of
every server, and what the core says to a connection of another server is
simply not sent: that server says it. Because all servers apply the same
entries in the same order:

- ``seq`` is one counter for the whole cluster, and every replica hands out
  the same numbers; history, ``since`` and ``history_gap`` work across
  servers, so a client may reconnect to any of them and miss nothing;
- a name is unique across servers: the first join in log order gets it,
  on every replica at once;
- ``/who``, ``/rooms`` and whispers see every server's users.

The price: every request waits one round trip to the bus before it is
answered, and every server does the work of the whole cluster (parsing
every line, keeping every room). Only the sending is divided.

A server that stops gracefully appends ``gone`` for itself; one that dies
is noticed by the others when its heartbeat expires, and any of them
appends ``gone`` for it. Applying ``gone`` disconnects its connections on
every replica, so their rooms hear them leave and their names are free.
Applying it twice changes nothing.

A new server starts from a snapshot of any replica (they agree at a given
log position) and applies the entries after it, so the log can be trimmed
behind the latest snapshot. ``snapshot``/``restore`` are that state as JSON.

Trust: the log is written only by servers of the cluster (the bus is not
exposed to clients), but entries are still checked before they touch the
replica: an entry that does not parse, or names a connection the replica
does not have, is counted and skipped.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Protocol, Union

from . import protocol as p
from .rooms import Broadcast, ChatCore, ConnId, Output, Reply, new_resume_token

SEQ_GAP_AFTER_RESET = 1000   # seq numbers skipped when a reset bus starts from a snapshot
SNAPSHOT_EVERY = 1000        # entries applied between two snapshots (the log is trimmed behind)


class Kind:
    """What an entry of the log says happened (one byte on the wire)."""

    CONNECT = "c"
    LINE = "l"
    DISCONNECT = "d"
    GONE = "g"        # a whole server is gone: disconnect every connection of it


@dataclasses.dataclass(frozen=True)
class Entry:
    """One input of one connection, as the log holds it."""

    kind: str
    server: str
    conn: int = 0
    ts: float = 0.0
    data: bytes = b""

    def fields(self) -> dict[str, bytes]:
        """The entry as a Redis stream entry's fields."""
        return {"k": self.kind.encode(), "s": self.server.encode(),
                "c": str(self.conn).encode(), "t": repr(self.ts).encode(), "d": self.data}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Entry:
        """Parse stream fields; raises ValueError for anything malformed."""
        try:
            kind = fields[b"k"].decode()
            entry = cls(kind, fields[b"s"].decode(), int(fields[b"c"]),
                        float(fields[b"t"]), fields.get(b"d", b""))
        except (KeyError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed log entry: {exc}") from None
        if kind not in (Kind.CONNECT, Kind.LINE, Kind.DISCONNECT, Kind.GONE):
            raise ValueError(f"malformed log entry: kind {kind!r}")
        return entry


@dataclasses.dataclass(frozen=True)
class Applied:
    """An entry read back from the log, with its position there."""

    position: str
    entry: Entry


@dataclasses.dataclass(frozen=True)
class BusDown:
    """The bus is unreachable; ``ts`` is the wall time the bus saw it, for the notice."""

    reason: str
    ts: float


@dataclasses.dataclass(frozen=True)
class BusUp:
    """The bus is back at wall time ``ts``. ``snapshot`` is set when it had lost
    the log (a restart); ``generation`` names the log it is back on."""

    ts: float
    snapshot: bytes | None = None
    generation: str | None = None


@dataclasses.dataclass(frozen=True)
class Unsent:
    """Entries the bus could not append: their senders are told ``unavailable``."""

    entries: tuple[Entry, ...]


@dataclasses.dataclass(frozen=True)
class ResetWanted:
    """The bus lost the log: offer this replica to start the new one from."""


BusEvent = Union[Applied, BusDown, BusUp, Unsent, ResetWanted]


class BusPort(Protocol):
    """What ``ClusterChat`` needs of a bus: ``bus.RedisBus``, or a fake in tests."""

    def publish(self, entry: Entry) -> bool: ...
    def offer_snapshot(self, snapshot: bytes) -> None: ...
    def save_snapshot(self, snapshot: bytes, position: str) -> None: ...


class ClusterChat:
    """The chat as one server of a cluster sees it: local connections, a shared replica.

    ``bus.publish`` hands an entry to the bus and returns False when the bus
    cannot take it (down, or its queue is full): the request is refused
    with ``unavailable``, never silently lost. Connection numbers are the
    server's own (``int``); outputs name local connections only.
    """

    def __init__(self, core: ChatCore, server: str, bus: BusPort) -> None:
        self.core = core
        self.server = server
        self.bus = bus
        self._since_snapshot = 0
        self.local: set[int] = set()       # connected here, in the replica or on the way
        self.position = "0-0"              # the last log entry applied
        self.skipped = 0                   # entries that did not apply, counted

    # -- what the server's shell calls ------------------------------------------
    def connect(self, conn: int) -> list[Output]:
        """Its welcome comes back with the entry; the entry carries its resume token,
        so that every replica holds the same one."""
        self.local.add(conn)
        return self._send(self._connect_entry(conn))

    def _connect_entry(self, conn: int) -> Entry:
        return Entry(Kind.CONNECT, self.server, conn, 0.0, new_resume_token().encode())

    def receive(self, conn: int, line: bytes, now: float) -> list[Output]:
        return self._send(Entry(Kind.LINE, self.server, conn, now, bytes(line)), line)

    def disconnect(self, conn: int, now: float) -> list[Output]:
        self.local.discard(conn)
        self._send(Entry(Kind.DISCONNECT, self.server, conn, now))
        return []                          # the room hears it when the entry comes back

    def is_member(self, conn: int) -> bool:
        return conn in self.local

    def is_joined(self, conn: int) -> bool:
        member = self.core.members.get((self.server, conn))
        return member is not None and member.user is not None

    def take_ghosts(self) -> list[int]:
        """This server's connections a resume took the name from: the shell closes them."""
        return [c for c in map(self._mine, self.core.take_ghosts()) if c is not None]

    def shutdown_notice(self, now: float) -> Broadcast:
        """The core's notice, for this server's connections only (the others stay)."""
        return Broadcast(tuple(sorted(self.local)), self.core.shutdown_notice(now).message, None)

    def leave_cluster(self, now: float) -> None:
        """Tell the others this server is gone (a graceful stop), so they need not wait."""
        self.bus.publish(Entry(Kind.GONE, self.server, 0, now))

    # -- what the bus hands back -------------------------------------------------
    def apply(self, event: BusEvent) -> list[Output]:
        """Apply one event from the bus; returns what to send to local connections."""
        if isinstance(event, BusDown):
            return self._bus_notice(p.SystemEvent.BUS_DOWN,
                                    f"the chat bus is unreachable ({event.reason}); "
                                    "messages wait until it is back", event.ts)
        if isinstance(event, BusUp):
            if event.snapshot is not None:
                self.restore(event.snapshot)
                self.core.seq += SEQ_GAP_AFTER_RESET
            outputs = self._bus_notice(p.SystemEvent.BUS_UP, "the chat bus is back", event.ts)
            self._reconcile()
            return outputs
        if isinstance(event, Unsent):
            return self._unsent(event.entries)
        if isinstance(event, ResetWanted):
            self.bus.offer_snapshot(self.snapshot())
            return []
        self.position = event.position
        outputs = self._local(self._apply(event.entry))
        self._since_snapshot += 1
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self._since_snapshot = 0
            self.bus.save_snapshot(self.snapshot(), self.position)
        return outputs

    def _reconcile(self) -> None:
        """After an outage, make the replica hold exactly this server's connections."""
        mine = {number for server, number in map(cluster_conn, self.core.members)
                if server == self.server}
        for conn in sorted(self.local - mine):     # their connect was lost with the bus
            self.bus.publish(self._connect_entry(conn))
        for conn in sorted(mine - self.local):     # they left while the bus was down
            self.bus.publish(Entry(Kind.DISCONNECT, self.server, conn))

    def _unsent(self, entries: tuple[Entry, ...]) -> list[Output]:
        return [_unavailable(entry.conn, entry.data) for entry in entries
                if entry.kind == Kind.LINE and entry.conn in self.local]

    def _apply(self, entry: Entry) -> list[Output]:
        conn: ConnId = (entry.server, entry.conn)
        if entry.kind == Kind.GONE:
            outputs: list[Output] = []
            for gone in [c for c in self.core.members if cluster_conn(c)[0] == entry.server]:
                outputs += self.core.disconnect(gone, entry.ts)
            return outputs
        if entry.kind == Kind.CONNECT:
            if conn in self.core.members:
                self.skipped += 1
                return []
            return self.core.connect(conn, entry.data.decode(errors="replace") or None)
        if conn not in self.core.members:      # its connect fell out, or it left already
            self.skipped += 1
            return []
        if entry.kind == Kind.DISCONNECT:
            return self.core.disconnect(conn, entry.ts)
        return self.core.receive(conn, entry.data, entry.ts)

    # -- helpers -----------------------------------------------------------------
    def _send(self, entry: Entry, line: bytes | None = None) -> list[Output]:
        if self.bus.publish(entry):
            return []
        if line is None:
            return [Reply(entry.conn, p.error(p.ErrorCode.UNAVAILABLE,
                                              "the chat bus is unavailable; try again"))]
        return [_unavailable(entry.conn, line)]

    def _local(self, outputs: list[Output]) -> list[Output]:
        """Keep what goes to this server's connections, named by their local numbers."""
        mine: list[Output] = []
        for output in outputs:
            if isinstance(output, Reply):
                conn = self._mine(output.to)
                if conn is not None:
                    mine.append(Reply(conn, output.message))
                continue
            to = tuple(c for c in map(self._mine, output.to) if c is not None)
            own = None
            if output.own is not None and (sender := self._mine(output.own[0])) is not None:
                own = (sender, output.own[1])
            # The chat log wants every broadcast once, even to a room with no one here.
            mine.append(Broadcast(to, output.message, output.room, own))
        return mine

    def _mine(self, conn: ConnId) -> int | None:
        """The local number of a replica's connection, or None if it is not ours."""
        server, number = cluster_conn(conn)
        return number if server == self.server and number in self.local else None

    def _bus_notice(self, event: p.SystemEvent, text: str, ts: float) -> list[Output]:
        message = p.system(None, event, None, text, None, ts)
        return [Broadcast(tuple(sorted(self.local)), message, None)]

    # -- snapshots ---------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The replica at ``position``, as JSON: any server may start from it."""
        state = {"position": self.position, "core": self.core.snapshot()}
        return json.dumps(state, separators=(",", ":")).encode()

    def restore(self, data: bytes) -> None:
        """Replace the replica by a snapshot. Raises ValueError if it is not one."""
        try:
            state = json.loads(data)
            position = str(state["position"])
            core = state["core"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a snapshot: {exc!r}") from None
        self.core.restore(core, _conn_from_json)
        self.position = position


def _unavailable(conn: int, line: bytes) -> Reply:
    """The answer to a line the bus could not take: not applied, with its id."""
    return Reply(conn, p.error(p.ErrorCode.UNAVAILABLE, "the chat bus is unavailable: not sent",
                               id=p.peek_id(line)))


def cluster_conn(conn: ConnId) -> tuple[str, int]:
    """A replica's connection id: (server id, that server's connection number)."""
    assert isinstance(conn, tuple)
    server, number = conn
    assert isinstance(server, str) and isinstance(number, int)
    return server, number


def _conn_from_json(value: object) -> ConnId:
    """A replica's connection id from a snapshot: ``[server, number]``."""
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
            or not isinstance(value[1], int)):
        raise ValueError(f"not a connection id: {value!r}")
    return (value[0], value[1])
