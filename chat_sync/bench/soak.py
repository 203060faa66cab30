"""``soak``: the TCP server under abuse while well-behaved clients check every delivery."""
from __future__ import annotations

import argparse
import os
import random
import re
import selectors
import socket
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Callable

import json

from .. import protocol as p
from .measure import RECV_BYTES, ServerProcess, percentile, progress
from .peer import PEER_FAILURES, ClosedByServer, Refused, TcpPeer

SOAK_TIMEOUT_S = 5.0        # every blocking socket call of the soak
SOAK_GRACE_S = 15.0         # after the load: how long the well-behaved may take to get the rest
ERROR_CODE = re.compile(rb'"type":"error","code":"(\w+)"')
DISCONNECTED = re.compile(r"\] disconnected: (.*)$")
REFUSED = re.compile(r"\] refused: (.*)$")


class SoakCounts:
    """What every soak thread saw, under one lock: connection fates and error codes."""

    MAX_PROBLEMS = 50

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()      # error code -> count, every client
        self.problems: list[str] = []              # the well-behaved clients' failures

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def add_errors(self, errors: Counter[str]) -> None:
        with self.lock:
            self.errors.update(errors)

    def problem(self, text: str) -> None:
        progress(f"soak: {text}")
        with self.lock:
            if len(self.problems) < self.MAX_PROBLEMS:
                self.problems.append(text)

    def fate(self, exc: BaseException) -> None:
        """Count how a connection ended on us."""
        if isinstance(exc, ClosedByServer):
            self.add("closed_by_server")
        elif isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            self.add("reset_by_server")
        elif isinstance(exc, TimeoutError):
            self.add("timed_out")
        elif isinstance(exc, Refused):
            self.add("refused")
        else:
            self.add("other_failures")


def soak_connect(address: tuple[str, int], counts: SoakCounts, **options: Any
                 ) -> TcpPeer | None:
    """A connected peer past its welcome, or None (counted: failed or refused)."""
    try:
        peer = TcpPeer(address, SOAK_TIMEOUT_S, **options)
    except OSError:
        counts.add("connect_failed")
        return None
    counts.add("connections_made")
    try:
        welcome = peer.next_message()
        if welcome.get("type") != "welcome":
            raise Refused(str(welcome.get("code")))
        return peer
    except PEER_FAILURES as exc:
        counts.fate(exc)
        soak_close(peer, counts)
        return None


def soak_close(peer: TcpPeer, counts: SoakCounts, reset: bool = False) -> None:
    """Close with an RST, or gracefully: FIN, then read to the server's EOF (at most 1 s).

    Closing a socket with unread input sends an RST too, so a graceful close
    must drain first, or every client that quits looks like a reset.
    """
    counts.add_errors(peer.errors)
    if reset:
        counts.add("rst_sent")
    else:
        try:
            peer.sock.setblocking(True)
            peer.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            while (remaining := deadline - time.monotonic()) > 0:
                peer.sock.settimeout(remaining)
                if not peer.sock.recv(RECV_BYTES):
                    break
        except OSError:
            pass
    try:
        peer.close(reset)
    except OSError:
        peer.sock.close()


