"""What a user types, turned into commands and client requests, with no I/O.

Theory of operation
-------------------
Both chat clients (TCP and UDP) read lines from a person. ``parse_command``
turns one line into one command object; it never sends anything and never
raises on user input:

- A line not starting with ``/`` is chat text: ``Say``. A line starting with
  ``//`` is chat text too, with one ``/`` removed, so ``//shrug`` says
  ``/shrug``. A blank line is ``None``: nothing to do.
- ``/help``, ``/join ROOM``, ``/rooms``, ``/who``, ``/msg USER TEXT`` and
  ``/quit`` are commands. The command word is case-insensitive.
- Anything else starting with ``/`` (an unknown command, a missing or extra
  argument) is ``Usage``: text for the user to read locally. Nothing is sent,
  so a typo such as ``/jion dev`` never leaks into the room as a message.

The parser checks only the *shape* of a line. Whether a room name is valid
or a text too long is the server's call (its limits arrive in ``welcome``),
and its typed ``error`` reply is shown to the user.

The request builders at the bottom are the client-side twins of the
server-to-client builders in ``protocol``: the one place the clients spell
a request's keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from .protocol import MessageType, RequestId


@dataclass(frozen=True)
class Say:
    """Send ``text`` to the current room."""

    text: str


@dataclass(frozen=True)
class JoinRoom:
    room: str


@dataclass(frozen=True)
class ListRooms:
    pass


@dataclass(frozen=True)
class WhoIsHere:
    pass


@dataclass(frozen=True)
class Whisper:
    to: str
    text: str


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Usage:
    """The line looked like a command but was not a valid one; show ``text``."""

    text: str


Command = Union[Say, JoinRoom, ListRooms, WhoIsHere, Whisper, Quit, Help, Usage]

HELP = """\
commands:
  /join ROOM       leave this room and join ROOM
  /rooms           list the rooms that have people in them
  /who             list the people in this room
  /msg USER TEXT   send TEXT to USER only
  /quit            leave and exit (so do Ctrl-D and Ctrl-C)
  /help            show this help
anything else is sent to the room; start a line with // to send one starting with /"""

_HINT = "type /help for the list of commands"


def parse_command(line: str) -> Command | None:
    """Return the command a typed line asks for, or None for a blank line.

    ``line`` is one line of input without its line ending. Never raises:
    a malformed command comes back as ``Usage``.
    """
    if not line.strip():
        return None
    if not line.startswith("/"):
        return Say(line)
    if line.startswith("//"):
        return Say(line[1:])
    word, _, rest = line[1:].partition(" ")
    word = word.lower()
    rest = rest.strip()
    if word == "help":
        return Help()
    if word == "quit":
        return Quit()
    if word == "rooms":
        return ListRooms() if not rest else Usage("usage: /rooms")
    if word == "who":
        return WhoIsHere() if not rest else Usage("usage: /who")
    if word == "join":
        if not rest or " " in rest:
            return Usage("usage: /join ROOM")
        return JoinRoom(rest)
    if word == "msg":
        to, _, text = rest.partition(" ")
        text = text.strip()
        if not to or not text:
            return Usage("usage: /msg USER TEXT")
        return Whisper(to, text)
    return Usage(f"unknown command /{word}; {_HINT}")


# -- Client -> server request builders -------------------------------------------
def _with_id(request: dict[str, Any], rid: RequestId) -> dict[str, Any]:
    if rid is not None:
        request["id"] = rid
    return request


def join_request(room: str, user: str, since: int | None = None,
                 rid: RequestId = None) -> dict[str, Any]:
    """Join ``room`` as ``user``; with ``since``, replay only history after that seq."""
    request: dict[str, Any] = {"type": MessageType.JOIN.value, "room": room, "user": user}
    if since is not None:
        request["since"] = since
    return _with_id(request, rid)


def message_request(text: str, rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.MESSAGE.value, "text": text}, rid)


def whisper_request(to: str, text: str, rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.WHISPER.value, "to": to, "text": text}, rid)


def rooms_request(rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.ROOMS.value}, rid)


def who_request(rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.WHO.value}, rid)


def leave_request(rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.LEAVE.value}, rid)


def ping_request(rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.PING.value}, rid)
