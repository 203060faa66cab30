"""``udp``: UDP clients through a lossy relay; every message exactly once, retransmissions vs ideal."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Callable

from .. import config as cfg
from ..faultrelay import Action as FaultAction
from ..faultrelay import Direction, FaultPlan, FaultRelay
from ..udp_client import ClientEvent, Notice, Received, UdpChatClient
from .measure import ServerProcess, percentile, progress


class UdpTally:
    """What one UDP client received, checked as it arrives; ``on_event`` runs on its threads.

    A chat text is ``"SENDER K SENT_AT"``: the sender's index, its message
    number, and ``time.monotonic()`` when it was handed to ``say``.
    """

    def __init__(self, index: int, done: threading.Condition) -> None:
        self.index = index
        self.done = done                  # shared by every tally; notified per delivery
        self.expected: dict[int, int] = {}  # sender -> next k
        self.copies: Counter[tuple[int, int]] = Counter()   # (sender, k) -> deliveries
        self.order_errors: list[str] = []
        self.notices: list[str] = []      # "message N was not delivered", "N messages lost"
        self.latencies: list[float] = []

    def on_event(self, event: ClientEvent) -> None:
        if isinstance(event, Notice):
            with self.done:
                self.notices.append(event.text)
                self.done.notify_all()
            return
        if not isinstance(event, Received) or event.message.get("type") != "message":
            return
        now = time.monotonic()
        sender_s, k_s, sent_at = str(event.message["text"]).split()
        sender, k = int(sender_s), int(k_s)
        with self.done:
            self.latencies.append(now - float(sent_at))
            self.copies[sender, k] += 1
            if self.expected.get(sender, 0) != k:
                self.order_errors.append(f"u{self.index}: got {sender}/{k}, expected "
                                         f"{sender}/{self.expected.get(sender, 0)}")
            self.expected[sender] = k + 1
            self.done.notify_all()


def udp_server_stats(lines: list[str]) -> dict[str, int]:
    """The ``stats {json}`` line a UDP server logs as it stops; {} if there is none."""
    for line in reversed(lines):
        _, found, rest = line.partition(" chat_sync.udp_server stats ")
        if found:
            stats: dict[str, int] = json.loads(rest)
            return stats
    return {}


QUIET_S = 30.0     # udp: give up waiting once senders are done and nothing came for this long


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loss", type=float, default=0.2,
                        help="fraction of datagrams the relay loses each way")
    parser.add_argument("--clients", type=int, default=3, help="UDP clients, all in one room")
    parser.add_argument("--messages", type=int, default=100, help="messages per client")
    parser.add_argument("--seed", type=int, default=1, help="the fault relay's seed")
    parser.add_argument("--base-delay", type=float, help="first retransmit delay (default: "
                        "the programs' own, 0.2 s); also the minimum RTO")
    parser.add_argument("--max-delay", type=float, help="longest retransmit delay")
    parser.add_argument("--max-retries", type=int, help="retransmissions before giving up")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds the run may take in all")


NOTES = ["ideal_retransmissions = 1/(1-p)^2 - 1: a try succeeds only if the datagram",
         "and its ack both survive, (1-p)^2; the ratios are measured/ideal.",
         "latency: from say() in the sender to delivery in the receiver."]


def run(args: argparse.Namespace) -> dict[str, Any]:
    timing = {"base_delay": args.base_delay, "max_delay": args.max_delay,
              "max_retries": args.max_retries}
    timing = {name: value for name, value in timing.items() if value is not None}
    if "base_delay" in timing:
        timing["min_rto"] = timing["base_delay"]
    defaults = cfg.UdpClientConfig()
    # No grace at shutdown: its retransmissions of the shutdown notice would skew the count.
    server_args = ["--log-level", "info", "--shutdown-grace-s", "0"]
    for name, value in timing.items():
        server_args += ["--" + name.replace("_", "-"), str(value)]
    plan = FaultPlan(loss=args.loss)
    want = args.clients * args.clients * args.messages
    progress(f"udp: {args.clients} clients x {args.messages} messages, "
             f"{args.loss:.0%} loss each way, seed {args.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess("chat_sync.udp_server", *server_args,
                               stderr_path=os.path.join(tmp, "server.log"))
        with server, FaultRelay(server.address, upstream=plan, downstream=plan,
                                seed=args.seed) as relay:
            done = threading.Condition()
            tallies = [UdpTally(i, done) for i in range(args.clients)]
            clients = [UdpChatClient(cfg.UdpClientConfig(host=relay.address[0],
                                                         port=relay.address[1],
                                                         user=f"u{i}", **timing),
                                     on_event=tallies[i].on_event)
                       for i in range(args.clients)]
            failures: list[str] = []

            def send_all(index: int) -> None:
                # One at a time: the client keeps one request out anyway, so a deeper
                # queue would only add its own queueing to the delivery times.
                for k in range(args.messages):
                    clients[index].say(f"{index} {k} {time.monotonic():.6f}")
                    if not clients[index].wait_sent(0, args.timeout):
                        failures.append(f"u{index}: message {k} not acked in time")
                        return

            def delivered() -> int:
                return sum(len(tally.copies) for tally in tallies)

            try:
                for client in clients:
                    client.connect(args.timeout)
                started = time.monotonic()
                senders = [threading.Thread(target=send_all, args=(i,), daemon=True)
                           for i in range(args.clients)]
                for sender in senders:
                    sender.start()
                wait_until_quiet(done, delivered, want, senders, started + args.timeout)
                elapsed = time.monotonic() - started
                for sender in senders:
                    sender.join(args.timeout)
                client_stats = [client.stats for client in clients]
                drops = {d: relay.count(d, FaultAction.DROP) for d in Direction}
                carried = {d: relay.schedule.received[d] for d in Direction}
            finally:
                closers = [threading.Thread(target=client.close) for client in clients]
                for closer in closers:      # each waits up to 2 s for acks: all at once
                    closer.start()
                for closer in closers:
                    closer.join()
        server_stats = udp_server_stats(server.log_lines())
    latencies = sorted(value for tally in tallies for value in tally.latencies)
    exactly_once = sum(1 for tally in tallies for copies in tally.copies.values()
                       if copies == 1)
    duplicates = sum(copies - 1 for tally in tallies for copies in tally.copies.values())
    order_errors = [error for tally in tallies for error in tally.order_errors]
    notices = [text for tally in tallies for text in tally.notices]
    for text in (failures + order_errors + notices)[:10]:
        progress(text)
    for tally, stats in zip(tallies, client_stats):
        missing = [(sender, k) for sender in range(args.clients) for k in range(args.messages)
                   if (sender, k) not in tally.copies]
        if missing:
            progress(f"u{tally.index} never received {len(missing)}, first {missing[:5]}; "
                     f"its client: sessions={stats['sessions']} lost={stats['lost']} "
                     f"keepalives={stats['keepalives']} given_up={stats['given_up']}")
    ideal = 1 / (1 - args.loss) ** 2 - 1
    client_sent = sum(stats["sent"] for stats in client_stats)
    client_retransmitted = sum(stats["retransmitted"] for stats in client_stats)
    per_request = client_retransmitted / client_sent if client_sent else 0.0
    server_sent = server_stats.get("sent", 0)
    per_datagram = server_stats.get("retransmitted", 0) / server_sent if server_sent else 0.0
    return {
        "scenario": "udp", "clients": args.clients, "messages": args.messages,
        "loss": args.loss, "seed": args.seed,
        "base_delay": timing.get("base_delay", defaults.base_delay),
        "max_retries": timing.get("max_retries", defaults.max_retries),
        "passed": (exactly_once == want and not duplicates and not order_errors
                   and bool(server_stats)),
        "delivered_exactly_once": exactly_once, "expected": want,
        "duplicates": duplicates, "order_errors": len(order_errors),
        "notices": len(notices), "send_failures": len(failures),
        "measured_loss_up": round(drops[Direction.UPSTREAM]
                                  / max(1, carried[Direction.UPSTREAM]), 4),
        "measured_loss_down": round(drops[Direction.DOWNSTREAM]
                                    / max(1, carried[Direction.DOWNSTREAM]), 4),
        "client_requests": client_sent, "client_retransmitted": client_retransmitted,
        "client_given_up": sum(stats["given_up"] for stats in client_stats),
        "client_retransmissions_per_request": round(per_request, 4),
        "server_datagrams": server_sent,
        "server_retransmitted": server_stats.get("retransmitted", 0),
        "server_given_up": server_stats.get("given_up", 0),
        "server_retransmissions_per_datagram": round(per_datagram, 4),
        "ideal_retransmissions": round(ideal, 4),
        "client_ratio_to_ideal": round(per_request / ideal, 3) if ideal else None,
        "server_ratio_to_ideal": round(per_datagram / ideal, 3) if ideal else None,
        "seconds": round(elapsed, 2),
        "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 1),
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 1),
        "latency_ms_max": round((latencies[-1] if latencies else 0.0) * 1000, 1),
    }


def wait_until_quiet(done: threading.Condition, count: Callable[[], int], want: int,
                     senders: list[threading.Thread], deadline: float) -> None:
    """Wait until ``count() >= want``, the deadline, or ``QUIET_S`` with nothing new
    once every sender has finished (a message given up on never comes)."""
    with done:
        last, quiet_since = -1, time.monotonic()
        while True:
            now = time.monotonic()
            got = count()
            if got >= want or now >= deadline:
                return
            if got != last:
                last, quiet_since = got, now
            elif not any(sender.is_alive() for sender in senders) \
                    and now - quiet_since >= QUIET_S:
                return
            done.wait(min(1.0, deadline - now))    # re-checks the senders once a second

