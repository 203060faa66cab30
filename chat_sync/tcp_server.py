"""The TCP chat server: one thread, one ``selectors`` loop, only moving bytes.

Theory of operation
-------------------
Every socket is non-blocking and registered with one selector; the state
of a connection (its ``LineBuffer``, its output queue, its ``Guard``) rides
on ``SelectorKey.data``. Each turn of the loop has three steps:

1. **read**: ``select()`` says which sockets are ready; each readable one
   gets one ``recv``, its ``LineBuffer`` yields complete lines.
2. **handle**: each line goes to ``ChatCore.receive``, which returns replies
   and broadcasts. A broadcast is encoded once, and a turn's broadcasts to
   the same members are joined into one chunk (``Batch``) that the same
   ``bytes`` object carries to every member: a room of 1,000 costs 1,000
   references, not 1,000 copies.
3. **send**: the turn's last run, when the reading is done, is sent at
   once (``_write``) to each member with nothing queued; replies, runs that
   other output ended earlier in the turn, and what the kernel did not take
   are queued, and every connection with queued output is flushed once with
   ``sendmsg``, which hands the kernel the chunks as they are
   (scatter/gather, no joining): one send per connection a turn. What it
   did not take stays queued and the socket is registered for
   ``EVENT_WRITE`` until the queue is empty. A socket is never registered
   for writing with nothing to write: that would wake the loop for nothing,
   forever.

What a connection is and the rules it lives by, without a socket, are in
``tcp_server_core``: its phases (TLS hello and handshake, open, closing,
linger), its output queue, the timer heap, the accept back-off. ``_doom``
marks a connection to be closed at the end of the step, never mid-broadcast.

Bounds: a line longer than ``max_line_bytes`` is answered with
``line_too_long`` and the connection closed; the per-connection rules (a
request rate, the slow-reader limits, timeouts) are ``guard.Guard``, which
this shell asks before each request, after each read and each flush.
``select()`` sleeps exactly until the earliest deadline in the ``TimerHeap``.

Other threads (``stop``) and signal handlers wake the loop by writing a
byte to a socketpair the selector watches, never by polling a flag.
"""
from __future__ import annotations

import collections
import logging
import selectors
import socket
import ssl
import sys
import threading
import time
from typing import Any

from . import config as cfg
from . import protocol as p
from . import tls
from . import workers
from .bus import RedisBus, join_cluster
from .cluster import ClusterChat
from .framing import LineTooLong
from .guard import Breach, Guard
from .logs import ChatLog
from .rooms import Broadcast, ChatCore, ConnId, Output, Reply
from .serving import (ServerHandle, accepted, fit_descriptor_limit, run_in_foreground,
                      run_program)
from .tcp_server_core import (CLOSING_S, LINGER_BYTES, LINGER_S, AcceptGate, Batch, Connection,
                              Connections, ErrorReply, Phase, Replays, TimerHeap, check_settings,
                              guard_limits, socket_options)
from .wakeup import Stoppable

log = logging.getLogger("chat_sync.tcp_server")

RECV_BYTES = 64 * 1024
IOV_MAX = 1024               # chunks one sendmsg() may take (Linux's limit)

