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
  ``EXIT_FAILED`` when the client gave up or failed. (The program itself
  may end with ``EXIT_REFUSED``: see ``client_program``.)

A join refused when the client starts is no event: ``connect`` raises
``JoinError``, since asking again would get the same answer.

``EventStream`` is where a client puts its events: it keeps the rule that
``Closed`` comes once and last, and lets any thread wait for it.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any, Union

EXIT_OK = 0
EXIT_REFUSED = 1     # a script's request was refused, or not answered in time (--plain)
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


class EventStream:
    """One client's events, on their way to ``on_event`` or to a queue. Thread-safe.

    ``on_event`` is called in the thread that emits each event; without it,
    events wait in a queue that ``next`` reads. ``finish`` ends the stream.
    """

    def __init__(self, on_event: Callable[[ClientEvent], None] | None = None) -> None:
        self._queue: queue.Queue[ClientEvent] = queue.Queue()
        self._on_event = on_event if on_event is not None else self._queue.put
        self._lock = threading.Lock()
        self._finished = threading.Event()  # Closed has been emitted
        self.exit_code: int | None = None   # set once, just before Closed is emitted

    def emit(self, event: ClientEvent) -> None:
        self._on_event(event)

    def finish(self, code: int, reason: str) -> None:
        """Record the exit code and emit ``Closed``; only the first call does anything."""
        with self._lock:
            if self.exit_code is not None:
                return
            self.exit_code = code
        self.emit(Closed(code, reason))
        self._finished.set()

    @property
    def finished(self) -> bool:
        """True once ``Closed`` has been emitted."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the stream is finished; its exit code, or None on timeout."""
        self._finished.wait(timeout)
        return self.exit_code

    def next(self, timeout: float) -> ClientEvent:
        """The next event from the queue (only without ``on_event``).

        Raises TimeoutError if none arrives within ``timeout`` seconds.
        """
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout} s") from None
