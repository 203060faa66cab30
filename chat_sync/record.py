"""``chat-sync record``: stand between clients and a server, and show the wire as it passes.

Theory of operation
-------------------
A student who wants to see the protocol runs a server, runs this in front of
it, and points clients at the port it prints::

    chat-sync record --listen 127.0.0.1:7430 --upstream 127.0.0.1:7420 --pcap chat.pcap

Everything is forwarded unchanged, and each chunk of bytes (TCP) or datagram
(UDP) is printed as one line as it passes: the time, the connection, the
client's address, the direction (``->`` towards the server, ``<-`` back),
the size, and what it holds. With ``--udp`` the relay is ``FaultRelay``, so
``--loss``, ``--duplicate``, ``--reorder`` and ``--delay`` make retransmissions
happen on a loopback that never loses anything. Ctrl-C or SIGTERM stops it;
with ``--pcap`` it then writes what it saw for Wireshark (``chat-sync
dissector`` is the Lua dissector that decodes it).

The parts, as elsewhere in the package:

- ``WireLog`` (no I/O): records in, printable lines out. A TCP chunk is
  shown as TCP delivered it: one read may hold several lines (shown
  ``a | b``), or part of one (its bytes, then ``…``); the read that ends
  a line shows the whole line, marked ``…`` where it began earlier. What
  parses as a JSON object is shown as JSON, whatever its fields, so a
  change of the datagram format shows up as it is; anything else as raw
  bytes. Peer text is escaped (``logs.escape``): no control character
  reaches the terminal.
- The relays (``recorder.RecordingRelay``, ``datagram_recorder
  .RecordingFaultRelay``) run their own thread and keep a bounded record.
- ``main``: the main thread follows that record and prints it. A slow
  terminal slows only the printing: the relay's loop never waits for it,
  and if the printing falls more than the record's bound behind, the
  lines it missed are counted, not shown. The bound (the latest 100,000
  chunks or datagrams, 64 MiB of data) is also what ``--pcap`` can write.

Errors are one line on stderr: bad arguments and an unresolvable or
unreachable upstream exit 2, a port that cannot be bound exits 1. A TCP
upstream is tried once at start (one connection, closed at once); a UDP one
cannot be tried without sending it something, so it is only resolved.
"""
from __future__ import annotations

import argparse
import datetime
import json
import signal
import socket
import sys
from collections.abc import Iterable
from typing import NoReturn, Union

from . import protocol
from .datagram_recorder import RecordingFaultRelay
from .faultrelay import FaultPlan
from .logs import escape
from .pcap import UDP_VIEWS, write_pcap
from .recorder import RecordingRelay
from .records import DIRECTIONS, Address, ConnEvent, Datagram, EventKind, Record, Segment

PROG = "chat-sync record"
SHOWN_CHARS = 400           # one message's text on one printed line, at most
CONNECT_TIMEOUT_S = 5.0

AnyRecord = Union[Record, Datagram]


