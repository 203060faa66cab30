"""Run rules against a server and report: a line per rule for people, JSON lines for graders.

Each rule runs in a fresh ``Session`` with its own deadline (``--timeout``),
one after another. A rule ends in one of three ways: it returns (PASS),
raises ``Failed`` (FAIL, with what was sent and what came back), or is not
run because a rule it needs did not pass (SKIP, with which), or finds the
server's settings beyond what it can check, raising ``NotChecked`` (SKIP,
with how to run the server so that it can). Any other
exception is the checker's own bug: it is reported as a FAIL that says so,
and the run goes on.

Exit status: 0 when no rule failed, 1 when one did, 2 when the server
cannot be reached or the arguments are wrong. Over UDP there is no
connection to open: a server that sends nothing back to a ping within the
deadline (or whose port answers with an ICMP "port unreachable") cannot be
reached, since no rule could tell it from a machine that is not there. One
that answers anything at all is checked, and garbage fails the rules.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import io
import json
import socket
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence

from .. import config as cfg
from .. import protocol as p
from . import udp_wire
from .rules import S, TCP_RULES, TCP_STAGES, UDP_RULES, UDP_STAGES, Rule
from .udp_wire import UdpSession
from .wire import Failed, NotChecked, Session, shorten

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
DEFAULT_TIMEOUT_S = 3.0
INDENT = " " * 5                 # detail lines sit under the rule's id
DETAIL_CHARS = 150               # ... and are cut to this


@dataclass(frozen=True)
class Outcome:
    rule: Rule[Any]
    result: str                  # PASS, FAIL or SKIP
    detail: str = ""             # for FAIL and SKIP: why, in a few short lines
    seconds: float = 0.0


class UsageError(Exception):
    """The arguments are wrong; ``str()`` is the one-line message."""


@dataclass(frozen=True)
class Transport(Generic[S]):
    """What differs between checking a TCP and a UDP server."""

    name: str
    rules: tuple[Rule[S], ...]
    stages: tuple[str, ...]
    session: Callable[[str, int, float], S]          # a rule's fresh session
    unreachable: Callable[[str, int, float], str | None]
    port: int                                        # the default
    config: type[cfg.TcpServerConfig] | type[cfg.UdpServerConfig]


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why the TCP server cannot be reached, or None if a connection opens."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


TCP = Transport("tcp", TCP_RULES, TCP_STAGES, Session, unreachable, p.DEFAULT_TCP_PORT,
                cfg.TcpServerConfig)
UDP = Transport("udp", UDP_RULES, UDP_STAGES, UdpSession, udp_wire.unreachable,
                p.DEFAULT_UDP_PORT, cfg.UdpServerConfig)


# -- choosing and running -------------------------------------------------------------
def select(rules: Sequence[Rule[S]], stages: Sequence[str], stage: str | None = None,
           ids: Sequence[str] = ()) -> list[Rule[S]]:
    """The rules of ``stage`` and the stages before it, or those named in ``ids``.

    Raises UsageError for an unknown stage or id, with a did-you-mean.
    """
    known = {rule.id: rule for rule in rules}
    for rule_id in ids:
        if rule_id not in known:
            raise UsageError(f"no rule {rule_id!r}{_did_you_mean(rule_id, list(known))}")
    if stage is not None and stage not in stages:
        raise UsageError(f"no stage {stage!r}{_did_you_mean(stage, list(stages))}; "
                         f"the stages are {', '.join(stages)}")
    chosen = list(rules)
    if stage is not None:
        upto = stages[:stages.index(stage) + 1]
        chosen = [rule for rule in chosen if rule.stage in upto]
    if ids:
        chosen = [rule for rule in chosen if rule.id in ids]
    return chosen


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def run_rule(rule: Rule[S], host: str, port: int, timeout: float,
             session_type: Callable[[str, int, float], S]) -> Outcome:
    """Run one rule in a fresh session; never raises."""
    start = time.monotonic()
    session = session_type(host, port, timeout)
    try:
        rule.check(session)
        result, detail = PASS, ""
    except Failed as exc:
        result, detail = FAIL, str(exc)
    except NotChecked as exc:
        result, detail = SKIP, str(exc)
    except Exception as exc:     # the checker's bug, not the server's: say so, go on
        result, detail = FAIL, f"the checker itself failed ({type(exc).__name__}: {exc})"
    finally:
        session.close()
    return Outcome(rule, result, detail, time.monotonic() - start)


def run(rules: Iterable[Rule[S]], host: str, port: int, timeout: float,
        session_type: Callable[[str, int, float], S]) -> Iterator[Outcome]:
    """Run ``rules`` in order, each in a fresh ``session_type`` (``Session`` or
    ``UdpSession``), skipping each whose ``needs`` did not pass in this run."""
    results: dict[str, str] = {}
    for rule in rules:
        unmet = [need for need in rule.needs if results.get(need) in (FAIL, SKIP)]
        if unmet:
            outcome = Outcome(rule, SKIP, f"needs {unmet[0]}, which did not pass")
        else:
            outcome = run_rule(rule, host, port, timeout, session_type)
        results[rule.id] = outcome.result
        yield outcome


# -- reporting ------------------------------------------------------------------------
def report_lines(outcome: Outcome, width: int) -> list[str]:
    """``PASS id statement``, and under a FAIL or SKIP its detail, indented."""
    lines = [f"{outcome.result} {outcome.rule.id:<{width}} {outcome.rule.statement}"]
    lines += [INDENT + shorten(line, DETAIL_CHARS) for line in outcome.detail.splitlines()]
    return lines


def report_json(outcome: Outcome) -> str:
    return json.dumps({"rule": outcome.rule.id, "stage": outcome.rule.stage,
                       "result": outcome.result, "statement": outcome.rule.statement,
                       "detail": outcome.detail, "seconds": round(outcome.seconds, 3)},
                      ensure_ascii=False)


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    return {name: sum(1 for o in outcomes if o.result == result)
            for name, result in (("passed", PASS), ("failed", FAIL), ("skipped", SKIP))}


# -- the command ----------------------------------------------------------------------
def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) into its parts; UsageError if malformed."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:{p.DEFAULT_TCP_PORT})")
    return host, int(port)


def server_config(path: str,
                  transport: Transport[Any]) -> cfg.TcpServerConfig | cfg.UdpServerConfig:
    """The settings of the server that ``path`` configures."""
    try:
        return cfg.load(transport.config, path)
    except cfg.ConfigError as exc:
        raise UsageError(str(exc)) from None


def address_from_config(path: str, transport: Transport[Any]) -> tuple[str, int]:
    """Where the server that ``path`` configures listens (an any-address means here)."""
    server = server_config(path, transport)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    return host, server.port


def udp_presence_limit(args: argparse.Namespace, transport: Transport[Any]) -> int | None:
    """The UDP server's presence_limit, which its welcome leaves out: --presence-limit,
    or its config file's, or None (unknown)."""
    if args.presence_limit is not None:
        if not args.udp:
            raise UsageError("--presence-limit is for a UDP server, whose welcome does not "
                             "say it; a TCP server's welcome says its own")
        if args.presence_limit < 0:
            raise UsageError(f"--presence-limit must be 0 or more, not {args.presence_limit}")
        return int(args.presence_limit)          # argparse gives Any
    if args.udp and args.config is not None:
        return server_config(args.config, transport).presence_limit
    return None


