"""End to end, as a person would: two real clients in tmux terminals chatting through a server.

tmux gives each client a real terminal (so the TTY code path runs: the line
editor, redraw, colour), ``send-keys`` types into it and ``capture-pane`` reads
the screen. Waiting is on what the screen shows, with a deadline.
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

    def start(self, name: str, command: list[str], width: int = 120, height: int = 30) -> None:
        shell_command = " ".join(_quote(word) for word in command)
        self.run("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                 f"{shell_command}; echo EXIT=$?; sleep 30")

    def type(self, name: str, text: str) -> None:
        self.run("send-keys", "-t", name, "-l", text)
        self.run("send-keys", "-t", name, "Enter")

    def keys(self, name: str, *keys: str) -> None:
        """Press ``keys`` (tmux key names: ``Enter``, ``C-d``, or text) in one go."""
        self.run("send-keys", "-t", name, *keys)

    def screen(self, name: str, history: bool = False) -> str:
        """What the pane shows; with ``history``, the lines scrolled off the top too."""
        return self.run("capture-pane", "-p", "-t", name, *(["-S", "-"] if history else []))

    def wait_for(self, name: str, predicate: Callable[[str], bool], timeout: float = 10.0,
                 history: bool = False) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(name, history)
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


def start_server(transport: str) -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-m", f"chat_sync.{transport}_server", "--port", "0"],
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
def server() -> Iterator[int]:
    yield from start_server("tcp")


@pytest.fixture(params=["tcp", "udp"])
def transport(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """Each transport's server, and its name: the clients share the terminal program."""
    for port in start_server(request.param):
        yield request.param, port


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


LONG_LINE = "".join(f"{i:03d}-" for i in range(30))     # 150 characters, each group unique
WIDTH = 100


def rows(screen: str) -> list[str]:
    return [row.rstrip() for row in screen.splitlines() if row.strip()]


@pytest.mark.timeout(90)
def test_a_wrapped_line_survives_a_burst_of_messages(transport: tuple[str, int],
                                                     tmux: Tmux) -> None:
    """A line longer than the terminal stays whole and single while messages pour in."""
    name, port = transport
    client = [sys.executable, "-m", f"chat_sync.{name}_client", "--port", str(port)]
    tmux.start("alice", client + ["--user", "alice"], width=WIDTH, height=40)
    tmux.start("bob", client + ["--user", "bob"])
    tmux.wait_for("alice", lambda s: "bob joined" in s)
    tmux.run("send-keys", "-t", "alice", "-l", LONG_LINE)               # no Enter: unfinished
    tmux.wait_for("alice", lambda s: LONG_LINE[-12:] in s)
    burst = [f"burst {i}" for i in range(12)]
    for text in burst:                                                # bob types fast
        tmux.keys("bob", text, "Enter")
    tmux.run("send-keys", "-t", "alice", "-l", "+more")               # alice types meanwhile
    screen = tmux.wait_for("alice", lambda s: "bob: burst 11" in s and "+more" in s, timeout=30)
    shown = rows(screen)
    for text in burst:
        assert sum(row.endswith(f"bob: {text}") for row in shown) == 1, screen
    typed = "> " + LONG_LINE + "+more"
    # The input area is the last two rows, exactly once: no stale copy of its first row.
    assert shown[-2:] == [typed[:WIDTH], typed[WIDTH:]], screen
    assert sum(row.startswith("> 000-") for row in shown) == 1, screen
    tmux.keys("alice", "Enter")
    tmux.wait_for("bob", lambda s: "+more" in s and "029-" in s, timeout=20)


@pytest.mark.timeout(90)
def test_the_prompt_is_drawn_once_per_line_and_ctrl_d_leaves_cleanly(
        transport: tuple[str, int], tmux: Tmux) -> None:
    """Lines typed ahead, each echoed at once: never ``> > `` on screen; Ctrl-D ends tidily."""
    name, port = transport
    client = [sys.executable, "-m", f"chat_sync.{name}_client", "--port", str(port)]
    tmux.start("alice", client + ["--user", "alice"], width=WIDTH, height=20)
    tmux.wait_for("alice", lambda s: "alice joined" in s)
    lines = [f"v{i}" for i in range(30)]
    for text in lines:
        tmux.keys("alice", text, "Enter")
    history = tmux.wait_for("alice", lambda s: "alice: v29" in s, timeout=40, history=True)
    shown = rows(history)
    assert not any("> >" in row for row in shown), history
    for text in lines:
        assert sum(row.endswith(f"alice: {text}") for row in shown) == 1, history
    tmux.keys("alice", "C-d")
    screen = tmux.wait_for("alice", lambda s: "EXIT=0" in s, timeout=20)
    after = rows(screen)[rows(screen).index("[lobby] alice: v29") + 1:]
    # Nothing lands on a prompt, and no empty prompt is left behind.
    assert after[-1] == "EXIT=0" and ">" not in after, screen
