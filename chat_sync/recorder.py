"""A recording TCP relay: stand it between clients and a server and keep every byte.

Theory of operation
-------------------
``RecordingRelay(server_addr)`` listens on 127.0.0.1 (port 0: any free
port). Each client it accepts gets its own connection to the real server,
and the relay copies bytes both ways, writing down every chunk one ``recv``
returned as a ``Segment``: when (from the injected clock), which connection,
which way (``->`` client to server, ``<-`` server to client), the bytes, and
the two real endpoints. The client's address is its real ephemeral port and
the server's is the real server's, so a pcap made from the record (see
``pcap``) shows the conversation as if there were no relay in between.
Connection events are recorded in the same timeline as ``ConnEvent``: the
server reached (``open``), one side's end of stream (``fin``), a failure
(``reset``) and both sockets closed (``close``).

The relay is the same thin shell as the server: one thread, one
``selectors`` loop, non-blocking sockets, state on ``SelectorKey.data``.
Rules:

- A segment is recorded when it is read, so the record holds the chunks
  the relay saw, not lines: one segment may hold half a line or several.
  ``lines`` re-frames them with a ``LineBuffer`` per connection and
  direction, exactly as the server and clients do.
- Each direction has a bounded buffer. While it is full, the relay stops
  reading that direction's source, so a slow receiver slows its sender
  down (TCP back-pressure passes through the relay) instead of growing
  the relay's memory.
- A socket is registered for ``EVENT_WRITE`` only while bytes wait for it.
  The client is not read until the server connection is up.
- End of stream is passed on as it arrives: when one side sends FIN and its
  buffered bytes are delivered, the relay shuts down writing to the other
  side (a half-close), and closes both sockets once both ways are shut.
  A failure on either socket resets the other (``SO_LINGER`` 0), so each
  peer sees what it would have seen without the relay.
- ``stop`` wakes the loop through a socketpair, never by polling a flag;
  connections still open are closed and recorded as closed.
- The record is bounded too (``max_records``, oldest dropped first, counted
  in ``dropped``), so a relay left in front of a benchmark cannot eat memory.

Trade-offs: the relay adds a hop, so timings include one more loopback
copy; recorded timestamps are the relay's reads, not the kernel's. It speaks
IPv4 on its own side only.
"""
from __future__ import annotations

import enum
import errno
import itertools
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Union

from . import protocol
from .framing import LineBuffer
from .wakeup import Wakeup

log = logging.getLogger("chat_sync.recorder")

Address = tuple[str, int]

CLIENT_TO_SERVER = "->"
SERVER_TO_CLIENT = "<-"
DIRECTIONS = (CLIENT_TO_SERVER, SERVER_TO_CLIENT)

RECV_BYTES = 64 * 1024
MAX_BUFFER_BYTES = 256 * 1024    # bytes held per connection and direction
MAX_CONNECTIONS = 256
MAX_RECORDS = 100_000
ACCEPTS_PER_TURN = 64


@dataclass(frozen=True)
class Segment:
    """One chunk of bytes as one ``recv`` returned it; ``->`` is client to server."""

    t: float
    conn: int
    direction: str
    data: bytes
    client: Address
    server: Address

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be '->' or '<-', not {self.direction!r}")


class EventKind(enum.StrEnum):
    OPEN = "open"      # the relay reached the server for this client
    FIN = "fin"        # ``direction``'s sender ended its stream
    RESET = "reset"    # a socket failed; ``direction`` says whose end, ``reason`` why
    CLOSE = "close"    # both sockets are closed; ``reason`` says why


@dataclass(frozen=True)
class ConnEvent:
    """Something that happened to a relayed connection, on the same clock as segments."""

    t: float
    conn: int
    kind: EventKind
    client: Address
    server: Address
    direction: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be '->', '<-' or None, not {self.direction!r}")


Record = Union[Segment, ConnEvent]


class Line(NamedTuple):
    """One complete line: when its newline was read, and the JSON object it holds.

    ``message`` is the decoded object, or the raw line (``bytes``) when it is
    not a JSON object: a bad line is part of the story too.
    """

    t: float
    conn: int
    direction: str
    message: dict[str, Any] | bytes


