"""A recording fault relay: ``FaultRelay`` that also keeps every datagram it handles.

Theory of operation
-------------------
``FaultRelay`` already stands between UDP clients and a server and decides,
from a seed, what happens to each datagram. ``RecordingFaultRelay`` is the
same relay with a tap on its sans-IO schedule, so nothing in the relay's
loop changes:

- each datagram that arrives is recorded as a ``Datagram`` with
  ``sent=False`` and its fate (``drop``, ``duplicate``, ``delay``,
  ``reorder``, or nothing: passed on at once), at the moment the schedule
  decides it;
- each copy the schedule lets out is recorded with ``sent=True``: what the
  receiver got, in the order it got it.

So ``pcap`` can write either view: the senders' (every datagram sent, a
retransmission plain as a datagram sent again) or the receivers'
(duplicates and reordering as they were delivered, losses missing).

Records carry wall-clock time (``time.time``), like the TCP recorder's, and
the real endpoints: the client's address as the relay saw it, and the
server's. The record is a bounded ``RecordLog``. The tap runs in the
relay's thread under its lock and only appends to that log: it never
blocks on a reader.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from .faultrelay import (
    DEFAULT_MAX_EVENTS,
    DEFAULT_REORDER_HOLD,
    Decision,
    Direction,
    FaultDecider,
    FaultPlan,
    FaultRelay,
    FaultSchedule,
    Outgoing,
)
from .protocol import DEFAULT_HOST, MAX_CLIENTS
from .record_log import Followed, RecordLog
from .records import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Address, Datagram

MAX_RECORDS = 100_000
MAX_RECORD_BYTES = 64 * 1024 * 1024   # datagram bytes the record holds, at most

Tap = Callable[[Direction, Address, bytes, "Decision | None"], None]


class _TappedSchedule(FaultSchedule):
    """A ``FaultSchedule`` that tells ``tap`` each datagram in (with its fate) and out."""

    def __init__(self, decider: FaultDecider, tap: Tap, *, reorder_hold: float,
                 max_events: int) -> None:
        super().__init__(decider, reorder_hold=reorder_hold, max_events=max_events)
        self._tap = tap

    def receive(self, direction: Direction, flow: Address, datagram: bytes,
                now: float) -> Decision:
        decision = super().receive(direction, flow, datagram, now)
        self._tap(direction, flow, datagram, decision)
        return decision

    def due(self, now: float) -> list[Outgoing]:
        out = super().due(now)
        for outgoing in out:
            self._tap(outgoing.direction, outgoing.flow, outgoing.datagram, None)
        return out


def fate(decision: Decision) -> tuple[str, ...]:
    """The names of what a decision does to its datagram, e.g. ``("duplicate", "delay")``."""
    return tuple(action.value for action in decision.actions())


class RecordingFaultRelay(FaultRelay):
    """A ``FaultRelay`` whose every datagram, in and out, is kept in ``log``.

    Takes ``FaultRelay``'s arguments, and ``clock`` (wall-clock time by
    default), ``max_records`` and ``max_record_bytes``. ``server_addr`` should be numeric IPv4 for
    the record to become a pcap.
    """

    def __init__(self, server_addr: Address, upstream: FaultPlan = FaultPlan(),
                 downstream: FaultPlan = FaultPlan(), seed: int = 1, *,
                 reorder_hold: float = DEFAULT_REORDER_HOLD, max_clients: int = MAX_CLIENTS,
                 max_events: int = DEFAULT_MAX_EVENTS, host: str = DEFAULT_HOST, port: int = 0,
                 clock: Callable[[], float] = time.time,
                 max_records: int = MAX_RECORDS,
                 max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        super().__init__(server_addr, upstream, downstream, seed, reorder_hold=reorder_hold,
                         max_clients=max_clients, max_events=max_events, host=host, port=port)
        self.log: RecordLog[Datagram] = RecordLog(max_records, max_record_bytes,
                                                  lambda record: len(record.data))
        self._clock = clock
        # The same decisions, the same seed: only the tap is new.
        self.schedule = _TappedSchedule(self.schedule.decider, self._record,
                                        reorder_hold=reorder_hold,
                                        max_events=max_events)

    def _record(self, direction: Direction, flow: Address, datagram: bytes,
                decision: Decision | None) -> None:
        arrow = CLIENT_TO_SERVER if direction is Direction.UPSTREAM else SERVER_TO_CLIENT
        server = (str(self.server_addr[0]), int(self.server_addr[1]))
        if decision is None:
            record = Datagram(self._clock(), arrow, datagram, flow, server, sent=True)
        else:
            record = Datagram(self._clock(), arrow, datagram, flow, server,
                              fate=fate(decision), delay=decision.delay)
        self.log.append(record)

    def stop(self) -> None:
        """Stop relaying (see ``FaultRelay.stop``); readers following the log are woken."""
        super().stop()
        self.log.close()

    @property
    def records(self) -> list[Datagram]:
        """A snapshot of the datagrams recorded, in the order they happened."""
        return self.log.records

    def follow(self, start: int, timeout: float | None = None) -> Followed[Datagram]:
        """The records numbered ``start`` on, waiting for one (see ``RecordLog.follow``)."""
        return self.log.follow(start, timeout)
