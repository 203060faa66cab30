"""The TCP chat client's socket shell: a reader thread that reconnects, and the terminal program.

Theory of operation
-------------------
Three layers, each testable alone:

1. ``tcp_client_core.ClientCore`` holds the client's state and no I/O: the
   room it is in, the join it is waiting for, the last ``seq`` it saw in each
   room. Feed it each decoded server message with ``receive``; it answers
   with actions (``Show``, ``Send``, ``Joined``, ``JoinRefused``,
   ``ServerShutdown``, ``Note``).
2. ``ChatClient`` owns one socket and one reader thread. ``connect`` opens
   the connection and joins; the reader thread then turns incoming lines
   into events (``Received``, ``Notice``, ``Closed``) for ``on_event``, or
   for a queue that tests and notebooks read with ``next_event``. Any
   thread may send commands. ``close`` sends ``leave`` and shuts the socket
   down, which wakes the blocked ``recv``, so the reader thread always ends.
3. ``main`` is the terminal program (``client_program``, which the UDP
   client shares): the main thread waits for the client to finish (and
   catches Ctrl-C), a stdin thread turns typed lines into commands, the
   reader thread prints. Neither reader blocks the other.

Reconnection, and why nothing is missed or shown twice:

- ``seq`` is one counter for the whole server and each room broadcast takes
  the next value. The core remembers, per room, the highest ``seq`` it saw.
  When the connection is lost (EOF, an error, or a ``shutdown`` notice) the
  client reconnects and joins again with ``since`` = that seq; the server
  replays exactly the broadcasts after it, as long as its history still
  covers the outage. As a second line of defence, a broadcast whose seq is
  not above the last one seen in its room is dropped.
- A restarted server counts from 0 again. Its ``welcome`` names a new
  ``epoch``: the old numbers mean nothing there, so the core forgets them
  and joins without ``since``.
- Attempt ``n`` (from 0) waits a random time in ``[cap/2, cap]`` with
  ``cap = min(max_delay, base_delay * 2**n)`` ("equal jitter"): the wait
  grows exponentially, never exceeds the maximum, and the clients that a
  restart dropped all at once do not all come back at the same instant.
  After ``reconnect_tries`` failed attempts the client gives up: exit code 2.
- The first connection is not retried, and a refused first join
  (``name_taken``, a bad name) ends the program with exit code 2: asking
  again would get the same answer.

TLS (``--tls``): the handshake runs in ``_open``, blocking and bounded by
``connect_timeout_s``, and checks the server's certificate against
``--host`` and the CAs of ``--cafile`` (or the system's). After it, one
rule shapes the code: OpenSSL lets only one thread at a time use a
connection, and this client has a reader thread and senders. So the TLS
socket is made non-blocking; each thread waits for readiness on its own,
outside ``_ssl_lock``, and holds the lock only for a ``recv`` or ``send``
that cannot block. (A blocking ``recv`` holding the lock would starve the
senders; two threads in OpenSSL at once can corrupt the connection.)
"""
from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Union

from . import commands as cmd
from . import config as cfg
from . import protocol as p
from . import tls
from .client_events import EXIT_FAILED, EXIT_OK
# The events, re-exported ("as"): a program that uses ChatClient imports them from here.
from .client_events import (ClientEvent as ClientEvent, Closed as Closed,
                            JoinError as JoinError, Notice as Notice, Received as Received)
from . import client_program as program
from .client_program import CannotStart
from .client_shell import ClientShell
from .framing import LineBuffer
from .tcp_client_core import (Action, Backoff, ClientCore, ClientState, Joined, JoinRefused, Note, Send, ServerShutdown, Show)
from .terminal import escape

log = logging.getLogger("chat_sync.tcp_client")

RECV_BYTES = 64 * 1024


class _Lost(Exception):
    """The connection is gone (EOF, an error, a shutdown notice); reconnect."""