# -- Records into lines (no I/O) ------------------------------------------------------
def show_bytes(data: bytes) -> str:
    """Bytes that are not a JSON object, as Python writes them: ``b'...'``, all escaped."""
    text = repr(data)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def show_message(data: bytes) -> str:
    """One line or datagram: compact JSON if it is a JSON object, else its raw bytes."""
    try:
        message = protocol.decode(data.rstrip(b"\r\n"))
    except protocol.ProtocolError:
        return show_bytes(data)
    text = escape(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def clock_time(t: float) -> str:
    """``HH:MM:SS.ffffff`` in local time, as the servers' logs and tshark show it."""
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")


def _endpoint(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class WireLog:
    """Turns records into the lines ``chat-sync record`` prints, one per record."""

    def __init__(self, max_line_bytes: int = protocol.MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        # The unterminated start of a line, per connection and direction.
        self._carry: dict[tuple[int, str], bytes] = {}

    def lines(self, records: Iterable[AnyRecord]) -> list[str]:
        return [self.line(record) for record in records]

    def line(self, record: AnyRecord) -> str:
        if isinstance(record, Segment):
            head = f"#{record.conn} {_endpoint(record.client)} {record.direction}"
            return f"{clock_time(record.t)}  {head} {len(record.data):5} B  {self.chunk(record)}"
        if isinstance(record, Datagram):
            head = f"{_endpoint(record.client)} {record.direction}"
            return (f"{clock_time(record.t)}  {head} {len(record.data):5} B  "
                    f"{self.what_happens(record)}{show_message(record.data)}")
        head = f"#{record.conn} {_endpoint(record.client)} --"
        return f"{clock_time(record.t)}  {head}  {self.event(record)}"

    def chunk(self, segment: Segment) -> str:
        """What one TCP read held: whole lines as messages, a part of one as bytes."""
        key = (segment.conn, segment.direction)
        carry = self._carry.pop(key, b"")
        *ended, tail = segment.data.split(b"\n")
        shown: list[str] = []
        for index, piece in enumerate(ended):
            began_earlier = index == 0 and carry
            line = carry + piece if index == 0 else piece
            if line.strip(b"\r"):
                shown.append(("…" if began_earlier else "") + show_message(line))
        if tail:
            continues = bool(carry) and not ended      # the middle of a long line
            shown.append(("…" if continues else "") + show_bytes(tail) + "…")
            carry = (carry if not ended else b"") + tail
            # Beyond any line a server takes, only the start is kept to show.
            self._carry[key] = carry[:self.max_line_bytes]
        return " | ".join(shown) if shown else show_bytes(segment.data)

    @staticmethod
    def what_happens(datagram: Datagram) -> str:
        """``sent`` copies are not printed; an arrival says its fate, e.g. ``[drop] ``."""
        if not datagram.fate:
            return ""
        names = [f"delay {datagram.delay * 1000:.0f} ms" if name == "delay" else name
                 for name in datagram.fate]
        return f"[{', '.join(names)}] "

    def event(self, event: ConnEvent) -> str:
        if event.kind is EventKind.OPEN:
            return f"[open {_endpoint(event.client)} -> {_endpoint(event.server)}]"
        if event.kind is EventKind.CLOSE:     # a line left unfinished stays unfinished
            for direction in DIRECTIONS:
                self._carry.pop((event.conn, direction), None)
        where = f" {event.direction}" if event.direction else ""
        why = f": {escape(event.reason)}" if event.reason else ""
        return f"[{event.kind.value}{where}{why}]"


def printable(records: Iterable[AnyRecord]) -> list[AnyRecord]:
    """The records ``chat-sync record`` prints: not the copies a UDP relay sent on."""
    return [r for r in records if not (isinstance(r, Datagram) and r.sent)]


# -- The command line -------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage and error: the flag and what is wrong with it."""
        fail(message)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(code)


def address(text: str, *, what: str, port_zero: bool) -> Address:
    """``HOST:PORT`` as a numeric IPv4 address and port; exits 2 naming ``what``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        fail(f"{what}: expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not (0 if port_zero else 1) <= port <= 65535:
        fail(f"{what}: port must be {'0' if port_zero else '1'} to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET)
    except (OSError, UnicodeError):
        fail(f"{what}: cannot resolve {host!r} to an IPv4 address")
    return str(infos[0][4][0]), port


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def delay_range(text: str) -> tuple[float, float]:
    """``S`` or ``LOW:HIGH``, in seconds."""
    try:
        parts = [float(part) for part in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW:HIGH, got {text!r}") from None
    low, high = (parts[0], parts[0]) if len(parts) == 1 else tuple(parts[:2])
    if len(parts) > 2 or not 0.0 <= low <= high <= 60.0:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH <= 60 seconds, got {text!r}")
    return low, high


FAULTS = (("loss", probability, "drop a datagram with probability P"),
          ("duplicate", probability, "send a datagram twice with probability P"),
          ("reorder", probability, "hold a datagram back until the next overtakes it, with "
                                   "probability P"),
          ("delay", delay_range, "delay each datagram S seconds, or uniformly LOW:HIGH"))


def parser() -> argparse.ArgumentParser:
    parse = _Parser(prog=PROG, description="Relay between clients and a chat server, printing "
                    "every chunk (TCP) or datagram (UDP) as it passes.")
    parse.add_argument("--listen", required=True, metavar="HOST:PORT",
                       help="where clients connect (port 0: any free port, printed)")
    parse.add_argument("--upstream", required=True, metavar="HOST:PORT",
                       help="the server to forward to")
    parse.add_argument("--udp", action="store_true", help="relay UDP datagrams, not TCP")
    parse.add_argument("--pcap", metavar="FILE", help="on exit, write what passed as a pcap")
    parse.add_argument("--pcap-udp", choices=UDP_VIEWS, default="sent",
                       help="with --udp: the datagrams as their senders sent them (default: "
                            "lost ones included) or as their receivers got them")
    faults = parse.add_argument_group("UDP faults (with --udp; -up: client to server only, "
                                      "-down: server to client only)")
    for name, kind, text in FAULTS:
        metavar = "S|LOW:HIGH" if name == "delay" else "P"
        faults.add_argument(f"--{name}", type=kind, metavar=metavar, help=f"{text}, both ways")
        faults.add_argument(f"--{name}-up", type=kind, metavar=metavar)
        faults.add_argument(f"--{name}-down", type=kind, metavar=metavar)
    faults.add_argument("--seed", type=int, default=1, help="the faults' seed (default 1)")
    return parse


def plans(args: argparse.Namespace) -> tuple[FaultPlan, FaultPlan]:
    """The upstream and downstream plans: ``--X-up``/``--X-down`` over ``--X``."""
    out = []
    for way in ("up", "down"):
        settings = {}
        for name, _, _ in FAULTS:
            value = getattr(args, f"{name}_{way}")
            value = getattr(args, name) if value is None else value
            if value is not None:
                settings[name] = value
        out.append(FaultPlan(**settings))
    return out[0], out[1]


def any_fault(args: argparse.Namespace) -> bool:
    return any(getattr(args, f"{name}{way}") is not None
               for name, _, _ in FAULTS for way in ("", "_up", "_down")) or args.seed != 1


def check_upstream(upstream: Address) -> None:
    """One connection to the TCP server and closed at once; exits 2 if there is none."""
    try:
        socket.create_connection(upstream, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        fail(f"cannot reach upstream {_endpoint(upstream)}: {exc.strerror or exc}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    listen = address(args.listen, what="--listen", port_zero=True)
    upstream = address(args.upstream, what="--upstream", port_zero=False)
    if not args.udp and any_fault(args):
        fail("--loss, --duplicate, --reorder, --delay and --seed need --udp")
    relay: RecordingRelay | RecordingFaultRelay
    try:
        if args.udp:
            up, down = plans(args)
            relay = RecordingFaultRelay(upstream, up, down, args.seed,
                                        host=listen[0], port=listen[1])
        else:
            check_upstream(upstream)
            relay = RecordingRelay(upstream, host=listen[0], port=listen[1])
        relay.start()
    except OSError as exc:
        fail(f"cannot listen on {_endpoint(listen)}: {exc.strerror or exc}", code=1)
    stop_on_signals(relay)
    print(f"listening on {_endpoint(relay.address)}", flush=True)
    return follow(relay, args.pcap, args.pcap_udp)


def stop_on_signals(relay: RecordingRelay | RecordingFaultRelay) -> None:
    """Ctrl-C and SIGTERM close the record: the printing loop sees it and ends.

    Closing only wakes the reader (no exception is raised in the middle of a
    print, so no line is lost or shown twice). The handler runs in the main
    thread, which may be inside the log's lock: it is an ``RLock``.
    """
    def handler(signum: int, frame: object) -> None:
        relay.log.close()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def follow(relay: RecordingRelay | RecordingFaultRelay, pcap: str | None,
           udp_view: str = "sent") -> int:
    """Print the relay's records as they come until Ctrl-C or SIGTERM; then write the pcap."""
    wire = WireLog()
    start = 0
    try:
        while not relay.log.closed:
            start = show(wire, relay, start, timeout=None)
    finally:
        relay.stop()
    show(wire, relay, start, timeout=0)
    if pcap is not None:
        try:
            write_pcap(relay.records, pcap, udp_view)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: cannot write {pcap}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {pcap}", flush=True)
    return 0


def show(wire: WireLog, relay: RecordingRelay | RecordingFaultRelay, start: int,
         timeout: float | None) -> int:
    """Print the records from number ``start`` on; returns the number to follow from next."""
    followed = relay.follow(start, timeout)
    out = []
    if followed.dropped:
        out.append(f"... {followed.dropped} records not shown: the printing fell behind")
    out += wire.lines(printable(followed.records))
    if out:
        print("\n".join(out), flush=True)
    return followed.next


if __name__ == "__main__":
    sys.exit(main())
