"""A recording TCP relay: stand it between clients and a server and keep every byte.

Theory of operation
-------------------
``RecordingRelay(server_addr)`` listens on 127.0.0.1, any free port (or
the ``host`` and ``port`` given). Each client it accepts gets its own connection to the real server,
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
- ``cut`` is a network outage on demand, for tests and lessons that watch
  a client reconnect: every relayed connection is ended (each peer reads
  end of stream, recorded as ``close`` "cut"), and clients that connect
  while cut are accepted but held, unread and unanswered, until ``resume``
  connects them to the server. Both run in the loop thread: the caller
  wakes it and waits until it is done, so after ``cut()`` returns nothing
  gets through.
- The record is a ``RecordLog``: bounded (``max_records`` and
  ``max_record_bytes`` of data, oldest dropped first, counted in
  ``dropped``), so a relay left in front of a benchmark cannot eat memory,
  and followed by ``chat-sync record`` as it grows.

Trade-offs: the relay adds a hop, so timings include one more loopback
copy; recorded timestamps are the relay's reads, not the kernel's. It speaks
IPv4 on its own side only.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

from .record_log import Followed, RecordLog
# The records are defined in ``records``; they are named here too, where
# readers of a TCP recording have always found them.
from .records import (
    CLIENT_TO_SERVER,
    DIRECTIONS,
    SERVER_TO_CLIENT,
    Address,
    ConnEvent,
    EventKind,
    Line,
    Record,
    Row,
    Segment,
    format_table,
    lines,
    table,
)
from .serving import accepted
from .wakeup import Wakeup

__all__ = ["CLIENT_TO_SERVER", "DIRECTIONS", "SERVER_TO_CLIENT", "Address", "ConnEvent",
           "EventKind", "Line", "Record", "RecordingRelay", "Row", "Segment", "format_table",
           "lines", "table"]

log = logging.getLogger("chat_sync.recorder")

RECV_BYTES = 64 * 1024
MAX_BUFFER_BYTES = 256 * 1024    # bytes held per connection and direction
MAX_CONNECTIONS = 256
MAX_RECORDS = 100_000
MAX_RECORD_BYTES = 64 * 1024 * 1024   # data bytes the record holds, at most


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


def _size(record: Record) -> int:
    return len(record.data) if isinstance(record, Segment) else 0


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
    ``with RecordingRelay((server.host, server.port)) as relay:`` or
    ``.start()`` / ``.stop()``; clients connect to ``relay.address``.
    ``clock`` stamps every record (``time.time`` by default, so a pcap shows
    wall-clock times that match the messages' ``ts``). ``port`` 0 picks a
    free one. Raises OSError if the server's name does not resolve or the
    listening socket cannot be bound.
    """

    def __init__(self, server_addr: Address, *, clock: Callable[[], float] = time.time,
                 host: str = "127.0.0.1", port: int = 0,
                 max_buffer_bytes: int = MAX_BUFFER_BYTES,
                 max_connections: int = MAX_CONNECTIONS, max_records: int = MAX_RECORDS,
                 max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        if max_buffer_bytes < 1 or max_connections < 1 or max_records < 1:
            raise ValueError("max_buffer_bytes, max_connections and max_records must be >= 1")
        self._family, self.server_addr = _resolve(server_addr)
        self._clock = clock
        self._max_buffer = max_buffer_bytes
        self._max_connections = max_connections
        self._listener = socket.create_server((host, port), backlog=128)
        self._listener.setblocking(False)
        self.address: Address = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._wakeup = Wakeup()
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ, _WAKEUP)
        self._links: dict[int, _Link] = {}
        self._ids = itertools.count(1)
        self.log: RecordLog[Record] = RecordLog(max_records, max_record_bytes, _size)
        self._held: list[tuple[socket.socket, Address]] = []   # accepted while cut
        self._control = threading.Condition()   # guards the three below
        self._want_cut = False       # what cut() / resume() asked for
        self._asked = 0              # requests made ...
        self._done = 0               # ... and carried out by the loop
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

    def cut(self, timeout: float = 10.0) -> None:
        """End every relayed connection, and hold new clients until ``resume``.

        Each peer reads end of stream; the server keeps running. Returns once
        the loop has done it. Raises RuntimeError if that takes over ``timeout``.
        """
        self._ask(True, timeout)

    def resume(self, timeout: float = 10.0) -> None:
        """Relay again, starting with the clients held while cut."""
        self._ask(False, timeout)

    def _ask(self, cut: bool, timeout: float) -> None:
        with self._control:
            self._want_cut = cut
            self._asked += 1
            ticket = self._asked
        if self._thread is None or self._finished:
            return       # not relaying: nothing is connected, accept() will obey the flag
        self._wakeup.wake()
        with self._control:
            done = self._control.wait_for(lambda: self._done >= ticket or self._finished,
                                          timeout)
        if not done:
            raise RuntimeError(f"relay did not {'cut' if cut else 'resume'} within {timeout} s")

    @property
    def held(self) -> int:
        """How many clients connected while cut and wait, unanswered, for ``resume``."""
        return len(self._held)

    def follow(self, start: int, timeout: float | None = None) -> Followed[Record]:
        """The records numbered ``start`` on, waiting for one (see ``RecordLog.follow``)."""
        return self.log.follow(start, timeout)

    @property
    def records(self) -> list[Record]:
        """A snapshot of every segment and event, in the order they happened."""
        return self.log.records

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
        return self.log.dropped

    def wait_for(self, predicate: Callable[[list[Record]], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(records)`` is true; returns False if ``timeout`` passes first."""
        return self.log.wait_for(predicate, timeout)

    def lines(self) -> list[Line]:
        """The recorded lines (see the module function ``lines``)."""
        return list(lines(self.records))

    def table(self) -> list[Row]:
        """The packet table of the record so far (see the module function ``table``)."""
        return table(self.records)

    # -- recording ---------------------------------------------------------------
    def _record(self, record: Record) -> None:
        self.log.append(record)

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
                self._obey()
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
        for sock, addr in accepted(self._listener, self._accept_failed):
            sock.setblocking(False)
            client_addr: Address = (str(addr[0]), int(addr[1]))
            with self._control:
                cut = self._want_cut
            if cut and len(self._held) < self._max_connections:
                self._held.append((sock, client_addr))    # unread until resume()
            elif cut:
                sock.close()                              # too many held: refused
            else:
                self._link(sock, client_addr)

    @staticmethod
    def _accept_failed(exc: OSError) -> None:
        log.warning("accept failed: %s", exc)    # EMFILE and friends: relay the others

    def _link(self, sock: socket.socket, client_addr: Address) -> None:
        """Connect an accepted client to the server; it is read once that is done."""
        upstream = socket.socket(self._family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        link = _Link(next(self._ids), sock, client_addr, upstream, self.server_addr)
        if len(self._links) >= self._max_connections:
            self._fail(link, link.server, f"relay full: {self._max_connections} connections")
            return
        for s in (sock, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links[link.id] = link
        err = upstream.connect_ex(self.server_addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._fail(link, link.server, f"connect to server failed: {os.strerror(err)}")
            return
        log.debug("[conn %d] %s:%d accepted", link.id, *client_addr)
        self._update(link)      # the server socket becomes writable once connected

    def _obey(self) -> None:
        """Carry out what ``cut`` and ``resume`` asked, in the loop thread."""
        with self._control:
            cut, asked = self._want_cut, self._asked
        if cut:
            for link in list(self._links.values()):
                self._cut(link)
        else:
            held, self._held = self._held, []
            for sock, client_addr in held:
                self._link(sock, client_addr)
        with self._control:
            self._done = asked
            self._control.notify_all()

    def _cut(self, link: _Link) -> None:
        """End both sockets with a FIN, as a server that closed would."""
        for side in (link.client, link.server):
            try:
                side.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass          # not connected yet, or already reset: close() ends it
        self._close(link, "cut")

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
        for sock, _ in self._held:
            sock.close()
        self._held.clear()
        self._selector.close()
        self._listener.close()
        self._wakeup.close()
        with self._control:
            self._finished = True
            self._control.notify_all()
        self.log.close()
