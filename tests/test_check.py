"""``chat-sync check``: its rules pass on chat_sync's server, and each can fail.

Three kinds of server meet the checker here:

- chat_sync's own TCP server, in-process: every rule passes. This is how
  the rules stay in line with the README: a rule that asks for more than the
  server does, or the server doing less than the README says, fails here.
- ``broken_server.BrokenServer``: ChatCore behind another shell, with a
  switch per promise. With none it passes too; each switch makes the rules
  of its promise fail, and no others.
- servers that speak no protocol (echo, close, hang, flood, garbage): the
  checker exits 1 with FAIL lines, no traceback, in bounded time.

The README's "Checking a server" commands are run here as written, with
their ports mapped to servers on port 0.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import pytest

from broken_server import FLAGS, BrokenServer
from chat_sync.check import rules as r
from chat_sync.check.runner import FAIL, PASS, SKIP, Outcome, run, select
from chat_sync.check.wire import Session
from chat_sync.tcp_server import serve
from chat_sync.udp_server import serve as serve_udp

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 1.0                # each rule's deadline in these tests
IDS = [rule.id for rule in r.TCP_RULES]


def check(port: int, timeout: float = TIMEOUT_S) -> list[Outcome]:
    return list(run(r.TCP_RULES, "127.0.0.1", port, timeout, Session))


def failed(outcomes: list[Outcome]) -> set[str]:
    return {o.rule.id for o in outcomes if o.result == FAIL}


def report(outcomes: list[Outcome]) -> str:
    return "\n".join(f"{o.result} {o.rule.id}: {o.detail}" for o in outcomes
                     if o.result != PASS)


def command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chat_sync", "check", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# -- the rules themselves -------------------------------------------------------------
def test_the_table_is_well_formed() -> None:
    assert len(IDS) == len(set(IDS)), "a rule id is used twice"
    for rule in r.TCP_RULES:
        assert rule.stage in r.TCP_STAGES, rule.id
        assert "\n" not in rule.statement and len(rule.statement) <= 72, rule.id
        assert all(need in IDS[:IDS.index(rule.id)] for need in rule.needs), rule.id
    stages = [rule.stage for rule in r.TCP_RULES]
    assert stages == sorted(stages, key=r.TCP_STAGES.index), "rules run stage by stage"
    assert set(stages) == set(r.TCP_STAGES)


def test_every_error_code_the_brief_names_has_a_rule() -> None:
    from chat_sync.check import tcp_error_rules, tcp_rules
    source = Path(tcp_error_rules.__file__).read_text() + Path(tcp_rules.__file__).read_text()
    for code in ("BAD_JSON", "BAD_UTF8", "UNKNOWN_TYPE", "BAD_MESSAGE", "NOT_JOINED",
                 "NAME_TAKEN", "NO_SUCH_USER", "LINE_TOO_LONG"):
        assert f"E.{code}" in source or f"ErrorCode.{code}" in source, code


@pytest.mark.timeout(60)
def test_every_rule_passes_on_chat_sync_server() -> None:
    with serve(port=0, presence_limit=3) as server:     # 100 is past what the checker fills
        outcomes = check(server.port, timeout=5.0)
    assert [o.result for o in outcomes] == [PASS] * len(IDS), report(outcomes)


@pytest.mark.timeout(60)
def test_every_rule_passes_on_the_broken_server_with_no_switch() -> None:
    with BrokenServer() as server:
        outcomes = check(server.port, timeout=5.0)
    assert [o.result for o in outcomes] == [PASS] * len(IDS), report(outcomes)


# Each switch, the rules it must fail, and any it may fail as well (a line
# that TCP happens to split, say). Every other rule must pass.
BROKEN: dict[str, tuple[set[str], set[str]]] = {
    "answer_empty": ({"framing.empty-lines"}, set()),
    "drop_partial": ({"framing.split", "errors.line-too-long", "limits.line"},
                     {"errors.deep-nesting", "limits.text"}),
    "stale_welcome_seq": ({"welcome.seq"}, set()),
    "small_limits": ({"welcome.limits", "limits.text"}, set()),
    "trust_user": ({"broadcast.stamped"}, set()),
    "leak_rooms": ({"broadcast.only-room", "broadcast.id"}, set()),   # an extra copy, no id
    "no_history_flag": ({"history.replay", "history.flag", "history.seq", "limits.history"},
                        set()),
    "ignore_since": ({"history.since", "history.gap", "errors.bad-field"}, set()),
    "seq_per_room": ({"rooms.move", "history.seq"}, {"welcome.seq"}),
    "whisper_to_room": ({"whispers.deliver"}, set()),
    "utf8_replace": ({"errors.bad-utf8"}, set()),
    "unknown_as_bad_message": ({"errors.unknown-type"}, set()),
    "no_line_limit": ({"errors.line-too-long"}, set()),
    "silent_hangup": ({"rooms.hangup"}, set()),
    "tight_burst": ({"limits.burst"}, set()),
    "loud_rooms": ({"rooms.presence"}, set()),
}


def test_every_switch_is_tested() -> None:
    assert set(BROKEN) | {"no_welcome", "close_on_error"} == set(FLAGS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag", sorted(BROKEN))
def test_a_broken_promise_fails_its_rules_and_no_others(flag: str) -> None:
    must, may = BROKEN[flag]
    with BrokenServer(flag) as server:
        outcomes = check(server.port)
    assert must <= failed(outcomes) <= must | may, f"{FLAGS[flag]}:\n{report(outcomes)}"
    assert not any(o.result == SKIP for o in outcomes), report(outcomes)


@pytest.mark.timeout(60)
def test_no_welcome_fails_welcome_first_and_skips_what_needs_it() -> None:
    with BrokenServer("no_welcome") as server:
        outcomes = check(server.port)
    results = {o.rule.id: o for o in outcomes}
    assert failed(outcomes) == {r.WELCOME}, report(outcomes)
    for rule in r.TCP_RULES:
        if r.WELCOME in rule.needs:
            assert results[rule.id].result == SKIP
            assert r.WELCOME in results[rule.id].detail
        elif rule.id != r.WELCOME:
            assert results[rule.id].result == PASS, rule.id


@pytest.mark.timeout(60)
def test_closing_after_an_error_fails_the_rules_that_go_on_after_one() -> None:
    with BrokenServer("close_on_error") as server:
        outcomes = check(server.port)
    assert {"errors.survives", "errors.bad-json", "errors.bad-utf8"} <= failed(outcomes)
    untouched = ("framing", "welcome", "history", "whispers")
    assert not [o for o in outcomes if o.rule.stage in untouched and o.result != PASS]


def test_a_fail_says_what_was_sent_and_what_came_back() -> None:
    with BrokenServer("unknown_as_bad_message") as server:
        (outcome,) = run(select(r.TCP_RULES, r.TCP_STAGES, ids=["errors.unknown-type"]),
                         "127.0.0.1", server.port, TIMEOUT_S, Session)
    assert outcome.result == FAIL
    expected, sent, got = outcome.detail.splitlines()
    assert expected.startswith("expected a unknown_type error with id")
    assert sent.startswith("sent b'{\"type\":\"shout\"")
    assert got.startswith('got {"type":"error","code":"bad_message"')


# -- servers that are not chat servers ------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["echo", "close", "hang", "flood", "garbage", "hostile"])
def test_a_server_that_is_no_chat_server_fails_cleanly(mode: str) -> None:
    with BrokenServer(mode=mode) as server:
        result = command(f"127.0.0.1:{server.port}", "--timeout", "0.5", timeout=80)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("FAIL ")], result.stdout
    assert all(re.match(r"(PASS|FAIL|SKIP) |     |\d+ rules: ", line) for line in lines)
    assert "Traceback" not in result.stdout + result.stderr
    assert "checker itself" not in result.stdout


# -- the command ----------------------------------------------------------------------
def free_port() -> int:
    """A port nothing listens on (it was free a moment ago, and nothing here takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.timeout(30)
def test_an_unreachable_server_is_exit_2_in_one_line() -> None:
    result = command(f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "cannot connect" in result.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args, message", [
    (["nonsense"], "is not HOST:PORT"),
    (["127.0.0.1:99999"], "is not HOST:PORT"),
    (["--stage", "room"], "did you mean 'rooms'"),
    (["--rule", "framing.splitt"], "did you mean 'framing.split'"),
    (["--timeout", "0", "127.0.0.1:7420"], "--timeout"),
    (["--config", "no/such/file.yaml"], "no/such/file.yaml"),
    (["--port", "0"], "is not a port"),
    (["127.0.0.1:7420", "--port", "7421"], "not both"),
])
def test_wrong_arguments_are_exit_2_in_one_line(args: list[str], message: str) -> None:
    result = command(*args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.timeout(30)
def test_list_stage_and_rule_choose_rules() -> None:
    listed = command("--list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == IDS
    upto_rooms = [rule.id for rule in select(r.TCP_RULES, r.TCP_STAGES, "rooms")]
    assert upto_rooms[0] == "framing.split" and upto_rooms[-1].startswith("rooms.")
    assert not [i for i in upto_rooms if i.split(".")[0] in ("history", "errors")]
    assert [rule.id for rule in select(r.TCP_RULES, r.TCP_STAGES, "rooms",
                                       ["rooms.who", "errors.nan"])] == ["rooms.who"]


@pytest.mark.timeout(30)
def test_json_lines_for_graders() -> None:
    with serve(port=0) as server:
        result = command(f"127.0.0.1:{server.port}", "--stage", "welcome", "--json")
    assert result.returncode == 0, result.stdout
    *rows, last = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["rule"] for row in rows] == IDS[:len(rows)]
    assert {row["result"] for row in rows} == {PASS}
    assert set(rows[0]) == {"rule", "stage", "result", "statement", "detail", "seconds"}
    assert last["summary"] == {"passed": len(rows), "failed": 0, "skipped": 0}


@pytest.mark.timeout(30)
def test_config_names_the_server(tmp_path: Path) -> None:
    with serve(port=0) as server:
        config = tmp_path / "server.yaml"
        config.write_text(f"host: 0.0.0.0\nport: {server.port}\n")
        result = command("--config", str(config), "--rule", "welcome.first")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS welcome.first")


# -- the README's section, run as written ---------------------------------------------
README = ROOT / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Checking a server\n", 1)[1].split("\n## ", 1)[0]
    return BLOCK.findall(section)


@pytest.fixture
def readme_servers() -> Iterator[dict[str, int]]:
    """Each ``chat-sync tcp-server --port N ... &`` (or ``udp-server``) of the section,
    running on port 0."""
    ports: dict[str, int] = {}
    with ExitStack() as stack:
        for kind, body in readme_blocks():
            for line in body.splitlines() if kind == "sh" else []:
                match = re.fullmatch(r"chat-sync (tcp|udp)-server --port (\d+)(.*) &", line)
                if match:
                    flags = match.group(3).split()
                    settings = {flag[2:].replace("-", "_"): int(value)
                                for flag, value in zip(flags[::2], flags[1::2])}
                    start = serve if match.group(1) == "tcp" else serve_udp
                    ports[match.group(2)] = stack.enter_context(start(port=0, **settings)).port
        yield ports


def run_readme_commands(ports: dict[str, int], udp: bool) -> int:
    """Run the section's ``chat-sync check`` lines (those with ``--udp``, or those
    without), each against its server; returns how many ran."""
    blocks = readme_blocks()
    checked = 0
    for index, (kind, body) in enumerate(blocks):
        if kind != "sh":
            continue
        shown = blocks[index + 1][1] if index + 1 < len(blocks) and blocks[
            index + 1][0] == "text" else None
        lines = [line for line in body.splitlines()
                 if line.startswith("chat-sync check") and ("--udp" in line.split()) == udp]
        for line in lines:
            words = line.split()[2:]
            words = [re.sub(r"^127\.0\.0\.1:(\d+)$",
                            lambda m: f"127.0.0.1:{ports[m.group(1)]}", w)
                     for w in words]
            result = command(*words)
            checked += 1
            assert result.returncode == (1 if shown and "FAIL " in shown else 0), (
                line + "\n" + result.stdout + result.stderr)
            if "--json" in words:
                assert all(json.loads(row) for row in result.stdout.splitlines())
        if lines and shown is not None:
            assert result.stdout == shown, f"{body}printed:\n{result.stdout}"
    return checked


@pytest.mark.timeout(60)
def test_the_readme_section_runs_as_written(readme_servers: dict[str, int]) -> None:
    assert run_readme_commands(readme_servers, udp=False) >= 4
    section = README.read_text(encoding="utf-8").split("\n## Checking a server\n", 1)[1]
    assert f"All {len(IDS)} rules" in section.split("\n## ", 1)[0]


@pytest.mark.timeout(60)
def test_the_readme_udp_commands_run_as_written(readme_servers: dict[str, int]) -> None:
    assert run_readme_commands(readme_servers, udp=True) >= 2
