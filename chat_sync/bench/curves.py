"""``curves``: what a delivery and a client cost as rooms and connections grow.

Two curves per design (chat_sync and the baselines, each pinned alike):

- against room size (2, 10, 100, 1,000 members): the server's CPU time per
  delivery and deliveries per second, from a closed-loop fanout in one room
  where up to ``--senders`` members send, about ``--deliveries`` in all;
- against clients connected (1k, 5k, 10k, 20k where the open-file limit
  allows): server RSS per client, connected and then joined in rooms of
  ``--join-room-size`` (the raw relay has no rooms: connected only).

``--plot FILE`` draws them with matplotlib, which is imported only here: it
is in the test extra, not a dependency of the package.
"""
from __future__ import annotations

import argparse
import resource
from typing import Any

from . import designs
from .connections import SPARE_FILES
from .fanout import one_run
from .load import LoadGenerator, join_all, ping_all, sync_raw
from .measure import Pinning, add_run_arguments, progress, raise_file_limit

Figures = dict[str, Any]
NOTES = ["kib_per_client: (server RSS with the clients - RSS before) / clients;",
         "cpu_us: the server's own CPU time per delivery."]


def room_point(design: str, size: int, senders: int, deliveries: int, pinning: Pinning,
               log: bool) -> Figures:
    senders = min(senders, size)
    messages = max(1, deliveries // (senders * size))
    progress(f"curves: {design}, a room of {size}, {senders} senders x {messages} messages")
    run = one_run(design, size, senders, messages, 8, pinning, log)
    return {"room_size": size, "cpu_us": run["server_cpu_us_per_delivery"],
            "deliveries_per_s": run["deliveries_per_s"], "losses": run["losses"],
            "order_errors": run["order_errors"]}


def memory_point(design: str, clients: int, room_size: int, pinning: Pinning) -> Figures:
    progress(f"curves: {design}, {clients} clients connected")
    with designs.start(design, clients + 10, pinning) as server:
        before = server.rss_kib()
        load = LoadGenerator()
        try:
            load.connect(server.address, clients)
            if design == "raw":
                sync_raw(load, 300.0)
            else:
                ping_all(load, 300.0)           # every one accepted and answered
            point: Figures = {
                "clients": clients,
                "kib_per_client_connected": round((server.rss_kib() - before) / clients, 2)}
            if design != "raw":
                rooms = max(1, clients // room_size)
                join_all(load, lambda c: f"room{c.index % rooms}", 300.0)
                point["kib_per_client_joined"] = round((server.rss_kib() - before) / clients, 2)
        finally:
            load.close()
    return point


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--room-sizes", type=int, nargs="+", default=[2, 10, 100, 1000],
                        help="members of the one room, one point each")
    parser.add_argument("--senders", type=int, default=10, help="members that send, at most")
    parser.add_argument("--deliveries", type=int, default=200_000,
                        help="deliveries per room-size point, about")
    parser.add_argument("--clients-steps", type=int, nargs="+",
                        default=[1000, 5000, 10_000, 20_000],
                        help="clients connected, one memory point each")
    parser.add_argument("--join-room-size", type=int, default=100,
                        help="room size the memory points join")
    parser.add_argument("--designs", nargs="+", choices=designs.DESIGNS,
                        default=list(designs.DESIGNS), help="servers to measure")
    parser.add_argument("--plot", metavar="FILE", help="draw the curves into this image")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> Figures:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    allowed = [n for n in args.clients_steps
               if hard == resource.RLIM_INFINITY or n + SPARE_FILES <= hard]
    skipped = sorted(set(args.clients_steps) - set(allowed))
    if allowed:
        raise_file_limit(max(allowed) + SPARE_FILES)
    pinning = Pinning.choose(not args.no_pin)
    progress(f"curves: {' '.join(args.designs)}; {pinning.describe()}")
    rooms: dict[str, list[Figures]] = {}
    memory: dict[str, list[Figures]] = {}
    with pinning:
        for design in args.designs:
            rooms[design] = [room_point(design, size, args.senders, args.deliveries, pinning,
                                        not args.no_log) for size in args.room_sizes]
        for design in args.designs:
            memory[design] = [memory_point(design, n, args.join_room_size, pinning)
                              for n in allowed]
    figures: Figures = {
        "scenario": "curves", "pinning": pinning.describe(),
        "logging": not args.no_log, "join_room_size": args.join_room_size,
        "losses": sum(p["losses"] for points in rooms.values() for p in points),
        "order_errors": sum(p["order_errors"] for points in rooms.values() for p in points),
        "rooms": rooms, "memory": memory,
        "clients_skipped": (f"{skipped}: over the open-file limit {hard}" if skipped else []),
    }
    if args.plot:
        plot(figures, args.plot)
        figures["plot"] = args.plot
    return figures


def plot(figures: Figures, path: str) -> None:
    """Three panels: CPU per delivery and deliveries/s by room size, RSS per client by clients."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cpu, rate, rss) = plt.subplots(1, 3, figsize=(15, 4.5))
    colour = {design: f"C{i}" for i, design in enumerate(designs.DESIGNS)}
    for design, points in figures["rooms"].items():
        sizes = [p["room_size"] for p in points]
        cpu.plot(sizes, [p["cpu_us"] for p in points], marker="o", label=design,
                 color=colour[design])
        rate.plot(sizes, [p["deliveries_per_s"] for p in points], marker="o", label=design,
                  color=colour[design])
    for design, points in figures["memory"].items():
        clients = [p["clients"] for p in points]
        rss.plot(clients, [p["kib_per_client_connected"] for p in points], marker="o",
                 label=f"{design}, connected", color=colour[design])
        if points and "kib_per_client_joined" in points[0]:
            rss.plot(clients, [p["kib_per_client_joined"] for p in points], marker="s",
                     linestyle="--", label=f"{design}, joined", color=colour[design])
    cpu.set(xscale="log", yscale="log", xlabel="room size (members)",
            ylabel="server CPU per delivery (µs)", title="CPU per delivery")
    rate.set(xscale="log", xlabel="room size (members)", ylabel="deliveries per second",
             title="throughput")
    top = max((p[name] for points in figures["memory"].values() for p in points
               for name in ("kib_per_client_connected", "kib_per_client_joined") if name in p),
              default=1.0)
    rss.set(ylim=(0, top * 1.6), xlabel="clients connected",      # room above for the legend
            ylabel="server RSS per client (KiB)",
            title=f"memory (joined: rooms of {figures['join_room_size']})")
    for axes in (cpu, rate):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    rss.grid(True, alpha=0.3)
    rss.legend(fontsize=8, loc="upper left", ncol=2)
    fig.suptitle(f"chat-sync bench curves ({figures['pinning']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
