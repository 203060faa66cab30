"""The UDP chat server: a thin shell around ``UdpChat`` and a retransmit timer.

Theory of operation
-------------------
Two threads, each with one job:

- The **loop thread** owns the socket's receiving side and all chat state.
  It waits in ``select()`` until a datagram arrives, another thread wakes it,
  or the quietest peer's silence deadline passes; it feeds each datagram to
  ``UdpChat.receive`` and performs the actions that come back.
- The **timer thread** (``retransmit.TimerThread``) decides when to resend
  what peers have not acked, waiting on a ``threading.Condition`` until the
  earliest deadline. It touches no chat state: each retransmission, and each
  datagram it gives up on, is handed to the loop thread (a queue plus the
  wake-up socketpair). The loop asks ``UdpChat.resend`` whether it may go,
  because an address not verified yet has a byte budget that
  retransmissions spend too (``udp_server_core``: anti-amplification).

A reliable datagram is registered with the timer *before* its first
``sendto``, so an ack that comes back at once always finds it. Defences
(rate limit, anti-amplification, unverified addresses forgotten) live in
``UdpChat``; what they do is logged here, with the peer, from its
``Report`` actions, and counted in ``stats``.
"""
from __future__ import annotations

import json
import logging
import queue
import selectors
import socket
import sys
import time
from typing import Any

from . import config as cfg
from . import protocol as p
from .udp_server_core import (MAX_UNACKED, Acked, Action, Cancel, Key, Log, Report, Send,
                              UdpChat)
from .logs import ChatLog
from .retransmit import RetransmitError, RetransmitQueue, TimerThread
from .rooms import ChatCore
from .serving import ServerHandle, run_program
from .wakeup import Stoppable

log = logging.getLogger("chat_sync.udp_server")

DATAGRAMS_PER_TURN = 256     # bound one turn's work, so a flood cannot starve timeouts
RECEIVE_BYTES = 65_535       # the largest UDP payload: a datagram is read whole, so its
                             # real size is known (and reported) even when it is refused


