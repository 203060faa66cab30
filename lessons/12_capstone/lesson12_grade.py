"""Lesson 12: grade many capstone servers with ``chat-sync check --json``, one line each.

    python lessons/12_capstone/lesson12_grade.py results/*.jsonl
    python lessons/12_capstone/lesson12_grade.py --server alice 127.0.0.1:7501 --server bob 7502

A FILE is what ``chat-sync check HOST:PORT --json`` printed, saved; the
student's name is the file's name without ``.jsonl``. ``--server NAME
ADDRESS`` checks a running server now: ADDRESS is ``HOST:PORT``, or a port
on 127.0.0.1. Each stage's points are shared out among its rules, and a
rule scores only if it passed: a server that passes 4 of the 5 framing
rules gets 8 of framing's 10 points. A server that cannot be reached
scores 0. The table goes to stdout; ``--csv`` prints it as CSV instead, for
a spreadsheet. The review points of the rubric (README) are the teacher's
to add.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# The automated part of the rubric: points per stage, 70 in all.
POINTS = {"framing": 10, "welcome": 5, "broadcast": 10, "rooms": 10, "history": 10,
          "whispers": 5, "errors": 10, "limits": 10}


def check(address: str, timeout: float) -> tuple[list[dict[str, Any]], str]:
    """Run chat-sync check on a server; its per-rule results, or why there are none."""
    result = subprocess.run([sys.executable, "-m", "chat_sync.check", address, "--json",
                             "--timeout", str(timeout)], capture_output=True, text=True,
                            timeout=600)
    return parse(result.stdout), result.stderr.strip().removeprefix("chat-sync check: ")


def parse(text: str) -> list[dict[str, Any]]:
    """The rule lines of ``--json`` output (the summary line has no ``rule``)."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if "rule" in line]


def score(results: list[dict[str, Any]]) -> dict[str, float]:
    """Points per stage: the stage's points times the share of its rules that passed."""
    points = {}
    for stage, worth in POINTS.items():
        rules = [r for r in results if r["stage"] == stage]
        passed = sum(1 for r in rules if r["result"] == "PASS")
        points[stage] = round(worth * passed / len(rules), 1) if rules else 0.0
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade capstone servers with chat-sync check.")
    parser.add_argument("files", nargs="*", metavar="FILE", help="saved --json runs")
    parser.add_argument("--server", nargs=2, action="append", default=[],
                        metavar=("NAME", "ADDRESS"), help="check a running server now")
    parser.add_argument("--timeout", type=float, default=3.0, help="each rule's deadline")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    args = parser.parse_args(argv)
    if not args.files and not args.server:
        parser.error("name at least one FILE or --server NAME ADDRESS")
    header = ["server", *POINTS, "total", "note"]
    rows = []
    runs: list[tuple[str, list[dict[str, Any]], str]] = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            parser.error(f"{name}: no such file")
        runs.append((path.stem, parse(path.read_text(encoding="utf-8")), ""))
    for name, address in args.server:
        runs.append((name, *check(address if ":" in address else f"127.0.0.1:{address}",
                                  args.timeout)))
    for name, results, note in runs:
        points = score(results)
        failed = sum(1 for r in results if r["result"] != "PASS")
        if results:
            note = f"{failed} of {len(results)} rules not passed" if failed else "all passed"
        rows.append([name, *(f"{points[s]:g}" for s in POINTS),
                     f"{sum(points.values()):g}/{sum(POINTS.values())}", note])
    if args.csv:
        csv.writer(sys.stdout).writerows([header, *rows])
        return 0
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
