"""``fanout``: N clients in one room each send M messages; every delivery is checked."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Callable

from .load import LoadClient, LoadGenerator, join_all, sync_raw
from .measure import ServerProcess, no_limits, percentile, progress


def fanout(address: tuple[str, int], clients: int, messages: int, window: int, raw: bool,
           timeout: float = 300.0, server_cpu: Callable[[], float] | None = None
           ) -> dict[str, Any]:
    """The fanout load against a server at ``address``; returns figures.

    ``*_cpu_share`` is CPU seconds per second of the load: near 1.0 for this
    process means the load generator, not the server, sets the pace.
    ``server_cpu`` reads the server's CPU seconds, when it is known.
    """
    load = LoadGenerator()
    try:
        load.connect(address, clients)
        if raw:
            sync_raw(load, timeout)
        else:
            join_all(load, lambda c: "bench", timeout)
        latencies: list[float] = []
        total = clients * messages
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
                client.echoed += 1
                send_more(client)

        started = time.monotonic()
        cpu_started = time.process_time()
        server_cpu_started = server_cpu() if server_cpu is not None else 0.0
        for client in load.clients:
            send_more(client)
        try:
            load.run_until(lambda: all(c.received == total for c in load.clients), on_line,
                           timeout)
        except TimeoutError:
            pass
        elapsed = time.monotonic() - started
        shares = {"generator_cpu_share": round((time.process_time() - cpu_started) / elapsed, 2)}
        if server_cpu is not None:
            used = server_cpu() - server_cpu_started
            shares["server_cpu_share"] = round(used / elapsed, 2)
            delivered_now = sum(c.received for c in load.clients)
            shares["server_cpu_us_per_delivery"] = round(used / max(1, delivered_now) * 1e6, 2)
        delivered = sum(c.received for c in load.clients)
        latencies.sort()
        return {
            "clients": clients, "messages": messages, "window": window,
            "deliveries": delivered, "losses": clients * total - delivered,
            "order_errors": len(errors), "seconds": round(elapsed, 3),
            "deliveries_per_s": round(delivered / elapsed),
            "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 2),
            "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 2),
            "latency_ms_max": round((latencies[-1] if latencies else 0.0) * 1000, 2),
            "latency_ms_mean": round(sum(latencies) / max(1, len(latencies)) * 1000, 2),
            # Little's law: deliveries in flight (each client's window, to every
            # client) over deliveries per second is the mean wait they imply.
            "littles_law_ms": round(clients * window * clients / (delivered / elapsed) * 1000, 2)
            if delivered else 0.0,
            **shares,
        }
    finally:
        load.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--window", type=int, default=8, help="own unechoed messages at most")
    parser.add_argument("--baseline", choices=["raw"], help="also run the raw relay, print ratio")
    parser.add_argument("--no-log", action="store_true",
                        help="run the server without a chat log")
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="drive a server already running there (e.g. under a profiler)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.server is not None:             # e.g. one running under cProfile
        host, _, port = args.server.rpartition(":")
        progress(f"fanout: {args.clients} clients x {args.messages} messages against "
                 f"{args.server}")
        return {"scenario": "fanout", "server": args.server,
                **fanout((host, int(port)), args.clients, args.messages, args.window,
                         raw=False)}
    with tempfile.TemporaryDirectory() as tmp:
        server_args = ["--max-clients", str(args.clients + 10), *no_limits()]
        if not args.no_log:
            server_args += ["--log-file", os.path.join(tmp, "chat.log")]
        progress(f"fanout: {args.clients} clients x {args.messages} messages against chat_sync")
        with ServerProcess("chat_sync.tcp_server", *server_args,
                           "--log-level", "warning") as server:
            figures = {"scenario": "fanout", "logging": not args.no_log,
                       **fanout(server.address, args.clients, args.messages, args.window,
                                raw=False, server_cpu=server.cpu_seconds)}
    if args.baseline == "raw":
        progress("fanout: the same load against the raw relay")
        with ServerProcess("chat_sync.bench", "raw-relay") as relay:
            raw = fanout(relay.address, args.clients, args.messages, args.window, raw=True,
                         server_cpu=relay.cpu_seconds)
        figures["raw_deliveries_per_s"] = raw["deliveries_per_s"]
        figures["raw_latency_ms_p50"] = raw["latency_ms_p50"]
        figures["raw_latency_ms_p99"] = raw["latency_ms_p99"]
        figures["raw_latency_ms_mean"] = raw["latency_ms_mean"]
        figures["raw_losses"] = raw["losses"]
        figures["raw_generator_cpu_share"] = raw["generator_cpu_share"]
        figures["raw_server_cpu_share"] = raw["server_cpu_share"]
        figures["raw_server_cpu_us_per_delivery"] = raw["server_cpu_us_per_delivery"]
        figures["ratio_to_raw"] = round(figures["deliveries_per_s"] / raw["deliveries_per_s"], 3)
        # The same ratio by CPU spent per delivery: it holds even when the load
        # generator, not the server, sets the pace (see generator_cpu_share).
        figures["cpu_ratio_to_raw"] = round(raw["server_cpu_us_per_delivery"]
                                            / max(0.01, figures["server_cpu_us_per_delivery"]), 3)
    return figures

