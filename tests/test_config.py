"""Tests of chat_sync.config: defaults, the three file formats, strict checks, flags."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from chat_sync import protocol
from chat_sync.config import (
    ConfigError,
    TcpClientConfig,
    TcpServerConfig,
    UdpClientConfig,
    UdpServerConfig,
    add_arguments,
    from_args,
    load,
)

ALL_CONFIGS = [TcpServerConfig, TcpClientConfig, UdpServerConfig, UdpClientConfig]
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parse(cls: type[Any], argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(prog="test")
    add_arguments(parser, cls)
    return from_args(cls, parser.parse_args(argv))


# -- Defaults -------------------------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("cls", ALL_CONFIGS)
def test_no_file_gives_defaults(cls: type[Any]) -> None:
    assert load(cls) == cls()


@pytest.mark.timeout(10)
def test_defaults_are_the_protocol_constants() -> None:
    server = TcpServerConfig()
    assert (server.host, server.port) == (protocol.DEFAULT_HOST, protocol.DEFAULT_TCP_PORT)
    assert server.max_line_bytes == protocol.MAX_LINE_BYTES
    assert server.max_send_buffer_bytes == protocol.MAX_SEND_BUFFER_BYTES
    assert server.history_size == protocol.HISTORY_SIZE
    assert UdpServerConfig().port == protocol.DEFAULT_UDP_PORT
    assert UdpClientConfig().max_datagram_bytes == protocol.MAX_DATAGRAM_BYTES
    assert TcpClientConfig().room == protocol.DEFAULT_ROOM


@pytest.mark.timeout(10)
@pytest.mark.parametrize("cls", ALL_CONFIGS)
def test_every_setting_has_help(cls: type[Any]) -> None:
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


# -- The three formats -------------------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("name, text", [
    ("s.yaml", "port: 9000\nlog_file: chat.log\nshutdown_grace_s: 1\n"),
    ("s.yml", "port: 9000\nlog_file: chat.log\nshutdown_grace_s: 1\n"),
    ("s.toml", 'port = 9000\nlog_file = "chat.log"\nshutdown_grace_s = 1\n'),
    ("s.json", '{"port": 9000, "log_file": "chat.log", "shutdown_grace_s": 1}'),
])
def test_formats_load(tmp_path: Path, name: str, text: str) -> None:
    config = load(TcpServerConfig, write(tmp_path, name, text))
    assert config == TcpServerConfig(port=9000, log_file="chat.log", shutdown_grace_s=1.0)


@pytest.mark.timeout(10)
def test_empty_yaml_is_no_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.yaml", "# nothing set yet\n")
    assert load(TcpClientConfig, path) == TcpClientConfig()


@pytest.mark.timeout(10)
def test_int_is_accepted_for_float(tmp_path: Path) -> None:
    config = load(UdpClientConfig, write(tmp_path, "c.yaml", "keepalive_s: 30\n"))
    assert config.keepalive_s == 30.0
    assert type(config.keepalive_s) is float


@pytest.mark.timeout(10)
def test_null_only_where_allowed(tmp_path: Path) -> None:
    assert load(TcpServerConfig, write(tmp_path, "a.yaml", "log_file: null\n")).log_file is None
    with pytest.raises(ConfigError, match=r"key 'port': expected int, got null"):
        load(TcpServerConfig, write(tmp_path, "b.yaml", "port: null\n"))


# -- Mistakes, each named by file and key -------------------------------------------

@pytest.mark.timeout(10)
def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "max_client: 5\n")
    with pytest.raises(ConfigError) as info:
        load(TcpServerConfig, path)
    assert str(info.value) == (f"{path}: key 'max_client': unknown setting "
                               f"(did you mean 'max_clients'?)")


@pytest.mark.timeout(10)
def test_flag_spelling_as_key_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'log-file'.*did you mean 'log_file'"):
        load(TcpServerConfig, write(tmp_path, "x.yaml", "log-file: a.log\n"))


@pytest.mark.timeout(10)
def test_bool_is_not_an_int(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "port: true\n")
    with pytest.raises(ConfigError) as info:
        load(TcpServerConfig, path)
    assert str(info.value) == f"{path}: key 'port': expected int, got bool (true)"


@pytest.mark.timeout(10)
def test_bool_is_not_a_float(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'min_rto': expected float, got bool"):
        load(UdpServerConfig, write(tmp_path, "x.json", '{"min_rto": false}'))


@pytest.mark.timeout(10)
def test_float_is_not_an_int(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'max_clients': expected int, got float"):
        load(TcpServerConfig, write(tmp_path, "x.yaml", "max_clients: 10.5\n"))


@pytest.mark.timeout(10)
def test_yaml_no_is_not_a_room_name(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare NO as the boolean false (the "Norway problem").
    with pytest.raises(ConfigError, match=r"key 'room': expected str, got bool \(false\).*quotes"):
        load(TcpClientConfig, write(tmp_path, "x.yaml", "room: NO\n"))
    assert load(TcpClientConfig, write(tmp_path, "y.yaml", "room: 'NO'\n")).room == "NO"


@pytest.mark.timeout(10)
def test_yaml_version_number_is_not_a_host(tmp_path: Path) -> None:
    # A bare 1.10 is the float 1.1: the zero is gone before we can look.
    with pytest.raises(ConfigError, match=r"key 'host': expected str, got float \(1\.1\)"):
        load(TcpServerConfig, write(tmp_path, "x.yaml", "host: 1.10\n"))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name, text", [("x.yaml", "port: 1\nhost: a\nport: 2\n"),
                                        ("x.toml", "port = 1\nhost = 'a'\nport = 2\n")])
def test_duplicate_key_names_key_and_line(tmp_path: Path, name: str, text: str) -> None:
    # TOML (issue 11, item 6): tomllib says only "Cannot overwrite a value".
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load(TcpServerConfig, path)
    assert str(info.value) == f"{path}: line 3: key 'port': duplicate key (first set on line 1)"


@pytest.mark.timeout(10)
def test_duplicate_json_key(tmp_path: Path) -> None:
    path = write(tmp_path, "x.json", '{"port": 1, "port": 2}')
    with pytest.raises(ConfigError, match=r"key 'port': duplicate key"):
        load(TcpServerConfig, path)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name, text, got", [
    ("x.yaml", "- port\n- 1\n", "list"),
    ("x.yaml", "just a string\n", "str"),
    ("x.json", "[1, 2]", "list"),
    ("x.json", "null", "null"),
])
def test_top_level_must_be_a_mapping(tmp_path: Path, name: str, text: str, got: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=rf"top level must be a mapping.*got {got}"):
        load(TcpServerConfig, path)


@pytest.mark.timeout(10)
def test_unknown_extension_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server.ini", "port = 1\n")
    with pytest.raises(ConfigError, match=r"server\.ini: unknown config file type '\.ini'"):
        load(TcpServerConfig, path)


@pytest.mark.timeout(10)
def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load(TcpServerConfig, tmp_path / "nope.yaml")


@pytest.mark.timeout(10)
def test_syntax_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"x\.yaml: invalid YAML: line 2"):
        load(TcpServerConfig, write(tmp_path, "x.yaml", "port: 1\n  host: [\n"))
    with pytest.raises(ConfigError, match=r"x\.toml: invalid TOML"):
        load(TcpServerConfig, write(tmp_path, "x.toml", "port = \n"))
    with pytest.raises(ConfigError, match=r"x\.json: invalid JSON"):
        load(TcpServerConfig, write(tmp_path, "x.json", "{port: 1}"))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("port, ok", [(0, True), (65535, True), (-1, False), (65536, False)])
def test_server_port_range(tmp_path: Path, port: int, ok: bool) -> None:
    path = write(tmp_path, "x.yaml", f"port: {port}\n")
    if ok:
        assert load(TcpServerConfig, path).port == port
    else:
        with pytest.raises(ConfigError, match=rf"key 'port': must be in 0\.\.65535, got {port}"):
            load(TcpServerConfig, path)


@pytest.mark.timeout(10)
def test_client_port_zero_is_refused() -> None:
    # 0 means "any free port" when listening; there is no server to reach there.
    with pytest.raises(ConfigError, match=r"command line: --port: must be in 1\.\.65535"):
        load(TcpClientConfig, overrides={"port": 0})


@pytest.mark.timeout(10)
def test_other_ranges(tmp_path: Path) -> None:
    assert load(TcpServerConfig, overrides={"history_size": 0}).history_size == 0
    with pytest.raises(ConfigError, match=r"--max-clients: must be in 1\.\.1000000, got 0"):
        load(TcpServerConfig, overrides={"max_clients": 0})
    with pytest.raises(ConfigError, match=r"--base-delay: must be greater than 0\.0 "
                                          r"and at most 60\.0, got 0\.0"):
        load(UdpClientConfig, overrides={"base_delay": 0})
    with pytest.raises(ConfigError, match=r"key 'log_level': must be one of debug, info"):
        load(TcpServerConfig, write(tmp_path, "x.yaml", "log_level: verbose\n"))
    with pytest.raises(ConfigError, match=r"key 'max_delay': expected a finite number"):
        load(UdpServerConfig, write(tmp_path, "y.yaml", "max_delay: .inf\n"))


@pytest.mark.timeout(10)
def test_base_delay_may_not_exceed_max_delay(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "base_delay: 5\n")
    with pytest.raises(ConfigError, match=r"key 'base_delay': 5\.0 must not be greater "
                                          r"than max_delay \(3\.0\)"):
        load(UdpServerConfig, path)
    with pytest.raises(ConfigError, match=r"--max-delay: 0\.1 must not be less than base_delay"):
        load(UdpServerConfig, overrides={"max_delay": 0.1})


@pytest.mark.timeout(10)
def test_overrides_are_checked_and_say_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        load(TcpServerConfig, overrides={"port": "7420"})
    assert str(info.value) == "command line: --port: expected int, got str ('7420')"


# -- Flags ------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "port: 9000\nuser: alice\nroom: dev\nplain: true\n")
    config = parse(TcpClientConfig, ["--config", str(path), "--room", "ops",
                                     "--reconnect-tries", "2", "--connect-timeout-s", "1.5"])
    assert config == TcpClientConfig(port=9000, user="alice", room="ops", plain=True,
                                     reconnect_tries=2, connect_timeout_s=1.5)


@pytest.mark.timeout(10)
def test_no_plain_overrides_plain_true_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "plain: true\n")
    assert parse(UdpClientConfig, ["--config", str(path)]).plain is True
    assert parse(UdpClientConfig, ["--config", str(path), "--no-plain"]).plain is False
    assert parse(UdpClientConfig, ["--plain"]).plain is True


@pytest.mark.timeout(10)
def test_no_flags_and_no_file_give_defaults() -> None:
    for cls in ALL_CONFIGS:
        assert parse(cls, []) == cls()


@pytest.mark.timeout(10)
def test_flag_values_are_range_checked() -> None:
    with pytest.raises(ConfigError, match=r"command line: --port: must be in 0\.\.65535"):
        parse(TcpServerConfig, ["--port", "70000"])


@pytest.mark.timeout(10)
def test_help_lists_every_flag() -> None:
    parser = argparse.ArgumentParser(prog="test")
    add_arguments(parser, TcpServerConfig)
    text = parser.format_help()
    assert "--config FILE" in text
    for f in dataclasses.fields(TcpServerConfig):
        assert "--" + f.name.replace("_", "-") in text


# -- The shipped files ------------------------------------------------------------

SHIPPED = [
    ("tcp_server.yaml", TcpServerConfig, {"log_file": "chat_sync.log"}),
    ("tcp_client.yaml", TcpClientConfig, {}),
    ("udp_server.yaml", UdpServerConfig, {}),
    ("udp_client.yaml", UdpClientConfig, {}),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name, cls, differences", SHIPPED)
def test_shipped_config_is_the_defaults(name: str, cls: type[Any],
                                        differences: dict[str, Any]) -> None:
    path = CONFIGS_DIR / name
    assert load(cls, path) == cls(**differences)
    # Every setting is spelled out, so a new field must be added to the file too.
    keys = set(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert keys == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("cls", [UdpServerConfig, UdpClientConfig])
def test_a_datagram_limit_too_small_for_a_join_notice_is_a_config_error(cls: type) -> None:
    with pytest.raises(ConfigError, match="max.datagram.bytes: must be in 576"):
        load(cls, None, {"max_datagram_bytes": protocol.MIN_DATAGRAM_BYTES - 1})
    assert load(cls, None, {"max_datagram_bytes": protocol.MIN_DATAGRAM_BYTES})


# -- Upper bounds (issue 9, item 4) -------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("cls", ALL_CONFIGS)
def test_every_number_setting_has_an_upper_bound(cls: type[Any]) -> None:
    for f in dataclasses.fields(cls):
        if f.type in ("int", "float"):
            assert f.metadata["max"] is not None, f"{cls.__name__}.{f.name} has no upper bound"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("cls, text, key", [
    (TcpServerConfig, "join_timeout_s: 3000000\n", "join_timeout_s"),
    (UdpServerConfig, "client_timeout_s: 3000000\n", "client_timeout_s"),
    (TcpServerConfig, "history_size: 10000000000000000000\n", "history_size"),
    (TcpServerConfig, "rate_burst: " + "9" * 400 + "\n", "rate_burst"),
    (UdpClientConfig, "keepalive_s: 1.0e+10\n", "keepalive_s"),
])
def test_values_that_crashed_later_are_refused_at_load(tmp_path: Path, cls: type[Any],
                                                       text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"key '{key}': must be (in|greater than) .*\d"):
        load(cls, write(tmp_path, "x.yaml", text))


# -- Issue 11: YAML exponents, --help order ------------------------

@pytest.mark.timeout(10)
def test_yaml_exponent_without_a_dot_is_explained(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e3 (and 1.0e3) as a string: a float needs a '.' and a signed exponent.
    with pytest.raises(ConfigError, match=r"key 'rate_limit_per_s': expected float, got str "
                                          r"\('1e3'\).*write 1000 or 1\.0e\+3"):
        load(TcpServerConfig, write(tmp_path, "x.yaml", "rate_limit_per_s: 1e3\n"))
    assert load(TcpServerConfig, write(tmp_path, "y.yaml", "rate_limit_per_s: 1.0e+3\n")
                ).rate_limit_per_s == 1000.0


@pytest.mark.timeout(10)
@pytest.mark.parametrize("cls", ALL_CONFIGS)
def test_help_lists_host_and_port_first(cls: type[Any]) -> None:
    assert [f.name for f in dataclasses.fields(cls)][:2] == ["host", "port"]
