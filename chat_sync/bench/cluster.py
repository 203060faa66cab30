"""``cluster``: two chat_sync servers on one Redis bus, against one server alone.

Each round runs the same load, interleaved, three ways: ``alone`` (one
server, no bus: today's single process), ``bus1`` (one server on the bus:
what the bus itself costs) and ``bus2`` (two servers on the bus, the
clients split between them, even ones on the first, odd ones on the
second, so every message crosses the bus to reach half of its room). The
bench starts a ``redis-server`` of its own on a free port, with no
persistence, and stops it at the end.

Per design: a closed loop (``fanout.closed_loop``) gives throughput and
the server CPU per delivery, both servers' CPU summed (Redis's is given
beside it, not in it); then an open loop at ``--rate`` messages per second
(``latency.open_loop``), well below saturation, gives the delivery times,
and the bus's extra latency is each round's p50 and p99 minus the lone
server's. Every delivery is checked: every member gets every message, each
sender's in order, with strictly increasing ``seq``, which on the bus is
the cluster's one counter, not each server's.

Pinning: the generator and Redis share one CPU, the servers the other. On a
two-core machine the two servers therefore share one core: this measures
what the bus costs and that it loses nothing, not what a second core buys.
Every server of a cluster also applies every entry (``chat_sync.cluster``:
a replicated state machine), so only the sending is divided between them.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from contextlib import ExitStack
from typing import Any

from . import designs
from .fanout import closed_loop
from .latency import open_loop
from .load import LoadGenerator, ServerAbsent, join_all
from .measure import Pinning, add_run_arguments, ServerProcess, cpu_seconds, progress, ratio, spread

Figures = dict[str, Any]
DESIGNS = {"alone": 0, "bus1": 1, "bus2": 2}       # design -> servers on the bus (0: none)


class RedisServer:
    """A ``redis-server`` of the bench's own on a free port: no persistence, no files kept."""

    def __init__(self, workdir: str, pinned_to: int | None, ready_timeout: float = 10.0
                 ) -> None:
        """Start it and wait for its ready line; ServerAbsent if it is missing or fails."""
        if shutil.which("redis-server") is None:
            raise ServerAbsent("redis-server is not installed (Debian: apt-get install "
                               "redis-server)")
        with socket.socket() as probe:          # a free port, as redis cannot take port 0
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # A thread reads its log to the end, so the pipe never fills, and says when
        # the ready line has come (select() cannot see lines a text stream buffered).
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, name="redis-log", daemon=True).start()
        if not self._ready.wait(ready_timeout) or self.proc.poll() is not None:
            self.stop()
            raise ServerAbsent(f"redis-server did not start on port {self.port}")
        if pinned_to is not None:
            for task in os.listdir(f"/proc/{self.proc.pid}/task"):   # every thread of it
                os.sched_setaffinity(int(task), {pinned_to})

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "Ready to accept connections" in line:
                self._ready.set()
        self._ready.set()                       # it ended: stop waiting (poll() says why)

    def flush(self) -> None:
        """Forget every key: the next cluster starts on an empty bus, not the last one's."""
        import redis                            # the optional extra; run() checked it
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def one_run(design: str, redis: RedisServer, args: argparse.Namespace, pinning: Pinning
            ) -> Figures:
    """Start ``design``'s servers, join every client to one room, run both loads, stop."""
    count = DESIGNS[design]
    bus = ["--bus", redis.url] if count else []
    with ExitStack() as stack:
        servers: list[ServerProcess] = []
        for _ in range(max(1, count)):
            log_dir = None if args.no_log else stack.enter_context(tempfile.TemporaryDirectory())
            servers.append(stack.enter_context(
                designs.start("chat_sync", args.clients + 10, pinning, log_dir, bus)))
        load = LoadGenerator()
        stack.callback(load.close)
        for index in range(args.clients):
            load.connect(servers[index % len(servers)].address, 1)
        join_all(load, lambda client: "bench", 300.0)

        def server_cpu() -> float:
            return sum(server.cpu_seconds() for server in servers)

        redis_started = redis.cpu_seconds()
        saturation = closed_loop(load, args.clients, args.messages, args.window, False,
                                 server_cpu=server_cpu)
        redis_used = redis.cpu_seconds() - redis_started
        light = open_loop(load, args.clients, args.rate, args.seconds, False)
    if count:
        redis.flush()
    deliveries = max(1, saturation["deliveries"])
    return {
        "deliveries_per_s": saturation["deliveries_per_s"],
        "server_cpu_us_per_delivery": saturation["server_cpu_us_per_delivery"],
        "redis_cpu_us_per_delivery": round(redis_used / deliveries * 1e6, 3) if count else 0.0,
        "latency_ms_p50": light["latency_ms_p50"], "latency_ms_p99": light["latency_ms_p99"],
        "losses": saturation["losses"] + light["losses"],
        "order_errors": saturation["order_errors"] + light["order_errors"],
    }


