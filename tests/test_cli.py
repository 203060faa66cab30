"""The ``chat-sync`` command: subcommands dispatch to each program's own ``main``."""
from __future__ import annotations

import gc
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from chat_sync import __version__, cli, protocol, serving


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


class _Serves:
    """A server that records, as it starts serving, how many objects are frozen."""

    address = ("127.0.0.1", 0)

    def __init__(self) -> None:
        self.frozen = 0

    def serve_forever(self) -> None:
        self.frozen = gc.get_freeze_count()

    def stop(self) -> None:
        pass


@pytest.mark.timeout(10)
def test_a_server_program_freezes_what_it_built_before_it_serves(
        capsys: pytest.CaptureFixture[str]) -> None:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    gc.unfreeze()
    server = _Serves()
    try:
        assert serving.run_in_foreground(server) == 0
    finally:
        gc.unfreeze()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert server.frozen > 10_000               # the modules, at least: not walked again
    assert capsys.readouterr().out == "listening on 127.0.0.1:0\n"