class TcpServer(Stoppable):
    """A chat server bound at construction, so ``address`` is known before serving.

    Raises ConfigError if ``tls_key`` is set without ``tls_cert``; OSError if
    the chat log, the TLS files or the address cannot be used; ssl.SSLError
    if the TLS files are not a matching certificate and key.
    """

    def __init__(self, config: cfg.TcpServerConfig = cfg.TcpServerConfig()) -> None:
        super().__init__()
        self.config = config
        check_settings(config)
        limits = p.Limits(max_line_bytes=config.max_line_bytes,
                          max_text_chars=config.max_text_chars,
                          presence_limit=config.presence_limit)
        self.core: ChatCore | ClusterChat = ChatCore(limits, config.history_size,
                                                     config.max_rooms, resume=True)
        self.bus: RedisBus | None = None
        if config.bus_url:
            self.core, self.bus = join_cluster(config.bus_url, self.core, self._wakeup.wake)
        self.limits = guard_limits(config)
        # Below both output limits no rule can trip: the guard is not even asked.
        self._check_from = min(config.send_buffer_soft_bytes, config.max_send_buffer_bytes)
        fit_descriptor_limit(config.max_clients)
        # The files first: if one cannot be opened, no socket is left bound.
        self.tls = tls.server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        self.chat_log = (ChatLog(config.log_file, config.log_max_bytes, config.log_backups)
                         if config.log_file else None)
        try:
            family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
            self.listener = socket.create_server((config.host, config.port), family=family,
                                                 backlog=1024, reuse_port=config.workers > 1)
        except OSError:
            if self.chat_log is not None:
                self.chat_log.close()
            raise
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.selector.register(self._wakeup.reader, selectors.EVENT_READ, "wakeup")
        self._table = Connections(config)
        self.conns = self._table.by_id              # every connection, by id
        self._per_ip = self._table.per_ip           # how many from each address
        self._recv_buffer = memoryview(bytearray(RECV_BYTES))
        self._now = time.monotonic()                # this turn's time, for every rule
        self._debug = log.isEnabledFor(logging.DEBUG)   # log every read and send? (once a turn)
        self._dirty: set[Connection] = set()        # got output this turn
        self._ready: set[Connection] = set()        # TLS: decrypted bytes wait in OpenSSL
        self._doomed: collections.deque[tuple[Connection, str, ErrorReply | None]] = \
            collections.deque()
        self._timers = TimerHeap()
        self._gate = AcceptGate()                   # accept paused while descriptors run out
        self._socket_options = socket_options(config)
        self.stopped = threading.Event()
        self._replays = Replays()                   # history lines, encoded once
        self._batch = Batch()                       # this turn's run of broadcasts

    def _bus_events(self) -> None:
        """Apply what the bus brought: the loop's share of the cluster's work."""
        assert self.bus is not None and isinstance(self.core, ClusterChat)
        for event in self.bus.take():
            self._dispatch(self.core.apply(event))

    # -- public ------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run the loop until ``stop``; then say goodbye to every client and close."""
        log.info("listening on %s:%d%s", *self.address, " (TLS)" if self.tls else "")
        try:
            while not self._stop.is_set():
                self._turn(self._timer_timeout())
            self._shutdown()
        finally:
            self._close_all()
            self.stopped.set()

    # -- the loop ----------------------------------------------------------------
    def _turn(self, timeout: float | None) -> None:
        ready = self.selector.select(0 if self._ready else timeout)
        self._now = time.monotonic()        # one clock read a turn; every rule uses it
        self._debug = log.isEnabledFor(logging.DEBUG)
        for key, mask in ready:
            if key.data == "listener":
                self._accept()
            elif key.data == "wakeup":
                self._wakeup.drain()
                if self.bus is not None:
                    self._bus_events()
            else:
                conn: Connection = key.data
                if mask & selectors.EVENT_READ and not conn.closed:
                    self._read(conn)
                if mask & selectors.EVENT_WRITE and not conn.closed:
                    self._dirty.add(conn)
        self._read_ready()
        self._expire_timers(self._now)
        self._reap()
        self._flush_dirty()
        if self.chat_log is not None:
            self.chat_log.flush()           # this turn's entries, to the writer in one go

    def _accept(self) -> None:
        for sock, addr in accepted(self.listener, self._pause_accepting):
            if failures := self._gate.accepted():
                log.warning("accepting again, after %d failed accepts", failures)
            try:
                sock.setblocking(False)
                for level, option, value in self._socket_options:
                    sock.setsockopt(level, option, value)
            except OSError:             # reset before we got to it
                sock.close()
                continue
            phase = Phase.HELLO if self.tls is not None else Phase.OPEN
            conn = self._table.add(sock, addr, Guard(self.limits, self._now,
                                                     tls=self.tls is not None), phase)
            self.selector.register(sock, selectors.EVENT_READ, conn)
            if conn.phase is Phase.OPEN:
                self._open(conn)
            self._schedule(conn)

    def _pause_accepting(self, exc: OSError) -> None:
        """Stop watching the listener a moment: it stays readable, so retrying spins."""
        if self._gate.failed(self._now):
            log.warning("accept failed: %s; pausing accepts %.2f s at a time until one works "
                        "(%d open)", exc, self._gate.pause_s, len(self.conns))
        self.selector.unregister(self.listener)

    def _open(self, conn: Connection) -> None:
        """The connection can talk (TLS: its handshake is done): welcome it, or refuse it."""
        conn.open()
        conn.guard.opened(self._now)
        if conn.refusal is not None:
            log.warning("[%s] refused: %s", conn.peer, conn.refusal[1])
            self._close_gently(conn, "refused", conn.refusal)
            return
        log.info("[%s] connected", conn.peer)
        self._dispatch(self.core.connect(conn.id))

    def _read(self, conn: Connection) -> None:
        if not conn.accepting:                  # open, it is neither (see _flush)
            if conn.phase is Phase.HELLO:
                self._hello(conn)
                return
            if conn.phase is Phase.HANDSHAKE:
                self._handshake(conn)
                return
        try:
            # Into one buffer for all: recv(64 KiB) would allocate 64 KiB per call.
            size = conn.sock.recv_into(self._recv_buffer)
            data = self._recv_buffer[:size]
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._doom(conn, f"receive failed: {exc}")
            return
        if size and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
            self._ready.add(conn)               # more decrypted bytes: read them next turn
        if not conn.accepting:
            self._drain(conn, data)
            return
        if not data:
            self._end_of_input(conn)
            return
        if self._debug:
            log.debug("[%s] -> %r", conn.peer, bytes(data))
        held = conn.lines.pending
        too_long: LineTooLong | None = None
        try:
            lines = conn.lines.feed(data)
        except LineTooLong as exc:
            lines, too_long = exc.lines, exc       # answer what came before it first
        now = time.time()                       # the wall clock: messages' "ts"
        for line in lines:
            breach = conn.guard.request(self._now)
            if breach is None:
                self._dispatch(self.core.receive(conn.id, line, now))
            else:
                self._refuse(conn, line, breach)
            if not conn.accepting:              # dropped by what that line did
                return
        if too_long is not None:
            log.info("[%s] %s", conn.peer, too_long)
            self._close_gently(conn, "line too long", (too_long.code, too_long.text))
            return
        # A line ended in this read if fewer bytes are held than were held plus received.
        conn.guard.input(conn.lines.pending, conn.lines.pending < held + size, self._now)
        if conn.guard.join_by is not None and self.core.is_joined(conn.id):
            conn.guard.joined()
        self._schedule(conn)

    def _read_ready(self) -> None:
        """TLS: read again where OpenSSL holds decrypted bytes that select() cannot see."""
        ready, self._ready = self._ready, set()
        for conn in ready:
            if not conn.closed:
                self._read(conn)

    def _refuse(self, conn: Connection, line: bytes, breach: Breach) -> None:
        """A request over the rate: answer it with the error (and its id), not applied."""
        if breach.close:
            log.warning("[%s] cut off: %s", conn.peer, breach.text)
            self._close_gently(conn, "flooding", (breach.code, breach.text))
            return
        if conn.guard.strikes == 1:            # once per episode, not once per line
            log.info("[%s] rate limited: %s", conn.peer, breach.text)
        self._reply(p.encode(p.error(breach.code, breach.text, id=p.peek_id(line))), conn.id)

    def _end_of_input(self, conn: Connection) -> None:
        """The peer shut its sending side: it may still read (a half-close), so what
        is queued for it is sent before the connection is closed."""
        conn.eof = True
        if not conn.out:
            self._doom(conn, "closed by peer")
            return
        log.info("[%s] half-closed; sending the %d bytes queued for it", conn.peer,
                 conn.out_bytes)
        self._close_gently(conn, "closed by peer")

    def _dispatch(self, outputs: list[Output]) -> None:
        for ghost in self.core.take_ghosts():   # a resumed user's old, silent connection
            target = self.conns.get(ghost)
            if target is not None:
                self._doom(target, "its user resumed on another connection")
        for output in outputs:
            message = output.message
            if isinstance(output, Reply):
                data = (self._replays.encode(message) if message.get("history") is True
                        else p.encode(message))     # a replay: once, for every joiner
                self._reply(data, output.to)
                continue
            self._broadcast(output)
            if self.chat_log is not None and output.room is not None:
                self.chat_log.add(message["ts"], output.room,
                                  message["user"] if message["type"] == "message" else None,
                                  message["text"])

    def _broadcast(self, output: Broadcast) -> None:
        """Encode ``output`` once for every member, and add it to the run (``Batch``)."""
        data = p.encode(output.message)
        own = None
        if output.own is not None:              # the sender's copy: with its request's id
            sender, rid = output.own
            own = (sender, p.with_id(data, rid))
        if not self._batch.joins(output.to):
            self._settle()
        self._batch.add(data, output.to, own)

    def _reply(self, data: bytes, to: ConnId) -> None:
        """Queue ``data`` for one connection, after the broadcasts made before it."""
        self._settle()
        self._queue(data, (to,))

    def _settle(self, send: bool = False) -> None:
        """End the run of broadcasts (``Batch``): before any other output, queued,
        so that a member still gets one send a turn however many runs it is in;
        and at the turn's flush, ``send``: sent at once where nothing is queued.
        """
        for data, to in self._batch.take():
            if send:
                self._write(data, to)
            else:
                self._queue(data, to)

    def _write(self, data: bytes, to: tuple[ConnId, ...]) -> None:
        """Send ``data`` at once to each of ``to`` that has nothing queued; queue
        it for the others, behind what waits, and queue what the kernel did not take.

        This runs once per member for a turn's last run of broadcasts, in a
        busy room the hottest loop there is. A member with nothing queued (most
        are) costs one send and a compare: queued, the same bytes would cost an
        append, a set add and a flush of four calls. (asyncio's transports write the
        same way.) TLS output is always queued (a TLS server has only TLS
        connections open): ``_send`` knows its rules.
        """
        if self.tls is not None:
            self._queue(data, to)
            return
        size = len(data)
        for conn_id in to:
            target = self.conns.get(conn_id)
            if target is None or not target.accepting:
                continue
            if target.out:
                self._queue(data, (conn_id,))
                continue
            try:
                sent = target.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._doom(target, f"send failed: {exc}")
                continue
            if self._debug:
                log.debug("[%s] <- %r", target.peer, data[:sent])
            if sent < size:                     # the kernel's buffer is full
                self._queue(data[sent:], (conn_id,))
                target.started = sent > 0       # the rest of a line it has begun

    def _queue(self, data: bytes, to: tuple[ConnId, ...]) -> None:
        """Queue ``data`` for each of ``to`` that still accepts output; the turn's
        flush sends it."""
        size = len(data)
        for conn_id in to:
            target = self.conns.get(conn_id)
            if target is not None and target.accepting:
                target.out.append(data)
                target.out_bytes += size
                self._dirty.add(target)
                if target.out_bytes > self._check_from:     # only then can a rule trip
                    self._check_output(target)

    def _check_output(self, conn: Connection) -> None:
        """Ask the guard about the unsent output; only called when it is over the
        soft limit or was, since below it nothing can trip."""
        was_over = conn.guard.over_since
        breach = conn.guard.output(conn.out_bytes, self._now)
        if breach is not None:
            log.warning("[%s] slow reader: %s", conn.peer, breach.text)
            # Not now: this may be the middle of a broadcast. _reap closes it.
            self._doom(conn, "slow reader", (breach.code, breach.text))
        elif was_over is None and conn.guard.over_since is not None:
            log.debug("[%s] over the soft limit: %d bytes unsent", conn.peer, conn.out_bytes)
            self._schedule(conn)                # its grace period ends at a deadline

    def _flush_dirty(self) -> None:
        self._settle(send=True)
        while self._dirty:
            self._flush(self._dirty.pop())
            if self._doomed:
                self._reap()                    # their rooms hear they left: ...
                self._settle(send=True)         # ... sent now

    def _flush(self, conn: Connection) -> None:
        """Send what ``conn`` has queued, as far as the kernel takes it.

        This runs once a turn for every member a broadcast reached, so it asks
        ``accepting`` (open) before it asks the phase: reading an enum member
        (``Phase.CLOSING``) takes 150 ns in Python 3.11, a plain attribute 20.
        """
        if conn.closed:
            return
        if not conn.accepting and conn.phase is Phase.HANDSHAKE:   # it waits to write that
            self._handshake(conn)
            return
        try:
            while conn.out and self._send(conn):
                pass                            # all it offered went: offer the rest
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass                                # the kernel's buffer is full
        except OSError as exc:
            self._doom(conn, f"send failed: {exc}")
            return
        events = selectors.EVENT_WRITE if conn.out else 0    # write only while output waits
        if not conn.eof:                        # at EOF a socket stays readable for ever
            events |= selectors.EVENT_READ
        self._watch(conn, events)
        if conn.accepting:
            if conn.out_bytes > self._check_from or conn.guard.over_since is not None:
                self._check_output(conn)        # still over the soft limit, or back under?
        elif conn.phase is Phase.CLOSING and not conn.out:
            self._start_linger(conn)

    def _send(self, conn: Connection) -> bool:
        """One send of the queue's head; True if all it offered went (else the
        kernel's buffer is full)."""
        if not isinstance(conn.sock, ssl.SSLSocket):
            chunks = conn.out[:IOV_MAX]
            # One chunk, often (a reply; a run queued behind nothing else): send, which
            # skips the 0.6 us sendmsg takes to read its list and build the iovec.
            sent = conn.sock.send(chunks[0]) if len(chunks) == 1 else conn.sock.sendmsg(chunks)
            if self._debug:
                log.debug("[%s] <- %r", conn.peer, b"".join(chunks)[:sent])
            return conn.consume(sent, len(chunks))
        head = conn.tls_head()                  # TLS has no sendmsg
        sent = conn.sock.send(head)
        if self._debug:
            log.debug("[%s] <- %r", conn.peer, head[:sent])
        return conn.consume(sent, 1)

    def _watch(self, conn: Connection, events: int) -> None:
        """Have the selector watch ``conn`` for ``events``, if that is a change."""
        if events and events != conn.events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    # -- TLS -------------------------------------------------------------------------
    def _hello(self, conn: Connection) -> None:
        """The first byte tells a TLS client from a plain one; only then wrap the socket."""
        assert self.tls is not None
        first = tls.peek_hello(conn.sock)
        if first is None:
            return
        if isinstance(first, str):
            self._doom(conn, first)
            return
        if not tls.looks_like_tls(first):
            log.info("[%s] refused: plain text on a TLS port", conn.peer)
            self._close_gently(conn, "not TLS", (p.ErrorCode.TLS_REQUIRED,
                                                 "this server speaks TLS: connect with TLS"))
            return
        self.selector.unregister(conn.sock)
        try:
            conn.sock = self.tls.wrap_socket(conn.sock, server_side=True,
                                             do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            conn.sock.close()
            self._forget(conn, f"TLS failed: {exc}")
            return
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        conn.events = selectors.EVENT_READ
        conn.phase = Phase.HANDSHAKE
        self._handshake(conn)

    def _handshake(self, conn: Connection) -> None:
        """One step of the TLS handshake; watch for what it wants next."""
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            step = tls.handshake_step(conn.sock)
        except OSError as exc:                  # ssl.SSLError is an OSError
            self._doom(conn, f"TLS handshake failed: {exc}")
            return
        writing = step is tls.Step.WANT_WRITE
        self._watch(conn, selectors.EVENT_WRITE if writing else selectors.EVENT_READ)
        if step is tls.Step.DONE:
            self._ready.add(conn)       # lines may have come with the handshake's last flight
            self._open(conn)

    # -- timers ------------------------------------------------------------------------
    def _schedule(self, conn: Connection) -> None:
        self._timers.schedule(conn, len(self.conns))

    def _timer_timeout(self) -> float | None:
        """How long select() may sleep: until the earliest deadline or accept pause."""
        return self._timers.timeout(time.monotonic(), self._gate.paused_until)

    def _expire_timers(self, now: float) -> None:
        """Act on every deadline up to ``now`` (this turn's time, ``self._now``)."""
        if self._gate.resume(now):              # the accept pause is over
            self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        for conn in self._timers.due(now):
            self._on_timer(conn)
            if not conn.closed and not conn.doomed:
                self._schedule(conn)            # its next deadline, if any

    def _on_timer(self, conn: Connection) -> None:
        if conn.phase in (Phase.CLOSING, Phase.LINGER):
            if conn.close_by is not None and self._now >= conn.close_by:
                self._doom(conn, conn.why)
            return
        breach = conn.guard.expired(self._now)
        if breach is None:
            return
        log.info("[%s] %s", conn.peer, breach.text)
        if conn.phase is Phase.HELLO:           # silent: maybe a plain client waiting
            self._close_gently(conn, "not TLS", (p.ErrorCode.TLS_REQUIRED, "this server "
                                                 f"speaks TLS; {breach.text}"))
        elif conn.phase is Phase.HANDSHAKE:     # no way to send it an error
            self._doom(conn, breach.text)
        else:
            self._close_gently(conn, breach.text, (breach.code, breach.text),
                               drop_unsent=breach.code is p.ErrorCode.SLOW_READER)

    # -- closing -------------------------------------------------------------------
    def _doom(self, conn: Connection, reason: str, error: ErrorReply | None = None) -> None:
        """Mark ``conn`` to be closed at the end of this step (not mid-broadcast);
        with ``error``, it is sent that error first (``_close_gently``)."""
        if not conn.closed and not conn.doomed:
            conn.doom()             # nothing more is handled for it, nor queued to it
            self._doomed.append((conn, reason, error))

    def _reap(self) -> None:
        """Close the doomed; their leave notices may doom others (slow readers)."""
        while self._doomed:
            conn, reason, error = self._doomed.popleft()
            if error is None:
                self._close(conn, reason)
            else:
                conn.doomed = False
                self._close_gently(conn, reason, error, drop_unsent=True)

    def _close(self, conn: Connection, reason: str) -> None:
        if conn.closed:
            return
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self._forget(conn, reason)

    def _forget(self, conn: Connection, reason: str) -> None:
        """The socket is closed: drop every trace of ``conn``; its room hears it left."""
        conn.closed = True
        log.info("[%s] disconnected: %s", conn.peer, reason)
        self._dirty.discard(conn)
        self._table.remove(conn)
        if self.core.is_member(conn.id):
            self._dispatch(self.core.disconnect(conn.id, time.time()))
        self._timers.compact(len(self.conns))

    def _close_gently(self, conn: Connection, reason: str, error: ErrorReply | None = None,
                      *, drop_unsent: bool = False) -> None:
        """Send what is queued and ``error``, then close; the client leaves its room at once.

        ``drop_unsent``: a slow reader would not read the backlog anyway, so
        only the chunk it is in the middle of is kept, and the error follows it.
        """
        if conn.closed or conn.phase in (Phase.CLOSING, Phase.LINGER):
            return
        self._settle()                          # what it was sent before the error
        if error is not None:
            conn.last_words(p.encode(p.error(*error)), drop_unsent=drop_unsent)
        conn.start_closing(reason, self._now + CLOSING_S)
        self._schedule(conn)
        self._dirty.add(conn)
        if self.core.is_member(conn.id):
            self._dispatch(self.core.disconnect(conn.id, time.time()))

    def _start_linger(self, conn: Connection) -> None:
        """The last output is sent: shut our side, drain theirs until EOF or a deadline."""
        conn.phase = Phase.LINGER
        if conn.eof:                            # they have shut theirs already
            self._doom(conn, conn.why)
            return
        try:
            if isinstance(conn.sock, ssl.SSLSocket):
                try:
                    conn.sock.unwrap()          # sends TLS close_notify: "no truncation"
                except (OSError, ValueError):
                    pass                        # it wants their close_notify: not waiting
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._doom(conn, conn.why)
            return
        assert conn.close_by is not None
        conn.close_by = min(conn.close_by, self._now + LINGER_S)
        self._schedule(conn)

    def _drain(self, conn: Connection, data: memoryview) -> None:
        """Input while closing: discarded. EOF closes once our last output is sent."""
        conn.drained += len(data)
        if not data:
            conn.eof = True
            if conn.phase is not Phase.CLOSING:     # LINGER, or doomed: done
                self._doom(conn, conn.why or "closed by peer")
            else:
                self._watch(conn, selectors.EVENT_WRITE)   # EOF stays readable: stop watching
        elif conn.drained > LINGER_BYTES:
            self._doom(conn, conn.why or "closed")

    def _shutdown(self) -> None:
        """Stop accepting, tell everyone, flush for up to ``shutdown_grace_s``."""
        log.info("shutting down: %d clients", len(self.conns))
        self._stop_listening()
        self._dispatch([self.core.shutdown_notice(time.time())])
        self._settle()                          # before they stop accepting output
        self._now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.phase is Phase.OPEN:     # flush, then shut
                conn.start_closing("server shutting down",
                                   self._now + self.config.shutdown_grace_s)
            elif conn.phase in (Phase.HELLO, Phase.HANDSHAKE):
                self._doom(conn, "server shutting down")
        self._reap()
        self._flush_dirty()
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while any(c.out for c in self.conns.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._turn(remaining)

    def _stop_listening(self) -> None:
        if self.listener.fileno() >= 0:
            if self._gate.paused_until is None:     # else not registered
                self.selector.unregister(self.listener)
            self.listener.close()

    def _close_all(self) -> None:
        for conn in list(self.conns.values()):
            conn.closed = True
            self.selector.unregister(conn.sock)
            conn.sock.close()
        self.conns.clear()
        self._stop_listening()
        if self.bus is not None:
            assert isinstance(self.core, ClusterChat)
            self.core.leave_cluster(time.time())
            self.bus.stop()
        self.selector.close()
        self._wakeup.close()
        if self.chat_log is not None:
            self.chat_log.close()
        log.info("stopped")


def serve(config: cfg.TcpServerConfig = cfg.TcpServerConfig(), **overrides: Any
          ) -> ServerHandle[TcpServer]:
    """Start a server in a background thread; returns its handle once it is bound.

    ``overrides`` replace config fields, e.g. ``serve(port=0)``.
    """
    return ServerHandle(TcpServer(cfg.replace(config, **overrides)), name="tcp-server")


def main(argv: list[str] | None = None) -> int:
    return run_program(cfg.TcpServerConfig, TcpServer, argv, prog="chat-sync tcp-server",
                       description="Run the chat_sync TCP chat server.",
                       serve=lambda server: workers.serve(server, argv, run_in_foreground))


if __name__ == "__main__":
    sys.exit(main())
