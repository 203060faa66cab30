"""``idle``: idle servers and client must use no CPU and wake up never."""
from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any, Callable

from .. import config as cfg
from ..udp_client import Received, UdpChatClient
from .measure import ServerProcess, progress
from .peer import TcpPeer

IDLE_CPU_S = 0.05            # idle: the most CPU a server may use in the window


def settle(read: Callable[[], list[int]], timeout: float = 10.0) -> list[int]:
    """Counters that read the same twice in a row (with a deadline): nothing in flight."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        threading.Event().wait(0.05)    # a poll interval; the deadline bounds the wait
        now = read()
        if now == last:
            return now
        last = now
    raise TimeoutError("counters did not settle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="the silence in which nothing may happen")


NOTES = ["expected: 0 wake-ups and 0 CPU (counted in ticks of cpu_tick_s)."]


def run(args: argparse.Namespace) -> dict[str, Any]:
    progress(f"idle: a UDP and a TCP server, one joined client each, {args.seconds} s of silence")
    with ServerProcess("chat_sync.udp_server", "--log-level", "warning") as udp_server, \
            ServerProcess("chat_sync.tcp_server", "--log-level", "warning") as tcp_server:
        udp = UdpChatClient(cfg.UdpClientConfig(host=udp_server.address[0],
                                                port=udp_server.address[1], user="idler"))
        tcp = TcpPeer(tcp_server.address)
        try:
            udp.connect(10.0)
            tcp.next_message()                     # the welcome
            tcp.join("lobby", "idler")
            # One more round trip each, so every ack and line before it has been handled.
            udp.request({"type": "who"})
            while True:
                event = udp.next_event(10.0)
                if isinstance(event, Received) and event.message.get("type") == "who":
                    break
            tcp.send({"type": "ping"})
            tcp.until(lambda m: m.get("type") == "pong")

            def counters() -> list[int]:
                stats = udp.stats
                return [udp.timer.pending, stats["timer_wakeups"], stats["reader_wakeups"]]

            before = settle(counters)
            cpu_before = (udp_server.cpu_seconds(), tcp_server.cpu_seconds())
            threading.Event().wait(args.seconds)     # the window itself: nothing may happen
            cpu_after = (udp_server.cpu_seconds(), tcp_server.cpu_seconds())
            after = counters()
            still_running = udp.exit_code is None
        finally:
            udp.close()
            tcp.close()
    udp_cpu, tcp_cpu = (round(a - b, 3) for a, b in zip(cpu_after, cpu_before))
    timer_wakeups, reader_wakeups = after[1] - before[1], after[2] - before[2]
    return {
        "scenario": "idle", "seconds": args.seconds,
        "passed": (still_running and timer_wakeups == 0 and reader_wakeups == 0
                   and max(udp_cpu, tcp_cpu) < IDLE_CPU_S),
        "udp_server_cpu_s": udp_cpu, "tcp_server_cpu_s": tcp_cpu,
        "udp_client_timer_wakeups": timer_wakeups,
        "udp_client_reader_wakeups": reader_wakeups,
        "cpu_tick_s": round(1 / os.sysconf("SC_CLK_TCK"), 3),
        "udp_client_keepalive_s": udp.config.keepalive_s,
    }

