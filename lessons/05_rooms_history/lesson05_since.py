"""Lesson 05: hang up, come back with ``since``, and miss nothing.

    python -m chat_sync.tcp_server --port 0
    python lessons/05_rooms_history/lesson05_since.py --port PORT

Two plain socket clients, alice and bob, join ``lobby``. Bob reads up to
alice's first message, notes its ``seq`` and hangs up. Alice says two more
things. Bob connects again and joins with ``since`` = the seq he noted: the
server replays exactly what he missed, marked ``(history)``, and then
announces his join. What bob receives is printed with each seq.
"""
from __future__ import annotations

import argparse
import socket
from typing import IO, Any

from chat_sync import protocol
from chat_sync.terminal import render

TIMEOUT_S = 5.0     # every read has a deadline: a silent server fails the demo, not hangs it


class LineClient:
    """One connection that speaks lines of JSON, one request or message per line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.reader: IO[bytes] = self.sock.makefile("rb")
        self.welcome = self.read()

    def send(self, **request: Any) -> None:
        self.sock.sendall(protocol.encode(request))

    def read(self) -> dict[str, Any]:
        """The next message; raises EOFError if the server closed the connection."""
        line = self.reader.readline()
        if not line.endswith(b"\n"):
            raise EOFError("the server closed the connection")
        return protocol.decode(line.rstrip(b"\n"))

    def read_until(self, event: str, user: str) -> list[dict[str, Any]]:
        """Every message up to and including the live system ``event`` about ``user``.

        A replay of an older notice (``"history": true``) does not count.
        """
        messages = []
        while True:
            message = self.read()
            messages.append(message)
            if (message.get("event") == event and message.get("user") == user
                    and not message.get("history")):
                return messages

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def show(who: str, message: dict[str, Any]) -> None:
    print(f"{who} <- seq {message.get('seq', '-'):>2}  {render(message)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rejoin a room with since.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=protocol.DEFAULT_TCP_PORT)
    args = parser.parse_args(argv)

    alice = LineClient(args.port)
    alice.send(type="join", room="lobby", user="alice")
    alice.read_until("join", "alice")
    bob = LineClient(args.port)
    bob.send(type="join", room="lobby", user="bob")
    bob.read_until("join", "bob")           # any history, then bob's own join notice
    alice.read_until("join", "bob")

    alice.send(type="message", text="hello bob")
    message = bob.read()
    show("bob", message)
    since = message["seq"]
    print(f"bob hangs up; the last seq he saw is {since}")
    bob.close()

    alice.read_until("leave", "bob")        # the server has seen bob go
    alice.send(type="message", text="are you there?")
    alice.send(type="message", text="I'll say it again later")
    alice.read()
    alice.read()                            # both said: now bob may come back

    bob = LineClient(args.port)
    print(f"bob joins again with since={since}")
    bob.send(type="join", room="lobby", user="bob", since=since)
    for message in bob.read_until("join", "bob"):
        show("bob", message)
    bob.close()
    alice.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
