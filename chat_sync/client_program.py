"""The terminal program of both chat clients: ``chat-sync tcp-client`` and ``udp-client``.

Theory of operation
-------------------
A chat client waits for two things at once, the person at the keyboard and
the server, and neither may wait for the other. So the program runs three
threads, and needs no more of a client than ``Client`` says:

- the client's own reader thread prints each event as it comes
  (``show_event``, as the client's ``on_event``);
- a stdin thread turns typed lines into commands (``pump_stdin``);
- the main thread waits for the client to finish (``run``) and catches
  Ctrl-C: Python runs signal handlers in the main thread only.

Each client's ``main`` is then ``main`` here: ``configure``,
``open_console``, build and connect the client (what can go wrong there is
its own: a TLS file, a server that does not answer, so it explains it,
``ClientShell.why_not``), and ``run``.

In plain mode the input is a pipe, usually a script, which ends before the
server has answered its last lines. So a ``Script`` counts what is owed:
each line that sends a request is owed one answer (the sender's copy of a
message or whisper, the ``who`` or ``rooms`` list, the join notice, or an
error). At end of input, or ``/quit``, the program waits for them, up to
``SCRIPT_ANSWER_WAIT_S``, before it leaves, and exits with ``EXIT_REFUSED``
if any was an error or never came, so ``set -e`` and ``||`` work.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from . import commands as cmd
from . import config as cfg
from .client_events import (EXIT_FAILED, EXIT_OK, EXIT_REFUSED, ClientEvent, Closed, JoinError,
                            Notice, Received)
from .client_shell import ClientShell
from .protocol import MessageType, SystemEvent, name_key
from .terminal import Terminal, escape, main_streams, render

SCRIPT_ANSWER_WAIT_S = 10.0     # how long a script's end of input waits for what it is owed

# The commands that send one request, so are owed one answer.
_ASKING = (cmd.Say, cmd.Whisper, cmd.ListRooms, cmd.WhoIsHere, cmd.JoinRoom)


class Client(Protocol):
    """What the terminal program needs of a chat client (``tcp_client.ChatClient``,
    ``udp_client.UdpChatClient``)."""

    def send_line(self, line: str) -> bool:
        """Carry out one typed line; False once the client is closed."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the client has finished; its exit code, or None on timeout."""
        ...

    def close(self) -> int:
        """Leave, stop the client's threads; returns its exit code. Safe to call again."""
        ...


ClientConfig = TypeVar("ClientConfig", cfg.TcpClientConfig, cfg.UdpClientConfig)


def configure(cls: type[ClientConfig], argv: list[str] | None, *, prog: str,
              description: str) -> ClientConfig | None:
    """A client program's settings from ``argv``; they must name the user.

    Returns None after saying on stderr what is wrong (a bad setting, no
    user name): the program then exits with EXIT_FAILED.
    """
    try:
        config = cfg.from_command_line(cls, argv, prog=prog, description=description)
    except cfg.ConfigError as exc:
        print(f"chat-sync: {exc}", file=sys.stderr)
        return None
    if config.user is None:
        print("chat-sync: a user name is required: --user NAME, or user: in the config file",
              file=sys.stderr)
        return None
    return config


class Script:
    """What a script's lines are owed by the server, and how many were refused. Thread-safe.

    Answers are told apart by what they say (the protocol's ``id`` is not
    needed): our own message or whisper coming back, a ``who`` or ``rooms``
    list, our join notice, an error. A replay from history answers nothing.
    """

    def __init__(self, user: str) -> None:
        self.user = name_key(user)
        self.owed = 0
        self.refused = 0
        self._changed = threading.Condition()

    def sent(self, line: str) -> None:
        if isinstance(cmd.parse_command(line), _ASKING):
            with self._changed:
                self.owed += 1

    def received(self, message: dict[str, Any]) -> None:
        if not self._answers(message):
            return
        with self._changed:
            self.owed = max(0, self.owed - 1)
            if message.get("type") == MessageType.ERROR:
                self.refused += 1
            self._changed.notify_all()

    def settle(self, timeout: float) -> bool:
        """Wait until nothing is owed, up to ``timeout`` seconds; True if nothing is."""
        with self._changed:
            return self._changed.wait_for(lambda: self.owed == 0, timeout)

    def _answers(self, message: dict[str, Any]) -> bool:
        if message.get("history") is True:
            return False
        kind = message.get("type")
        if kind in (MessageType.ERROR, MessageType.WHO, MessageType.ROOMS):
            return True
        sender = message.get("from" if kind == MessageType.WHISPER else "user")
        mine = isinstance(sender, str) and name_key(sender) == self.user
        if kind in (MessageType.MESSAGE, MessageType.WHISPER):
            return mine
        return kind == MessageType.SYSTEM and message.get("event") == SystemEvent.JOIN and mine