class Row(NamedTuple):
    """One row of a packet table; ``t`` is seconds since the first record."""

    t: float
    conn: int
    direction: str
    nbytes: int
    text: str


# -- Reading a record (no I/O) ---------------------------------------------------
def lines(records: Iterable[Record]) -> Iterator[Line]:
    """Re-frame recorded segments into lines, per connection and direction.

    Yields a ``Line`` for each complete, non-empty line, stamped with the time
    of the segment that completed it. An unterminated tail is not yielded.
    """
    buffers: dict[tuple[int, str], LineBuffer] = {}
    for record in records:
        if not isinstance(record, Segment):
            continue
        key = (record.conn, record.direction)
        if key not in buffers:
            # The record is already bounded; here any line the relay saw is shown.
            buffers[key] = LineBuffer(max_line_bytes=sys.maxsize)
        for line in buffers[key].feed(record.data):
            message: dict[str, Any] | bytes
            try:
                message = protocol.decode(line)
            except protocol.ProtocolError:
                message = line
            yield Line(record.t, record.conn, record.direction, message)


def _show(data: bytes) -> str:
    """Bytes as one line of text: UTF-8 where it is, ``\\n`` and ``\\xNN`` where not."""
    text = data.decode("utf-8", "backslashreplace")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def table(records: Iterable[Record]) -> list[Row]:
    """One row per segment and per connection event, in the order they happened."""
    rows: list[Row] = []
    t0: float | None = None
    for record in records:
        if t0 is None:
            t0 = record.t
        if isinstance(record, Segment):
            rows.append(Row(record.t - t0, record.conn, record.direction, len(record.data),
                            _show(record.data)))
            continue
        client, server = record.client, record.server
        if record.kind is EventKind.OPEN:
            text = f"[open {client[0]}:{client[1]} -> {server[0]}:{server[1]}]"
        else:
            text = f"[{record.kind.value}{': ' + record.reason if record.reason else ''}]"
        rows.append(Row(record.t - t0, record.conn, record.direction or "", 0, text))
    return rows


def format_table(rows: Iterable[Row], width: int = 100) -> str:
    """The rows as a fixed-width text table; data longer than ``width`` is cut with '…'."""
    out = [f"{'t (ms)':>9}  {'conn':>4}  {'dir':<3}  {'bytes':>6}  data"]
    for row in rows:
        text = row.text if len(row.text) <= width else row.text[:width - 1] + "…"
        out.append(f"{row.t * 1000:9.3f}  {row.conn:>4}  {row.direction:<3}  "
                   f"{row.nbytes:>6}  {text}")
    return "\n".join(out)


