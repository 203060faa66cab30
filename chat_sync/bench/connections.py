"""``connections``: many clients held at once, joined to rooms; RSS and one message to a room.

``--baseline raw`` adds the floor: the relay that copies bytes sends every
line to every client, so it gets one room's worth of clients (``--room-size``)
and its one figure is the server CPU for one message to that many sockets.
It joins nothing, so its connect-and-join time and RSS are not compared.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from . import designs
from .load import LoadClient, LoadGenerator, join_all, ping_all, sync_raw
from .measure import (Pinning, ServerProcess, add_run_arguments, progress, raise_file_limit,
                      ratio, spread)

SPARE_FILES = 64        # open files a process needs beside its clients' sockets
TIMED_MESSAGES = 20     # messages to room0, one at a time, for the server's CPU per message


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=10_000, help="connections held at once")
    parser.add_argument("--room-size", type=int, default=1000, help="members of each room")
    chats = [d for d in designs.DESIGNS if d != "raw"]       # raw has no rooms
    parser.add_argument("--design", choices=chats, default="chat_sync",
                        help="the server to measure")
    parser.add_argument("--baseline", nargs="*", choices=designs.DESIGNS, default=[],
                        help="designs measured in the same rounds, for ratios (raw: the "
                             "floor for one message to --room-size sockets)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds, each running --design then every baseline")
    add_run_arguments(parser, log=False)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds each phase (connect, join, the message) may take")


# Figures compared across designs, round by round, in --rounds runs.
COMPARED = ("connect_and_join_s", "kib_per_client", "server_cpu_ms_per_message_to_room")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``--design``; with ``--baseline`` or ``--rounds`` over 1, rounds of
    each design in turn (A B A B ...), with the median and range of each figure and
    of its ratio to the baseline's within a round.

    Raises FileLimit when the open-file limit cannot be raised far enough.
    """
    file_limit = raise_file_limit(args.clients + SPARE_FILES)
    pinning = Pinning.choose(not args.no_pin)
    order = [args.design, *(b for b in args.baseline if b != args.design)]
    with pinning:
        if len(order) == 1 and args.rounds == 1:
            return {**one_run(args, args.design, pinning), "open_file_limit": file_limit}
        runs: dict[str, list[dict[str, Any]]] = {design: [] for design in order}
        for _ in range(args.rounds):
            for design in order:
                runs[design].append(one_run(args, design, pinning))
    first = runs[args.design][0]
    figures: dict[str, Any] = {
        "scenario": "connections", "design": args.design, "pinning": pinning.describe(),
        "open_file_limit": file_limit, "clients": args.clients, "rooms": first["rooms"],
        "room_size": first["room_size"], "rounds": args.rounds}
    for design, rounds in runs.items():
        prefix = "" if design == args.design else f"{design}_"
        for key in COMPARED:
            values = [r[key] for r in rounds if r[key] is not None]     # raw: one figure
            if values:
                figures[prefix + key] = spread(values, 2)
    for baseline in order[1:]:
        for key in COMPARED:
            ratios = [x for a, b in zip(runs[args.design], runs[baseline])
                      if (x := ratio(a[key], b[key])) is not None]
            if ratios:
                figures[f"{key}_to_{baseline}"] = spread(ratios)
    return figures


def one_run(args: argparse.Namespace, design: str, pinning: Pinning) -> dict[str, Any]:
    """Connect and join ``args.clients`` to a fresh server of ``design``, then the message."""
    if design == "raw":
        return raw_floor(args, pinning)
    rooms = max(1, args.clients // args.room_size)
    progress(f"connections: {args.clients} clients in {rooms} rooms of {args.room_size} "
             f"({design}); {pinning.describe()}")
    with designs.start(design, args.clients + 10, pinning) as server:
        rss_before = server.rss_kib()
        load = LoadGenerator()
        try:
            started = time.monotonic()
            load.connect(server.address, args.clients)
            connected_s = time.monotonic() - started
            ping_all(load, args.timeout)            # so the server has accepted them all
            rss_connected = server.rss_kib()
            started = time.monotonic()
            join_all(load, lambda c: f"room{c.index % rooms}", args.timeout)
            joined_s = connected_s + time.monotonic() - started
            rss_after = server.rss_kib()
            progress(f"all joined in {joined_s:.1f} s; one message to room0")
            members = [c for c in load.clients if c.index % rooms == 0]
            sent_at = time.monotonic()
            cpu_at = time.process_time()
            reach_all(load, members, "marker", args.timeout)
            reach_ms = (time.monotonic() - sent_at) * 1000
            reader_ms = (time.process_time() - cpu_at) * 1000
            server_ms = server_ms_per_message(load, server, members, args.timeout)
        finally:
            load.close()
    return {
        "scenario": "connections", "design": design, "pinning": pinning.describe(),
        "clients": args.clients, "rooms": rooms, "room_size": len(members),
        "connect_and_join_s": round(joined_s, 2),
        "rss_kib_before": rss_before, "rss_kib_connected": rss_connected,
        "rss_kib_after": rss_after,
        "kib_per_client": round((rss_after - rss_before) / args.clients, 2),
        # Connected, not joined yet: the connection itself, without what the
        # joins (names, rooms, each joiner's history replay) added.
        "kib_per_client_connected": round((rss_connected - rss_before) / args.clients, 2),
        "one_message_to_room_ms": round(reach_ms, 2),
        # Part of that is this process reading the 1,000 sockets, one at a time.
        "generator_cpu_ms": round(reader_ms, 2),
        # The server's own: from reading the line to the last member's copy handed
        # to the kernel, as CPU time of an otherwise idle server (median of 20).
        "server_cpu_ms_per_message_to_room": server_ms,
    }


def raw_floor(args: argparse.Namespace, pinning: Pinning) -> dict[str, Any]:
    """The relay's CPU for one message to ``args.room_size`` clients, all it holds."""
    progress(f"connections: {args.room_size} clients (raw, every line to all); "
             f"{pinning.describe()}")
    with designs.start("raw", args.room_size, pinning) as server:
        load = LoadGenerator()
        try:
            load.connect(server.address, args.room_size)
            sync_raw(load, args.timeout)
            reach_all(load, load.clients, "marker", args.timeout)
            server_ms = server_ms_per_message(load, server, load.clients, args.timeout)
        finally:
            load.close()
    return {"scenario": "connections", "design": "raw", "room_size": args.room_size,
            "connect_and_join_s": None, "kib_per_client": None,
            "server_cpu_ms_per_message_to_room": server_ms}


def reach_all(load: LoadGenerator, members: list[LoadClient], text: str,
              timeout: float) -> None:
    """Send one message (``text`` and the time, to tell it apart) from the first of
    ``members`` and return once every one of them has it."""
    marker = f"{text} {time.monotonic()}"
    got: set[int] = set()

    def on_line(client: LoadClient, line: bytes) -> None:
        if marker.encode() in line:
            got.add(client.index)

    load.send(members[0], {"type": "message", "text": marker})
    load.run_until(lambda: len(got) == len(members), on_line, timeout)


def server_ms_per_message(load: LoadGenerator, server: ServerProcess, members: list[LoadClient],
                          timeout: float) -> float:
    """The server's CPU time for one message to ``members``: the median over
    ``TIMED_MESSAGES``, each sent once the one before has reached every member."""
    times: list[float] = []
    for k in range(TIMED_MESSAGES):
        before = server.cpu_seconds()
        reach_all(load, members, f"timed {k}", timeout)
        times.append(server.cpu_seconds() - before)
    return round(statistics.median(times) * 1000, 2)
