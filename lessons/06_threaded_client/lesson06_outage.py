"""Lesson 06: watch a client lose its connection, back off, rejoin with since.

    python lessons/06_threaded_client/lesson06_outage.py

Runs a chat server on a free port, and the package's recording relay in
front of it (``chat_sync.recorder.RecordingRelay``), whose ``cut`` is the outage.
Alice connects through the relay, bob straight to the server; both are the
package's ``ChatClient``, with its reader thread. The relay cuts alice off,
bob talks while she is away, the relay lets her back in, and every event
alice's client produces is printed: the lost connection, the back-off, the
replay of exactly what she missed, the rejoin.

Alice's back-off runs on the lesson's ``backoff_delay``: the reference, or
yours with ``CHAT_SYNC_LESSON=WORKSPACE`` (see ``lessons/lesson_target.py``).
Its randomness is seeded, so every run prints the same.
"""
from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

from chat_sync.config import TcpClientConfig
from chat_sync.recorder import RecordingRelay
from chat_sync.tcp_client import ChatClient, ClientEvent, Closed, Notice, Received
from chat_sync.tcp_client_core import Backoff
from chat_sync.tcp_server import serve
from chat_sync.terminal import render

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # lessons/: lesson_target
from lesson_target import load  # noqa: E402

backoff_delay = load(__file__).backoff_delay    # the reference, or yours: CHAT_SYNC_LESSON

TIMEOUT_S = 5.0
SEED = 6


class LessonBackoff(Backoff):
    """The package's ``Backoff``, with the lesson's ``backoff_delay`` inside."""

    def delay(self, attempt: int, random_fraction: float) -> float:
        return backoff_delay(attempt, self.base_delay_s, self.max_delay_s, random_fraction)


def until(client: ChatClient, done: Callable[[ClientEvent], bool],
          show: Callable[[ClientEvent], None] | None = None) -> None:
    """Take ``client``'s events until one is ``done``; each waits at most TIMEOUT_S."""
    while True:
        event = client.next_event(TIMEOUT_S)
        if show is not None:
            show(event)
        if isinstance(event, Closed):
            raise SystemExit(f"{client.user}'s client ended: {event.reason}")
        if done(event):
            return


def said(text: str) -> Callable[[ClientEvent], bool]:
    return lambda event: isinstance(event, Received) and event.message.get("text") == text


def joined(user: str) -> Callable[[ClientEvent], bool]:
    return lambda event: (isinstance(event, Received) and event.message.get("event") == "join"
                          and event.message.get("user") == user
                          and not event.message.get("history"))


def notice(start: str) -> Callable[[ClientEvent], bool]:
    return lambda event: isinstance(event, Notice) and event.text.startswith(start)


def main() -> int:
    with serve(port=0) as server, RecordingRelay((server.host, server.port)) as relay:
        alice = ChatClient(TcpClientConfig(port=relay.address[1], user="alice",
                                           reconnect_tries=8, reconnect_base_delay_s=0.05,
                                           reconnect_max_delay_s=1.0),
                           random=random.Random(SEED).random)
        alice.backoff = LessonBackoff(alice.backoff.base_delay_s, alice.backoff.max_delay_s,
                                      alice.backoff.tries)
        bob = ChatClient(TcpClientConfig(port=server.port, user="bob"))

        def show(event: ClientEvent) -> None:
            if isinstance(event, Received) and event.message.get("type") == "welcome":
                print("alice <- a welcome: a new connection")
            elif isinstance(event, Received):
                print("alice <-", render(event.message, me="alice"))
            elif isinstance(event, Notice):     # the relay's port differs on every run
                print("alice --", event.text.replace(alice.peer, "RELAY"))

        try:
            alice.connect()
            bob.connect()
            until(alice, joined("bob"))
            bob.send_line("before the outage")
            until(alice, said("before the outage"), show)

            print("== the relay cuts alice off")
            relay.cut()
            until(alice, notice("reconnecting"), show)
            until(bob, lambda event: isinstance(event, Received)
                  and event.message.get("event") == "leave")
            print("== bob says two things while alice is away")
            bob.send_line("you missed this")
            bob.send_line("and this")
            until(bob, said("and this"))

            print("== the relay lets alice through again")
            relay.resume()
            until(alice, notice("reconnected"), show)
            bob.send_line("welcome back")
            until(alice, said("welcome back"), show)
        finally:
            alice.close()
            bob.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
