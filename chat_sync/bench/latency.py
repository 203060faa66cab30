"""``latency``: delivery time at a given load, not only at saturation.

A closed-loop fanout (``fanout.closed_loop``) finds the saturation rate: the
deliveries per second the server and the generator sustain together. Then,
on the same connections, an open-loop load sends messages at a fixed rate,
25%, 50% and 90% of that, for ``--seconds`` each, and measures every
delivery's time from send to receipt. At saturation a closed loop's latency
is only Little's law (in flight / rate); below it, latency is what a user
waits for.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any, Callable

from . import designs
from .fanout import closed_loop, connect_room
from .load import LoadClient, LoadGenerator
from .measure import Pinning, add_run_arguments, percentile, progress

Figures = dict[str, Any]


def open_loop(load: LoadGenerator, senders: int, rate: float, seconds: float, raw: bool,
              timeout: float = 60.0, server_cpu: Callable[[], float] | None = None
              ) -> Figures:
    """``rate`` messages per second from the first ``senders`` clients in turn, for ``seconds``.

    Every member must receive every message, each sender's in order. With
    ``server_cpu``, also the server's CPU share and CPU per delivery: below
    saturation each message has a loop turn to itself, so less is batched.
    """
    for client in load.clients:
        client.reset()
    members = len(load.clients)
    count = max(1, round(rate * seconds))
    latencies: list[float] = []
    errors: list[str] = []
    cpu_started = server_cpu() if server_cpu is not None else 0.0
    started = time.monotonic()
    sent = 0

    def tick() -> float:
        """Send what is due; returns the wait until the next send."""
        nonlocal sent
        now = time.monotonic()
        while sent < count and started + sent / rate <= now:
            client = load.clients[sent % senders]
            text = f"{client.index} {client.sent} {now:.6f}"
            load.send(client, {"type": "message", "text": text})
            client.sent += 1
            sent += 1
        return started + sent / rate - now if sent < count else 1.0

    def on_line(client: LoadClient, line: bytes) -> None:
        if not line.startswith(b'{"type":"message"'):
            return
        now = time.monotonic()
        start = line.index(b'"text":"') + 8
        sender_s, k_s, sent_at = line[start:line.index(b'"', start)].split()
        sender, k = int(sender_s), int(k_s)
        latencies.append(now - float(sent_at))
        if client.expected.get(sender, 0) != k:
            errors.append(f"{client.name}: got {sender}/{k}")
        client.expected[sender] = k + 1
        client.received += 1

    try:
        load.run_until(lambda: sent == count and all(c.received == count for c in load.clients),
                       on_line, seconds + timeout, tick=tick)
    except TimeoutError:
        pass
    elapsed = time.monotonic() - started
    delivered = sum(c.received for c in load.clients)
    cpu: Figures = {}
    if server_cpu is not None:
        used = server_cpu() - cpu_started
        cpu = {"server_cpu_share": round(used / elapsed, 2),
               "server_cpu_us_per_delivery": round(used / max(1, delivered) * 1e6, 3)}
    latencies.sort()
    return {**cpu,
        "messages_per_s": round(rate, 1), "deliveries_per_s": round(rate * members),
        "losses": count * members - delivered, "order_errors": len(errors),
        "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 2),
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 2),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=50, help="members of the one room")
    parser.add_argument("--senders", type=int, default=10, help="members that send")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 0.9],
                        help="loads to measure at, as fractions of the saturation rate")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load")
    parser.add_argument("--design", choices=designs.DESIGNS, default="chat_sync",
                        help="the server to measure")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> Figures:
    pinning = Pinning.choose(not args.no_pin)
    raw = args.design == "raw"
    senders = min(args.senders, args.clients)
    progress(f"latency: {args.clients} members, {senders} senders ({args.design}); "
             f"{pinning.describe()}")
    with tempfile.TemporaryDirectory() as tmp, pinning:
        log_dir = None if args.no_log else tmp
        with designs.start(args.design, args.clients + 10, pinning, log_dir) as server:
            load = connect_room(server.address, args.clients, raw, 300.0)
            try:
                saturation = closed_loop(load, senders, 400, 8, raw, 300.0,
                                         server_cpu=server.cpu_seconds)
                rate = saturation["deliveries_per_s"] / args.clients    # messages per second
                levels = {}
                for level in args.levels:
                    progress(f"latency: {level:.0%} of {rate:.0f} messages/s")
                    levels[f"{level:g}"] = open_loop(load, senders, rate * level, args.seconds,
                                                     raw, server_cpu=server.cpu_seconds)
            finally:
                load.close()
    return {
        "scenario": "latency", "design": args.design, "pinning": pinning.describe(),
        "clients": args.clients, "senders": senders, "seconds_each": args.seconds,
        "saturation_deliveries_per_s": saturation["deliveries_per_s"],
        "saturation_latency_ms_p99": saturation["latency_ms_p99"],
        "saturation_server_cpu_us_per_delivery": saturation["server_cpu_us_per_delivery"],
        "losses": saturation["losses"] + sum(f["losses"] for f in levels.values()),
        "order_errors": (saturation["order_errors"]
                         + sum(f["order_errors"] for f in levels.values())),
        **{f"at_{level}_latency_ms_p50": f["latency_ms_p50"] for level, f in levels.items()},
        **{f"at_{level}_latency_ms_p99": f["latency_ms_p99"] for level, f in levels.items()},
        **{f"at_{level}_server_cpu_us_per_delivery": f["server_cpu_us_per_delivery"]
           for level, f in levels.items()},
        **{f"at_{level}_server_cpu_share": f["server_cpu_share"] for level, f in levels.items()},
    }
