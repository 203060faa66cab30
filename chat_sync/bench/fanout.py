"""``fanout``: clients in one room each send M messages; every delivery is checked.

Each sender keeps at most ``--window`` of its own messages unechoed, so the
load is closed-loop: it runs as fast as the slower of the server and the
generator. The headline figure is the server's own CPU time per delivery,
which a slow generator cannot flatter; throughput and latency come beside
it. With ``--baseline``, each round runs chat_sync and then every baseline
(A B C A B C ...), each on the same pinned CPU, and every ratio is taken
within a round, so that load from other work on the machine falls on both
sides of it; the summary gives the median and range over the rounds.

Little's law: a sender always has ``window`` messages out until its own copy
comes back, so ``senders * window`` messages are in flight, and their mean
round trip (``echo_ms_mean``, measured) must come out at ``littles_law_ms``
= in flight / messages per second. Deliveries to the other members are not
bounded by the window (some arrive before the sender's own copy), so the mean
over all deliveries (``latency_ms_mean``) is shorter, and Little's law says
nothing about it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any, Callable

from . import designs
from .load import LoadClient, LoadGenerator, join_all, sync_raw, wait_for_server
from .measure import Pinning, add_run_arguments, percentile, progress, ratio, spread

Figures = dict[str, Any]
PER_RUN = ("server_cpu_us_per_delivery", "deliveries_per_s", "latency_ms_p50",
           "latency_ms_p99", "latency_ms_mean", "echo_ms_mean", "littles_law_ms",
           "server_cpu_share", "generator_cpu_share")


def connect_room(address: tuple[str, int], clients: int, raw: bool, timeout: float
                 ) -> LoadGenerator:
    """``clients`` connections, all joined to room ``bench`` (or all accepted, ``raw``)."""
    load = LoadGenerator()
    try:
        load.connect(address, clients)
        if raw:
            sync_raw(load, timeout)
        else:
            join_all(load, lambda c: "bench", timeout)
    except BaseException:
        load.close()
        raise
    return load


def closed_loop(load: LoadGenerator, senders: int, messages: int, window: int, raw: bool,
                timeout: float = 300.0, server_cpu: Callable[[], float] | None = None
                ) -> Figures:
    """The first ``senders`` clients send ``messages`` each, ``window`` unechoed at most.

    Every client checks every line as it counts it: per-sender order, and
    (not ``raw``) strictly increasing ``seq``. ``server_cpu`` reads the
    server's CPU seconds, when it is known. ``*_cpu_share`` is CPU seconds
    per second of the load: near 1.0 for the generator means it set the pace.
    """
    for client in load.clients:
        client.reset()
    members = len(load.clients)
    total = senders * messages                  # what every member must receive
    latencies: list[float] = []
    echoes: list[float] = []
    errors: list[str] = []

    def send_more(client: LoadClient) -> None:
        while client.sent < messages and client.sent - client.echoed < window:
            text = f"{client.index} {client.sent} {time.monotonic():.6f}"
            load.send(client, {"type": "message", "text": text})
            client.sent += 1

    def on_line(client: LoadClient, line: bytes) -> None:
        # Sliced, not json.loads: the generator must not be the bottleneck it measures.
        if not line.startswith(b'{"type":"message"'):
            return
        now = time.monotonic()
        start = line.index(b'"text":"') + 8
        end = line.index(b'"', start)
        sender_s, k_s, sent_at = line[start:end].split()
        sender, k = int(sender_s), int(k_s)
        latencies.append(now - float(sent_at))
        if client.expected.get(sender, 0) != k:
            errors.append(f"{client.name}: got {sender}/{k}, "
                          f"expected {sender}/{client.expected.get(sender, 0)}")
        client.expected[sender] = k + 1
        if not raw:
            start = line.index(b'"seq":', end) + 6
            seq = int(line[start:line.index(b",", start)])
            if seq <= client.last_seq:
                errors.append(f"{client.name}: seq {seq} after {client.last_seq}")
            client.last_seq = seq
        client.received += 1
        if sender == client.index:
            echoes.append(now - float(sent_at))
            client.echoed += 1
            send_more(client)

    started = time.monotonic()
    cpu_started = time.process_time()
    server_cpu_started = server_cpu() if server_cpu is not None else 0.0
    for client in load.clients[:senders]:
        send_more(client)
    try:
        load.run_until(lambda: all(c.received == total for c in load.clients), on_line,
                       timeout)
    except TimeoutError:
        pass
    elapsed = time.monotonic() - started
    delivered = sum(c.received for c in load.clients)
    figures: Figures = {
        "generator_cpu_share": round((time.process_time() - cpu_started) / elapsed, 2)}
    if server_cpu is not None:
        used = server_cpu() - server_cpu_started
        figures["server_cpu_share"] = round(used / elapsed, 2)
        figures["server_cpu_us_per_delivery"] = round(used / max(1, delivered) * 1e6, 3)
    per_s = delivered / elapsed
    latencies.sort()
    return {
        "deliveries": delivered, "losses": members * total - delivered,
        "order_errors": len(errors), "seconds": round(elapsed, 3),
        "deliveries_per_s": round(per_s),
        "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 2),
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 2),
        "latency_ms_max": round((latencies[-1] if latencies else 0.0) * 1000, 2),
        "latency_ms_mean": round(sum(latencies) / max(1, len(latencies)) * 1000, 2),
        "echo_ms_mean": round(sum(echoes) / max(1, len(echoes)) * 1000, 2),
        # Little's law: messages in flight over messages per second (each a
        # delivery to every member) is the mean round trip they imply.
        "littles_law_ms": round(senders * window / (per_s / members) * 1000, 2)
        if delivered else 0.0,
        **figures,
    }


def one_run(design: str, clients: int, senders: int, messages: int, window: int,
            pinning: Pinning, log: bool, timeout: float = 300.0) -> Figures:
    """Start ``design``, connect ``clients``, run the closed loop once, stop it."""
    raw = design == "raw"
    with tempfile.TemporaryDirectory() as tmp:
        with designs.start(design, clients + 10, pinning, tmp if log else None) as server:
            load = connect_room(server.address, clients, raw, timeout)
            try:
                return closed_loop(load, senders, messages, window, raw, timeout,
                                   server_cpu=server.cpu_seconds)
            finally:
                load.close()


def compare(runs: dict[str, list[Figures]]) -> Figures:
    """Medians and ranges of every design's figures, and of chat_sync's ratios to each."""
    ours = runs["chat_sync"]
    figures: Figures = {
        "losses": sum(r["losses"] for rs in runs.values() for r in rs),
        "order_errors": sum(r["order_errors"] for rs in runs.values() for r in rs),
        "deliveries": min(r["deliveries"] for r in ours),
    }
    for name in PER_RUN:
        figures[name] = spread([r[name] for r in ours if name in r])
    for design, theirs in runs.items():
        if design == "chat_sync":
            continue
        for name in ("server_cpu_us_per_delivery", "deliveries_per_s", "latency_ms_p50",
                     "latency_ms_p99", "generator_cpu_share"):
            figures[f"{design}_{name}"] = spread([r[name] for r in theirs])
        figures[f"{design}_losses"] = sum(r["losses"] for r in theirs)
        # > 1: chat_sync spends more CPU per delivery than the baseline.
        figures[f"cpu_per_delivery_to_{design}"] = spread(
            [x for a, b in zip(ours, theirs) if (x := ratio(
                a["server_cpu_us_per_delivery"], b["server_cpu_us_per_delivery"])) is not None])
        # > 1: chat_sync delivers faster than the baseline.
        figures[f"throughput_to_{design}"] = spread(
            [x for a, b in zip(ours, theirs)
             if (x := ratio(a["deliveries_per_s"], b["deliveries_per_s"])) is not None])
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=50, help="members of the one room")
    parser.add_argument("--messages", type=int, default=200, help="messages each sends")
    parser.add_argument("--window", type=int, default=8,
                        help="own unechoed messages a sender may have at most")
    parser.add_argument("--baseline", nargs="*", choices=["raw", "asyncio", "nolog"],
                        default=[], help="also run these in every round and give ratios: "
                        "raw (a relay that only copies bytes), asyncio (the same chat "
                        "on asyncio streams), nolog (chat_sync without its chat log)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each running chat_sync then every baseline")
    add_run_arguments(parser)
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="drive a server already running there (e.g. under a profiler) "
                        "once, instead of starting one")
    parser.add_argument("--wait-s", type=float, default=10.0,
                        help="with --server: how long to wait for it to accept connections")


def run(args: argparse.Namespace) -> Figures:
    shape = {"clients": args.clients, "messages": args.messages, "window": args.window}
    if args.server is not None:
        host, _, port = args.server.rpartition(":")
        address = (host, int(port))
        wait_for_server(address, args.wait_s)
        progress(f"fanout: {args.clients} clients x {args.messages} messages against "
                 f"{args.server}")
        load = connect_room(address, args.clients, False, 300.0)
        try:
            return {"scenario": "fanout", "server": args.server, **shape,
                    **closed_loop(load, args.clients, args.messages, args.window, False)}
        finally:
            load.close()
    pinning = Pinning.choose(not args.no_pin)
    progress(f"fanout: {args.clients} clients x {args.messages} messages, "
             f"{args.rounds} rounds of {' '.join(['chat_sync', *args.baseline])}; "
             f"{pinning.describe()}")
    runs: dict[str, list[Figures]] = {design: [] for design in ["chat_sync", *args.baseline]}
    with pinning:
        for _ in range(args.rounds):
            for design in runs:
                log = not args.no_log and design != "nolog"
                runs[design].append(one_run("chat_sync" if design == "nolog" else design,
                                            args.clients, args.clients, args.messages,
                                            args.window, pinning, log))
    return {"scenario": "fanout", "logging": not args.no_log, **shape,
            "rounds": args.rounds, "pinning": pinning.describe(), **compare(runs)}
