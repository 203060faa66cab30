"""Lesson 08: two UDP chat clients talk through a relay that loses datagrams.

    python lessons/08_retransmission/lesson08_lossy_chat.py --seed 7

Everything runs in this one process, on 127.0.0.1: a UDP chat server on a
free port, a ``FaultRelay`` in front of it that drops ``--loss`` (20%) of
the datagrams in each direction, and two ``UdpChatClient``s, alice and bob,
that reach the server only through the relay. Each says ``--messages``
lines; then the program prints what the relay did to the datagrams and what
each endpoint's retransmit layer did about it.

It checks what it claims: each client must get every line of the other
exactly once, in the order sent. Exit status 0 if so, 1 if not.

The seed fixes the fate of the k-th datagram in each direction. Which
datagram is the k-th depends on how the threads are scheduled (two clients
ack the same broadcast at nearly the same moment), so the counts vary a
little from run to run; the delivery does not.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from chat_sync.config import UdpClientConfig
from chat_sync.faultrelay import Action, Direction, FaultPlan, FaultRelay
from chat_sync.udp_client import Notice, Received, UdpChatClient
from chat_sync.udp_server import serve

# Faster than the defaults (0.2 s, 3 s, 6), so the demo takes a second or two;
# 12 retries make a give-up vanishingly rare at 20% loss each way.
TIMING: dict[str, Any] = {"base_delay": 0.05, "max_delay": 0.5, "min_rto": 0.05, "max_retries": 12}
WAIT_S = 20.0                  # the longest we wait for the chat to finish


def connect(address: tuple[str, int], user: str) -> UdpChatClient:
    """A client that joins the lobby through ``address``; its events go to its queue."""
    config = UdpClientConfig(host=address[0], port=address[1], user=user, keepalive_s=60.0,
                             **TIMING)
    client = UdpChatClient(config)
    client.connect(timeout=WAIT_S)
    return client


def lines_from(client: UdpChatClient, sender: str, count: int) -> tuple[list[str], list[str]]:
    """The first ``count`` chat lines ``client`` received from ``sender``, and its notices.

    Raises TimeoutError if they do not all come within ``WAIT_S``.
    """
    deadline = time.monotonic() + WAIT_S
    texts: list[str] = []
    notices: list[str] = []
    while len(texts) < count:
        event = client.next_event(timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(event, Notice):
            notices.append(event.text)
        elif isinstance(event, Received):
            message = event.message
            if message.get("type") == "message" and message.get("user") == sender:
                texts.append(message["text"])
    return texts, notices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat over UDP through a lossy relay.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--loss", type=float, default=0.2, help="loss rate each way")
    parser.add_argument("--messages", type=int, default=20, help="lines each client says")
    args = parser.parse_args(argv)
    plan = FaultPlan(loss=args.loss)
    said = {user: [f"{user} line {i}" for i in range(args.messages)] for user in ("alice", "bob")}
    with serve(port=0, shutdown_grace_s=0.3, **TIMING) as server:
        with FaultRelay((server.host, server.port), upstream=plan, downstream=plan,
                        seed=args.seed) as relay:
            alice = connect(relay.address, "alice")
            bob = connect(relay.address, "bob")
            try:
                for alice_line, bob_line in zip(said["alice"], said["bob"]):
                    alice.say(alice_line)    # queued: each client has one request out
                    bob.say(bob_line)
                got_by_bob, bob_notices = lines_from(bob, "alice", args.messages)
                got_by_alice, alice_notices = lines_from(alice, "bob", args.messages)
                client_stats = {"alice": alice.timer.stats, "bob": bob.timer.stats}
            finally:
                alice.close()                # each says leave, through the relay too
                bob.close()
    # Everything has stopped: the counters below are final.
    print(f"seed {args.seed}, {args.loss:.0%} loss each way; "
          f"alice and bob said {args.messages} lines each")
    for direction, label in [(Direction.UPSTREAM, "client -> server"),
                             (Direction.DOWNSTREAM, "server -> client")]:
        dropped = relay.count(direction, Action.DROP)
        forwarded = relay.count(direction, Action.FORWARD)
        print(f"relay {label}: {dropped + forwarded} datagrams, "
              f"{dropped} dropped, {forwarded} forwarded")
    for user, stats in client_stats.items():
        print(f"{user:>6}: {stats.describe()}")
    print(f"server: {server.server.timer.stats.describe()}")
    sent = sum(stats.sent for stats in client_stats.values())
    retransmitted = sum(stats.retransmitted for stats in client_stats.values())
    ideal = 1 / (1 - args.loss) ** 2 - 1
    print(f"client retransmissions per request: {retransmitted / sent:.2f} "
          f"(ideal 1/(1-p)^2 - 1 = {ideal:.2f})")
    in_order = got_by_bob == said["alice"] and got_by_alice == said["bob"]
    print(f"every line arrived exactly once, in order: {'yes' if in_order else 'NO'}")
    for notice in alice_notices + bob_notices:
        print(f"notice: {notice}")
    return 0 if in_order and not (alice_notices or bob_notices) else 1


if __name__ == "__main__":
    raise SystemExit(main())