class _ScriptedClient:
    """A Client whose lines are counted by a Script, and whose close waits for the answers."""

    def __init__(self, client: Client, script: Script, terminal: Terminal) -> None:
        self._client = client
        self._script = script
        self._terminal = terminal

    def send_line(self, line: str) -> bool:
        if isinstance(cmd.parse_command(line), cmd.Quit):
            self._settle()                  # /quit ends a script as its end of input does
        else:
            self._script.sent(line)
        return self._client.send_line(line)

    def wait(self, timeout: float | None = None) -> int | None:
        return self._client.wait(timeout)

    def close(self) -> int:
        self._settle()
        return self._client.close()

    def _settle(self) -> None:
        if not self._script.settle(SCRIPT_ANSWER_WAIT_S):
            self._terminal.show(f"-- no answer to {self._script.owed} request(s) "
                                f"within {SCRIPT_ANSWER_WAIT_S:g} s")


def show_event(terminal: Terminal, user: str, event: ClientEvent,
               script: Script | None = None) -> None:
    """Print one client event on the terminal (and count it as an answer, for ``script``)."""
    if isinstance(event, Received) and script is not None:
        script.received(event.message)
    if isinstance(event, Received):
        terminal.show(render(event.message, me=user, colour=terminal.colour))
    elif isinstance(event, Notice):
        for line in event.text.splitlines():
            terminal.show("-- " + escape(line))
    elif isinstance(event, Closed) and event.exit_code != EXIT_OK:
        terminal.show("-- " + escape(event.reason))


def open_console(config: cfg.TcpClientConfig | cfg.UdpClientConfig
                 ) -> tuple[Terminal, Script | None, Callable[[ClientEvent], None]]:
    """The terminal a client program talks on, the Script that paces a pipe (plain
    mode, else None), and the ``on_event`` that shows each event there."""
    user = config.user
    assert user is not None                 # configure made sure of it
    stdin, stdout = main_streams()
    terminal = Terminal.open(stdin, stdout, plain=config.plain, environ=os.environ)
    script = Script(user) if terminal.plain else None   # a pipe: wait for its answers
    return terminal, script, lambda event: show_event(terminal, user, event, script)


def pump_stdin(client: Client, terminal: Terminal) -> None:
    """The stdin thread: each typed line becomes a command; EOF or /quit closes the client."""
    while True:
        line = terminal.read_line()
        if line is None:
            client.close()
            return
        if not client.send_line(line):
            return


def run(client: Client, terminal: Terminal, script: Script | None = None) -> int:
    """Chat until /quit, end of input, Ctrl-C, or the client gives up; returns the exit code.

    ``client`` must be connected. With ``script`` (plain mode: the one its
    events are counted by), end of input waits for the answers owed, and
    a refusal or a missing answer makes the exit code ``EXIT_REFUSED``.
    The stdin thread is a daemon: when the client gives up, the program
    ends even though a ``read`` is still blocked.
    """
    stdin_client = client if script is None else _ScriptedClient(client, script, terminal)
    stdin_thread = threading.Thread(target=pump_stdin, args=(stdin_client, terminal),
                                    name="stdin", daemon=True)
    stdin_thread.start()
    try:
        code = client.wait()
    except KeyboardInterrupt:
        code = client.close()
    assert code is not None
    if code == EXIT_OK and script is not None and (script.refused or script.owed):
        return EXIT_REFUSED
    return code


class CannotStart(Exception):
    """The client could not be built or connected; the text says why, for stderr."""


def main(cls: type[ClientConfig], argv: list[str] | None, *, prog: str, description: str,
         build: Callable[[ClientConfig, Callable[[ClientEvent], None]], ClientShell[Any]]
         ) -> int:
    """A client program: its settings, the console, the client ``build`` makes, then ``run``.

    ``build`` raises CannotStart with what to print if it cannot make the
    client; what stops ``connect`` is printed as the client explains it.
    """
    config = configure(cls, argv, prog=prog, description=description)
    if config is None:
        return EXIT_FAILED
    terminal, script, on_event = open_console(config)
    try:
        try:
            client = build(config, on_event)
        except CannotStart as exc:
            print(f"chat-sync: {exc}", file=sys.stderr)
            return EXIT_FAILED
        try:
            client.connect()
        except JoinError as exc:
            print(f"chat-sync: {exc}", file=sys.stderr)
            client.close()
            return EXIT_FAILED
        except OSError as exc:
            print(f"chat-sync: {client.why_not(exc)}", file=sys.stderr)
            client.close()
            return EXIT_FAILED
        except KeyboardInterrupt:
            client.close()
            return EXIT_OK
        code = run(client, terminal, script)
        client.close()                  # after a failure it may still hold a socket and a thread
        return code
    finally:
        terminal.close()