def address(args: argparse.Namespace, transport: Transport[Any]) -> tuple[str, int]:
    """The server to check: HOST:PORT, or --host and --port over --config, or the default."""
    if args.address is not None:
        if args.host is not None or args.port is not None:
            raise UsageError("give HOST:PORT or --host and --port, not both")
        return parse_address(args.address)
    host, port = p.DEFAULT_HOST, transport.port
    if args.config is not None:
        host, port = address_from_config(args.config, transport)
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port (1 to 65535)")
    return args.host or host, args.port or port


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-sync check",
        description="Check that a chat server keeps the promises of chat_sync's protocol "
                    "(the README's protocol section, and with --udp its \"Chat over UDP\"), "
                    "over the wire alone.",
        epilog="exit status: 0 when no rule failed, 1 when one did, 2 when the server "
               "cannot be reached (over UDP: nothing answers a ping) or the arguments are "
               "wrong")
    parser.add_argument("address", nargs="?", metavar="HOST:PORT",
                        help=f"the server (default: {p.DEFAULT_HOST}:{p.DEFAULT_TCP_PORT}, "
                             f"{p.DEFAULT_UDP_PORT} with --udp, or --host and --port, "
                             "or where --config says)")
    parser.add_argument("--udp", action="store_true",
                        help="check a UDP chat server, with the UDP rules")
    parser.add_argument("--host", help=f"the server's host (default: {p.DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"the server's port (default: "
                                                 f"{p.DEFAULT_TCP_PORT}, or "
                                                 f"{p.DEFAULT_UDP_PORT} with --udp)")
    parser.add_argument("--config", metavar="FILE",
                        help="check the server this config file sets up (its host and port)")
    parser.add_argument("--presence-limit", type=int, metavar="N",
                        help="with --udp: the server's presence_limit, which the UDP welcome "
                             "does not say (default: what --config says; without either, "
                             "udp-stream.presence is not checked)")
    parser.add_argument("--stage", metavar="STAGE",
                        help=f"run this stage and those before it: {', '.join(TCP_STAGES)}; "
                             f"with --udp: {', '.join(UDP_STAGES)}")
    parser.add_argument("--rule", action="append", default=[], metavar="ID",
                        help="run only this rule (may be given more than once)")
    parser.add_argument("--list", action="store_true", help="list the rules and exit")
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines (one per rule, then a summary), for graders")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"each rule's deadline (default: {DEFAULT_TIMEOUT_S:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):     # a reply may hold what it cannot print
        sys.stdout.reconfigure(errors="backslashreplace")
    transport: Transport[Any] = UDP if args.udp else TCP
    try:
        rules = select(transport.rules, transport.stages, args.stage, args.rule)
        if args.list:
            _list(rules, transport)
            return 0
        host, port = address(args, transport)
        limit = udp_presence_limit(args, transport)
        if args.udp:
            transport = replace(transport, session=functools.partial(UdpSession,
                                                                     presence_limit=limit))
        if not args.timeout > 0:
            raise UsageError(f"--timeout must be more than 0, not {args.timeout:g}")
    except UsageError as exc:
        print(f"chat-sync check: {exc}", file=sys.stderr)
        return 2
    why = transport.unreachable(host, port, args.timeout)
    if why is not None:
        verb = "cannot reach" if args.udp else "cannot connect to"
        print(f"chat-sync check: {verb} {host}:{port}: {why}", file=sys.stderr)
        return 2
    try:
        outcomes = _check(rules, transport, host, port, args.timeout, args.json)
    except KeyboardInterrupt:
        print("chat-sync check: interrupted", file=sys.stderr)
        return 130
    return 1 if any(o.result == FAIL for o in outcomes) else 0


def _width(transport: Transport[Any]) -> int:
    """One layout for a transport, whatever rules are chosen."""
    return max(len(rule.id) for rule in transport.rules)


def _check(rules: list[Rule[Any]], transport: Transport[Any], host: str, port: int,
           timeout: float, as_json: bool) -> list[Outcome]:
    start = time.monotonic()
    width = _width(transport)
    outcomes = []
    for outcome in run(rules, host, port, timeout, transport.session):
        outcomes.append(outcome)
        lines = [report_json(outcome)] if as_json else report_lines(outcome, width)
        print("\n".join(lines), flush=True)
    counts = summary(outcomes)
    if as_json:
        print(json.dumps({"summary": counts, "server": f"{host}:{port}",
                          "transport": transport.name,
                          "seconds": round(time.monotonic() - start, 3)}))
    else:
        print(f"{len(outcomes)} rules: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped")
    return outcomes


def _list(rules: list[Rule[Any]], transport: Transport[Any]) -> None:
    width = _width(transport)
    for rule in rules:
        print(f"{rule.id:<{width}} {rule.statement}")
