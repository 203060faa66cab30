"""Settings for the chat_sync servers and clients: defaults, a config file, flags.

Theory of operation
-------------------
Each program has one frozen settings dataclass below. A setting's value
comes from three layers, later ones winning:

1. the dataclass default (limits are the constants of ``protocol``, never
   retyped here);
2. an optional config file: a flat mapping whose keys are the field names,
   which are also the long flags with ``_`` for ``-`` (``log_file`` is
   ``--log-file``). YAML, TOML or JSON, chosen by the file's extension;
3. the command-line flags the user actually typed.

Nothing needs a config file: no file and no flags give the defaults.

Every value is checked where it enters, against the field's type hint and
its range, and a bad one raises ``ConfigError`` naming the file (or the
command line) and the key. The checks are strict on purpose, because YAML 1.1
guesses types: ``room: NO`` is the boolean false and ``host: 1.10`` is the
float 1.1. The only conversion is int to float; anything else of the wrong
type is an error, so the surprise becomes a message instead of a user
chatting in room "False". Duplicate keys, where YAML and Python's ``json``
silently let the last one win, are errors too.

Trade-off: flags are added with ``default=None`` so that "not given" can be
told apart from "given", so a flag cannot set an optional setting back to
None. To run without the chat log a file asks for, edit the file (or call
``load`` with ``{"log_file": None}``).

To add a setting, add one ``setting(...)`` line to a dataclass; loading,
checking, the flag and its ``--help`` line all follow from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, Union

import yaml

from .protocol import (
    DEFAULT_HOST,
    DEFAULT_ROOM,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    HISTORY_SIZE,
    JOIN_TIMEOUT_S,
    MAX_CLIENTS,
    MAX_CLIENTS_PER_IP,
    MAX_DATAGRAM_BYTES,
    MAX_LINE_BYTES,
    MAX_ROOMS,
    MAX_SEND_BUFFER_BYTES,
    MAX_TEXT_CHARS,
    MIN_DATAGRAM_BYTES,
    PARTIAL_LINE_TIMEOUT_S,
    RATE_ABUSE_LIMIT,
    RATE_BURST,
    RATE_LIMIT_PER_S,
    SEND_BUFFER_SOFT_BYTES,
    SLOW_READER_GRACE_S,
    TLS_HANDSHAKE_TIMEOUT_S,
    DuplicateKey,
    no_duplicate_keys,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_PORT = 65535
MAX_UDP_PAYLOAD = 65507  # largest payload of one IPv4 UDP datagram


class ConfigError(Exception):
    """A config file or a command-line value is unusable; the message says where and why."""


def setting(default: Any, help: str, *, min: float | None = None,
            max: float | None = None, above: float | None = None,
            choices: tuple[str, ...] | None = None,
            not_above: str | None = None) -> Any:
    """Declare one setting: its default, its ``--help`` line and its range.

    ``min``/``max`` are inclusive bounds, ``above`` an exclusive lower bound
    (for delays, where 0 would mean a busy loop), ``choices`` the allowed
    strings, and ``not_above`` names another setting this one must not exceed.
    It is a plain ``dataclasses.field``; the checks live in ``load``.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "min": min, "max": max, "above": above,
        "choices": choices, "not_above": not_above,
    })


# -- The settings -------------------------------------------------------------
# kw_only: with this many fields, a positional call would be a bug waiting.