def compare(runs: dict[str, list[Figures]]) -> Figures:
    """Every design's medians and ranges; the bus designs' ratios and extras to ``alone``."""
    alone = runs["alone"]
    figures: Figures = {
        "losses": sum(r["losses"] for rs in runs.values() for r in rs),
        "order_errors": sum(r["order_errors"] for rs in runs.values() for r in rs)}
    for design, rounds in runs.items():
        for name in ("deliveries_per_s", "server_cpu_us_per_delivery",
                     "redis_cpu_us_per_delivery", "latency_ms_p50", "latency_ms_p99"):
            if design != "alone" or name != "redis_cpu_us_per_delivery":
                figures[f"{design}_{name}"] = spread([r[name] for r in rounds])
    for design, rounds in runs.items():
        if design == "alone":
            continue
        # > 1: the bus design delivers faster / spends more CPU per delivery.
        figures[f"{design}_throughput_to_alone"] = spread(
            [x for a, b in zip(rounds, alone)
             if (x := ratio(a["deliveries_per_s"], b["deliveries_per_s"])) is not None])
        figures[f"{design}_cpu_per_delivery_to_alone"] = spread(
            [x for a, b in zip(rounds, alone) if (x := ratio(
                a["server_cpu_us_per_delivery"], b["server_cpu_us_per_delivery"])) is not None])
        for name in ("latency_ms_p50", "latency_ms_p99"):
            figures[f"{design}_extra_{name}"] = spread(
                [a[name] - b[name] for a, b in zip(rounds, alone)], 2)
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=50,
                        help="members of the one room, split between the servers")
    parser.add_argument("--messages", type=int, default=100,
                        help="messages each sends in the closed loop")
    parser.add_argument("--window", type=int, default=8,
                        help="own unechoed messages a sender may have at most")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="messages per second of the open loop the latency comes from")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of the open loop")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each running alone, bus1 and bus2")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> Figures:
    """Raises ServerAbsent without redis-server or the ``redis`` package."""
    if importlib.util.find_spec("redis") is None:
        raise ServerAbsent("the bus needs the redis package: pip install 'chat_sync[bus]'")
    pinning = Pinning.choose(not args.no_pin)
    progress(f"cluster: {args.clients} clients x {args.messages} messages, then "
             f"{args.rate:g} messages/s for {args.seconds:g} s; {args.rounds} rounds of "
             f"{' '.join(DESIGNS)}; {pinning.describe()}, Redis beside the generator")
    runs: dict[str, list[Figures]] = {design: [] for design in DESIGNS}
    with tempfile.TemporaryDirectory() as workdir, pinning:
        redis = RedisServer(workdir, pinning.generator)
        try:
            for _ in range(args.rounds):
                for design in DESIGNS:
                    runs[design].append(one_run(design, redis, args, pinning))
        finally:
            redis.stop()
    return {"scenario": "cluster", "clients": args.clients, "messages": args.messages,
            "window": args.window, "rate": args.rate, "rounds": args.rounds,
            "logging": not args.no_log, "pinning": pinning.describe(), **compare(runs)}
