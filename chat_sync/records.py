"""What a recording holds, and how to read it back: no sockets, no threads.

Theory of operation
-------------------
A relay in front of a server writes down what passes through it, and every
reader (the tests, the notebooks, ``chat-sync record``, ``pcap``) reads
the same few types:

- ``Segment``: one chunk of a TCP stream exactly as one ``recv`` returned
  it, so it may hold half a line or several; ``ConnEvent``: something that
  happened to a connection (open, fin, reset, close). Both are written by
  ``recorder.RecordingRelay``.
- ``Datagram``: one UDP datagram, written by
  ``datagram_recorder.RecordingFaultRelay``, either as it arrived at the
  relay (with what the relay's faults did to it) or as the relay sent it on.

Every record names the two real endpoints, the client's ephemeral address
and the server's, so a pcap made from it shows the conversation as if there
were no relay in between. Directions are ``->`` (client to server) and
``<-`` (server to client), as in the server's debug log.

``lines`` re-frames TCP segments into lines with a ``LineBuffer`` per
connection and direction, exactly as the server and clients do; ``table``
and ``format_table`` make the packet table the notebooks print.
"""
from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from . import protocol
from .framing import LineBuffer

Address = tuple[str, int]

CLIENT_TO_SERVER = "->"
SERVER_TO_CLIENT = "<-"
DIRECTIONS = (CLIENT_TO_SERVER, SERVER_TO_CLIENT)


@dataclass(frozen=True)
class Segment:
    """One chunk of bytes as one ``recv`` returned it; ``->`` is client to server."""

    t: float
    conn: int
    direction: str
    data: bytes
    client: Address
    server: Address

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be '->' or '<-', not {self.direction!r}")


class EventKind(enum.StrEnum):
    OPEN = "open"      # the relay reached the server for this client
    FIN = "fin"        # ``direction``'s sender ended its stream
    RESET = "reset"    # a socket failed; ``direction`` says whose end, ``reason`` why
    CLOSE = "close"    # both sockets are closed; ``reason`` says why


@dataclass(frozen=True)
class ConnEvent:
    """Something that happened to a relayed connection, on the same clock as segments."""

    t: float
    conn: int
    kind: EventKind
    client: Address
    server: Address
    direction: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be '->', '<-' or None, not {self.direction!r}")


Record = Union[Segment, ConnEvent]


class Line(NamedTuple):
    """One complete line: when its newline was read, and the JSON object it holds.

    ``message`` is the decoded object, or the raw line (``bytes``) when it is
    not a JSON object: a bad line is part of the story too.
    """

    t: float
    conn: int
    direction: str
    message: dict[str, Any] | bytes


class Row(NamedTuple):
    """One row of a packet table; ``t`` is seconds since the first record."""

    t: float
    conn: int
    direction: str
    nbytes: int
    text: str


# -- Reading a record (no I/O) ---------------------------------------------------
def lines(records: Iterable[Record]) -> Iterator[Line]:
    """Re-frame recorded segments into lines, per connection and direction.

    Yields a ``Line`` for each complete, non-empty line, stamped with the time
    of the segment that completed it. An unterminated tail is not yielded.
    """
    buffers: dict[tuple[int, str], LineBuffer] = {}
    for record in records:
        if not isinstance(record, Segment):
            continue
        key = (record.conn, record.direction)
        if key not in buffers:
            # The record is already bounded; here any line the relay saw is shown.
            buffers[key] = LineBuffer(max_line_bytes=sys.maxsize)
        for line in buffers[key].feed(record.data):
            message: dict[str, Any] | bytes
            try:
                message = protocol.decode(line)
            except protocol.ProtocolError:
                message = line
            yield Line(record.t, record.conn, record.direction, message)


def _show(data: bytes) -> str:
    """Bytes as one line of text: UTF-8 where it is, ``\\n`` and ``\\xNN`` where not."""
    text = data.decode("utf-8", "backslashreplace")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def table(records: Iterable[Record]) -> list[Row]:
    """One row per segment and per connection event, in the order they happened."""
    rows: list[Row] = []
    t0: float | None = None
    for record in records:
        if t0 is None:
            t0 = record.t
        if isinstance(record, Segment):
            rows.append(Row(record.t - t0, record.conn, record.direction, len(record.data),
                            _show(record.data)))
            continue
        client, server = record.client, record.server
        if record.kind is EventKind.OPEN:
            text = f"[open {client[0]}:{client[1]} -> {server[0]}:{server[1]}]"
        else:
            text = f"[{record.kind.value}{': ' + record.reason if record.reason else ''}]"
        rows.append(Row(record.t - t0, record.conn, record.direction or "", 0, text))
    return rows


def format_table(rows: Iterable[Row], width: int = 100) -> str:
    """The rows as a fixed-width text table; data longer than ``width`` is cut with '…'."""
    out = [f"{'t (ms)':>9}  {'conn':>4}  {'dir':<3}  {'bytes':>6}  data"]
    for row in rows:
        text = row.text if len(row.text) <= width else row.text[:width - 1] + "…"
        out.append(f"{row.t * 1000:9.3f}  {row.conn:>4}  {row.direction:<3}  "
                   f"{row.nbytes:>6}  {text}")
    return "\n".join(out)


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram through a relay; ``->`` is client to server.

    ``sent`` is False for a datagram as it arrived at the relay, with
    ``fate``: what the relay's faults do to it (``drop``, ``duplicate``,
    ``delay``, ``reorder``; empty: passed on at once) and ``delay`` in
    seconds. It is True for each copy the relay sent on: what the receiver got.
    """

    t: float
    direction: str
    data: bytes
    client: Address
    server: Address
    sent: bool = False
    fate: tuple[str, ...] = ()
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be '->' or '<-', not {self.direction!r}")

