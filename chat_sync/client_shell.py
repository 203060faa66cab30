"""What the two chat clients' socket shells share: typed commands in, events out.

``tcp_client.ChatClient`` and ``udp_client.UdpChatClient`` move bytes
differently but take the same commands and give the same events. This base
class holds that common part once; a subclass says how one request reaches
its server (``connect``, ``request``), how it changes room (``_change_room``)
and how it closes (``close``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from . import commands as cmd
from .client_events import ClientEvent, EventStream, Notice


class _Core(Protocol):
    """What the shell reads of a sans-IO client core."""

    @property
    def user(self) -> str: ...

    @property
    def room(self) -> str: ...


CoreT = TypeVar("CoreT", bound=_Core)


class ClientShell(Generic[CoreT]):
    """A client's commands and events; the transport is the subclass's.

    ``on_event`` is called with each event; without it, events wait in a
    queue that ``next_event`` reads.
    """

    help_text = cmd.HELP     # what /help shows; the UDP client adds /stats
    core: CoreT              # the sans-IO client core, which the subclass makes
    peer: str                # the server, as HOST:PORT

    def __init__(self, on_event: Callable[[ClientEvent], None] | None) -> None:
        self._events = EventStream(on_event)

    @property
    def exit_code(self) -> int | None:
        """EXIT_OK or EXIT_FAILED once the client has finished; None until then."""
        return self._events.exit_code

    @property
    def user(self) -> str:
        return self.core.user

    @property
    def room(self) -> str:
        return self.core.room

    def send_line(self, line: str) -> bool:
        """Parse and carry out one typed line; returns False once the client is closed."""
        command = cmd.parse_command(line)
        if command is None:
            return not self._events.finished
        return self.execute(command)

    def execute(self, command: cmd.Command) -> bool:
        """Carry out one parsed command; returns False once the client is closed.

        Chat text and server commands are sent; ``/help`` and usage hints
        become a Notice; ``Quit`` closes the client.
        """
        if isinstance(command, cmd.Quit):
            self.close()
            return False
        if isinstance(command, cmd.Help):
            self._events.emit(Notice(self.help_text))
        elif isinstance(command, cmd.Usage):
            self._events.emit(Notice(command.text))
        elif isinstance(command, cmd.Say):
            self.request(cmd.message_request(command.text))
        elif isinstance(command, cmd.Whisper):
            self.request(cmd.whisper_request(command.to, command.text))
        elif isinstance(command, cmd.ListRooms):
            self.request(cmd.rooms_request())
        elif isinstance(command, cmd.WhoIsHere):
            self.request(cmd.who_request())
        elif isinstance(command, cmd.JoinRoom):
            self._change_room(command.room)
        return not self._events.finished

    def say(self, text: str) -> bool:
        """Send chat text to the room; False if it will not be sent (a Notice says why)."""
        return self.request(cmd.message_request(text))

    def connect(self) -> None:
        """Reach the server and join ``config.room``; raises JoinError or OSError."""
        raise NotImplementedError

    def why_not(self, exc: OSError) -> str:
        """What to tell the user when ``connect`` raised ``exc``."""
        return f"cannot reach {self.peer}: {exc.strerror or exc}"

    def request(self, request: dict[str, Any]) -> bool:
        """Send one request (from ``commands``, without ``id``); False if it will not be."""
        raise NotImplementedError

    def _change_room(self, room: str) -> None:
        raise NotImplementedError

    def close(self) -> int:
        """Leave, stop the client's threads; returns its exit code. Safe to call again."""
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the client has finished; returns its exit code, or None on timeout."""
        return self._events.wait(timeout)

    def next_event(self, timeout: float = 5.0) -> ClientEvent:
        """The next event from the queue (only without ``on_event``).

        Raises TimeoutError if none arrives within ``timeout`` seconds.
        """
        return self._events.next(timeout)
