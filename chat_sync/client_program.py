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

Each client's ``main`` is then: ``configure``, open the ``Terminal``, build
and connect its client (what can go wrong there is its own: TLS, a server
that does not answer), and ``run``.
"""
from __future__ import annotations

import sys
import threading
from typing import Protocol, TypeVar

from . import config as cfg
from .client_events import EXIT_OK, ClientEvent, Closed, Notice, Received
from .terminal import Terminal, escape, render


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


def show_event(terminal: Terminal, user: str, event: ClientEvent) -> None:
    """Print one client event on the terminal."""
    if isinstance(event, Received):
        terminal.show(render(event.message, me=user, colour=terminal.colour))
    elif isinstance(event, Notice):
        for line in event.text.splitlines():
            terminal.show("-- " + escape(line))
    elif isinstance(event, Closed) and event.exit_code != EXIT_OK:
        terminal.show("-- " + escape(event.reason))


def pump_stdin(client: Client, terminal: Terminal) -> None:
    """The stdin thread: each typed line becomes a command; EOF or /quit closes the client."""
    while True:
        line = terminal.read_line()
        if line is None:
            client.close()
            return
        if not client.send_line(line):
            return


def run(client: Client, terminal: Terminal) -> int:
    """Chat until /quit, end of input, Ctrl-C, or the client gives up; returns the exit code.

    ``client`` must be connected. The stdin thread is a daemon: when the
    client gives up, the program ends even though a ``read`` is still blocked.
    """
    stdin_thread = threading.Thread(target=pump_stdin, args=(client, terminal),
                                    name="stdin", daemon=True)
    stdin_thread.start()
    try:
        code = client.wait()
    except KeyboardInterrupt:
        code = client.close()
    assert code is not None
    return code
