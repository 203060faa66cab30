"""``chat-sync bench``: the command line, the summary and the JSON line."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .. import protocol as p
from . import connections, fanout, idle, soak, udp
from .baselines import raw_relay

Figures = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Figures]
    notes: tuple[str, ...] = ()


SCENARIOS = {
    "fanout": Scenario("N clients in one room, each sending M messages",
                       fanout.add_arguments, fanout.run),
    "connections": Scenario("many clients held at once",
                            connections.add_arguments, connections.run),
    "udp": Scenario("UDP clients through a lossy relay, exactly once",
                    udp.add_arguments, udp.run, tuple(udp.NOTES)),
    "idle": Scenario("CPU and wake-ups of idle servers and client",
                     idle.add_arguments, idle.run, tuple(idle.NOTES)),
    "soak": Scenario("abuse the TCP server while well-behaved clients check",
                     soak.add_arguments, soak.run, tuple(soak.NOTES)),
}


def summary(figures: Figures) -> Iterator[str]:
    yield f"{figures['scenario']}:"
    for key, value in figures.items():
        if key != "scenario":
            yield f"  {key:<36} {value}"
    for note in SCENARIOS[figures["scenario"]].notes:
        yield f"  ({note})"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chat-sync bench",
                                  description="Benchmarks that verify what they measure.")
    top.add_argument("--json", action="store_true", help="print only the JSON line")
    sub = top.add_subparsers(dest="scenario", required=True)
    for name, scenario in SCENARIOS.items():
        scenario.add_arguments(sub.add_parser(name, help=scenario.help))
    relay = sub.add_parser("raw-relay", help="run the baseline relay")
    relay.add_argument("--host", default=p.DEFAULT_HOST)
    relay.add_argument("--port", type=int, default=0)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.scenario == "raw-relay":
        raw_relay(args.host, args.port)
        return 0
    figures = SCENARIOS[args.scenario].run(args)
    if not args.json:
        print("\n".join(summary(figures)))
    print(json.dumps(figures), flush=True)
    failed = (figures.get("losses", 0) or figures.get("order_errors", 0)
              or figures.get("passed") is False)
    return 1 if failed else 0
