"""The UDP chat client: a sans-IO core, one socket with a reader and a timer thread, a terminal.

Theory of operation
-------------------
Three layers, as in the TCP client:

1. ``udp_client_core.UdpClientCore`` holds the client's state and does no I/O:
   datagrams, timer give-ups and the time in, actions out. Its module
   comment gives the rules of the wire.
2. ``UdpChatClient`` owns one UDP socket ``connect()``-ed to the server, so
   the kernel only lets the server's datagrams in. Three threads: the
   reader waits in ``select()`` for a datagram, a wake-up, or the core's
   next deadline (keepalive, gap timeout); the ``TimerThread`` retransmits
   unacked requests (key = request ``id``) and reports give-ups; and any
   caller (the stdin thread, a test) sends. One lock guards the core.
3. ``main`` is the terminal program: ``client_program``, as for the TCP client.

Closing: ``close`` waits up to ``CLOSE_WAIT_S`` for requests in flight, sends
``leave`` (which ends the session on the server) and waits up to
``CLOSE_WAIT_S`` more for its ack, then stops both threads.
"""
from __future__ import annotations

import logging
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import commands as cmd
from . import config as cfg
from .client_events import EXIT_FAILED, EXIT_OK
# The events, re-exported ("as"): a program that uses UdpChatClient imports them from here.
from .client_events import (ClientEvent as ClientEvent, Closed as Closed,
                            JoinError as JoinError, Notice as Notice, Received as Received)
from . import client_program as program
from .client_shell import ClientShell
from .retransmit import RetransmitQueue, TimerThread
from .retransmit import TooManyPending
from .udp_client_actions import (Acked, Action, ClientState, Failed, JoinRefused,
                                 Note, SendAck, Show, Transmit)
from .udp_client_core import UdpClientCore
from .wakeup import Wakeup

log = logging.getLogger("chat_sync.udp_client")
CLOSE_WAIT_S = 1.0         # close(): longest wait for acks in flight, then for the leave's ack
RECV_BYTES = 65_535        # any datagram fits; the server promises max_datagram_bytes
DATAGRAMS_PER_TURN = 256   # bound one turn of the reader, so deadlines are not starved

STATS_HELP = "  /stats           retransmit and reorder counters of this client"
HELP = cmd.HELP.replace("  /quit", STATS_HELP + "\n  /quit", 1)


