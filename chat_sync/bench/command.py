"""``chat-sync bench``: the command line, the summary and the JSON line."""
from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator

from .. import protocol as p
from . import cluster, connections, curves, fanout, idle, latency, soak, udp
from .baselines import SERVERS, asyncio_chat, raw_relay
from .load import ServerAbsent
from .measure import FileLimit

Figures = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Figures]
    notes: tuple[str, ...] = ()


def _scenario(module: ModuleType) -> Scenario:
    """A scenario module's: its summary is the first line of its docstring
    (after "``name``: "), and it has ``add_arguments``, ``run`` and maybe ``NOTES``."""
    summary = (module.__doc__ or "").splitlines()[0].split(": ", 1)[-1].rstrip(".")
    return Scenario(summary, module.add_arguments, module.run,
                    tuple(getattr(module, "NOTES", ())))


SCENARIOS = {module.__name__.rsplit(".", 1)[1]: _scenario(module)
             for module in (fanout, latency, curves, connections, cluster, udp, idle, soak)}


def shown(value: Any) -> str:
    """A figure for people: a median and range of rounds as ``median (min-max)``."""
    if isinstance(value, dict) and set(value) == {"median", "min", "max"}:
        return f"{value['median']} ({value['min']}-{value['max']})"
    return str(value)


def summary(figures: Figures) -> Iterator[str]:
    yield f"{figures['scenario']}:"
    for key, value in figures.items():
        if key == "scenario":
            continue
        if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
            yield f"  {key}:"                   # curves: design -> points
            for design, points in value.items():
                for point in points:
                    yield f"    {design:<10} " + "  ".join(f"{k} {v}" for k, v in point.items())
            continue
        yield f"  {key:<36} {shown(value)}"
    for note in SCENARIOS[figures["scenario"]].notes:
        yield f"  ({note})"


class Defaults(argparse.HelpFormatter):
    """``--help`` shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chat-sync bench",
                                  description="Benchmarks that verify what they measure.")
    top.add_argument("--json", action="store_true", help="print only the JSON line")
    # --json after the scenario too; SUPPRESS keeps the subparser from resetting it.
    json_after = argparse.ArgumentParser(add_help=False)
    json_after.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="print only the JSON line")
    sub = top.add_subparsers(dest="scenario", required=True)
    for name, scenario in SCENARIOS.items():
        scenario.add_arguments(sub.add_parser(name, help=scenario.help, parents=[json_after],
                                              formatter_class=Defaults,
                                              description=scenario.help + "."))
    for command, design in ((c, d) for d, c in SERVERS.items()):
        serve = sub.add_parser(command, help=f"serve the {design} baseline",
                               formatter_class=Defaults)
        serve.add_argument("--host", default=p.DEFAULT_HOST, help="address to bind")
        serve.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.scenario in (SERVERS["raw"], SERVERS["asyncio"]):
        gc.freeze()             # as a server program does (serving.run_in_foreground)
        (raw_relay if args.scenario == SERVERS["raw"] else asyncio_chat)(args.host, args.port)
        return 0
    # The generator is the instrument: as timeit does, no cyclic collection while
    # it measures, or one of 10 ms (all it holds, walked) is timed as the server's
    # latency. The run is bounded, and the collector is back on after it.
    enabled = gc.isenabled()
    gc.disable()
    try:
        figures = SCENARIOS[args.scenario].run(args)
    except (ServerAbsent, FileLimit) as exc:
        print(f"chat-sync bench {args.scenario}: {exc}", file=sys.stderr)
        return 2
    finally:
        if enabled:
            gc.enable()
    if not args.json:
        print("\n".join(summary(figures)))
    print(json.dumps(figures), flush=True)
    failed = (figures.get("losses", 0) or figures.get("order_errors", 0)
              or figures.get("passed") is False)
    return 1 if failed else 0
