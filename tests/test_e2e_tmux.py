"""End to end, as a person would: two real clients in tmux terminals chatting through a server.

tmux gives each client a real terminal (so the TTY code path runs: readline,
redraw, colour), ``send-keys`` types into it and ``capture-pane`` reads the
screen. Waiting is on what the screen shows, with a deadline.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None and not os.environ.get("CI"),
                                reason="tmux is not installed (.ci/run installs it)")


class Tmux:
    """A private tmux server (its own socket), killed at the end."""

    def __init__(self) -> None:
        self.socket = f"chat-sync-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                                text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, name: str, command: list[str]) -> None:
        shell_command = " ".join(_quote(word) for word in command)
        self.run("new-session", "-d", "-s", name, "-x", "120", "-y", "30",
                 f"{shell_command}; echo EXIT=$?; sleep 30")

    def type(self, name: str, text: str) -> None:
        self.run("send-keys", "-t", name, "-l", text)
        self.run("send-keys", "-t", name, "Enter")

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(name)
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}'s screen never matched:\n{screen}")
            time.sleep(0.05)     # a poll of the screen, the only way to observe a terminal

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


@pytest.fixture
def server() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    session = Tmux()
    try:
        yield session
    finally:
        session.kill()


@pytest.mark.timeout(60)
def test_two_people_chat_in_terminals(server: int, tmux: Tmux) -> None:
    client = [sys.executable, "-m", "chat_sync.tcp_client", "--port", str(server)]
    env_prefix = ["env", "-u", "NO_COLOR", "TERM=xterm-256color"]
    tmux.start("alice", env_prefix + client + ["--user", "alice"])
    tmux.wait_for("alice", lambda s: "alice joined" in s)
    tmux.start("bob", env_prefix + client + ["--user", "bob", "--room", "lobby"])
    tmux.wait_for("bob", lambda s: "bob joined" in s)
    tmux.wait_for("alice", lambda s: "bob joined" in s)

    tmux.type("alice", "hello from alice")
    tmux.wait_for("bob", lambda s: "alice" in s and "hello from alice" in s)

    tmux.type("bob", "/msg alice psst, only you")
    tmux.wait_for("alice", lambda s: "psst, only you" in s)

    tmux.type("bob", "/who")
    tmux.wait_for("bob", lambda s: "alice" in s.split("/who")[-1] and "bob" in s)

    tmux.type("bob", "/quit")
    tmux.wait_for("bob", lambda s: "EXIT=0" in s)
    tmux.wait_for("alice", lambda s: "bob left" in s)
    tmux.type("alice", "/quit")
    tmux.wait_for("alice", lambda s: "EXIT=0" in s)


@pytest.mark.timeout(60)
def test_typing_is_not_garbled_by_incoming_messages(server: int, tmux: Tmux) -> None:
    """A half-typed line survives a message arriving: it is redrawn below it."""
    client = [sys.executable, "-m", "chat_sync.tcp_client", "--port", str(server)]
    tmux.start("alice", client + ["--user", "alice"])
    tmux.start("bob", client + ["--user", "bob"])
    tmux.wait_for("alice", lambda s: "bob joined" in s)
    tmux.run("send-keys", "-t", "alice", "-l", "half a thou")      # no Enter
    tmux.wait_for("alice", lambda s: "half a thou" in s)
    tmux.type("bob", "interrupting!")
    screen = tmux.wait_for("alice", lambda s: "interrupting!" in s)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert "half a thou" in lines[-1], screen           # the typed text is still last
    assert not any("half a thou" in line and "interrupting" in line for line in lines), screen
    tmux.run("send-keys", "-t", "alice", "-l", "ght")
    tmux.run("send-keys", "-t", "alice", "Enter")
    tmux.wait_for("bob", lambda s: "half a thought" in s)