class WellBehaved:
    """A client that chats at ``rate`` per second and checks everything it receives.

    Texts are ``"wb I K SENT_AT"``. Every well-behaved message must reach every
    well-behaved client, each sender's in order, with ``seq`` increasing, and
    no error may ever come back: a problem is recorded otherwise.
    """

    def __init__(self, index: int, address: tuple[str, int], rate: float,
                 counts: SoakCounts) -> None:
        self.index = index
        self.name = f"wb{index}"
        self.address = address
        self.rate = rate
        self.counts = counts
        self.sent = 0
        self.got: Counter[int] = Counter()          # sender index -> messages received
        self.last_seq = 0
        self.latencies: list[float] = []
        self.peer: TcpPeer | None = None

    def connect(self) -> None:
        self.peer = TcpPeer(self.address, SOAK_TIMEOUT_S)
        self.counts.add("connections_made")
        self.peer.next_message()                    # the welcome
        self.peer.join("lobby", self.name)

    def chat(self, until: threading.Event) -> None:
        """Send at ``rate`` until ``until`` is set, reading all the while."""
        assert self.peer is not None
        started = time.monotonic() + self.index / (self.rate * 4)    # not all at once
        while not until.is_set():
            wait = started + self.sent / self.rate - time.monotonic()
            if wait <= 0:
                text = f"wb {self.index} {self.sent} {time.monotonic():.6f}"
                self.peer.send({"type": "message", "text": text})
                self.sent += 1
                continue
            self.read(min(wait, 0.2))

    def collect(self, final: dict[int, int], deadline: float) -> None:
        """Read until every well-behaved sender's ``final`` count has arrived."""
        while any(self.got[i] < n for i, n in final.items()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = {i: n - self.got[i] for i, n in final.items() if self.got[i] < n}
                self.counts.problem(f"{self.name}: never received {missing}")
                return
            self.read(min(remaining, 0.2))

    def read(self, timeout: float) -> None:
        assert self.peer is not None
        self.peer.sock.settimeout(timeout)
        try:
            lines = self.peer.lines()
        except TimeoutError:
            return
        for line in lines:
            self.check(json.loads(line))

    def check(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "error":
            self.counts.problem(f"{self.name}: got error {message.get('code')}: "
                                f"{message.get('text')}")
            return
        seq = message.get("seq")
        if isinstance(seq, int) and not message.get("history"):
            if seq <= self.last_seq:
                self.counts.problem(f"{self.name}: seq {seq} after {self.last_seq}")
            self.last_seq = seq
        if kind != "message" or not str(message.get("user", "")).startswith("wb"):
            return
        _, sender_s, k_s, sent_at = str(message["text"]).split()
        sender, k = int(sender_s), int(k_s)
        self.latencies.append(time.monotonic() - float(sent_at))
        if k != self.got[sender]:
            self.counts.problem(f"{self.name}: got wb{sender}/{k}, "
                                f"expected wb{sender}/{self.got[sender]}")
        self.got[sender] = k + 1

    def close(self) -> None:
        if self.peer is not None:
            soak_close(self.peer, self.counts)


def churn(index: int, address: tuple[str, int], counts: SoakCounts, stop: threading.Event,
          rng: random.Random) -> None:
    """Connect, join, say a little, go: by a clean close or, one time in four, an RST."""
    cycle = 0
    while not stop.is_set():
        cycle += 1
        peer = soak_connect(address, counts)
        if peer is None:
            stop.wait(0.2)                          # pacing, not synchronisation
            continue
        reset = rng.random() < 0.25
        try:
            peer.join(rng.choice(["lobby", "lobby", "side"]), f"ch{index}x{cycle}")
            for k in range(rng.randint(0, 3)):
                peer.send({"type": "message", "text": f"churn {index} {cycle} {k}"})
                stop.wait(rng.uniform(0.0, 0.3))
            if not reset and rng.random() < 0.5:
                peer.send({"type": "leave"})
            counts.add("churn_cycles")
        except PEER_FAILURES as exc:
            counts.fate(exc)
        soak_close(peer, counts, reset)


def flood(index: int, address: tuple[str, int], counts: SoakCounts,
          stop: threading.Event) -> None:
    """Join a room of its own and send as fast as the socket takes it, draining replies."""
    line = p.encode({"type": "message", "text": f"flood {index} " + "x" * 100})
    batch = line * 64
    while not stop.is_set():
        peer = soak_connect(address, counts)
        if peer is None:
            stop.wait(0.5)
            continue
        out = bytearray()
        sent = 0
        selector = selectors.DefaultSelector()
        try:
            peer.join(f"flood{index}", f"fl{index}")
            peer.sock.setblocking(False)
            selector.register(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while not stop.is_set():
                for _, mask in selector.select(0.2):
                    try:
                        if mask & selectors.EVENT_READ:
                            data = peer.sock.recv(RECV_BYTES)
                            if not data:
                                raise ClosedByServer("closed by the server")
                            for code in ERROR_CODE.findall(data):
                                peer.errors[code.decode()] += 1
                        if mask & selectors.EVENT_WRITE:
                            if len(out) < len(batch):
                                out += batch
                            done = peer.sock.send(out)
                            del out[:done]
                            sent += done
                    except BlockingIOError:
                        pass
        except PEER_FAILURES as exc:
            counts.fate(exc)
        finally:
            selector.close()
            counts.add("flood_lines_sent", sent // len(line))
            soak_close(peer, counts)
        stop.wait(0.5)


GARBAGE: list[tuple[str, Callable[[random.Random], bytes]]] = [
    ("random_bytes", lambda rng: rng.randbytes(rng.randrange(1, 400)) + b"\n"),
    ("bad_json", lambda rng: b'{"type": "join", "room": \n'),
    ("nan", lambda rng: b'{"type":"ping","x":NaN}\n'),
    ("duplicate_keys", lambda rng: b'{"type":"ping","type":"who"}\n'),
    ("bad_utf8", lambda rng: b'{"type":"message","text":"\xff\xfe\xfd"}\n'),
    ("lone_surrogate", lambda rng: b'{"type":"ping","x":"\\ud800"}\n'),
    ("deep_nesting", lambda rng: b"[" * 5000 + b"\n"),
    ("not_an_object", lambda rng: b'["type","ping"]\n'),
    ("unknown_type", lambda rng: b'{"type":"shout","text":"hi"}\n'),
    ("not_joined", lambda rng: b'{"type":"message","text":"anyone?"}\n'),
    ("bad_name", lambda rng: b'{"type":"join","room":"lobby","user":"bad name!"}\n'),
    ("long_line", lambda rng: b"x" * (p.MAX_LINE_BYTES + 1000) + b"\n"),
]


def garbage(index: int, address: tuple[str, int], counts: SoakCounts, stop: threading.Event,
            rng: random.Random) -> None:
    """Connect, send one kind of garbage a few times, read the answers, go."""
    while not stop.is_set():
        peer = soak_connect(address, counts)
        if peer is None:
            stop.wait(0.2)
            continue
        kind, make = rng.choice(GARBAGE)
        try:
            for _ in range(rng.randint(1, 5)):
                peer.sock.sendall(make(rng))
            counts.add("garbage_sent")
            counts.add(f"garbage_{kind}")
            deadline = time.monotonic() + 1.0
            while not stop.is_set() and time.monotonic() < deadline:
                peer.sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
                try:
                    for line in peer.lines():
                        for code in ERROR_CODE.findall(line):
                            peer.errors[code.decode()] += 1
                except TimeoutError:
                    continue
        except PEER_FAILURES as exc:
            counts.fate(exc)
        soak_close(peer, counts, reset=rng.random() < 0.25)


def linger(index: int, address: tuple[str, int], counts: SoakCounts,
           stop: threading.Event) -> None:
    """Connect and never finish: say nothing, or half a line; wait for the server to let go.

    A server with join and partial-line timeouts closes these; one without
    holds them until the soak ends.
    """
    cycle = 0
    while not stop.is_set():
        cycle += 1
        peer = soak_connect(address, counts)
        if peer is None:
            stop.wait(0.5)
            continue
        try:
            if (index + cycle) % 2:
                peer.sock.sendall(b'{"type":"join","room":"lob')     # and then nothing
            counts.add("lingered")
            while not stop.is_set():
                peer.sock.settimeout(0.5)
                try:
                    peer.next_message()
                except TimeoutError:
                    continue
        except PEER_FAILURES as exc:
            counts.fate(exc)
        soak_close(peer, counts)


def slow_read(index: int, address: tuple[str, int], room: str, counts: SoakCounts,
              stop: threading.Event) -> None:
    """Join ``room`` with a tiny receive buffer and never read; ping once a second."""
    cycle = 0
    while not stop.is_set():
        cycle += 1
        peer = soak_connect(address, counts, rcvbuf=4096)
        if peer is None:
            stop.wait(0.5)
            continue
        try:
            peer.join(room, f"sl{index}x{cycle}")
            while not stop.wait(1.0):
                peer.send({"type": "ping"})         # fails once the server has let go
        except PEER_FAILURES as exc:
            counts.fate(exc)
        soak_close(peer, counts)
        stop.wait(0.5)


# Who takes part, and how many by default: one place for the flags, the progress
# line and the figures.
CROWD = {
    "well_behaved": (3, "checking clients"),
    "churners": (4, "clients that join, talk a little and go (a quarter by RST)"),
    "flooders": (2, "clients that send as fast as the socket takes it"),
    "garbage": (2, "garbage senders"),
    "slow_readers": (3, "clients with a tiny receive buffer that never read"),
    "lingerers": (2, "connections that never join, or stop mid-line"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the abuse lasts")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the attackers' choices")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="messages per second of each well-behaved client")
    for name, (default, help) in CROWD.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default, help=help)


NOTES = ["every well-behaved message must reach every well-behaved client:",
         "wb_delivered == wb_expected; disconnect_reasons come from the server's log."]


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    crowd = {name: getattr(args, name) for name in CROWD}
    progress(f"soak: {args.seconds} s; " + ", ".join(
        f"{count} {name.replace('_', ' ')}" for name, count in crowd.items())
        + f" (seed {args.seed})")
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess("chat_sync.tcp_server", "--log-level", "info",
                               stderr_path=os.path.join(tmp, "server.log"))
        with server:
            counts = SoakCounts()
            rss = [server.rss_kib()]
            sampled = threading.Event()

            def sample() -> None:
                while not sampled.wait(1.0):
                    rss.append(server.rss_kib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            chatters = [WellBehaved(i, server.address, args.rate, counts)
                        for i in range(args.well_behaved)]
            stop = threading.Event()
            final: dict[int, int] = {}          # well-behaved sender -> messages it sent
            published = threading.Barrier(len(chatters))

            def well_behaved(chatter: WellBehaved) -> None:
                try:
                    chatter.chat(stop)
                    final[chatter.index] = chatter.sent
                    published.wait(SOAK_GRACE_S)
                    chatter.collect(final, time.monotonic() + SOAK_GRACE_S)
                except (*PEER_FAILURES, threading.BrokenBarrierError) as exc:
                    counts.problem(f"{chatter.name}: {exc!r}")

            try:
                for chatter in chatters:
                    chatter.connect()
                started = time.monotonic()
                threads = start_attackers(args, server.address, counts, stop, rng)
                threads += [threading.Thread(target=well_behaved, args=(c,), name=c.name,
                                             daemon=True) for c in chatters]
                for thread in threads[-len(chatters):]:
                    thread.start()
                deadline = started + args.seconds
                ticker = threading.Event()          # never set: the wait is the pacing
                while (remaining := deadline - time.monotonic()) > 0:
                    ticker.wait(min(10.0, remaining))
                    progress(f"soak: {time.monotonic() - started:.0f} s, RSS {rss[-1]} KiB, "
                             f"{counts.counts['connections_made']} connections so far")
                stop.set()
                for thread in threads:
                    thread.join(SOAK_GRACE_S + 2 * SOAK_TIMEOUT_S)
                    if thread.is_alive():
                        counts.problem(f"thread {thread.name} did not end")
                elapsed = time.monotonic() - started
                still_serving = server.proc.poll() is None and answers_ping(server.address)
                rss_end = server.rss_kib() if server.proc.poll() is None else 0
            finally:
                sampled.set()
                for chatter in chatters:
                    chatter.close()
        log_lines = server.log_lines()
    sent = sum(final.values())
    delivered = sum(sum(c.got[i] for i in final) for c in chatters)
    latencies = sorted(value for c in chatters for value in c.latencies)
    reasons = Counter(m.group(1).split(":")[0] for line in log_lines
                      if (m := DISCONNECTED.search(line)))
    refusals = Counter(m.group(1).split(":")[0] for line in log_lines
                       if (m := REFUSED.search(line)))
    tracebacks = sum(1 for line in log_lines if line.startswith("Traceback"))
    counted = dict(counts.counts)
    return {
        "scenario": "soak", "seconds": round(elapsed, 1), "seed": args.seed,
        "rate": args.rate, **crowd,
        "passed": (delivered == sent * len(chatters) and not counts.problems
                   and still_serving and not tracebacks),
        "wb_sent": sent, "wb_expected": sent * len(chatters), "wb_delivered": delivered,
        "wb_problems": len(counts.problems),
        "wb_latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 1),
        "wb_latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 1),
        "rss_kib_start": rss[0], "rss_kib_end": rss_end, "rss_kib_max": max(rss + [rss_end]),
        "rss_samples": len(rss),
        "connections_made": counted.pop("connections_made", 0),
        "connect_failed": counted.pop("connect_failed", 0),
        "refused": counted.pop("refused", 0),
        "reset_by_server": counted.pop("reset_by_server", 0),
        "closed_by_server": counted.pop("closed_by_server", 0),
        "rst_sent": counted.pop("rst_sent", 0),
        "errors_by_code": dict(sorted(counts.errors.items())),
        "disconnect_reasons": dict(sorted(reasons.items())),
        "server_refusals": dict(sorted(refusals.items())),
        "server_tracebacks": tracebacks, "still_serving": still_serving,
        "other": dict(sorted(counted.items())),
    }


def start_attackers(args: argparse.Namespace, address: tuple[str, int], counts: SoakCounts,
                    stop: threading.Event, rng: random.Random) -> list[threading.Thread]:
    """Start every churner, flooder, garbage sender and slow reader; each ends on ``stop``."""
    jobs: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = []
    for i in range(args.churners):
        jobs.append((f"churner{i}", churn,
                     (i, address, counts, stop, random.Random(rng.random()))))
    for i in range(args.flooders):
        jobs.append((f"flooder{i}", flood, (i, address, counts, stop)))
    for i in range(args.garbage):
        jobs.append((f"garbage{i}", garbage,
                     (i, address, counts, stop, random.Random(rng.random()))))
    for i in range(args.lingerers):
        jobs.append((f"linger{i}", linger, (i, address, counts, stop)))
    for i in range(args.slow_readers):
        room = f"flood{i % args.flooders}" if args.flooders and i % 2 else "lobby"
        jobs.append((f"slow{i}", slow_read, (i, address, room, counts, stop)))
    threads = [threading.Thread(target=job, args=job_args, name=name, daemon=True)
               for name, job, job_args in jobs]
    for thread in threads:
        thread.start()
    return threads


def answers_ping(address: tuple[str, int]) -> bool:
    """A fresh client is welcomed, joins and gets its pong."""
    try:
        peer = TcpPeer(address, SOAK_TIMEOUT_S)
        try:
            peer.next_message()
            peer.join("lobby", "last")
            peer.send({"type": "ping"})
            peer.until(lambda m: m.get("type") == "pong")
            return True
        finally:
            peer.close()
    except PEER_FAILURES:
        return False

