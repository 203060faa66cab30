"""The README is executable: its transcripts replay against a real server, its snippets run.

A ``transcript`` block is a conversation: ``NAME --> JSON`` is sent by the
client NAME (connected when first named), ``NAME <-- JSON`` is the next
message NAME must receive. ``ts`` and the server ``version`` vary and are not
compared, nor the ``epoch`` of the server run, nor a welcome's ``resume``
token; everything else must match exactly, in order. A token shown in a
welcome stands for the real one: where a later line sends it, the real one
is sent.
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chat_sync import config, protocol
from chat_sync.tcp_server import serve

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
STEP = re.compile(r"^(\w+) (-->|<--) (.*)$")


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text(encoding="utf-8"))
            if lang == kind]


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ("ts", "version", "epoch", "resume")}


class Peer:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")
        self.pending: dict[str, Any] | None = protocol.decode(self.reader.readline().rstrip())

    def receive(self) -> dict[str, Any]:
        if self.pending is not None:
            message, self.pending = self.pending, None
            return message
        line = self.reader.readline()
        assert line, "server closed the connection"
        return protocol.decode(line.rstrip(b"\n"))

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def replay(transcript: str) -> None:
    with serve(port=0) as server:
        peers: dict[str, Peer] = {}
        tokens: dict[str, str] = {}          # resume token in the README -> the real one
        try:
            for line in transcript.strip().splitlines():
                match = STEP.match(line)
                assert match, f"not a transcript line: {line!r}"
                name, arrow, payload = match.groups()
                peer = peers.get(name) or peers.setdefault(name, Peer(server.port))
                if arrow == "-->":
                    peer.pending = None        # the welcome, unless the transcript showed it
                    for shown, real in tokens.items():
                        payload = payload.replace(shown, real)
                    peer.sock.sendall(payload.encode() + b"\n")
                else:
                    got, expected = peer.receive(), json.loads(payload)
                    assert comparable(got) == comparable(expected), line
                    if "resume" in expected:
                        tokens[expected["resume"]] = got["resume"]
        finally:
            for peer in peers.values():
                peer.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("index", range(len(blocks("transcript"))))
def test_transcript(index: int) -> None:
    replay(blocks("transcript")[index])


@pytest.mark.timeout(10)
def test_there_are_transcripts() -> None:
    assert len(blocks("transcript")) >= 4


@pytest.mark.timeout(20)
def test_python_snippets_run() -> None:
    snippets = blocks("python")
    assert snippets
    for snippet in snippets:
        result = subprocess.run([sys.executable, "-c", snippet], capture_output=True,
                                text=True, timeout=15)
        assert result.returncode == 0, result.stderr


@pytest.mark.timeout(10)
def test_settings_table_matches_config() -> None:
    """Every server setting is in the README's table, with its real default."""
    text = README.read_text(encoding="utf-8")
    defaults = config.TcpServerConfig()
    for field in defaults.__dataclass_fields__:
        assert f"`{field}`" in text, f"README does not document {field}"
    assert f"`{defaults.port}`" in text and f"| {defaults.max_line_bytes} |" in text


@pytest.mark.timeout(60)
def test_shell_commands_name_real_programs() -> None:
    """Each ``chat-sync`` command in the README names a subcommand and flags that exist."""
    from chat_sync import cli
    helps: dict[tuple[str, ...], str] = {}  # one --help per program: 31 commands, 0.3 s each
    for block in blocks("sh"):
        for command in re.findall(r"chat-sync [^\n&]*", block):
            words = shlex.split(command)
            assert words[1] in cli.PROGRAMS, command
            program = tuple(itertools.takewhile(lambda w: not w.startswith("-"), words[1:]))
            if program not in helps:
                result = subprocess.run([sys.executable, "-m", "chat_sync", *program, "--help"],
                                        capture_output=True, text=True, timeout=30)
                assert result.returncode == 0, result.stderr
                helps[program] = result.stdout
            for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                assert flag in helps[program], f"{command}: {flag} is not a flag"
