"""Lesson 09: a flooder, a socket hoarder and a quiet pair on one small server.

    python lessons/09_hostile_clients/lesson09_flood.py

Everything runs in this one process, on 127.0.0.1: a chat server on a free
port with small limits (1 request a second, bursts of 5, cut off after 20
refusals in a row, 3 connections from one address), and three plain socket
clients in ``lobby``: alice and bob, who chat, and mallory, who sends 60
lines at once. Then 5 more connections from the same address try their
luck. The program prints what each client got, and the server's warnings
go to stderr.

It checks what it claims: alice and bob must each hear every line of the
other (and the 5 extra connections must be refused). Exit status 0 if so,
1 if not: try ``BURST = 2``, and the pair's own lines are refused too.

Nothing sleeps: every line a client sends is answered (its copy of the
broadcast, or an error) or its connection ends, so each client reads, with
a deadline on every read, until it has the answers it waits for. Every
count is the same on every run: the whole run takes milliseconds, and at 1
token a second no bucket earns a new token before it ends.
"""
from __future__ import annotations

import logging
import socket
import sys
from typing import IO, Any

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

    def read_more(self) -> None:
        """Read the next message; raises EOFError if the connection has ended."""
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
    while client.count(event="join", user=user) == 0:
        client.read_more()
    return client


def answered(client: Client, user: str) -> int:
    """How many of ``user``'s own messages ``client`` has had an answer to:
    its copy of the broadcast, or a ``rate_limited`` error."""
    return client.count(type="message", user=user) + client.count(code="rate_limited")


def heard_everything(client: Client, delivered: dict[str, int], mallory_left: bool) -> bool:
    """Has ``client`` heard every line the server let through, and mallory leave if she did?"""
    for user, count in delivered.items():
        if client.count(type="message", user=user) < count:
            return False
    return not mallory_left or client.count(event="leave", user="mallory") == 1


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="server: %(message)s")
    said = {"alice": ["hi bob", "did you see that?", "still here"],
            "bob": ["hi alice", "I did", "me too"]}
    with serve(port=0, rate_limit_per_s=RATE_PER_S, rate_burst=BURST,
               rate_abuse_limit=ABUSE_LIMIT, max_clients_per_ip=PER_IP) as server:
        alice = join(server.port, "alice")
        bob = join(server.port, "bob")
        mallory = join(server.port, "mallory")
        pair = {"alice": alice, "bob": bob}
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
        for alice_line, bob_line in zip(said["alice"], said["bob"]):
            alice.send(type="message", text=alice_line)
            bob.send(type="message", text=bob_line)

        # Every line gets an answer, or the connection ends: wait for that, not for time.
        while not mallory.closed and answered(mallory, "mallory") < FLOOD_LINES:
            mallory.read()
        for name, client in pair.items():
            while answered(client, name) < len(said[name]):
                client.read_more()
        delivered = {name: client.count(type="message", user=name)
                     for name, client in {**pair, "mallory": mallory}.items()}
        # Now each of the pair knows exactly what it should hear from the others.
        for client in pair.values():
            while not heard_everything(client, delivered, mallory_left=mallory.closed):
                client.read_more()
        for client in (alice, bob, mallory):
            client.close()

    refusals = [m for m in mallory.got if m.get("code") == "rate_limited"]
    if mallory.closed:
        print(f"mallory sent {FLOOD_LINES} lines at once: {delivered['mallory']} delivered, "
              f"{len(refusals) - 1} refused (rate_limited), then cut off:")
        print(f"  {refusals[-1]['text']}")
        unread = FLOOD_LINES - delivered["mallory"] - len(refusals)
        print(f"  the other {unread} lines were never handled")
    else:
        print(f"mallory sent {FLOOD_LINES} lines at once: {delivered['mallory']} delivered, "
              f"{len(refusals)} refused (rate_limited)")
    heard_all = refused == EXTRA_CONNECTIONS
    for name, client in pair.items():
        other = "bob" if name == "alice" else "alice"
        from_other = [m["text"] for m in client.got
                      if m.get("type") == "message" and m.get("user") == other]
        from_mallory = client.count(type="message", user="mallory")
        left = ", and that mallory left" if client.count(event="leave", user="mallory") else ""
        print(f"{name} heard {len(from_other)} of {other}'s {len(said[other])} lines, "
              f"{from_mallory} of mallory's{left}")
        heard_all = heard_all and from_other == said[other]
    return 0 if heard_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
