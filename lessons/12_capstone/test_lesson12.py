"""Lesson 12, the capstone: the student's server, checked stage by stage by ``chat-sync check``.

The server under test is ``lesson12_solution.py`` (chat_sync's own) or the
student's ``lesson12_exercise.py``, started as a program with ``--port 0``.
``chat-sync check`` runs once against it, with ``--json``; each test then
holds one stage to it, so a student sees which stages pass and, for each
rule that does not, what was sent and what came back.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import lesson_snippets
from lesson_target import load

target = load(__file__)

STAGES = ("framing", "welcome", "broadcast", "rooms", "history", "whispers", "errors",
          "limits")
START_TIMEOUT_S = 20.0
CHECK_TIMEOUT_S = 120.0
READY = re.compile(r"^listening on (\S+):(\d+)$")


@dataclass
class Checked:
    """What became of the server and the check: the results, or why there are none."""

    results: list[dict[str, Any]]
    status: int | None          # the check's exit status
    problem: str                # why the server could not be checked, or ""
    stopped: str = ""           # how the server took SIGTERM: "" if it exited 0


def start_and_check() -> tuple[Checked, subprocess.Popen[str] | None]:
    # presence_limit 3: the checker fills a room past it (at 100 it could not)
    argv = [sys.executable, str(Path(target.__file__)), "--port", "0", "--presence-limit", "3"]
    env = lesson_snippets.environment()
    try:
        process = subprocess.Popen(argv, cwd=lesson_snippets.ROOT, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        return Checked([], None, f"cannot start {argv}: {exc}"), None
    assert process.stdout is not None
    stdout = lesson_snippets.Lines(process.stdout)
    try:
        first = stdout.readline(timeout=START_TIMEOUT_S) or ""
    except AssertionError as exc:
        return Checked([], None, f"the server said nothing within {START_TIMEOUT_S:g} s "
                                 f"({exc})"), process
    ready = READY.match(first.strip())
    if ready is None:
        return Checked([], None, "the server did not print 'listening on HOST:PORT' first; "
                                 f"it printed {first!r}"), process
    check = subprocess.run([sys.executable, "-m", "chat_sync.check",
                            f"127.0.0.1:{ready.group(2)}", "--json"],
                           cwd=lesson_snippets.ROOT, env=env, capture_output=True, text=True,
                           timeout=CHECK_TIMEOUT_S)
    lines = [json.loads(line) for line in check.stdout.splitlines() if line.startswith("{")]
    results = [line for line in lines if "rule" in line]
    if not results:
        return Checked([], check.returncode, f"chat-sync check exited {check.returncode}: "
                                             f"{check.stderr.strip()}"), process
    return Checked(results, check.returncode, ""), process


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM the server; "" if it exits 0 in time, else what it did."""
    if process.poll() is not None:
        why = f"the server had already exited with status {process.returncode}"
    else:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=START_TIMEOUT_S)
            why = "" if status == 0 else f"the server exited {status} on SIGTERM"
        except subprocess.TimeoutExpired:
            why = f"the server was still running {START_TIMEOUT_S:g} s after SIGTERM"
    if process.poll() is None:
        process.kill()
        process.wait()
    stderr = process.stderr.read() if process.stderr is not None else ""
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return why + (f"; its stderr ends:\n{stderr[-1500:]}" if why and stderr else "")


@pytest.fixture(scope="module")
def checked() -> Iterator[Checked]:
    """Start the server, check it once, stop it. Never raises: a test reports what failed."""
    outcome, process = start_and_check()
    if process is not None:
        outcome.stopped = stop(process)
    yield outcome


def why_not(outcome: Checked) -> str:
    stderr = f"\n{outcome.stopped}" if outcome.stopped else ""
    return f"your server could not be checked: {outcome.problem}{stderr}"


def described(result: dict[str, Any]) -> str:
    detail = "\n    ".join(str(result.get("detail", "")).splitlines())
    return f"{result['result']} {result['rule']}: {result['statement']}\n    {detail}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_passes(checked: Checked, stage: str) -> None:
    if checked.problem:
        pytest.fail(why_not(checked))
    rules = [result for result in checked.results if result["stage"] == stage]
    assert rules, f"chat-sync check ran no rule of stage {stage}"
    wrong = [result for result in rules if result["result"] != "PASS"]
    assert not wrong, (f"stage {stage}: {len(wrong)} of {len(rules)} rules did not pass "
                       "(SKIP: a rule it needs failed first):\n"
                       + "\n".join(described(result) for result in wrong))


@pytest.mark.timeout(180)
def test_the_whole_check_passes_and_the_server_stops_on_sigterm(checked: Checked) -> None:
    if checked.problem:
        pytest.fail(why_not(checked))
    assert checked.status == 0, f"chat-sync check exited {checked.status}"
    assert not checked.stopped, checked.stopped
