"""Settings for the chat_sync servers and clients: defaults, a config file, flags.

Theory of operation
-------------------
Each program has one frozen settings dataclass below. A setting's value
comes from three layers, later ones winning:

1. the dataclass default (limits are the constants of ``protocol``, never
   retyped here);
2. an optional config file: a flat mapping whose keys are the field names,
   which are also the long flags with ``_`` for ``-`` (``log_file`` is
   ``--log-file``). YAML, TOML or JSON, chosen by the file's extension and
   read by ``config_files``;
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

To add a setting, add one ``setting(...)`` line to a dataclass (give it a
``max``: every number has an upper bound); loading, checking, the flag and
its ``--help`` line all follow from it. A setting several programs have is
declared once, in a base class: ``_ServerSettings`` (both servers),
``_ClientSettings`` (both clients), ``_RetransmitSettings`` (both UDP programs).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar, Union

from .config_files import ConfigError as ConfigError  # defined there, raised by both
from .config_files import read_file, show, type_name
from .protocol import (
    DEFAULT_HOST,
    DEFAULT_ROOM,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    HISTORY_SIZE,
    JOIN_TIMEOUT_S,
    KEEPALIVE_IDLE_S,
    KEEPALIVE_INTERVAL_S,
    KEEPALIVE_PROBES,
    MAX_CLIENTS,
    MAX_CLIENTS_PER_IP,
    MAX_DATAGRAM_BYTES,
    MAX_LINE_BYTES,
    MAX_ROOMS,
    MAX_SEND_BUFFER_BYTES,
    MAX_TEXT_CHARS,
    MIN_DATAGRAM_BYTES,
    PARTIAL_LINE_TIMEOUT_S,
    PRESENCE_LIMIT,
    RATE_ABUSE_LIMIT,
    RATE_BURST,
    RATE_LIMIT_PER_S,
    SEND_BUFFER_SOFT_BYTES,
    SLOW_READER_GRACE_S,
    TLS_HANDSHAKE_TIMEOUT_S,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_PORT = 65535
MAX_UDP_PAYLOAD = 65507  # largest payload of one IPv4 UDP datagram


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
# Every number has an upper bound as well as a lower one: a value the loader
# took and a program later chokes on (a select() timeout too large, a deque too
# big to allocate) is a bug, so it is refused here, naming the key and range.

DAY_S = 86_400.0
HOUR_S = 3_600.0
MILLION = 1_000_000
GIB = 1024 ** 3

@dataclasses.dataclass(frozen=True, kw_only=True)
class _ServerSettings:
    """What both servers have. A subclass that declares ``port`` again changes its
    default and help in place: host and port stay first in ``--help``."""

    host: str = setting(DEFAULT_HOST, "address to listen on ('' = all interfaces)")
    port: int = setting(DEFAULT_TCP_PORT, "TCP port to listen on (0 = any free port)",
                        min=0, max=MAX_PORT)
    log_file: str | None = setting(None, "chat log file (unset = no chat log)")
    log_max_bytes: int = setting(1_000_000, "rotate the chat log at this size, in bytes",
                                 min=1, max=1024 * GIB)
    log_backups: int = setting(3, "rotated chat logs to keep (0 = none)", min=0, max=1000)
    log_level: str = setting("info", "operational log level on stderr; debug also logs raw "
                             "bytes per peer", choices=LOG_LEVELS)
    history_size: int = setting(HISTORY_SIZE, "messages replayed per room on join",
                                min=0, max=100_000)
    presence_limit: int = setting(PRESENCE_LIMIT, "members above which a room's joins and "
                                  "leaves are told only to whoever joins or leaves",
                                  min=0, max=MILLION)
    max_text_chars: int = setting(MAX_TEXT_CHARS, "longest message text", min=1, max=MILLION)
    max_clients: int = setting(MAX_CLIENTS, "clients at most", min=1, max=MILLION)
    max_rooms: int = setting(MAX_ROOMS, "rooms at most", min=1, max=MILLION)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TcpServerConfig(_ServerSettings):
    """Settings of the TCP chat server."""

    max_line_bytes: int = setting(MAX_LINE_BYTES, "longest line accepted from a client",
                                  min=1, max=16 * 1024 * 1024)
    max_send_buffer_bytes: int = setting(MAX_SEND_BUFFER_BYTES, "unsent bytes held for "
                                         "one client before it is dropped as slow",
                                         min=1, max=GIB)
    send_buffer_soft_bytes: int = setting(SEND_BUFFER_SOFT_BYTES, "unsent bytes a client may "
                                          "hold for slow_reader_grace_s (at or above "
                                          "max_send_buffer_bytes: no soft limit)",
                                          min=1, max=GIB)
    slow_reader_grace_s: float = setting(SLOW_READER_GRACE_S, "seconds a client may stay "
                                         "over send_buffer_soft_bytes", min=0.0, max=DAY_S)
    max_clients_per_ip: int = setting(MAX_CLIENTS_PER_IP, "connected clients from one "
                                      "address at most (0 = no limit)", min=0, max=MILLION)
    rate_limit_per_s: float = setting(RATE_LIMIT_PER_S, "requests a second one client may "
                                      "send, sustained (0 = no limit)", min=0.0, max=MILLION)
    rate_burst: int = setting(RATE_BURST, "requests one client may send at once",
                              min=1, max=MILLION)
    rate_abuse_limit: int = setting(RATE_ABUSE_LIMIT, "refused requests in a row (the "
                                    "bucket never full again) before a client is cut off",
                                    min=1, max=MILLION)
    join_timeout_s: float = setting(JOIN_TIMEOUT_S, "seconds a connection may take to join "
                                    "(0 = no limit)", min=0.0, max=DAY_S)
    partial_line_timeout_s: float = setting(PARTIAL_LINE_TIMEOUT_S, "seconds a line may stay "
                                            "unfinished (0 = no limit)", min=0.0, max=DAY_S)
    keepalive_idle_s: float = setting(KEEPALIVE_IDLE_S, "TCP keepalive: seconds a connection "
                                      "may be silent before the kernel probes it",
                                      min=1.0, max=DAY_S)
    keepalive_interval_s: float = setting(KEEPALIVE_INTERVAL_S, "TCP keepalive: seconds "
                                          "between probes", min=1.0, max=HOUR_S)
    keepalive_probes: int = setting(KEEPALIVE_PROBES, "TCP keepalive: unanswered probes "
                                    "before the connection is dropped", min=1, max=100)
    tls_cert: str | None = setting(None, "TLS certificate chain, PEM (set = TLS on; "
                                   "unset = plain TCP)")
    tls_key: str | None = setting(None, "TLS private key, PEM (unset = in the tls_cert file)")
    tls_handshake_timeout_s: float = setting(TLS_HANDSHAKE_TIMEOUT_S, "seconds a TLS "
                                             "handshake may take", above=0.0, max=HOUR_S)
    shutdown_grace_s: float = setting(2.0, "seconds to flush output on shutdown",
                                      min=0.0, max=HOUR_S)
    bus_url: str | None = setting(None, "Redis URL of a cluster's bus, e.g. "
                                  "redis://127.0.0.1:6379/0 (unset = a server on its own)")
    workers: int = setting(1, "server processes on this port, one chat through bus_url "
                           "(SO_REUSEPORT; more than 1 needs bus_url)", min=1, max=64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ClientSettings:
    """What both clients have; a subclass declares ``port`` again for its own default."""

    host: str = setting(DEFAULT_HOST, "server address to connect to")
    port: int = setting(DEFAULT_TCP_PORT, "server TCP port", min=1, max=MAX_PORT)
    user: str | None = setting(None, "your user name (required, here or in the file)")
    room: str = setting(DEFAULT_ROOM, "room to join first")
    plain: bool = setting(False, "plain output: no colours or cursor tricks")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TcpClientConfig(_ClientSettings):
    """Settings of the TCP chat client."""

    reconnect_tries: int = setting(8, "reconnect attempts after a lost connection "
                                   "(0 = give up at once)", min=0, max=1000)
    reconnect_base_delay_s: float = setting(0.5, "first reconnect delay, doubled per try",
                                            above=0.0, max=HOUR_S,
                                            not_above="reconnect_max_delay_s")
    reconnect_max_delay_s: float = setting(10.0, "longest reconnect delay",
                                           above=0.0, max=HOUR_S)
    connect_timeout_s: float = setting(5.0, "seconds to wait for a connection",
                                       above=0.0, max=HOUR_S)
    tls: bool = setting(False, "connect with TLS, checking the server's certificate "
                        "against --host")
    cafile: str | None = setting(None, "CA certificates (PEM) to trust with --tls "
                                 "(unset = the system's)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RetransmitSettings:
    """What both UDP programs have: their retransmit timers and datagram size.

    A UDP settings class lists it first among its bases, so that its fields
    come after the server's or client's common ones (dataclasses collect the
    bases' fields in reverse order).
    """

    max_datagram_bytes: int = setting(MAX_DATAGRAM_BYTES, "largest datagram, both ways",
                                      min=MIN_DATAGRAM_BYTES, max=MAX_UDP_PAYLOAD)
    base_delay: float = setting(0.2, "first retransmit delay, doubled per retry",
                                above=0.0, max=60.0, not_above="max_delay")
    max_delay: float = setting(3.0, "longest retransmit delay", above=0.0, max=600.0)
    max_retries: int = setting(6, "retransmits before giving up on a datagram",
                               min=0, max=100)
    adaptive_rto: bool = setting(False, "estimate the retransmit timeout from measured "
                                 "round trips")
    min_rto: float = setting(0.2, "smallest adaptive retransmit timeout",
                             above=0.0, max=60.0, not_above="max_delay")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UdpServerConfig(_RetransmitSettings, _ServerSettings):
    """Settings of the UDP chat server."""

    port: int = setting(DEFAULT_UDP_PORT, "UDP port to listen on (0 = any free port)",
                        min=0, max=MAX_PORT)
    client_timeout_s: float = setting(60.0, "forget a client silent this long",
                                      above=0.0, max=DAY_S)
    shutdown_grace_s: float = setting(2.0, "seconds to wait for acks of the shutdown "
                                      "notice", min=0.0, max=HOUR_S)
    # Defences (udp_server_core.py): each on by default.
    anti_amplification: bool = setting(True, "send an address that has not acked a datagram "
                                       "at most 3x the bytes it sent (RFC 9000 section 8)")
    unverified_timeout_s: float = setting(5.0, "forget an address that has not acked its "
                                          "welcome this long after its first datagram",
                                          above=0.0, max=HOUR_S)
    udp_rate_limit_per_s: float = setting(50.0, "datagrams a second one address may send; "
                                          "more are dropped (0 = no limit)",
                                          min=0.0, max=MILLION)
    udp_rate_burst: int = setting(100, "datagrams one address may send at once, after a "
                                  "pause", min=1, max=MILLION)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UdpClientConfig(_RetransmitSettings, _ClientSettings):
    """Settings of the UDP chat client."""

    port: int = setting(DEFAULT_UDP_PORT, "server UDP port", min=1, max=MAX_PORT)
    keepalive_s: float = setting(15.0, "ping the server after this long idle",
                                 above=0.0, max=DAY_S)
    gap_timeout_s: float = setting(15.0, "report a hole in the server's stream as lost "
                                   "after this long (longer than the server's retries)",
                                   above=0.0, max=DAY_S)


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
        for key, value in read_file(source).items():
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
    return f"{source}: key {show(name)}"


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
            raise ConfigError(f"{where}: expected a finite number, got {show(value)}")
    else:
        ok = isinstance(value, str)
    if not ok:
        hint = ""
        if base is str and source != COMMAND_LINE and isinstance(value, (bool, int, float)):
            hint = "; put it in quotes if you meant a string"
        elif base in (int, float) and source != COMMAND_LINE and _is_number(value):
            hint = ("; YAML 1.1 reads an exponent without a '.' and a sign (1e3, 1.0e3) "
                    "as a string: write 1000 or 1.0e+3")
        raise ConfigError(f"{where}: expected {expected}, "
                          f"got {type_name(value)} ({show(value)}){hint}")
    return value


def _is_number(value: object) -> bool:
    """A string that Python (but not YAML 1.1) reads as a number, such as "1e3"."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _check_range(meta: Mapping[str, Any], value: Any, where: str) -> None:
    low, high, above, choices = meta["min"], meta["max"], meta["above"], meta["choices"]
    if above is not None and high is not None:
        if not above < value <= high:
            raise ConfigError(f"{where}: must be greater than {above} and at most {high}, "
                              f"got {show(value)}")
    elif low is not None and high is not None:
        if not low <= value <= high:
            raise ConfigError(f"{where}: must be in {low}..{high}, got {show(value)}")
    elif low is not None and value < low:
        raise ConfigError(f"{where}: must be at least {low}, got {show(value)}")
    elif high is not None and value > high:
        raise ConfigError(f"{where}: must be at most {high}, got {show(value)}")
    elif above is not None and not value > above:
        raise ConfigError(f"{where}: must be greater than {above}, got {show(value)}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}; got {show(value)}")


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
            raise ConfigError(f"{_where(origin[f.name], f.name)}: {show(value)} must not "
                              f"be greater than {other} ({show(limit)})")
        raise ConfigError(f"{_where(origin.get(other, 'defaults'), other)}: {show(limit)} "
                          f"must not be less than {f.name} ({show(value)})")


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
            help_text += f" (default: {show(f.default)}{_range(f.metadata)})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, type=base, default=None, help=help_text,
                                choices=f.metadata["choices"],
                                metavar=None if f.metadata["choices"] else f.name.upper())


def _range(meta: Mapping[str, Any]) -> str:
    """A setting's range for ``--help``: "; 1..1000000", "; >0.0..3600.0", or ""."""
    if meta["max"] is None:
        return ""
    low = f">{meta['above']}" if meta["above"] is not None else meta["min"]
    return f"; {low}..{meta['max']}"


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