# -- The socket shell -------------------------------------------------------------------
class UdpChatClient(ClientShell[UdpClientCore]):
    """A UDP chat session with its reader and timer threads, usable without a terminal.

    ``on_event`` is called with each ``ClientEvent`` from whichever thread
    produced it (reader, timer, or a caller); without it, events go to a
    queue read by ``next_event``. It must not call ``close``. After a
    ``Closed`` event with exit code 2 (a rejoin refused), call ``close`` to
    release the socket and stop the timer thread.
    """

    help_text = HELP

    def __init__(self, config: cfg.UdpClientConfig, *,
                 on_event: Callable[[ClientEvent], None] | None = None) -> None:
        if config.user is None:
            raise ValueError("UdpClientConfig.user is required")
        super().__init__(on_event)
        self.config = config
        self.peer = f"{config.host}:{config.port}"
        retransmit = RetransmitQueue(base_delay=config.base_delay, max_delay=config.max_delay,
                                     max_retries=config.max_retries,
                                     adaptive_rto=config.adaptive_rto, min_rto=config.min_rto)
        self.timer = TimerThread(self._retransmit, self._on_give_up, queue=retransmit,
                                 name=f"udp-client-timer-{config.user}")
        self.core = UdpClientCore(config.user, config.room, keepalive_s=config.keepalive_s,
                                  gap_timeout_s=config.gap_timeout_s,
                                  max_datagram_bytes=config.max_datagram_bytes,
                                  stats=retransmit.stats)
        self.reader_wakeups = 0             # select() timeouts: keepalive and gap deadlines
        self.send_errors = 0                # sends refused (e.g. ICMP: nobody listening)
        self._lock = threading.Lock()       # guards the core
        self._changed = threading.Condition(self._lock)   # notified after each step
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wakeup: Wakeup | None = None
        self._reader: threading.Thread | None = None
        self._failure: Exception | None = None
        self._ready = threading.Event()     # connect() has returned: joined
        self._leave_acked = threading.Event()
        self._stopping = threading.Event()  # the reader must end
        self._close_lock = threading.Lock()
        self._closed = False

    # -- public ---------------------------------------------------------------------------
    @property
    def state(self) -> ClientState:
        return self.core.state

    @property
    def address(self) -> tuple[str, int]:
        """Our own (host, port): how the server knows us."""
        if self._sock is None:
            raise RuntimeError("connect() first")
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self.core.in_flight

    @property
    def stats(self) -> dict[str, int]:
        """Retransmit counters, receive counters and wake-ups, for tests and the bench."""
        with self._lock:
            counters = self.core.counters()
        return {**self.timer.stats.as_dict(), **counters,
                "timer_wakeups": self.timer.wakeups, "reader_wakeups": self.reader_wakeups,
                "send_errors": self.send_errors}

    def describe_stats(self) -> str:
        """What ``/stats`` prints: the retransmit line, then the receive line."""
        stats = self.stats
        queue_ = self.timer.queue
        srtt = f"{queue_.srtt * 1000:.1f} ms" if queue_.srtt is not None else "-"
        return (f"sent: {self.timer.stats.describe()} (rto {queue_.rto * 1000:.0f} ms, "
                f"srtt {srtt})\n"
                f"received: delivered={stats['delivered']} duplicates={stats['duplicates']} "
                f"gaps={stats['gaps']} lost={stats['lost']} buffered={stats['buffered']} "
                f"acks_sent={stats['acks_sent']} sessions={stats['sessions']}")

    def connect(self, timeout: float | None = None) -> None:
        """Open the socket, start both threads, join ``config.room``; return once joined.

        Raises JoinError if the server refuses the join, ConnectionError if it
        never answers (the join's retransmissions gave up) or ``timeout``
        seconds pass, OSError if the address is unusable. The client is
        closed when it raises.
        """
        if self._reader is not None:
            raise RuntimeError("connect() may be called only once")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.connect((self.config.host, self.config.port))  # only the server gets in
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self._wakeup = Wakeup()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, "socket")
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ, "wakeup")
        self.timer.start()
        self._reader = threading.Thread(target=self._run, name=f"udp-client-{self.user}",
                                        daemon=True)
        self._reader.start()
        with self._lock:
            actions = self.core.start(time.monotonic())
        self._perform(actions)
        with self._changed:
            # Joined, or failed *and told why*: the core turns FAILED under the lock
            # a moment before its Failed action stores the reason.
            self._changed.wait_for(lambda: self.core.state is ClientState.JOINED
                                   or self._failure is not None
                                   or self._stopping.is_set(), timeout)
            state, failure = self.core.state, self._failure
        if state is ClientState.JOINED:
            self._ready.set()
            return
        self.close()
        if failure is not None:
            raise failure
        raise ConnectionError(f"no answer from {self.peer} within {timeout} s")

    def _change_room(self, room: str) -> None:
        with self._lock:
            actions = self.core.join(room, time.monotonic())
        self._perform(actions)

    def send_line(self, line: str) -> bool:
        """Parse and carry out one typed line (``/stats`` included); False once closed."""
        if line.strip().lower() == "/stats":
            self._events.emit(Notice(self.describe_stats()))
            return not self._events.finished
        return super().send_line(line)

    def request(self, request: dict[str, Any]) -> bool:
        """Send one request (from ``commands``, without ``id``) reliably, in turn.

        Returns True once it is sent or queued, False when it will not be sent
        (too large, too many queued, the session is over): a Notice says why.
        """
        with self._lock:
            actions = self.core.request(request, time.monotonic())
        self._perform(actions)
        return not any(isinstance(action, Note) for action in actions)

    def wait_sent(self, max_in_flight: int = 0, timeout: float | None = 5.0) -> bool:
        """Wait until at most ``max_in_flight`` requests wait for an ack.

        Returns False if ``timeout`` passed first or the client stopped. A
        request given up no longer counts. Senders use it as a window.
        """
        with self._changed:
            return self._changed.wait_for(
                lambda: self.core.in_flight <= max_in_flight or self._stopping.is_set(),
                timeout) and self.core.in_flight <= max_in_flight

    def close(self) -> int:
        """Say goodbye (see the module comment), stop both threads, close the socket.

        Returns the exit code: 0, unless the client had already failed. Safe
        to call more than once and from any thread but the reader.
        """
        with self._close_lock:
            if self._closed:
                return self.exit_code if self.exit_code is not None else EXIT_OK
            self._closed = True
            reader = self._reader
            if reader is not None and reader.is_alive() and not self._stopping.is_set():
                self._say_goodbye()
            self._stopping.set()
            if self._wakeup is not None:
                self._wakeup.wake()
            if reader is not None and reader is not threading.current_thread():
                reader.join()
            self.timer.stop()
            for resource in (self._selector, self._sock, self._wakeup):
                if resource is not None:
                    resource.close()
            self._events.finish(EXIT_OK, "closed")
            assert self.exit_code is not None
            return self.exit_code

    # -- closing ----------------------------------------------------------------------------
    def _say_goodbye(self) -> None:
        self.wait_sent(0, CLOSE_WAIT_S)
        with self._lock:
            if not self.core.heard_from_server:
                return                      # the server never knew us: nothing to end
            actions = self.core.leave(time.monotonic())
        self._perform(actions)
        if any(isinstance(action, Transmit) for action in actions):
            self._leave_acked.wait(CLOSE_WAIT_S)

    def _fail(self, failure: Exception) -> None:
        """The client cannot go on: ``connect`` raises it, or the client ends with code 2."""
        with self._changed:
            self._failure = failure
            self._changed.notify_all()
        if self._ready.is_set():
            self._stopping.set()            # the reader ends; close() cleans up
            self._events.finish(EXIT_FAILED, str(failure))

    # -- the reader thread ----------------------------------------------------------------------
    def _run(self) -> None:
        assert self._selector is not None and self._wakeup is not None
        try:
            while not self._stopping.is_set():
                with self._lock:
                    deadline = self.core.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = self._selector.select(timeout)
                if not ready:
                    self.reader_wakeups += 1
                for key, _ in ready:
                    if key.data == "socket":
                        self._read()
                    else:
                        self._wakeup.drain()
                with self._lock:
                    actions = self.core.handle_timer(time.monotonic())
                self._perform(actions)
        except BaseException as exc:        # a bug: still end with a Closed event
            self._stopping.set()
            self._events.finish(EXIT_FAILED, f"internal error: {exc!r}")
            raise

    def _read(self) -> None:
        assert self._sock is not None
        for _ in range(DATAGRAMS_PER_TURN):
            try:
                data = self._sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:          # ECONNREFUSED: an ICMP error for an earlier send
                log.debug("[%s] recv: %s", self.peer, exc)
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug("[%s] <- %r", self.peer, data)
            with self._lock:
                actions = self.core.receive(data, time.monotonic())
            self._perform(actions)

    # -- performing actions ----------------------------------------------------------------------
    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                try:
                    # Registered before the first send, so its ack always finds it.
                    self.timer.send(action.rid, action.payload)
                except TooManyPending:
                    with self._lock:
                        self.core.cancel(action.rid)
                    self._events.emit(Notice("not sent: too many requests wait for an ack"))
                    continue
                self._send(action.payload)
            elif isinstance(action, SendAck):
                self._send(action.payload)
            elif isinstance(action, Acked):
                self.timer.ack(action.rid)
                if action.rid == self.core.leave_id:
                    self._leave_acked.set()
            elif isinstance(action, Show):
                self._events.emit(Received(action.message))
            elif isinstance(action, Note):
                self._events.emit(Notice(action.text))
            elif isinstance(action, JoinRefused):
                self._fail(JoinError(action.code, action.text))
            elif isinstance(action, Failed):
                self._fail(ConnectionError(action.reason))
            # Joined needs nothing here: the join notice itself is delivered.
        with self._changed:
            self._changed.notify_all()

    def _send(self, payload: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s] -> %r", self.peer, payload)
        try:
            sock.send(payload)
        except OSError as exc:              # refused or full: a lost datagram; the timer resends
            self.send_errors += 1
            log.debug("[%s] send: %s", self.peer, exc)

    # -- the timer thread's callbacks ----------------------------------------------------------
    def _retransmit(self, key: Any, payload: bytes) -> None:
        self._send(payload)

    def _on_give_up(self, key: Any, payload: bytes) -> None:
        with self._lock:
            actions = self.core.given_up(key, time.monotonic())
        self._perform(actions)
        if self._wakeup is not None:
            self._wakeup.wake()             # with nothing out, a keepalive deadline is back


# -- The terminal program ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    return program.main(cfg.UdpClientConfig, argv, prog="chat-sync udp-client",
                        description="Chat on a chat_sync UDP server.",
                        build=lambda config, on_event: UdpChatClient(config, on_event=on_event))


if __name__ == "__main__":
    sys.exit(main())
