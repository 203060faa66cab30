"""The TCP chat server: one thread, one ``selectors`` loop, only moving bytes.

Theory of operation
-------------------
Every socket is non-blocking and registered with one selector; the state
of a connection (its ``LineBuffer``, its output ``bytearray``) rides on
``SelectorKey.data``. Each turn of the loop has three steps:

1. **read**: ``select()`` says which sockets are ready; each readable one
   gets one ``recv``, its ``LineBuffer`` yields complete lines.
2. **handle**: each line goes to ``ChatCore.receive``, which returns replies
   and broadcasts. A broadcast is encoded once and the same ``bytes`` object
   is appended to every member's output list: a reference, not a copy, so
   a message to a room of 1,000 costs 1,000 pointers, not 1,000 copies.
3. **send**: every connection that got output this turn is flushed once
   with ``sendmsg``, which hands the kernel the queued chunks as they are
   (scatter/gather, no joining); what it did not take stays queued and the
   socket is registered for ``EVENT_WRITE`` until the queue is empty. A
   socket is never registered for writing with nothing to write: that would
   wake the loop for nothing, forever.

Bounds: a line longer than ``max_line_bytes`` is answered with
``line_too_long`` and the connection closed; a client whose unsent output
exceeds ``max_send_buffer_bytes`` (it stopped reading) is disconnected, so
nobody else waits for it; a connection beyond ``max_clients`` gets
``server_full``. Closing after an error is done gently: the error is sent,
the write side shut, and input discarded for a moment, so the peer reads
the error instead of a reset.

Other threads (``stop``) and signal handlers wake the loop by writing a
byte to a socketpair the selector watches, never by polling a flag.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import selectors
import signal
import socket
import sys
import threading
import time
from types import TracebackType
from typing import Any

from . import config as cfg
from . import protocol as p
from .framing import LineBuffer, LineTooLong
from .logs import ChatLog
from .rooms import ChatCore, ConnId, Output, Reply
from .wakeup import Wakeup

log = logging.getLogger("chat_sync.tcp_server")

RECV_BYTES = 64 * 1024
ACCEPTS_PER_TURN = 64        # bound the time one turn spends on a connection storm
LINGER_S = 1.0               # how long a closing connection's input is drained
LINGER_BYTES = 1024 * 1024   # ... and how much of it at most
CLOSING_S = 5.0              # the longest a connection may take to read its last error
IOV_MAX = 1024               # chunks one sendmsg() may take (Linux's limit)


class Connection:
    """One client socket and its buffers; rides on ``SelectorKey.data``.

    ``__slots__``: with ten thousand connections, no per-object ``__dict__``.
    """

    __slots__ = ("id", "sock", "peer", "lines", "out", "out_bytes", "writing", "closing",
                 "doomed", "closed", "drained")

    def __init__(self, conn_id: int, sock: socket.socket, peer: str, max_line_bytes: int) -> None:
        self.id = conn_id
        self.sock = sock
        self.peer = peer
        self.lines = LineBuffer(max_line_bytes)
        self.out: list[bytes] = []    # shared encoded messages (a list: a deque keeps
                                      # up to 16 spare 528-byte blocks for ever)
        self.out_bytes = 0            # their total length: the slow-reader bound
        self.writing = False          # registered for EVENT_WRITE
        self.closing = False          # no more input handled or output queued
        self.doomed = False           # to be closed at the end of this step
        self.closed = False
        self.drained = 0              # bytes discarded while closing


class TcpServer:
    """A chat server bound at construction, so ``address`` is known before serving."""

    def __init__(self, config: cfg.TcpServerConfig = cfg.TcpServerConfig()) -> None:
        self.config = config
        limits = p.Limits(max_line_bytes=config.max_line_bytes,
                          max_text_chars=config.max_text_chars)
        self.core = ChatCore(limits, config.history_size, config.max_rooms)
        # The chat log first: if its file cannot be opened, no socket is left bound.
        self.chat_log = (ChatLog(config.log_file, config.log_max_bytes, config.log_backups)
                         if config.log_file else None)
        try:
            family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
            self.listener = socket.create_server((config.host, config.port), family=family,
                                                 backlog=1024)
        except OSError:
            if self.chat_log is not None:
                self.chat_log.close()
            raise
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self._wakeup = Wakeup()
        self.selector.register(self._wakeup.reader, selectors.EVENT_READ, "wakeup")
        self.conns: dict[ConnId, Connection] = {}
        self._recv_buffer = memoryview(bytearray(RECV_BYTES))
        self._ids = itertools.count(1)
        self._order = itertools.count()             # tie-breaker in the _lingering heap
        self._dirty: set[Connection] = set()        # got output this turn
        self._doomed: list[tuple[Connection, str]] = []
        self._lingering: list[tuple[float, int, Connection]] = []   # heap by deadline
        self._stop = threading.Event()
        self.stopped = threading.Event()

    # -- public ------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to shut down gracefully; safe from any thread or signal handler."""
        self._stop.set()
        self._wakeup.wake()

    def serve_forever(self) -> None:
        """Run the loop until ``stop``; then say goodbye to every client and close."""
        log.info("listening on %s:%d", *self.address)
        try:
            while not self._stop.is_set():
                self._turn(self._linger_timeout())
            self._shutdown()
        finally:
            self._close_all()
            self.stopped.set()

    # -- the loop ----------------------------------------------------------------
    def _turn(self, timeout: float | None) -> None:
        for key, mask in self.selector.select(timeout):
            if key.data == "listener":
                self._accept()
            elif key.data == "wakeup":
                self._wakeup.drain()
            else:
                conn: Connection = key.data
                if mask & selectors.EVENT_READ and not conn.closed:
                    self._read(conn)
                if mask & selectors.EVENT_WRITE and not conn.closed:
                    self._dirty.add(conn)
        self._reap()
        self._flush_dirty()
        self._expire_lingering(time.monotonic())

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:      # EMFILE and friends: keep serving the others
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(next(self._ids), sock, f"{addr[0]}:{addr[1]}",
                              self.config.max_line_bytes)
            self.selector.register(sock, selectors.EVENT_READ, conn)
            self.conns[conn.id] = conn
            if len(self.conns) > self.config.max_clients:
                log.warning("[%s] refused: server full (%d clients)", conn.peer,
                            self.config.max_clients)
                self._close_with_error(conn, p.ErrorCode.SERVER_FULL,
                                       f"server full: {self.config.max_clients} clients")
                continue
            log.info("[%s] connected", conn.peer)
            self._dispatch(self.core.connect(conn.id))

    def _read(self, conn: Connection) -> None:
        try:
            # Into one buffer for all: recv(64 KiB) would allocate 64 KiB per call.
            size = conn.sock.recv_into(self._recv_buffer)
            data = self._recv_buffer[:size]
        except BlockingIOError:
            return
        except OSError as exc:
            self._doom(conn, f"receive failed: {exc}")
            return
        if conn.closing:
            self._drain(conn, data)
            return
        if not data:
            self._doom(conn, "closed by peer")
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s] -> %r", conn.peer, bytes(data))
        too_long: LineTooLong | None = None
        try:
            lines = conn.lines.feed(data)
        except LineTooLong as exc:
            lines, too_long = exc.lines, exc       # answer what came before it first
        now = time.time()
        for line in lines:
            self._dispatch(self.core.receive(conn.id, line, now))
            if conn.closing:                    # dropped by what that line did
                return
        if too_long is not None:
            log.info("[%s] %s", conn.peer, too_long)
            self._close_with_error(conn, too_long.code, too_long.text)

    def _dispatch(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Reply):
                target = self.conns.get(output.to)
                if target is not None:
                    self._queue(target, p.encode(output.message))
                continue
            data = p.encode(output.message)     # once, for every member
            for conn_id in output.to:
                target = self.conns.get(conn_id)
                if target is not None:
                    self._queue(target, data)
            if self.chat_log is not None and output.room is not None:
                message = output.message
                self.chat_log.write(message["ts"], output.room,
                                    message["user"] if message["type"] == "message" else None,
                                    message["text"])

    def _queue(self, conn: Connection, data: bytes) -> None:
        if conn.closing:
            return
        conn.out.append(data)
        conn.out_bytes += len(data)
        self._dirty.add(conn)
        if conn.out_bytes > self.config.max_send_buffer_bytes:
            self._doom(conn, f"slow reader: more than {self.config.max_send_buffer_bytes} "
                             "bytes unsent")

    def _flush_dirty(self) -> None:
        while self._dirty:
            self._flush(self._dirty.pop())
            self._reap()

    def _flush(self, conn: Connection) -> None:
        if conn.closed:
            return
        while conn.out:
            chunks = conn.out[:IOV_MAX]
            try:
                sent = conn.sock.sendmsg(chunks)
            except BlockingIOError:
                break
            except OSError as exc:
                self._doom(conn, f"send failed: {exc}")
                return
            if log.isEnabledFor(logging.DEBUG):
                log.debug("[%s] <- %r", conn.peer, b"".join(chunks)[:sent])
            if not self._consume(conn, sent):
                break                           # the kernel's buffer is full
        want_write = bool(conn.out)
        if want_write != conn.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self.selector.modify(conn.sock, events, conn)
            conn.writing = want_write
        if conn.closing and not conn.out:
            self._start_linger(conn)

    def _consume(self, conn: Connection, sent: int) -> bool:
        """Drop ``sent`` bytes from the front of the queue; False if a chunk was cut."""
        conn.out_bytes -= sent
        done = 0                                # chunks sent whole
        for chunk in conn.out:
            if len(chunk) > sent:
                break
            sent -= len(chunk)
            done += 1
        del conn.out[:done]
        if sent:
            conn.out[0] = conn.out[0][sent:]
            return False
        return done == IOV_MAX or not conn.out

    # -- closing -------------------------------------------------------------------
    def _doom(self, conn: Connection, reason: str) -> None:
        """Mark ``conn`` to be closed at the end of this step (not mid-broadcast)."""
        if not conn.closed and not conn.doomed:
            conn.doomed = True
            conn.closing = True     # nothing more is handled for it, nor queued to it
            self._doomed.append((conn, reason))

    def _reap(self) -> None:
        """Close the doomed; their leave notices may doom others (slow readers)."""
        while self._doomed:
            conn, reason = self._doomed.pop(0)
            self._close(conn, reason)

    def _close(self, conn: Connection, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        log.info("[%s] disconnected: %s", conn.peer, reason)
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self._dirty.discard(conn)
        del self.conns[conn.id]
        if conn.id in self.core.members:
            self._dispatch(self.core.disconnect(conn.id, time.time()))

    def _close_with_error(self, conn: Connection, code: p.ErrorCode, text: str) -> None:
        """Send one error, then close gently; the client leaves its room at once."""
        self._queue(conn, p.encode(p.error(code, text)))
        conn.closing = True
        # A peer that never reads its error must not hold a slot forever.
        heapq.heappush(self._lingering, (time.monotonic() + CLOSING_S, next(self._order), conn))
        if conn.id in self.core.members:
            self._dispatch(self.core.disconnect(conn.id, time.time()))

    def _start_linger(self, conn: Connection) -> None:
        """The error is sent: shut our side, drain theirs until EOF or a deadline."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._doom(conn, "closed after error")
            return
        heapq.heappush(self._lingering, (time.monotonic() + LINGER_S, next(self._order), conn))

    def _drain(self, conn: Connection, data: memoryview) -> None:
        conn.drained += len(data)
        if not data or conn.drained > LINGER_BYTES:
            self._doom(conn, "closed after error")

    def _linger_timeout(self) -> float | None:
        if not self._lingering:
            return None
        return max(0.0, self._lingering[0][0] - time.monotonic())

    def _expire_lingering(self, now: float) -> None:
        while self._lingering and (self._lingering[0][0] <= now or self._lingering[0][2].closed):
            _, _, conn = heapq.heappop(self._lingering)
            self._close(conn, "closed after error")

    def _shutdown(self) -> None:
        """Stop accepting, tell everyone, flush for up to ``shutdown_grace_s``."""
        log.info("shutting down: %d clients", len(self.conns))
        self.selector.unregister(self.listener)
        self.listener.close()
        self._dispatch([self.core.shutdown_notice(time.time())])
        for conn in list(self.conns.values()):
            conn.closing = True     # nothing more is read or queued; flush, then shut
        self._flush_dirty()
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while any(c.out for c in self.conns.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._turn(remaining)

    def _close_all(self) -> None:
        for conn in list(self.conns.values()):
            conn.closed = True
            self.selector.unregister(conn.sock)
            conn.sock.close()
        self.conns.clear()
        if self.listener.fileno() >= 0:
            self.selector.unregister(self.listener)
            self.listener.close()
        self.selector.close()
        self._wakeup.close()
        if self.chat_log is not None:
            self.chat_log.close()
        log.info("stopped")


class ServerHandle:
    """A server running in a background thread: ``port``, ``stop()``, a context manager."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.host, self.port = server.address
        self._thread = threading.Thread(target=server.serve_forever, name="tcp-server",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully and wait for the loop thread; raises if it does not end."""
        self.server.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"server thread did not stop within {timeout} s")

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve(config: cfg.TcpServerConfig = cfg.TcpServerConfig(), **overrides: Any) -> ServerHandle:
    """Start a server in a background thread; returns its handle once it is bound.

    ``overrides`` replace config fields, e.g. ``serve(port=0)``.
    """
    return ServerHandle(TcpServer(cfg.replace(config, **overrides)))


def setup_logging(level: str) -> None:
    """Operational log to stderr (the chat log is separate, see ``logs``)."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-sync tcp-server",
                                     description="Run the chat_sync TCP chat server.")
    cfg.add_arguments(parser, cfg.TcpServerConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(cfg.TcpServerConfig, args)
    except cfg.ConfigError as exc:
        print(f"chat-sync: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        server = TcpServer(config)
    except OSError as exc:
        if exc.filename is not None:        # the chat log's file, not the socket
            print(f"chat-sync: cannot open chat log {exc.filename}: {exc.strerror}",
                  file=sys.stderr)
        else:
            print(f"chat-sync: cannot listen on {config.host}:{config.port}: {exc.strerror}",
                  file=sys.stderr)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    print(f"listening on {server.address[0]}:{server.address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