@dataclasses.dataclass(frozen=True, kw_only=True)
class TcpServerConfig:
    """Settings of the TCP chat server."""

    host: str = setting(DEFAULT_HOST, "address to listen on ('' = all interfaces)")
    port: int = setting(DEFAULT_TCP_PORT, "TCP port to listen on (0 = any free port)",
                        min=0, max=MAX_PORT)
    log_file: str | None = setting(None, "chat log file (unset = no chat log)")
    log_max_bytes: int = setting(1_000_000, "rotate the chat log at this size", min=1)
    log_backups: int = setting(3, "rotated chat logs to keep (0 = none)", min=0)
    log_level: str = setting("info", "operational log level on stderr; debug also "
                             "logs raw bytes per peer", choices=LOG_LEVELS)
    history_size: int = setting(HISTORY_SIZE, "messages replayed per room on join", min=0)
    max_line_bytes: int = setting(MAX_LINE_BYTES, "longest line accepted from a client", min=1)
    max_text_chars: int = setting(MAX_TEXT_CHARS, "longest message text", min=1)
    max_send_buffer_bytes: int = setting(MAX_SEND_BUFFER_BYTES, "unsent bytes held for "
                                         "one client before it is dropped as slow", min=1)
    send_buffer_soft_bytes: int = setting(SEND_BUFFER_SOFT_BYTES, "unsent bytes a client may "
                                          "hold for slow_reader_grace_s (at or above "
                                          "max_send_buffer_bytes: no soft limit)", min=1)
    slow_reader_grace_s: float = setting(SLOW_READER_GRACE_S, "seconds a client may stay "
                                         "over send_buffer_soft_bytes", min=0.0)
    max_clients: int = setting(MAX_CLIENTS, "connected clients at most", min=1)
    max_clients_per_ip: int = setting(MAX_CLIENTS_PER_IP, "connected clients from one "
                                      "address at most (0 = no limit)", min=0)
    max_rooms: int = setting(MAX_ROOMS, "rooms at most", min=1)
    rate_limit_per_s: float = setting(RATE_LIMIT_PER_S, "requests a second one client may "
                                      "send, sustained (0 = no limit)", min=0.0)
    rate_burst: int = setting(RATE_BURST, "requests one client may send at once", min=1)
    rate_abuse_limit: int = setting(RATE_ABUSE_LIMIT, "refused requests in a row (the "
                                    "bucket never full again) before a client is cut off",
                                    min=1)
    join_timeout_s: float = setting(JOIN_TIMEOUT_S, "seconds a connection may take to join "
                                    "(0 = no limit)", min=0.0)
    partial_line_timeout_s: float = setting(PARTIAL_LINE_TIMEOUT_S, "seconds a line may stay "
                                            "unfinished (0 = no limit)", min=0.0)
    tls_cert: str | None = setting(None, "TLS certificate chain, PEM (set = TLS on; "
                                   "unset = plain TCP)")
    tls_key: str | None = setting(None, "TLS private key, PEM (unset = in the tls_cert file)")
    tls_handshake_timeout_s: float = setting(TLS_HANDSHAKE_TIMEOUT_S, "seconds a TLS "
                                             "handshake may take", above=0.0)
    shutdown_grace_s: float = setting(2.0, "seconds to flush output on shutdown", min=0.0)
    bus_url: str | None = setting(None, "Redis URL of a cluster's bus, e.g. "
                                  "redis://127.0.0.1:6379/0 (unset = a server on its own)")
    workers: int = setting(1, "server processes on this port, one chat through bus_url "
                           "(SO_REUSEPORT; more than 1 needs bus_url)", min=1, max=64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TcpClientConfig:
    """Settings of the TCP chat client."""

    host: str = setting(DEFAULT_HOST, "server address to connect to")
    port: int = setting(DEFAULT_TCP_PORT, "server TCP port", min=1, max=MAX_PORT)
    user: str | None = setting(None, "your user name (required, here or in the file)")
    room: str = setting(DEFAULT_ROOM, "room to join first")
    plain: bool = setting(False, "plain output: no colours or cursor tricks")
    reconnect_tries: int = setting(8, "reconnect attempts after a lost connection "
                                   "(0 = give up at once)", min=0)
    reconnect_base_delay_s: float = setting(0.5, "first reconnect delay, doubled per try",
                                            above=0.0, not_above="reconnect_max_delay_s")
    reconnect_max_delay_s: float = setting(10.0, "longest reconnect delay", above=0.0)
    connect_timeout_s: float = setting(5.0, "seconds to wait for a connection", above=0.0)
    tls: bool = setting(False, "connect with TLS, checking the server's certificate "
                        "against --host")
    cafile: str | None = setting(None, "CA certificates (PEM) to trust with --tls "
                                 "(unset = the system's)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UdpServerConfig:
    """Settings of the UDP chat server."""

    host: str = setting(DEFAULT_HOST, "address to listen on ('' = all interfaces)")
    port: int = setting(DEFAULT_UDP_PORT, "UDP port to listen on (0 = any free port)",
                        min=0, max=MAX_PORT)
    log_file: str | None = setting(None, "chat log file (unset = no chat log)")
    log_max_bytes: int = setting(1_000_000, "rotate the chat log at this size", min=1)
    log_backups: int = setting(3, "rotated chat logs to keep (0 = none)", min=0)
    log_level: str = setting("info", "operational log level on stderr; debug also "
                             "logs raw bytes per peer", choices=LOG_LEVELS)
    history_size: int = setting(HISTORY_SIZE, "messages replayed per room on join", min=0)
    max_text_chars: int = setting(MAX_TEXT_CHARS, "longest message text", min=1)
    max_datagram_bytes: int = setting(MAX_DATAGRAM_BYTES, "largest datagram, both ways",
                                      min=MIN_DATAGRAM_BYTES, max=MAX_UDP_PAYLOAD)
    max_clients: int = setting(MAX_CLIENTS, "known clients at most", min=1)
    max_rooms: int = setting(MAX_ROOMS, "rooms at most", min=1)
    client_timeout_s: float = setting(60.0, "forget a client silent this long", above=0.0)
    base_delay: float = setting(0.2, "first retransmit delay, doubled per retry",
                                above=0.0, not_above="max_delay")
    max_delay: float = setting(3.0, "longest retransmit delay", above=0.0)
    max_retries: int = setting(6, "retransmits before giving up on a datagram", min=0)
    adaptive_rto: bool = setting(False, "estimate the retransmit timeout from "
                                 "measured round trips")
    min_rto: float = setting(0.2, "smallest adaptive retransmit timeout",
                             above=0.0, not_above="max_delay")
    shutdown_grace_s: float = setting(2.0, "seconds to wait for acks of the shutdown "
                                      "notice", min=0.0)
    # Defences (udp_server_core.py): each on by default.
    anti_amplification: bool = setting(True, "send an address that has not acked a datagram "
                                       "at most 3x the bytes it sent (RFC 9000 section 8)")
    unverified_timeout_s: float = setting(5.0, "forget an address that has not acked its "
                                          "welcome this long after its first datagram",
                                          above=0.0)
    udp_rate_limit_per_s: float = setting(50.0, "datagrams a second one address may send; "
                                          "more are dropped (0 = no limit)", min=0.0)
    udp_rate_burst: int = setting(100, "datagrams one address may send at once, after a "
                                  "pause", min=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UdpClientConfig:
    """Settings of the UDP chat client."""

    host: str = setting(DEFAULT_HOST, "server address to send to")
    port: int = setting(DEFAULT_UDP_PORT, "server UDP port", min=1, max=MAX_PORT)
    user: str | None = setting(None, "your user name (required, here or in the file)")
    room: str = setting(DEFAULT_ROOM, "room to join first")
    plain: bool = setting(False, "plain output: no colours or cursor tricks")
    keepalive_s: float = setting(15.0, "ping the server after this long idle", above=0.0)
    base_delay: float = setting(0.2, "first retransmit delay, doubled per retry",
                                above=0.0, not_above="max_delay")
    max_delay: float = setting(3.0, "longest retransmit delay", above=0.0)
    max_retries: int = setting(6, "retransmits before giving up on a datagram", min=0)
    adaptive_rto: bool = setting(False, "estimate the retransmit timeout from "
                                 "measured round trips")
    min_rto: float = setting(0.2, "smallest adaptive retransmit timeout",
                             above=0.0, not_above="max_delay")
    max_datagram_bytes: int = setting(MAX_DATAGRAM_BYTES, "largest datagram, both ways",
                                      min=MIN_DATAGRAM_BYTES, max=MAX_UDP_PAYLOAD)
    gap_timeout_s: float = setting(15.0, "report a hole in the server's stream as lost "
                                   "after this long (longer than the server's retries)",
                                   above=0.0)


# -- Loading -----------------------------------------------------------------

class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


C = TypeVar("C", bound=_Dataclass)

COMMAND_LINE = "command line"


def load(cls: type[C], path: str | os.PathLike[str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> C:
    """Build ``cls`` from its defaults, then the file at ``path``, then ``overrides``.

    ``overrides`` are values from the command line, keyed by setting name;
    they are checked like the file's. Returns the frozen settings object.
    Raises ``ConfigError`` for an unreadable or malformed file, an unknown
    key, a value of the wrong type or out of range. Raises ``TypeError`` if
    ``cls`` has a field of a type this module cannot check (a bug).
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}          # setting name -> where its value came from
    if path is not None:
        source = os.fspath(path)
        for key, value in _read_file(source).items():
            values[key] = _check(cls, key, value, source)
            origin[key] = source
    if overrides is not None:
        for key, value in overrides.items():
            values[key] = _check(cls, key, value, COMMAND_LINE)
            origin[key] = COMMAND_LINE
    config = cls(**values)
    _check_order(config, origin)
    return config


def replace(config: C, **changes: Any) -> C:
    """``config`` with ``changes`` applied, checked like command-line values.

    Raises ConfigError as ``load`` does; ``serve(port=0)`` uses it.
    """
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return load(type(config), None, {**values, **changes})


def _where(source: str, name: object) -> str:
    """Say where a value came from: a key of a file, or a flag."""
    if source == COMMAND_LINE and isinstance(name, str):
        return f"{COMMAND_LINE}: --{name.replace('_', '-')}"
    if isinstance(name, str):
        return f"{source}: key '{name}'"
    return f"{source}: key {_show(name)}"


def _check(cls: type[C], name: object, value: Any, source: str) -> Any:
    """Return ``value`` checked (and int widened to float) for setting ``name``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = _where(source, name)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: setting names are strings")
    if name not in fields:
        raise ConfigError(f"{where}: unknown setting{_suggest(name, list(fields))}")
    base, optional = _setting_type(cls, name)
    value = _check_type(base, optional, value, where, source)
    if value is not None:
        _check_range(fields[name].metadata, value, where)
    return value


def _suggest(name: str, names: list[str]) -> str:
    if name.replace("-", "_") in names:
        return f" (did you mean '{name.replace('-', '_')}'? keys use '_' where flags use '-')"
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _setting_type(cls: type[Any], name: str) -> tuple[type, bool]:
    """Return (base type, may be None) for a field typed ``X`` or ``X | None``.

    ``get_type_hints`` turns the string annotations that
    ``from __future__ import annotations`` leaves into real types.
    """
    hint = typing.get_type_hints(cls)[name]
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else hint
    if hint not in (bool, int, float, str):
        raise TypeError(f"{cls.__name__}.{name}: unsupported setting type {hint!r}")
    return hint, optional


def _check_type(base: type, optional: bool, value: Any, where: str, source: str) -> Any:
    expected = base.__name__ + (" or null" if optional else "")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: expected {expected}, got null")
    # bool is a subclass of int in Python, so test it first and exactly.
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{where}: {value} is too large") from None
        ok = isinstance(value, float)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
    else:
        ok = isinstance(value, str)
    if not ok:
        hint = ""
        if base is str and source != COMMAND_LINE and isinstance(value, (bool, int, float)):
            hint = "; put it in quotes if you meant a string"
        raise ConfigError(f"{where}: expected {expected}, "
                          f"got {_type_name(value)} ({_show(value)}){hint}")
    return value


def _check_range(meta: Mapping[str, Any], value: Any, where: str) -> None:
    low, high, above, choices = meta["min"], meta["max"], meta["above"], meta["choices"]
    if low is not None and high is not None:
        if not low <= value <= high:
            raise ConfigError(f"{where}: must be in {low}..{high}, got {_show(value)}")
    elif low is not None and value < low:
        raise ConfigError(f"{where}: must be at least {low}, got {_show(value)}")
    elif high is not None and value > high:
        raise ConfigError(f"{where}: must be at most {high}, got {_show(value)}")
    if above is not None and not value > above:
        raise ConfigError(f"{where}: must be greater than {above}, got {_show(value)}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}; got {_show(value)}")


def _check_order(config: _Dataclass, origin: Mapping[str, str]) -> None:
    """Check ``not_above`` pairs, blaming whichever of the two was set last."""
    for f in dataclasses.fields(config):
        other = f.metadata.get("not_above")
        if other is None:
            continue
        value, limit = getattr(config, f.name), getattr(config, other)
        if value <= limit:
            continue
        if f.name in origin:
            raise ConfigError(f"{_where(origin[f.name], f.name)}: {_show(value)} must not "
                              f"be greater than {other} ({_show(limit)})")
        raise ConfigError(f"{_where(origin.get(other, 'defaults'), other)}: {_show(limit)} "
                          f"must not be less than {f.name} ({_show(value)})")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _show(value: object) -> str:
    """Show a value as a config file would spell it, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- Reading files -------------------------------------------------------------

class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(key, line, first_line)
        self.key = key
        self.line = line
        self.first_line = first_line


class _YamlLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue                  # ``<<: *base`` may repeat keys on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue                  # the base class reports unhashable keys
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _DuplicateKey(key, line, first_line[key])
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_file(path: str) -> dict[Any, Any]:
    """Parse the file at ``path`` by its extension; return its top-level mapping."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        kind = f"'{suffix}'" if suffix else "(no extension)"
        raise ConfigError(f"{path}: unknown config file type {kind}; "
                          f"use .yaml, .yml, .toml or .json")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")   # -sig: skip the BOM some editors write
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8: {exc}") from None
    if suffix == ".toml":
        try:
            return tomllib.loads(text)       # always a table: no top-level check needed
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if suffix == ".json":
        parsed = _parse_json(path, text)
    else:
        parsed = _parse_yaml(path, text)
        if parsed is None:
            return {}                     # an empty YAML file: no settings
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path}: top level must be a mapping of setting names "
                          f"to values, got {_type_name(parsed)}")
    return parsed


def _parse_yaml(path: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except _DuplicateKey as dup:
        raise ConfigError(f"{path}: line {dup.line}: key {_show(dup.key)}: duplicate key "
                          f"(first set on line {dup.first_line})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: invalid YAML: {place}{exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _parse_json(path: str, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: key {_show(exc.key)}: duplicate key") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None


# -- Command line ----------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, cls: type[_Dataclass]) -> None:
    """Add ``--config FILE`` and one ``--long-flag`` per setting of ``cls``.

    Every flag defaults to None, meaning "not given", so that ``from_args``
    overrides only what the user typed. Bool settings get ``--x``/``--no-x``.
    """
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="read settings from a .yaml, .toml or .json file; "
                             "flags override it")
    for f in dataclasses.fields(cls):
        base, _optional = _setting_type(cls, f.name)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"].replace("%", "%%")   # argparse formats help with %
        if f.default is not None:
            help_text += f" (default: {_show(f.default)})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, type=base, default=None, help=help_text,
                                choices=f.metadata["choices"],
                                metavar=None if f.metadata["choices"] else f.name.upper())


def from_args(cls: type[C], args: argparse.Namespace) -> C:
    """Load ``cls`` from ``args.config`` and the flags that were given.

    ``args`` comes from a parser set up by ``add_arguments``. Raises
    ``ConfigError`` like ``load``.
    """
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = value
    return load(cls, getattr(args, "config", None), given)


def from_command_line(cls: type[C], argv: list[str] | None, *, prog: str,
                      description: str) -> C:
    """Load ``cls`` as a program's ``main`` is asked to: from ``argv`` and ``--config``.

    ``argv`` is the arguments after the program's name (``sys.argv[1:]`` if
    None). ``--help`` and a bad flag exit (SystemExit) as argparse does.
    Raises ``ConfigError`` like ``load``.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, cls)
    return from_args(cls, parser.parse_args(argv))
