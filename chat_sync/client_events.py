"""What a chat client tells the program that uses it, over TCP or UDP alike.

Both clients (``tcp_client.ChatClient``, ``udp_client.UdpChatClient``) hand
each event to their ``on_event`` callback, or to a queue read with
``next_event``. There are three:

- ``Received``: a server message to show. Each is shown once: the TCP
  client drops a room broadcast it has seen already (a replay after a
  reconnect), the UDP client delivers its stream once and in order.
- ``Notice``: local news that no server message says, as text: the
  connection lost or a message not delivered, reconnecting, help text, a
  command's usage.
- ``Closed``: the client has finished. It is always the last event, and
  carries the exit code of the terminal program: ``EXIT_OK``, or
  ``EXIT_FAILED`` when the client gave up or failed.

A join refused when the client starts is no event: ``connect`` raises
``JoinError``, since asking again would get the same answer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

EXIT_OK = 0
EXIT_FAILED = 2


@dataclasses.dataclass(frozen=True)
class Received:
    """A server message to show, once (see the module comment)."""

    message: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Notice:
    """Local news: connection lost, not delivered, reconnecting, help text, usage, stats."""

    text: str


@dataclasses.dataclass(frozen=True)
class Closed:
    """The client has finished; this is always its last event."""

    exit_code: int
    reason: str


ClientEvent = Union[Received, Notice, Closed]


class JoinError(Exception):
    """The server refused the join that opens a connection (UDP: a session)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"error {code}: {text}")
        self.code = code
        self.text = text