# -- The relay's loop ------------------------------------------------------------
class _Pipe:
    """One direction of a relayed connection: bytes read from one side, owed to the other."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.buffer = bytearray()
        self.eof = False     # the sending side ended its stream
        self.shut = False    # ... and we passed that on with shutdown(SHUT_WR)


class _Side:
    """One socket of a relayed connection; rides on ``SelectorKey.data``."""

    def __init__(self, link: _Link, sock: socket.socket, name: str,
                 inbound: _Pipe, outbound: _Pipe) -> None:
        self.link = link
        self.sock = sock
        self.name = name            # "client" or "server"
        self.inbound = inbound      # the pipe this socket's bytes go into
        self.outbound = outbound    # the pipe this socket is written from
        self.events = 0             # what it is registered for; 0 = not registered


class _Link:
    """A client socket, its server socket, and the two pipes between them."""

    def __init__(self, conn_id: int, client_sock: socket.socket, client_addr: Address,
                 server_sock: socket.socket, server_addr: Address) -> None:
        self.id = conn_id
        self.client_addr = client_addr
        self.server_addr = server_addr
        self.up = _Pipe(CLIENT_TO_SERVER)
        self.down = _Pipe(SERVER_TO_CLIENT)
        self.client = _Side(self, client_sock, "client", inbound=self.up, outbound=self.down)
        self.server = _Side(self, server_sock, "server", inbound=self.down, outbound=self.up)
        self.connected = False
        self.closed = False

    def other(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    def direction_of(self, side: _Side) -> str:
        """The direction in which ``side`` sends: its failures are told that way."""
        return side.inbound.direction


_LISTENER = "listener"
_WAKEUP = "wakeup"


def _resolve(server_addr: Address) -> tuple[socket.AddressFamily, Address]:
    """The server's family and numeric address, IPv4 preferred (pcap speaks IPv4)."""
    infos = socket.getaddrinfo(server_addr[0], server_addr[1], type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {server_addr[0]!r}")
    family, _, _, _, sockaddr = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    return family, (str(sockaddr[0]), int(sockaddr[1]))


class RecordingRelay:
    """A TCP relay in a background thread that records every chunk both ways.

    Bound at construction, so ``address`` is known before ``start``. Use as
    ``with RecordingRelay(server.host, server.port) ...`` or ``.start()`` /
    ``.stop()``. ``clock`` stamps every record (``time.time`` by default, so
    a pcap shows wall-clock times that match the messages' ``ts``).
    """

    def __init__(self, server_addr: Address, *, clock: Callable[[], float] = time.time,
                 host: str = "127.0.0.1", max_buffer_bytes: int = MAX_BUFFER_BYTES,
                 max_connections: int = MAX_CONNECTIONS, max_records: int = MAX_RECORDS) -> None:
        if max_buffer_bytes < 1 or max_connections < 1 or max_records < 1:
            raise ValueError("max_buffer_bytes, max_connections and max_records must be >= 1")
        self._family, self.server_addr = _resolve(server_addr)
        self._clock = clock
        self._max_buffer = max_buffer_bytes
        self._max_connections = max_connections
        self._listener = socket.create_server((host, 0), backlog=128)
        self._listener.setblocking(False)
        self.address: Address = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._wakeup = Wakeup()
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ, _WAKEUP)
        self._links: dict[int, _Link] = {}
        self._ids = itertools.count(1)
        self._records: deque[Record] = deque(maxlen=max_records)
        self._recorded = 0
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    # -- public ------------------------------------------------------------------
    def start(self) -> RecordingRelay:
        """Start relaying in a background thread; returns self. Raises if already started."""
        if self._thread is not None or self._finished:
            raise RuntimeError("the relay was already started")
        self._thread = threading.Thread(target=self._run, name="recording-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the listener; safe to call twice.

        Raises RuntimeError if the loop thread does not end within ``timeout``.
        """
        self._stopping.set()
        if self._thread is None:
            if not self._finished:
                self._close_all()
            return
        self._wakeup.wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"relay thread did not stop within {timeout} s")

    def __enter__(self) -> RecordingRelay:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def records(self) -> list[Record]:
        """A snapshot of every segment and event, in the order they happened."""
        with self._changed:
            return list(self._records)

    @property
    def segments(self) -> list[Segment]:
        """A snapshot of the recorded segments."""
        return [r for r in self.records if isinstance(r, Segment)]

    @property
    def events(self) -> list[ConnEvent]:
        """A snapshot of the connection events."""
        return [r for r in self.records if isinstance(r, ConnEvent)]

    @property
    def dropped(self) -> int:
        """How many of the oldest records were dropped to keep within ``max_records``."""
        with self._changed:
            return self._recorded - len(self._records)

    def wait_for(self, predicate: Callable[[list[Record]], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(records)`` is true; returns False if ``timeout`` passes first."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(list(self._records)), timeout)

    def lines(self) -> list[Line]:
        """The recorded lines (see the module function ``lines``)."""
        return list(lines(self.records))

    def table(self) -> list[Row]:
        """The packet table of the record so far (see the module function ``table``)."""
        return table(self.records)

    # -- recording ---------------------------------------------------------------
    def _record(self, record: Record) -> None:
        with self._changed:
            self._records.append(record)
            self._recorded += 1
            self._changed.notify_all()

    def _event(self, link: _Link, kind: EventKind, direction: str | None = None,
               reason: str = "") -> None:
        self._record(ConnEvent(self._clock(), link.id, kind, link.client_addr,
                               link.server_addr, direction, reason))

    # -- the loop ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._turn()
        finally:
            self._close_all()

    def _turn(self) -> None:
        for key, mask in self._selector.select():
            if key.data == _LISTENER:
                self._accept()
                continue
            if key.data == _WAKEUP:
                self._wakeup.drain()
                continue
            side: _Side = key.data
            link = side.link
            if link.closed:          # closed earlier in this batch
                continue
            if not link.connected:
                self._finish_connect(link)
            else:
                if mask & selectors.EVENT_WRITE:
                    self._write(side)
                if mask & selectors.EVENT_READ and not link.closed:
                    self._read(side)
            if not link.closed:
                self._update(link)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:        # EMFILE and friends: keep relaying the others
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            client_addr: Address = (str(addr[0]), int(addr[1]))
            upstream = socket.socket(self._family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            link = _Link(next(self._ids), sock, client_addr, upstream, self.server_addr)
            if len(self._links) >= self._max_connections:
                self._fail(link, link.server, f"relay full: {self._max_connections} connections")
                continue
            for s in (sock, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._links[link.id] = link
            err = upstream.connect_ex(self.server_addr)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                self._fail(link, link.server, f"connect to server failed: {os.strerror(err)}")
                continue
            log.debug("[conn %d] %s:%d accepted", link.id, *client_addr)
            self._update(link)      # the server socket becomes writable once connected

    def _finish_connect(self, link: _Link) -> None:
        err = link.server.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(link, link.server, f"connect to server failed: {os.strerror(err)}")
            return
        link.connected = True
        self._event(link, EventKind.OPEN)

    def _read(self, side: _Side) -> None:
        link, pipe = side.link, side.inbound
        room = self._max_buffer - len(pipe.buffer)
        if room <= 0 or pipe.eof:
            return
        try:
            data = side.sock.recv(min(RECV_BYTES, room))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(link, side, f"{side.name}: {exc.strerror or exc}")
            return
        if not data:
            pipe.eof = True
            self._event(link, EventKind.FIN, pipe.direction)
        else:
            self._record(Segment(self._clock(), link.id, pipe.direction, data,
                                 link.client_addr, link.server_addr))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("[%s:%d] %s %r", *link.client_addr, pipe.direction, data)
            pipe.buffer += data
        self._write(link.other(side))      # pass it on now if the other side takes it

    def _write(self, side: _Side) -> None:
        link, pipe = side.link, side.outbound
        if pipe.buffer:
            try:
                sent = side.sock.send(pipe.buffer)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(link, side, f"{side.name}: {exc.strerror or exc}")
                return
            del pipe.buffer[:sent]
        if pipe.eof and not pipe.buffer and not pipe.shut:
            pipe.shut = True
            try:
                side.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._fail(link, side, f"{side.name}: {exc.strerror or exc}")
                return
            if link.up.shut and link.down.shut:
                self._close(link, "closed by both sides")

    def _update(self, link: _Link) -> None:
        """Register each socket for exactly what it can do now."""
        if not link.connected:
            self._set_events(link.server, selectors.EVENT_WRITE)
            return
        for side in (link.client, link.server):
            events = 0
            if not side.inbound.eof and len(side.inbound.buffer) < self._max_buffer:
                events |= selectors.EVENT_READ
            if side.outbound.buffer:
                events |= selectors.EVENT_WRITE
            self._set_events(side, events)

    def _set_events(self, side: _Side, events: int) -> None:
        if events == side.events:
            return
        if side.events == 0:
            self._selector.register(side.sock, events, side)
        elif events == 0:
            self._selector.unregister(side.sock)
        else:
            self._selector.modify(side.sock, events, side)
        side.events = events

    # -- closing -------------------------------------------------------------------
    def _fail(self, link: _Link, side: _Side, reason: str) -> None:
        """``side`` failed: reset the other one, so its peer sees a reset too."""
        log.info("[conn %d] reset: %s", link.id, reason)
        self._event(link, EventKind.RESET, link.direction_of(side), reason)
        other = link.other(side)
        try:
            other.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._close(link, reason)

    def _close(self, link: _Link, reason: str) -> None:
        if link.closed:
            return
        link.closed = True
        for side in (link.client, link.server):
            if side.events:
                self._selector.unregister(side.sock)
                side.events = 0
            side.sock.close()
        self._links.pop(link.id, None)
        log.debug("[conn %d] closed: %s", link.id, reason)
        self._event(link, EventKind.CLOSE, reason=reason)

    def _close_all(self) -> None:
        for link in list(self._links.values()):
            self._close(link, "relay stopped")
        self._selector.close()
        self._listener.close()
        self._wakeup.close()
        self._finished = True