class UdpServer(Stoppable):
    """A UDP chat server, bound at construction so ``address`` is known before serving."""

    def __init__(self, config: cfg.UdpServerConfig = cfg.UdpServerConfig()) -> None:
        super().__init__()
        self.config = config
        core = ChatCore(p.Limits(max_text_chars=config.max_text_chars,
                                 presence_limit=config.presence_limit), config.history_size,
                        config.max_rooms)
        retransmit = RetransmitQueue(base_delay=config.base_delay, max_delay=config.max_delay,
                                     max_retries=config.max_retries,
                                     adaptive_rto=config.adaptive_rto, min_rto=config.min_rto,
                                     # every peer at its own bound fits: the core
                                     # drops a peer before it passes MAX_UNACKED
                                     max_pending=config.max_clients * MAX_UNACKED)
        self.chat = UdpChat(core, max_datagram_bytes=config.max_datagram_bytes,
                            max_clients=config.max_clients,
                            client_timeout_s=config.client_timeout_s,
                            rate_limit_per_s=config.udp_rate_limit_per_s,
                            rate_burst=config.udp_rate_burst,
                            anti_amplification=config.anti_amplification,
                            unverified_timeout_s=config.unverified_timeout_s,
                            stats=retransmit.stats)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((config.host, config.port))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.timer = TimerThread(self._transmit, self._on_give_up, queue=retransmit,
                                 name="udp-server-timer")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ, "socket")
        self.selector.register(self._wakeup.reader, selectors.EVENT_READ, "wakeup")
        self._given_up: queue.SimpleQueue[Key] = queue.SimpleQueue()
        self._resends: queue.SimpleQueue[tuple[Key, bytes]] = queue.SimpleQueue()
        self.chat_log = (ChatLog(config.log_file, config.log_max_bytes, config.log_backups)
                         if config.log_file else None)
        self.send_errors = 0
        self.shed = 0                # reliable datagrams the timer had no room for (a bug)

    @property
    def stats(self) -> dict[str, int]:
        """Retransmit counters, datagrams dropped (and for being over the rate limit),
        and the anti-amplification figures (``unverified_*``); for tests and the bench."""
        dropped = dict(self.chat.dropped)          # every key exists from the start
        amplification = dict(self.chat.amplification)
        return {**self.timer.stats.as_dict(), "dropped": sum(dropped.values()),
                "rate_limited": dropped["rate_limited"],
                **{f"unverified_{name}": value for name, value in amplification.items()}}

    def serve_forever(self) -> None:
        log.info("listening on %s:%d (udp)", *self.address)
        self.timer.start()
        try:
            while not self._stop.is_set():
                self._turn(self._timeout())
            self._shutdown()
        finally:
            self.timer.stop()
            log.info("stats %s", json.dumps(self.stats))    # read by the bench's udp scenario
            self.selector.close()
            self.sock.close()
            self._wakeup.close()
            if self.chat_log is not None:
                self.chat_log.close()
            log.info("stopped")

    # -- the loop ----------------------------------------------------------------
    def _timeout(self) -> float | None:
        expiry = self.chat.next_expiry()
        return None if expiry is None else max(0.0, expiry - time.monotonic())

    def _turn(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data == "socket":
                self._read()
            else:
                self._wakeup.drain()
        while not self._resends.empty():
            self._perform(self.chat.resend(*self._resends.get()))
        while not self._given_up.empty():
            self._perform(self.chat.give_up(self._given_up.get(), time.time()))
        self._perform(self.chat.expire(time.monotonic(), time.time()))

    def _read(self) -> None:
        for _ in range(DATAGRAMS_PER_TURN):
            try:
                data, addr = self.sock.recvfrom(RECEIVE_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:      # e.g. an ICMP error queued for an earlier send
                log.debug("recvfrom: %s", exc)
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug("[%s:%d] -> %r", addr[0], addr[1], data)
            self._perform(self.chat.receive(addr[:2], data, time.monotonic(), time.time()))

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if action.key is not None and not self._register(action.key, action.payload):
                    continue
                self._sendto(action.payload, action.addr)
            elif isinstance(action, Acked):
                self.timer.ack(action.key)
            elif isinstance(action, Cancel):
                self.timer.cancel(action.key)
            elif isinstance(action, Report):
                log.log(action.level, "[%s:%d] %s", action.addr[0], action.addr[1], action.text)
            elif isinstance(action, Log) and self.chat_log is not None:
                self.chat_log.write(action.ts, action.room, action.user, action.text)

    def _register(self, key: Key, payload: bytes) -> bool:
        """Hand a reliable datagram to the timer; False (shed, logged) if it will not take it.

        The bounds agree (``max_clients`` x ``MAX_UNACKED``), so this should never
        refuse; if it does, the newest datagram is shed and the loop carries on.
        """
        try:
            self.timer.send(key, payload)
        except RetransmitError as exc:
            self.shed += 1
            log.error("[%s:%d] shed n=%d: %s", key[0][0], key[0][1], key[1], exc)
            return False
        return True

    def _sendto(self, payload: bytes, addr: tuple[str, int]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("[%s:%d] <- %r", addr[0], addr[1], payload)
        try:
            self.sock.sendto(payload, addr)
        except OSError as exc:          # a full buffer is a lost datagram: the timer resends
            self.send_errors += 1
            log.debug("sendto %s:%d: %s", addr[0], addr[1], exc)

    # -- the timer thread's callbacks ------------------------------------------------
    def _transmit(self, key: Any, payload: bytes) -> None:
        self._resends.put((key, payload))       # the loop thread decides and sends
        self._wakeup.wake()

    def _on_give_up(self, key: Any, payload: bytes) -> None:
        self._given_up.put(key)
        self._wakeup.wake()

    def _shutdown(self) -> None:
        """Tell every peer, then wait up to ``shutdown_grace_s`` for their acks."""
        log.info("shutting down: %d clients", len(self.chat.peers))
        self._perform(self.chat.shutdown(time.time()))
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while self.timer.pending and time.monotonic() < deadline:
            self._turn(max(0.0, deadline - time.monotonic()))


def serve(config: cfg.UdpServerConfig = cfg.UdpServerConfig(), **overrides: Any
          ) -> ServerHandle[UdpServer]:
    """Start a UDP server in a background thread; ``overrides`` replace config fields."""
    return ServerHandle(UdpServer(cfg.replace(config, **overrides)), name="udp-server")


def main(argv: list[str] | None = None) -> int:
    return run_program(cfg.UdpServerConfig, UdpServer, argv, prog="chat-sync udp-server",
                       description="Run the chat_sync UDP chat server.")

if __name__ == "__main__":
    sys.exit(main())
