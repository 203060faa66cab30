"""Benchmarks that check what they measure: ``python -m chat_sync.bench SCENARIO``.

Theory of operation
-------------------
Each scenario starts the server under test as a subprocess on a free port
(so the server and the load do not share a GIL), drives it from this
process with many non-blocking client sockets on one selector, verifies
every delivery while it measures, and prints one JSON line of figures
(``--json``: only that line) after a readable summary. Progress goes to
stderr. Times come from ``time.monotonic``, one clock for every process of
the machine, so a timestamp written into a message by the sender can be
subtracted on the receiving side.

Scenarios:

- ``fanout``: N clients in one room each send M messages, at most
  ``--window`` of their own unechoed at a time. Every client must receive all
  N*M messages in per-sender order with strictly increasing ``seq``.
  ``--baseline raw`` runs the same load against ``raw-relay`` too, the
  ceiling for one Python thread: a selectors relay that forwards complete
  lines to everyone with no parsing, rooms or logging.
- ``connections``: many clients held at once, joined to rooms of
  ``--room-size``; server RSS per client and the time for one message to
  reach a whole room.
- ``udp``: N ``UdpChatClient``s each send M messages through a ``FaultRelay``
  that loses ``--loss`` of the datagrams each way. Every client must
  receive every message exactly once, each sender's in order. Figures:
  retransmissions per request (client) and per datagram (server, from the
  ``stats`` line the UDP server logs as it stops) against the ideal
  1/(1-p)^2 - 1, and delivery times. The retransmit timing is the
  programs' own unless ``--base-delay`` and friends say otherwise.
- ``idle``: a UDP and a TCP server, one joined client each, then silence
  for ``--seconds``; the servers' CPU seconds (``/proc``) and the UDP
  client's timer and reader wake-ups in that window must all be about 0.
  It is the one scenario that waits on purpose.
- ``soak``: the TCP server, with its default limits, under abuse for
  ``--seconds``: churning clients (some leave with an RST), flooders,
  garbage senders, slow readers, lingerers that never join or stop
  mid-line, while a few well-behaved clients chat at ``--rate`` and check
  that each of their messages reaches each of them. Figures: server RSS
  (sampled each second), errors by code, connection fates, and the
  disconnect reasons the server logged. Every thread ends by itself; all
  traffic is to 127.0.0.1, 16 connections at once with the defaults.
- ``raw-relay``: run the baseline relay itself (used by ``fanout``).

Trade-off: the soak's clients are threads with blocking sockets (each read
and write bounded by a timeout), not one selector: simpler to read, and
the load they make is small next to the server's own work.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import config as cfg
from . import protocol as p
from .faultrelay import Action as FaultAction
from .faultrelay import Direction, FaultPlan, FaultRelay
from .udp_client import ClientEvent, Notice, Received, UdpChatClient
from .wakeup import Wakeup

RECV_BYTES = 256 * 1024
IDLE_CPU_S = 0.05            # idle: the most CPU a server may use in the window


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- the server under test, as a subprocess -----------------------------------
class ServerProcess:
    """A server started with ``python -m MODULE ... --port 0``; knows its port and pid."""

    def __init__(self, module: str, *args: str, ready_timeout: float = 20.0,
                 stderr_path: str | None = None) -> None:
        """Start it and wait for its ``listening on`` line; ``stderr_path`` keeps its log."""
        self.stderr_path = stderr_path
        stderr = open(stderr_path, "w") if stderr_path is not None else None
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", module, *args, "--port", "0"],
                                         stdout=subprocess.PIPE, stderr=stderr, text=True)
        finally:
            if stderr is not None:
                stderr.close()              # the child has its own copy
        assert self.proc.stdout is not None
        line = self._readline(ready_timeout)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{module} did not start: {line!r}")
        host, _, port = line.split()[-1].rpartition(":")
        self.address = (host, int(port))

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
        selector.close()
        return self.proc.stdout.readline().strip() if ready else ""

    def log_lines(self) -> list[str]:
        """What it wrote on stderr so far (with ``stderr_path``); all of it once stopped."""
        if self.stderr_path is None:
            return []
        with open(self.stderr_path, encoding="utf-8", errors="replace") as log_file:
            return log_file.read().splitlines()

    def rss_kib(self) -> int:
        return read_rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def no_limits() -> list[str]:
    """TCP server flags that lift the per-client defences a load from one address trips.

    ``fanout`` and ``connections`` measure capacity: thousands of connections
    from 127.0.0.1, each sending as fast as its echoes come back, all joined
    only once every one is connected. Defences a server does not have yet
    are skipped, so the bench runs against servers before and after them.
    """
    fields = {f.name for f in dataclasses.fields(cfg.TcpServerConfig)}
    flags: list[str] = []
    for name in ("max_clients_per_ip", "rate_limit_per_s", "join_timeout_s"):
        if name in fields:
            flags += ["--" + name.replace("_", "-"), "0"]
    return flags


# -- many clients on one selector -------------------------------------------------
@dataclass(eq=False)
class LoadClient:
    index: int
    sock: socket.socket
    name: str
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    writing: bool = False
    sent: int = 0              # own messages sent
    echoed: int = 0            # own messages received back
    received: int = 0          # messages received, all senders
    last_seq: int = 0
    joined: bool = False
    ponged: bool = False
    expected: dict[int, int] = field(default_factory=dict)   # sender -> next k


class LoadGenerator:
    """Clients on one selector; ``run_until`` pumps bytes and hands lines to a callback."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.clients: list[LoadClient] = []

    def connect(self, address: tuple[str, int], count: int, prefix: str = "u") -> None:
        for _ in range(count):
            index = len(self.clients)
            sock = socket.create_connection(address, timeout=30)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = LoadClient(index, sock, f"{prefix}{index:05d}")
            self.selector.register(sock, selectors.EVENT_READ, client)
            self.clients.append(client)
            if count >= 1000 and index % 1000 == 999:
                progress(f"connected {index + 1}")

    def send(self, client: LoadClient, message: dict[str, Any]) -> None:
        client.outbuf += p.encode(message)
        self._flush(client)

    def _flush(self, client: LoadClient) -> None:
        try:
            sent = client.sock.send(client.outbuf)
        except BlockingIOError:
            sent = 0
        del client.outbuf[:sent]
        want = bool(client.outbuf)
        if want != client.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.selector.modify(client.sock, events, client)
            client.writing = want

    def run_until(self, done: Callable[[], bool], on_line: Callable[[LoadClient, bytes], None],
                  timeout: float) -> None:
        """Pump until ``done()``; raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the load did not complete in time")
            for key, mask in self.selector.select(min(remaining, 1.0)):
                client: LoadClient = key.data
                if mask & selectors.EVENT_WRITE:
                    self._flush(client)
                if mask & selectors.EVENT_READ:
                    self._read(client, on_line)

    def _read(self, client: LoadClient, on_line: Callable[[LoadClient, bytes], None]) -> None:
        try:
            data = client.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError(f"{client.name}: server closed the connection")
        client.inbuf += data
        end = client.inbuf.rfind(b"\n")
        if end < 0:
            return
        chunk = bytes(client.inbuf[:end])
        del client.inbuf[:end + 1]
        for line in chunk.split(b"\n"):
            on_line(client, line)

    def close(self) -> None:
        for client in self.clients:
            self.selector.unregister(client.sock)
            client.sock.close()
        self.selector.close()
        self.clients.clear()


# -- fanout ----------------------------------------------------------------------
def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def join_all(load: LoadGenerator, rooms: Callable[[LoadClient], str], timeout: float) -> None:
    """Join every client; return once all are joined and nothing is left in flight.

    Two rounds: everyone joins and sees its own join notice; then everyone
    pings. A pong comes after everything queued for that client before it,
    so once all have their pong, every join notice has been delivered.
    """
    def on_line(client: LoadClient, line: bytes) -> None:
        message = json.loads(line)
        if message["type"] == "system" and message.get("user") == client.name \
                and not message.get("history"):
            client.joined = True
        elif message["type"] == "pong":
            client.ponged = True
        elif message["type"] == "error":
            raise RuntimeError(f"{client.name}: {message}")

    for client in load.clients:
        load.send(client, {"type": "join", "room": rooms(client), "user": client.name})
    load.run_until(lambda: all(c.joined for c in load.clients), on_line, timeout)
    ping_all(load, timeout)


def ping_all(load: LoadGenerator, timeout: float) -> None:
    """Every client pings and waits for its pong: nothing queued before it is left."""
    def on_line(client: LoadClient, line: bytes) -> None:
        if line.startswith(b'{"type":"pong"'):
            client.ponged = True
        elif line.startswith(b'{"type":"error"'):
            raise RuntimeError(f"{client.name}: {line!r}")

    for client in load.clients:
        client.ponged = False
        load.send(client, {"type": "ping"})
    load.run_until(lambda: all(c.ponged for c in load.clients), on_line, timeout)


def sync_raw(load: LoadGenerator, timeout: float) -> None:
    """Raw relay: wait until every client is accepted (each sees one of client 0's lines).

    A connect completes in the kernel before the relay's ``accept``; a line
    sent then misses the clients not accepted yet, so it is sent again
    every half second until all have seen one.
    """
    seen: set[int] = set()

    def on_line(client: LoadClient, line: bytes) -> None:
        seen.add(client.index)

    deadline = time.monotonic() + timeout
    while True:
        load.send(load.clients[0], {"type": "sync"})
        try:
            load.run_until(lambda: len(seen) == len(load.clients), on_line,
                           min(0.5, max(0.0, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise


def fanout(address: tuple[str, int], clients: int, messages: int, window: int, raw: bool,
           timeout: float = 300.0, server_cpu: Callable[[], float] | None = None
           ) -> dict[str, Any]:
    """The fanout load against a server at ``address``; returns figures.

    ``*_cpu_share`` is CPU seconds per second of the load: near 1.0 for this
    process means the load generator, not the server, sets the pace.
    ``server_cpu`` reads the server's CPU seconds, when it is known.
    """
    load = LoadGenerator()
    try:
        load.connect(address, clients)
        if raw:
            sync_raw(load, timeout)
        else:
            join_all(load, lambda c: "bench", timeout)
        latencies: list[float] = []
        total = clients * messages
        errors: list[str] = []

        def send_more(client: LoadClient) -> None:
            while client.sent < messages and client.sent - client.echoed < window:
                text = f"{client.index} {client.sent} {time.monotonic():.6f}"
                load.send(client, {"type": "message", "text": text})
                client.sent += 1

        def on_line(client: LoadClient, line: bytes) -> None:
            # Sliced, not json.loads: the generator must not be the bottleneck it measures.
            if not line.startswith(b'{"type":"message"'):
                return
            now = time.monotonic()
            start = line.index(b'"text":"') + 8
            end = line.index(b'"', start)
            sender_s, k_s, sent_at = line[start:end].split()
            sender, k = int(sender_s), int(k_s)
            latencies.append(now - float(sent_at))
            if client.expected.get(sender, 0) != k:
                errors.append(f"{client.name}: got {sender}/{k}, "
                              f"expected {sender}/{client.expected.get(sender, 0)}")
            client.expected[sender] = k + 1
            if not raw:
                start = line.index(b'"seq":', end) + 6
                seq = int(line[start:line.index(b",", start)])
                if seq <= client.last_seq:
                    errors.append(f"{client.name}: seq {seq} after {client.last_seq}")
                client.last_seq = seq
            client.received += 1
            if sender == client.index:
                client.echoed += 1
                send_more(client)

        started = time.monotonic()
        cpu_started = time.process_time()
        server_cpu_started = server_cpu() if server_cpu is not None else 0.0
        for client in load.clients:
            send_more(client)
        try:
            load.run_until(lambda: all(c.received == total for c in load.clients), on_line,
                           timeout)
        except TimeoutError:
            pass
        elapsed = time.monotonic() - started
        shares = {"generator_cpu_share": round((time.process_time() - cpu_started) / elapsed, 2)}
        if server_cpu is not None:
            used = server_cpu() - server_cpu_started
            shares["server_cpu_share"] = round(used / elapsed, 2)
            delivered_now = sum(c.received for c in load.clients)
            shares["server_cpu_us_per_delivery"] = round(used / max(1, delivered_now) * 1e6, 2)
        delivered = sum(c.received for c in load.clients)
        latencies.sort()
        return {
            "clients": clients, "messages": messages, "window": window,
            "deliveries": delivered, "losses": clients * total - delivered,
            "order_errors": len(errors), "seconds": round(elapsed, 3),
            "deliveries_per_s": round(delivered / elapsed),
            "latency_ms_p50": round(percentile(latencies, 0.50) * 1000, 2),
            "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 2),
            "latency_ms_max": round((latencies[-1] if latencies else 0.0) * 1000, 2),
            "latency_ms_mean": round(sum(latencies) / max(1, len(latencies)) * 1000, 2),
            # Little's law: deliveries in flight (each client's window, to every
            # client) over deliveries per second is the mean wait they imply.
            "littles_law_ms": round(clients * window * clients / (delivered / elapsed) * 1000, 2)
            if delivered else 0.0,
            **shares,
        }
    finally:
        load.close()


def run_fanout(args: argparse.Namespace) -> dict[str, Any]:
    if args.server is not None:             # e.g. one running under cProfile
        host, _, port = args.server.rpartition(":")
        progress(f"fanout: {args.clients} clients x {args.messages} messages against "
                 f"{args.server}")
        return {"scenario": "fanout", "server": args.server,
                **fanout((host, int(port)), args.clients, args.messages, args.window,
                         raw=False)}
    with tempfile.TemporaryDirectory() as tmp:
        server_args = ["--max-clients", str(args.clients + 10), *no_limits()]
        if not args.no_log:
            server_args += ["--log-file", os.path.join(tmp, "chat.log")]
        progress(f"fanout: {args.clients} clients x {args.messages} messages against chat_sync")
        with ServerProcess("chat_sync.tcp_server", *server_args,
                           "--log-level", "warning") as server:
            figures = {"scenario": "fanout", "logging": not args.no_log,
                       **fanout(server.address, args.clients, args.messages, args.window,
                                raw=False, server_cpu=server.cpu_seconds)}
    if args.baseline == "raw":
        progress("fanout: the same load against the raw relay")
        with ServerProcess("chat_sync.bench", "raw-relay") as relay:
            raw = fanout(relay.address, args.clients, args.messages, args.window, raw=True,
                         server_cpu=relay.cpu_seconds)
        figures["raw_deliveries_per_s"] = raw["deliveries_per_s"]
        figures["raw_latency_ms_p50"] = raw["latency_ms_p50"]
        figures["raw_latency_ms_p99"] = raw["latency_ms_p99"]
        figures["raw_latency_ms_mean"] = raw["latency_ms_mean"]
        figures["raw_losses"] = raw["losses"]
        figures["raw_generator_cpu_share"] = raw["generator_cpu_share"]
        figures["raw_server_cpu_share"] = raw["server_cpu_share"]
        figures["raw_server_cpu_us_per_delivery"] = raw["server_cpu_us_per_delivery"]
        figures["ratio_to_raw"] = round(figures["deliveries_per_s"] / raw["deliveries_per_s"], 3)
        # The same ratio by CPU spent per delivery: it holds even when the load
        # generator, not the server, sets the pace (see generator_cpu_share).
        figures["cpu_ratio_to_raw"] = round(raw["server_cpu_us_per_delivery"]
                                            / max(0.01, figures["server_cpu_us_per_delivery"]), 3)
    return figures


# -- connections ---------------------------------------------------------------------
def run_connections(args: argparse.Namespace) -> dict[str, Any]:
    rooms = max(1, args.clients // args.room_size)
    progress(f"connections: {args.clients} clients in {rooms} rooms of {args.room_size}")
    with ServerProcess("chat_sync.tcp_server", "--max-clients", str(args.clients + 10),
                       *no_limits(), "--log-level", "warning") as server:
        rss_before = server.rss_kib()
        load = LoadGenerator()
        try:
            started = time.monotonic()
            load.connect(server.address, args.clients)
            connected_s = time.monotonic() - started
            ping_all(load, args.timeout)            # so the server has accepted them all
            rss_connected = server.rss_kib()
            started = time.monotonic()
            join_all(load, lambda c: f"room{c.index % rooms}", args.timeout)
            joined_s = connected_s + time.monotonic() - started
            rss_after = server.rss_kib()
            progress(f"all joined in {joined_s:.1f} s; one message to room0")
            members = [c for c in load.clients if c.index % rooms == 0]
            marker = f"marker {time.monotonic()}"
            got: set[int] = set()

            def on_line(client: LoadClient, line: bytes) -> None:
                if marker.encode() in line:
                    got.add(client.index)

            sent_at = time.monotonic()
            cpu_at = time.process_time()
            load.send(members[0], {"type": "message", "text": marker})
            load.run_until(lambda: len(got) == len(members), on_line, args.timeout)
            reach_ms = (time.monotonic() - sent_at) * 1000
            reader_ms = (time.process_time() - cpu_at) * 1000
        finally:
            load.close()
    return {
        "scenario": "connections", "clients": args.clients, "rooms": rooms,
        "room_size": len(members), "connect_and_join_s": round(joined_s, 2),
        "rss_kib_before": rss_before, "rss_kib_connected": rss_connected,
        "rss_kib_after": rss_after,
        "kib_per_client": round((rss_after - rss_before) / args.clients, 2),
        # Connected, not joined yet: the connection itself, without what the
        # storm of join notices (each to a whole room) left in the allocator.
        "kib_per_client_connected": round((rss_connected - rss_before) / args.clients, 2),
        "one_message_to_room_ms": round(reach_ms, 2),
        # Part of that is this process reading the 1,000 sockets, one at a time.
        "generator_cpu_ms": round(reader_ms, 2),
    }


# -- udp -------------------------------------------------------------------------------
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


def run_udp(args: argparse.Namespace) -> dict[str, Any]:
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


# -- idle --------------------------------------------------------------------------------
class ClosedByServer(ConnectionError):
    """The server ended the stream."""


class Refused(Exception):
    """The server answered with an error where the client wanted something else."""


PEER_FAILURES = (OSError, ValueError, Refused)      # how a TcpPeer's conversation can end


class TcpPeer:
    """One blocking TCP client of the line protocol; every call bounded by the socket timeout.

    ``errors`` counts the codes of the errors it has parsed.
    """

    def __init__(self, address: tuple[str, int], timeout: float = 10.0, *,
                 rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:      # before connect, so the advertised window is small
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.inbuf = bytearray()
        self.pending: deque[bytes] = deque()        # complete lines not handed out yet
        self.errors: Counter[str] = Counter()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(p.encode(message))

    def lines(self) -> list[bytes]:
        """The complete lines waiting, or those of one ``recv``; raises ClosedByServer."""
        if not self.pending:
            self._fill()
        lines = list(self.pending)
        self.pending.clear()
        return lines

    def next_message(self) -> dict[str, Any]:
        while not self.pending:
            self._fill()
        message: dict[str, Any] = json.loads(self.pending.popleft())
        if message.get("type") == "error":
            self.errors[str(message.get("code"))] += 1
        return message

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read messages until one satisfies ``predicate``; returns it."""
        while True:
            message = self.next_message()
            if predicate(message):
                return message

    def join(self, room: str, user: str) -> None:
        """Join and wait for our own join notice; raises Refused if an error answers."""
        self.send({"type": "join", "room": room, "user": user})
        answer = self.until(lambda m: m.get("type") == "error" or (
            m.get("type") == "system" and m.get("user") == user and not m.get("history")))
        if answer.get("type") == "error":
            raise Refused(str(answer.get("code")))

    def close(self, reset: bool = False) -> None:
        """Close; with ``reset`` (SO_LINGER 0) the server gets an RST instead of a FIN."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(RECV_BYTES)
        if not data:
            raise ClosedByServer("closed by the server")
        self.inbuf += data
        end = self.inbuf.rfind(b"\n")
        if end >= 0:
            self.pending.extend(bytes(self.inbuf[:end]).split(b"\n"))
            del self.inbuf[:end + 1]


def settle(read: Callable[[], list[int]], timeout: float = 10.0) -> list[int]:
    """Counters that read the same twice in a row (with a deadline): nothing in flight."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        threading.Event().wait(0.05)    # a poll interval; the deadline bounds the wait
        now = read()
        if now == last:
            return now
        last = now
    raise TimeoutError("counters did not settle")


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    progress(f"idle: a UDP and a TCP server, one joined client each, {args.seconds} s of silence")
    with ServerProcess("chat_sync.udp_server", "--log-level", "warning") as udp_server, \
            ServerProcess("chat_sync.tcp_server", "--log-level", "warning") as tcp_server:
        udp = UdpChatClient(cfg.UdpClientConfig(host=udp_server.address[0],
                                                port=udp_server.address[1], user="idler"))
        tcp = TcpPeer(tcp_server.address)
        try:
            udp.connect(10.0)
            tcp.next_message()                     # the welcome
            tcp.join("lobby", "idler")
            # One more round trip each, so every ack and line before it has been handled.
            udp.request({"type": "who"})
            while True:
                event = udp.next_event(10.0)
                if isinstance(event, Received) and event.message.get("type") == "who":
                    break
            tcp.send({"type": "ping"})
            tcp.until(lambda m: m.get("type") == "pong")

            def counters() -> list[int]:
                stats = udp.stats
                return [udp.timer.pending, stats["timer_wakeups"], stats["reader_wakeups"]]

            before = settle(counters)
            cpu_before = (udp_server.cpu_seconds(), tcp_server.cpu_seconds())
            threading.Event().wait(args.seconds)     # the window itself: nothing may happen
            cpu_after = (udp_server.cpu_seconds(), tcp_server.cpu_seconds())
            after = counters()
            still_running = udp.exit_code is None
        finally:
            udp.close()
            tcp.close()
    udp_cpu, tcp_cpu = (round(a - b, 3) for a, b in zip(cpu_after, cpu_before))
    timer_wakeups, reader_wakeups = after[1] - before[1], after[2] - before[2]
    return {
        "scenario": "idle", "seconds": args.seconds,
        "passed": (still_running and timer_wakeups == 0 and reader_wakeups == 0
                   and max(udp_cpu, tcp_cpu) < IDLE_CPU_S),
        "udp_server_cpu_s": udp_cpu, "tcp_server_cpu_s": tcp_cpu,
        "udp_client_timer_wakeups": timer_wakeups,
        "udp_client_reader_wakeups": reader_wakeups,
        "cpu_tick_s": round(1 / os.sysconf("SC_CLK_TCK"), 3),
        "udp_client_keepalive_s": udp.config.keepalive_s,
    }


# -- soak --------------------------------------------------------------------------------
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


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    progress(f"soak: {args.seconds} s; {args.well_behaved} well-behaved, {args.churners} "
             f"churners, {args.flooders} flooders, {args.garbage} garbage senders, "
             f"{args.slow_readers} slow readers, {args.lingerers} lingerers (seed {args.seed})")
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
        "well_behaved": args.well_behaved, "rate": args.rate, "churners": args.churners,
        "flooders": args.flooders, "garbage": args.garbage,
        "slow_readers": args.slow_readers, "lingerers": args.lingerers,
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


# -- the raw relay: the ceiling for one Python thread ---------------------------------
def raw_relay(host: str, port: int) -> None:
    """Forward every complete line to every client; no parsing, no rooms, no log.

    The same loop shape as ``tcp_server`` (read, then one flush per dirty
    socket per turn) with everything else taken out.
    """
    listener = socket.create_server((host, port), backlog=1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    wakeup = Wakeup()
    selector.register(wakeup.reader, selectors.EVENT_READ, "wakeup")
    import signal
    signal.signal(signal.SIGTERM, lambda *_: wakeup.wake())
    print(f"listening on {host}:{listener.getsockname()[1]}", flush=True)
    inbufs: dict[socket.socket, bytearray] = {}
    outbufs: dict[socket.socket, bytearray] = {}
    writing: set[socket.socket] = set()
    while True:
        dirty: set[socket.socket] = set()
        for key, mask in selector.select():
            if key.data == "wakeup":
                return
            if key.data is None:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ, "client")
                inbufs[conn], outbufs[conn] = bytearray(), bytearray()
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if mask & selectors.EVENT_WRITE:
                dirty.add(sock)
            if mask & selectors.EVENT_READ:
                data = sock.recv(RECV_BYTES)
                if not data:
                    selector.unregister(sock)
                    sock.close()
                    del inbufs[sock], outbufs[sock]
                    writing.discard(sock)
                    continue
                inbuf = inbufs[sock]
                inbuf += data
                end = inbuf.rfind(b"\n")
                if end >= 0:
                    lines = bytes(inbuf[:end + 1])
                    del inbuf[:end + 1]
                    for other, outbuf in outbufs.items():
                        outbuf += lines
                        dirty.add(other)
        for sock in dirty:
            if sock not in outbufs:
                continue
            outbuf = outbufs[sock]
            try:
                del outbuf[:sock.send(outbuf)]
            except BlockingIOError:
                pass
            want = bool(outbuf)
            if want != (sock in writing):
                selector.modify(sock, selectors.EVENT_READ |
                                (selectors.EVENT_WRITE if want else 0), "client")
                (writing.add if want else writing.discard)(sock)


# -- command line --------------------------------------------------------------------
NOTES = {
    "udp": ["ideal_retransmissions = 1/(1-p)^2 - 1: a try succeeds only if the datagram",
            "and its ack both survive, (1-p)^2; the ratios are measured/ideal.",
            "latency: from say() in the sender to delivery in the receiver."],
    "idle": ["expected: 0 wake-ups and 0 CPU (counted in ticks of cpu_tick_s)."],
    "soak": ["every well-behaved message must reach every well-behaved client:",
             "wb_delivered == wb_expected; disconnect_reasons come from the server's log."],
}


def summary(figures: dict[str, Any]) -> Iterator[str]:
    yield f"{figures['scenario']}:"
    for key, value in figures.items():
        if key != "scenario":
            yield f"  {key:<36} {value}"
    for note in NOTES.get(figures["scenario"], []):
        yield f"  ({note})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-sync bench",
                                     description="Benchmarks that verify what they measure.")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    sub = parser.add_subparsers(dest="scenario", required=True)
    fan = sub.add_parser("fanout", help="N clients in one room, each sending M messages")
    fan.add_argument("--clients", type=int, default=50)
    fan.add_argument("--messages", type=int, default=200)
    fan.add_argument("--window", type=int, default=8, help="own unechoed messages at most")
    fan.add_argument("--baseline", choices=["raw"], help="also run the raw relay, print ratio")
    fan.add_argument("--no-log", action="store_true", help="run the server without a chat log")
    fan.add_argument("--server", metavar="HOST:PORT",
                     help="drive a server already running there (e.g. under a profiler)")
    con = sub.add_parser("connections", help="many clients held at once")
    con.add_argument("--clients", type=int, default=10_000)
    con.add_argument("--room-size", type=int, default=1000)
    con.add_argument("--timeout", type=float, default=300.0)
    udp = sub.add_parser("udp", help="UDP clients through a lossy relay, exactly once")
    udp.add_argument("--loss", type=float, default=0.2, help="loss each way (default 0.2)")
    udp.add_argument("--clients", type=int, default=3)
    udp.add_argument("--messages", type=int, default=100, help="messages per client")
    udp.add_argument("--seed", type=int, default=1, help="the fault relay's seed")
    udp.add_argument("--base-delay", type=float, help="first retransmit delay (default: "
                     "the programs' own, 0.2 s); also the minimum RTO")
    udp.add_argument("--max-delay", type=float, help="longest retransmit delay")
    udp.add_argument("--max-retries", type=int, help="retransmissions before giving up")
    udp.add_argument("--timeout", type=float, default=300.0)
    idle = sub.add_parser("idle", help="CPU and wake-ups of idle servers and client")
    idle.add_argument("--seconds", type=float, default=10.0)
    soak = sub.add_parser("soak", help="abuse the TCP server while well-behaved clients check")
    soak.add_argument("--seconds", type=float, default=60.0)
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--well-behaved", type=int, default=3, help="checking clients")
    soak.add_argument("--rate", type=float, default=2.0,
                      help="messages per second of each well-behaved client")
    soak.add_argument("--churners", type=int, default=4)
    soak.add_argument("--flooders", type=int, default=2)
    soak.add_argument("--garbage", type=int, default=2, help="garbage senders")
    soak.add_argument("--slow-readers", type=int, default=3)
    soak.add_argument("--lingerers", type=int, default=2,
                      help="connections that never join, or stop mid-line")
    relay = sub.add_parser("raw-relay", help="run the baseline relay")
    relay.add_argument("--host", default=p.DEFAULT_HOST)
    relay.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.scenario == "raw-relay":
        raw_relay(args.host, args.port)
        return 0
    runners = {"fanout": run_fanout, "connections": run_connections, "udp": run_udp,
               "idle": run_idle, "soak": run_soak}
    figures = runners[args.scenario](args)
    if not args.json:
        print("\n".join(summary(figures)))
    print(json.dumps(figures), flush=True)
    failed = (figures.get("losses", 0) or figures.get("order_errors", 0)
              or figures.get("passed") is False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
