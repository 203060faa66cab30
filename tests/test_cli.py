"""The ``chat-sync`` command: subcommands dispatch to each program's own ``main``."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

import pytest

from chat_sync import __version__, cli, protocol


def chat_sync_command() -> list[str]:
    """The installed console script where there is one (CI installs it), else ``-m``."""
    script = shutil.which("chat-sync")
    return [script] if script else [sys.executable, "-m", "chat_sync"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*chat_sync_command(), *args], capture_output=True, text=True,
                          timeout=20)


@pytest.mark.timeout(30)
def test_help_lists_every_program() -> None:
    result = run("--help")
    assert result.returncode == 0
    for name in cli.PROGRAMS:
        assert name in result.stdout


@pytest.mark.timeout(30)
def test_version() -> None:
    assert run("--version").stdout.strip() == f"chat-sync {__version__}"


@pytest.mark.timeout(30)
def test_unknown_command_is_an_error() -> None:
    result = run("tcp-sever")
    assert result.returncode == 2
    assert "unknown command 'tcp-sever'" in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(cli.PROGRAMS))
def test_every_program_has_help(name: str) -> None:
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    # The servers and clients read settings; the tools take their flags alone.
    assert "--config" in result.stdout or name in ("bench", "course", "record", "dissector")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_tcp_server_subcommand_serves_and_stops(signum: int) -> None:
    proc = subprocess.Popen([*chat_sync_command(), "tcp-server", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            welcome = protocol.decode(sock.makefile("rb").readline().rstrip(b"\n"))
            assert welcome["type"] == "welcome"
            proc.send_signal(signum)
            assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.timeout(30)
def test_bad_config_value_names_the_flag() -> None:
    result = run("tcp-server", "--port", "70000")
    assert result.returncode == 2
    assert "port" in result.stderr
