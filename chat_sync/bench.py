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
- ``raw-relay``: run the baseline relay itself (used by ``fanout``).
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import protocol as p
from .wakeup import Wakeup

RECV_BYTES = 256 * 1024


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- the server under test, as a subprocess -----------------------------------
class ServerProcess:
    """A server started with ``python -m MODULE ... --port 0``; knows its port and pid."""

    def __init__(self, module: str, *args: str, ready_timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args, "--port", "0"],
                                     stdout=subprocess.PIPE, text=True)
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
    for client in load.clients:
        load.send(client, {"type": "ping"})
    load.run_until(lambda: all(c.ponged for c in load.clients), on_line, timeout)


def sync_raw(load: LoadGenerator, timeout: float) -> None:
    """Raw relay: wait until every client is accepted (each sees client 0's line)."""
    seen: set[int] = set()

    def on_line(client: LoadClient, line: bytes) -> None:
        seen.add(client.index)

    load.send(load.clients[0], {"type": "sync"})
    load.run_until(lambda: len(seen) == len(load.clients), on_line, timeout)


def fanout(address: tuple[str, int], clients: int, messages: int, window: int, raw: bool,
           timeout: float = 300.0) -> dict[str, Any]:
    """The fanout load against a server at ``address``; returns figures, raises on any loss."""
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
        for client in load.clients:
            send_more(client)
        try:
            load.run_until(lambda: all(c.received == total for c in load.clients), on_line,
                           timeout)
        except TimeoutError:
            pass
        elapsed = time.monotonic() - started
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
        }
    finally:
        load.close()


def run_fanout(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server_args = ["--max-clients", str(args.clients + 10)]
        if not args.no_log:
            server_args += ["--log-file", os.path.join(tmp, "chat.log")]
        progress(f"fanout: {args.clients} clients x {args.messages} messages against chat_sync")
        with ServerProcess("chat_sync.tcp_server", *server_args,
                           "--log-level", "warning") as server:
            figures = {"scenario": "fanout", "logging": not args.no_log,
                       **fanout(server.address, args.clients, args.messages, args.window,
                                raw=False)}
    if args.baseline == "raw":
        progress("fanout: the same load against the raw relay")
        with ServerProcess("chat_sync.bench", "raw-relay") as relay:
            raw = fanout(relay.address, args.clients, args.messages, args.window, raw=True)
        figures["raw_deliveries_per_s"] = raw["deliveries_per_s"]
        figures["raw_latency_ms_p99"] = raw["latency_ms_p99"]
        figures["raw_losses"] = raw["losses"]
        figures["ratio_to_raw"] = round(figures["deliveries_per_s"] / raw["deliveries_per_s"], 3)
    return figures


# -- connections ---------------------------------------------------------------------
def run_connections(args: argparse.Namespace) -> dict[str, Any]:
    rooms = max(1, args.clients // args.room_size)
    progress(f"connections: {args.clients} clients in {rooms} rooms of {args.room_size}")
    with ServerProcess("chat_sync.tcp_server", "--max-clients", str(args.clients + 10),
                       "--log-level", "warning") as server:
        rss_before = server.rss_kib()
        load = LoadGenerator()
        try:
            started = time.monotonic()
            load.connect(server.address, args.clients)
            join_all(load, lambda c: f"room{c.index % rooms}", args.timeout)
            joined_s = time.monotonic() - started
            rss_after = server.rss_kib()
            progress(f"all joined in {joined_s:.1f} s; one message to room0")
            members = [c for c in load.clients if c.index % rooms == 0]
            marker = f"marker {time.monotonic()}"
            got: set[int] = set()

            def on_line(client: LoadClient, line: bytes) -> None:
                if marker.encode() in line:
                    got.add(client.index)

            sent_at = time.monotonic()
            load.send(members[0], {"type": "message", "text": marker})
            load.run_until(lambda: len(got) == len(members), on_line, args.timeout)
            reach_ms = (time.monotonic() - sent_at) * 1000
        finally:
            load.close()
    return {
        "scenario": "connections", "clients": args.clients, "rooms": rooms,
        "room_size": len(members), "connect_and_join_s": round(joined_s, 2),
        "rss_kib_before": rss_before, "rss_kib_after": rss_after,
        "kib_per_client": round((rss_after - rss_before) / args.clients, 2),
        "one_message_to_room_ms": round(reach_ms, 2),
    }


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
def summary(figures: dict[str, Any]) -> Iterator[str]:
    yield f"{figures['scenario']}:"
    for key, value in figures.items():
        if key != "scenario":
            yield f"  {key:<26} {value}"


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
    con = sub.add_parser("connections", help="many clients held at once")
    con.add_argument("--clients", type=int, default=10_000)
    con.add_argument("--room-size", type=int, default=1000)
    con.add_argument("--timeout", type=float, default=300.0)
    relay = sub.add_parser("raw-relay", help="run the baseline relay")
    relay.add_argument("--host", default=p.DEFAULT_HOST)
    relay.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.scenario == "raw-relay":
        raw_relay(args.host, args.port)
        return 0
    runners = {"fanout": run_fanout, "connections": run_connections}
    figures = runners[args.scenario](args)
    if not args.json:
        print("\n".join(summary(figures)))
    print(json.dumps(figures), flush=True)
    failed = figures.get("losses", 0) or figures.get("order_errors", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
