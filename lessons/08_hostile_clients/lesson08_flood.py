"""Lesson 08: a flooder, a socket hoarder and a quiet pair on one small server.

    python lessons/08_hostile_clients/lesson08_flood.py

Everything runs in this one process, on 127.0.0.1: a chat server on a free
port with small limits (1 request a second, bursts of 5, cut off after 20
refusals in a row, 3 connections from one address), and three plain socket
clients in ``lobby``: alice and bob, who chat, and mallory, who sends 60
lines at once. Then 5 more connections from the same address try their
luck. The program prints what each client got, and the server's warnings
go to stderr.

It checks what it claims: alice and bob must each hear every line of the
other, and exactly the lines of mallory's that the server let through.
Exit status 0 if so, 1 if not.

Every count is the same on every run. Nothing sleeps: each client reads
with a deadline until what it waits for has come. The limits make the
counts exact: the whole run takes milliseconds, and at 1 token a second
no bucket earns a new token before it ends.
"""
from __future__ import annotations

import logging
import socket
import sys
from typing import IO, Any, Callable

from chat_sync import protocol as p
from chat_sync.tcp_server import serve

RATE_PER_S = 1.0
BURST = 5
ABUSE_LIMIT = 20
PER_IP = 3
FLOOD_LINES = 60
EXTRA_CONNECTIONS = 5
TIMEOUT_S = 5.0         # every read has a deadline: a silent server fails the demo, not hangs it

Message = dict[str, Any]


class Client:
    """One connection that speaks lines of JSON; it keeps every message it read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.reader: IO[bytes] = self.sock.makefile("rb")
        self.got: list[Message] = []
        self.closed = False

    def send(self, **request: Any) -> None:
        self.sock.sendall(p.encode(request))

    def read(self) -> Message | None:
        """The next message, or None once the server has closed the connection."""
        line = self.reader.readline()
        if not line.endswith(b"\n"):
            self.closed = True
            return None
        message = p.decode(line.rstrip(b"\n"))
        self.got.append(message)
        return message

    def read_until(self, done: Callable[[], bool]) -> None:
        """Read until ``done()``; raises EOFError if the connection ends first."""
        while not done():
            if self.read() is None:
                raise EOFError("the server closed the connection")

    def read_to_end(self) -> None:
        while self.read() is not None:
            pass

    def count(self, **fields: Any) -> int:
        """How many messages read so far have all of ``fields``."""
        return sum(all(message.get(k) == v for k, v in fields.items()) for message in self.got)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def join(port: int, user: str) -> Client:
    """A client that has joined ``lobby`` as ``user`` (and read its own join notice)."""
    client = Client(port)
    client.read()                                          # the welcome
    client.send(type="join", room="lobby", user=user)
    client.read_until(lambda: client.count(event="join", user=user) == 1)
    return client


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="server: %(message)s")
    with serve(port=0, rate_limit_per_s=RATE_PER_S, rate_burst=BURST,
               rate_abuse_limit=ABUSE_LIMIT, max_clients_per_ip=PER_IP) as server:
        alice = join(server.port, "alice")
        bob = join(server.port, "bob")
        mallory = join(server.port, "mallory")
        print(f"alice, bob and mallory joined lobby (rate {RATE_PER_S:g}/s, burst {BURST}, "
              f"cut off after {ABUSE_LIMIT} refusals, {PER_IP} connections per address)")

        refused = 0
        for _ in range(EXTRA_CONNECTIONS):      # a script that opens sockets and forgets them
            extra = Client(server.port)
            extra.read_to_end()                 # one line, the refusal, and the end
            refused += extra.count(type="error", code="too_many_connections")
            extra.close()
        print(f"{EXTRA_CONNECTIONS} more connections from 127.0.0.1: {refused} refused "
              f"(too_many_connections)")

        flood = b"".join(p.encode({"type": "message", "text": f"spam {i}"})
                         for i in range(FLOOD_LINES))
        mallory.sock.sendall(flood)             # 60 lines at once
        said = {"alice": ["hi bob", "did you see that?", "still here"],
                "bob": ["hi alice", "I did", "me too"]}
        for alice_line, bob_line in zip(said["alice"], said["bob"]):
            alice.send(type="message", text=alice_line)
            bob.send(type="message", text=bob_line)

        mallory.read_to_end()                   # cut off: the server closes her connection
        for listener, other in ((alice, "bob"), (bob, "alice")):
            listener.read_until(lambda: listener.count(event="leave", user="mallory") == 1
                                and listener.count(type="message", user=other) == 3)
        for client in (alice, bob, mallory):
            client.close()

    delivered = mallory.count(type="message", user="mallory")
    refusals = [m for m in mallory.got if m.get("code") == "rate_limited"]
    unread = FLOOD_LINES - delivered - len(refusals)
    print(f"mallory sent {FLOOD_LINES} lines at once: {delivered} delivered, "
          f"{len(refusals) - 1} refused (rate_limited), then cut off:")
    print(f"  {refusals[-1]['text']}")
    print(f"  the other {unread} lines were never handled")
    heard_all = True
    for name, client, other in (("alice", alice, "bob"), ("bob", bob, "alice")):
        from_other = [m["text"] for m in client.got
                      if m.get("type") == "message" and m.get("user") == other]
        from_mallory = client.count(type="message", user="mallory")
        print(f"{name} heard {len(from_other)} of {other}'s {len(said[other])} lines, "
              f"{from_mallory} of mallory's, and that mallory left")
        heard_all = heard_all and from_other == said[other] and from_mallory == delivered
    return 0 if heard_all and refused == EXTRA_CONNECTIONS else 1


if __name__ == "__main__":
    raise SystemExit(main())