# -- The socket shell ------------------------------------------------------------------
class ChatClient(ClientShell[ClientCore]):
    """A chat connection with a reader thread, usable without a terminal.

    ``on_event`` is called from the reader thread (and from the thread that
    calls ``connect``, ``execute`` or ``close``) with each ``ClientEvent``;
    without it, events go to a queue read by ``next_event``. ``random``
    supplies the back-off jitter; tests pass a fixed one.

    Raises OSError (ssl.SSLError is one) if ``config.cafile`` cannot be
    read or holds no certificate.
    """

    def __init__(self, config: cfg.TcpClientConfig, *,
                 on_event: Callable[[ClientEvent], None] | None = None,
                 random: Callable[[], float] = random.random) -> None:
        if config.user is None:
            raise ValueError("TcpClientConfig.user is required")
        super().__init__(on_event)
        self.config = config
        self.core = ClientCore(config.user, config.room)
        self.backoff = Backoff(config.reconnect_base_delay_s, config.reconnect_max_delay_s,
                               config.reconnect_tries)
        self._random = random
        self._core_lock = threading.Lock()     # the core is used by the reader and callers
        self._send_lock = threading.Lock()     # one request at a time, so lines never mix
        self._ssl_lock = threading.Lock()      # TLS: one thread at a time inside OpenSSL
        self._tls = tls.client_context(config.cafile) if config.tls else None
        self._read_timeout: float | None = None    # TLS: how long a read may wait
        self._sock: socket.socket | None = None
        self._lines = LineBuffer()
        self._closing = threading.Event()      # close() was called
        self._reader: threading.Thread | None = None
        self.peer = f"{config.host}:{config.port}"

    # -- public -------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, join ``config.room``, then start the reader thread.

        Returns once joined (history replays are already queued as events).
        Raises OSError if the server cannot be reached or goes silent for
        ``connect_timeout_s``, and JoinError if it refuses the join.
        """
        if self._reader is not None:
            raise RuntimeError("connect() may be called only once")
        self._open()
        self._reader = threading.Thread(target=self._run, name=f"tcp-client-{self.user}",
                                        daemon=True)
        self._reader.start()

    def _change_room(self, room: str) -> None:
        with self._core_lock:
            joined = self.core.state is ClientState.JOINED
            request = self.core.join(room) if joined else None
        if request is None:
            self._events.emit(Notice("not connected: cannot join now"))
        else:
            self._send_or_notice(request)

    def request(self, request: dict[str, Any]) -> bool:
        """Send one request if we are in a room; otherwise say why not (a Notice).

        It goes with an ``id``: a line the connection loses before its echo is
        reported (see ``tcp_client_core``). Returns False if it was not sent.
        """
        if self.core.state is not ClientState.JOINED:
            self._events.emit(Notice("not connected: not sent"))
            return False
        with self._core_lock:
            request = self.core.track(request)
        if not self._send_or_notice(request):
            with self._core_lock:
                self.core.forget(request)
            return False
        return True

    def close(self, timeout: float = 5.0) -> int:
        """Leave the room, close the connection, wait for the reader thread.

        Returns the exit code: 0, unless the client had already given up.
        Safe to call more than once and from any thread.
        """
        self._closing.set()
        sock = self._sock
        if sock is not None:
            if self.core.state is ClientState.JOINED:
                # A few bytes into an idle connection's send buffer: this does not
                # block unless the server had long stopped reading us.
                try:
                    self._send_raw(sock, cmd.leave_request())
                except OSError:
                    pass          # the server is gone already; nothing to say goodbye to
            try:
                with self._ssl_lock:
                    sock.shutdown(socket.SHUT_RDWR)    # wakes the reader's recv with EOF
            except OSError:
                pass
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
            if reader.is_alive():
                raise RuntimeError(f"reader thread did not stop within {timeout} s")
        self._disconnect()
        self._events.finish(EXIT_OK, "closed")
        assert self.exit_code is not None
        return self.exit_code

    def why_not(self, exc: OSError) -> str:
        """What to tell the user when ``connect`` raised ``exc``."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            hint = ("--host must be a name the certificate holds" if "mismatch" in
                    str(exc.verify_message) else "--cafile names the CA to trust")
            return (f"cannot connect to {self.peer}: TLS certificate check failed: "
                    f"{exc.verify_message} ({hint})")
        if isinstance(exc, ssl.SSLError):
            return (f"cannot connect to {self.peer}: TLS failed: {exc.reason or exc}"
                    " (does the server speak TLS?)")
        return f"cannot connect to {self.peer}: {exc.strerror or exc}"

    # -- connecting ------------------------------------------------------------------
    def _open(self) -> None:
        """Connect and join, in the calling thread. Raises OSError or JoinError."""
        sock = socket.create_connection((self.config.host, self.config.port),
                                        timeout=self.config.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                # The handshake, bounded by the connect timeout; it checks the
                # certificate and that it names config.host.
                sock = self._tls.wrap_socket(sock, server_hostname=self.config.host)
            except BaseException:
                sock.close()
                raise
            sock.setblocking(False)     # from now on: see the module comment
        self._read_timeout = self.config.connect_timeout_s
        with self._core_lock:
            if self._closing.is_set():
                sock.close()
                raise ConnectionAbortedError("the client is closing")
            self._sock = sock
            self._lines = LineBuffer()
            self.core.connection_made()
        try:
            # The socket still has the connect timeout: a server that accepts
            # but never answers cannot hang the handshake.
            while self.core.state is not ClientState.JOINED:
                self._receive_once(sock)
        except _Lost as exc:
            self._disconnect()
            raise ConnectionError(str(exc)) from None
        except BaseException:
            self._disconnect()
            raise
        self._read_timeout = None
        if self._tls is None:
            sock.settimeout(None)

    def _disconnect(self) -> list[str]:
        """Close the socket; returns the lines sent on it that were never answered."""
        with self._core_lock:
            sock, self._sock = self._sock, None
            unconfirmed = self.core.connection_lost()
        if sock is not None:
            sock.close()
        return unconfirmed

    # -- the reader thread ------------------------------------------------------------
    def _run(self) -> None:
        code, reason = EXIT_OK, "closed"
        try:
            while not self._closing.is_set():
                sock = self._sock
                try:
                    if sock is None:
                        raise _Lost("not connected")
                    while True:
                        self._receive_once(sock)
                except (_Lost, OSError) as exc:
                    if self._closing.is_set():
                        break
                    self._events.emit(Notice(f"connection to {self.peer} lost: {exc}"))
                for text in self._disconnect():
                    self._events.emit(Notice(f"may not have arrived (not resent): "
                                             f"{escape(text)!r}"))
                failure = self._reconnect()
                if failure is not None:
                    code, reason = EXIT_FAILED, failure
                    break
        except BaseException as exc:      # a bug: still end with a Closed event
            code, reason = EXIT_FAILED, f"internal error: {exc!r}"
            raise
        finally:
            self._events.finish(code, reason)

    def _reconnect(self) -> str | None:
        """Try to reconnect with back-off; returns why it gave up, or None."""
        tries = self.backoff.tries
        for attempt in range(tries):
            delay = self.backoff.delay(attempt, self._random())
            self._events.emit(Notice(f"reconnecting in {delay:.2f} s "
                                     f"(try {attempt + 1} of {tries})"))
            if self._closing.wait(delay):
                return None       # close() was called: stop trying, without failing
            try:
                self._open()
            except JoinError as exc:
                if exc.code != p.ErrorCode.NAME_TAKEN:
                    return f"rejoin refused: {exc}"   # asking again gets the same answer
                self._events.emit(Notice(f"rejoin refused: {exc}"))
                # name_taken: our old connection may still linger on the server.
            except OSError as exc:
                if self._closing.is_set():
                    return None
                self._events.emit(Notice(f"reconnect failed: {exc}"))
            else:
                self._events.emit(Notice(f"reconnected to {self.peer}, back in {self.room}"))
                return None
        return f"gave up reconnecting to {self.peer} after {tries} tries"

    def _receive_once(self, sock: socket.socket) -> None:
        """One ``recv``; every complete line is decoded and handed to the core.

        Raises _Lost at EOF, on a line too long or a shutdown notice; OSError
        on a socket error or timeout; JoinError if the opening join is refused.
        """
        data = self._recv(sock)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s] <- %r", self.peer, data)
        if not data:
            raise _Lost("the server closed the connection")
        try:
            lines = self._lines.feed(data)
        except p.ProtocolError as exc:
            raise _Lost(str(exc)) from None
        for line in lines:
            try:
                message = p.decode(line)
            except p.ProtocolError as exc:
                self._events.emit(Notice(f"ignored a bad line from the server: {exc}"))
                continue
            with self._core_lock:
                actions = self.core.receive(message)
            self._act(sock, actions)

    def _recv(self, sock: socket.socket) -> bytes:
        """One read of up to RECV_BYTES; b"" at EOF.

        A TLS socket is non-blocking: wait for it outside ``_ssl_lock``, read
        inside. Raises TimeoutError after ``_read_timeout`` (plain sockets
        have it as their socket timeout), OSError on a failed connection.
        """
        if not isinstance(sock, ssl.SSLSocket):
            return sock.recv(RECV_BYTES)
        timeout = self._read_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            readable = True
            with self._ssl_lock:
                try:
                    return sock.recv(RECV_BYTES)
                except (ssl.SSLWantReadError, BlockingIOError):
                    pass                    # a record not yet whole, or nothing yet
                except ssl.SSLWantWriteError:
                    readable = False        # OpenSSL must send something first
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("timed out")
            tls.wait(sock, readable=readable, timeout=remaining)

    def _act(self, sock: socket.socket, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Show):
                self._events.emit(Received(action.message))
            elif isinstance(action, Note):
                self._events.emit(Notice(action.text))
            elif isinstance(action, Send):
                self._send_raw(sock, action.request)
            elif isinstance(action, JoinRefused):
                raise JoinError(action.code, action.text)
            elif isinstance(action, ServerShutdown):
                raise _Lost("the server is shutting down")
            # Joined needs nothing here: the join notice itself is shown.

    # -- sending ----------------------------------------------------------------------
    def _send_or_notice(self, request: dict[str, Any]) -> bool:
        """Send ``request``; False (after a Notice saying so) if it could not be."""
        sock = self._sock
        try:
            if sock is None:
                raise ConnectionError("not connected")
            self._send_raw(sock, request)
        except OSError as exc:
            self._events.emit(Notice(f"not sent: {exc}"))
            return False
        return True

    def _send_raw(self, sock: socket.socket, request: dict[str, Any]) -> None:
        data = p.encode(request)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s] -> %r", self.peer, data)
        with self._send_lock:
            if not isinstance(sock, ssl.SSLSocket):
                sock.sendall(data)
                return
            view = memoryview(data)     # after a want-write, OpenSSL wants the same bytes again
            while view:
                sent, readable = 0, False
                with self._ssl_lock:
                    try:
                        sent = sock.send(view)
                    except ssl.SSLWantWriteError:
                        pass
                    except ssl.SSLWantReadError:
                        readable = True
                if sent:
                    view = view[sent:]
                else:
                    tls.wait(sock, readable=readable, timeout=None)


# -- The terminal program ------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    return program.main(cfg.TcpClientConfig, argv, prog="chat-sync tcp-client",
                        description="Chat on a chat_sync TCP server.", build=_build)


def _build(config: cfg.TcpClientConfig, on_event: Callable[[ClientEvent], None]) -> ChatClient:
    try:
        return ChatClient(config, on_event=on_event)
    except OSError as exc:              # ssl.SSLError is one
        raise CannotStart(f"cannot use --cafile {config.cafile}: {exc.strerror or exc}") from None


if __name__ == "__main__":
    sys.exit(main())
