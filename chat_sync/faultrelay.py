"""A seeded UDP relay that loses, duplicates, delays and reorders datagrams.

Theory of operation
-------------------
Reliable-UDP code is only as good as the network it was tested on, and the
loopback interface never loses anything. ``FaultRelay`` sits between UDP
clients and a server and misbehaves on purpose, the same way every time for
a given seed, so a test, a benchmark, a lesson and a notebook can all show
the same losses::

    client --> relay.address --[upstream faults]--> server
    client <-- relay.address <-[downstream faults]-- server

It is built in three layers, the same split as the rest of chat_sync:

- ``FaultDecider`` (sans-IO): what happens to the k-th datagram in one
  direction. Each direction has its own ``random.Random`` derived from the
  seed, and every decision draws the same four numbers (loss, duplicate,
  reorder, delay) whatever the plan, so the fate of datagram k never depends
  on traffic in the other direction nor on the other rates.
- ``FaultSchedule`` (sans-IO): datagrams in, ``(due time, datagram)`` out.
  Delayed datagrams wait in a heap. A datagram picked for reordering is held
  back until the next datagram of the same client and direction has gone
  ahead of it, or at most ``reorder_hold`` seconds. It records every action
  as an ``Event`` and counts them.
- ``FaultRelay`` (the I/O shell): one thread, one selector. It listens on
  127.0.0.1 port 0 and opens one upstream socket per client address, so the
  server sees as many distinct peers as there are clients. The selector
  sleeps until a socket is readable or the schedule's next deadline; ``stop``
  wakes it through a socketpair (no polling, no sleeps).

Trade-offs: IPv4 only; a client's upstream socket lives until ``stop``; at
most ``max_clients`` clients; the event log keeps the latest ``max_events``
events while the counters stay exact.
"""
from __future__ import annotations

import enum
import heapq
import itertools
import logging
import random
import selectors
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from .protocol import DEFAULT_HOST, MAX_CLIENTS
from .wakeup import Wakeup

log = logging.getLogger(__name__)

Address = tuple[str, int]        # a client's address names its flow through the relay

DEFAULT_REORDER_HOLD = 0.05      # longest a reordered datagram waits for one to overtake it
DEFAULT_MAX_EVENTS = 100_000
_RECV_BYTES = 65_535             # any UDP datagram fits; the server judges its size


class Direction(enum.Enum):
    UPSTREAM = "upstream"        # client -> server
    DOWNSTREAM = "downstream"    # server -> client


class Action(enum.Enum):
    FORWARD = "forward"          # one copy sent on (recorded when it leaves)
    DROP = "drop"
    DUPLICATE = "duplicate"      # two copies will be sent
    DELAY = "delay"
    REORDER = "reorder"          # held back so that the next datagram overtakes it


@dataclass(frozen=True)
class FaultPlan:
    """The misbehaviour of one direction: probabilities, and a delay range in seconds."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {rate}")
        low, high = self.delay
        if not 0.0 <= low <= high:
            raise ValueError(f"delay must be (low, high) with 0 <= low <= high, got {self.delay}")


@dataclass(frozen=True)
class Decision:
    """The fate of one datagram."""

    drop: bool = False
    duplicate: bool = False
    reorder: bool = False
    delay: float = 0.0

    def actions(self) -> list[Action]:
        """The actions this decision takes, as recorded (FORWARD comes later)."""
        if self.drop:
            return [Action.DROP]
        actions = []
        if self.duplicate:
            actions.append(Action.DUPLICATE)
        if self.delay > 0:
            actions.append(Action.DELAY)
        if self.reorder:
            actions.append(Action.REORDER)
        return actions


class FaultDecider:
    """Decides, from a seed, what happens to each datagram; no sockets, no clock."""

    def __init__(self, upstream: FaultPlan = FaultPlan(),
                 downstream: FaultPlan = FaultPlan(), seed: int = 1) -> None:
        self.plans = {Direction.UPSTREAM: upstream, Direction.DOWNSTREAM: downstream}
        # A string seed is hashed with SHA-512 by random.Random: stable across runs.
        self._rngs = {direction: random.Random(f"{seed}:{direction.value}")
                      for direction in Direction}

    def decide(self, direction: Direction) -> Decision:
        """The fate of the next datagram travelling in ``direction``."""
        plan = self.plans[direction]
        rng = self._rngs[direction]
        loss_draw = rng.random()
        duplicate_draw = rng.random()
        reorder_draw = rng.random()
        delay_draw = rng.random()
        if loss_draw < plan.loss:
            return Decision(drop=True)
        low, high = plan.delay
        return Decision(duplicate=duplicate_draw < plan.duplicate,
                        reorder=reorder_draw < plan.reorder,
                        delay=low + (high - low) * delay_draw)


@dataclass(frozen=True)
class Event:
    """One thing the relay did, for tests and plots."""

    time: float
    direction: Direction
    action: Action
    size: int


@dataclass(frozen=True)
class Outgoing:
    """A datagram to send now: upstream to the server for ``flow``, or downstream to it."""

    direction: Direction
    flow: Address
    datagram: bytes


@dataclass
class _Held:
    outgoing: Outgoing
    copies: int
    due: float           # its own delay is over at this time
    expires: float       # sent then even if nothing overtook it


class FaultSchedule:
    """Sans-IO: datagrams in (``receive``), datagrams due out (``due``)."""

    def __init__(self, decider: FaultDecider, *,
                 reorder_hold: float = DEFAULT_REORDER_HOLD,
                 max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.decider = decider
        self.reorder_hold = reorder_hold
        self.events: deque[Event] = deque(maxlen=max_events)
        self.counts: Counter[tuple[Direction, Action]] = Counter()
        self.received: Counter[Direction] = Counter()
        self._heap: list[tuple[float, int, Outgoing]] = []
        self._order = itertools.count()      # keeps equal due times in arrival order
        self._held: dict[tuple[Direction, Address], _Held] = {}

    def count(self, direction: Direction, action: Action) -> int:
        return self.counts[direction, action]

    def receive(self, direction: Direction, flow: Address, datagram: bytes,
                now: float) -> Decision:
        """A datagram arrived; decide its fate, schedule what must go out, return the fate."""
        self.received[direction] += 1
        decision = self.decider.decide(direction)
        for action in decision.actions():
            self._record(now, direction, action, len(datagram))
        if decision.drop:
            return decision
        outgoing = Outgoing(direction, flow, datagram)
        copies = 2 if decision.duplicate else 1
        due = now + decision.delay
        slot = (direction, flow)
        held = self._held.pop(slot, None)
        if decision.reorder:
            self._held[slot] = _Held(outgoing, copies, due, due + self.reorder_hold)
        else:
            self._schedule(outgoing, copies, due)
        if held is not None:
            # Behind this datagram, which has just overtaken it.
            self._schedule(held.outgoing, held.copies, max(due, held.due))
        return decision

    def next_deadline(self) -> float | None:
        """When ``due`` next has something to send, or None."""
        deadlines = [held.expires for held in self._held.values()]
        if self._heap:
            deadlines.append(self._heap[0][0])
        return min(deadlines) if deadlines else None

    def due(self, now: float) -> list[Outgoing]:
        """Every datagram to send at ``now``, in order."""
        for slot, held in list(self._held.items()):
            if held.expires <= now:             # nothing overtook it in time
                del self._held[slot]
                self._schedule(held.outgoing, held.copies, held.due)
        out: list[Outgoing] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, outgoing = heapq.heappop(self._heap)
            self._record(now, outgoing.direction, Action.FORWARD, len(outgoing.datagram))
            out.append(outgoing)
        return out

    def _schedule(self, outgoing: Outgoing, copies: int, due: float) -> None:
        for _ in range(copies):
            heapq.heappush(self._heap, (due, next(self._order), outgoing))

    def _record(self, now: float, direction: Direction, action: Action, size: int) -> None:
        self.events.append(Event(now, direction, action, size))
        self.counts[direction, action] += 1


# -- The I/O shell ------------------------------------------------------------
@dataclass
class _Upstream:
    """One client's socket towards the server; rides on its SelectorKey.data."""

    client: Address
    sock: socket.socket = field(repr=False)


class FaultRelay:
    """A UDP relay on 127.0.0.1 that injects the faults of a seeded ``FaultSchedule``.

    Use as ``with FaultRelay(server_addr, upstream=FaultPlan(loss=0.2)) as relay:``
    and point clients at ``relay.address``. ``events`` and ``count`` may be
    read while it runs or after ``stop``; ``wait_for`` lets a test wait for
    the relay to have done something, with a deadline, instead of sleeping.
    """

    def __init__(self, server_addr: Address, upstream: FaultPlan = FaultPlan(),
                 downstream: FaultPlan = FaultPlan(), seed: int = 1, *,
                 reorder_hold: float = DEFAULT_REORDER_HOLD,
                 max_clients: int = MAX_CLIENTS,
                 max_events: int = DEFAULT_MAX_EVENTS,
                 host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.server_addr = server_addr
        self._bind = (host, port)             # where clients send: 127.0.0.1, any free port
        self.max_clients = max_clients
        self.refused_clients = 0              # datagrams dropped: too many clients
        self.schedule = FaultSchedule(FaultDecider(upstream, downstream, seed),
                                      reorder_hold=reorder_hold, max_events=max_events)
        self._cond = threading.Condition()    # guards schedule; notified after each step
        self._upstreams: dict[Address, _Upstream] = {}
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wakeup: Wakeup | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> FaultRelay:
        """Bind (127.0.0.1, any free port by default) and start the relay thread; returns self."""
        if self._started:
            raise RuntimeError("a relay starts once; make a new one")
        self._started = True
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listener.bind(self._bind)
        self._listener.setblocking(False)
        self._wakeup = Wakeup()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="fault-relay", daemon=True)
        self._thread.start()
        return self

    @property
    def address(self) -> Address:
        """Where clients should send; the relay forwards to ``server_addr``."""
        if self._listener is None:
            raise RuntimeError("start() the relay first")
        host, port = self._listener.getsockname()[:2]
        return host, port

    def stop(self) -> None:
        """Stop the thread and close every socket. Datagrams still delayed are lost."""
        if self._thread is None or self._wakeup is None:
            return
        self._stopping = True
        self._wakeup.wake()
        self._thread.join()
        self._close_all()

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what it did -----------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        with self._cond:
            return list(self.schedule.events)

    def count(self, direction: Direction, action: Action) -> int:
        with self._cond:
            return self.schedule.count(direction, action)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (re-checked after each relay step).

        Returns False if ``timeout`` seconds passed first.
        """
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    # -- the loop: wait, receive and decide, send what is due ------------------
    def _run(self) -> None:
        assert self._selector is not None
        while not self._stopping:
            ready = self._selector.select(self._select_timeout())
            with self._cond:
                for key, _ in ready:
                    self._on_readable(key)
                for outgoing in self.schedule.due(time.monotonic()):
                    self._send(outgoing)
                self._cond.notify_all()

    def _select_timeout(self) -> float | None:
        with self._cond:
            deadline = self.schedule.next_deadline()
        if deadline is None:
            return None                       # sleep until a datagram or stop()
        return max(0.0, deadline - time.monotonic())

    def _on_readable(self, key: selectors.SelectorKey) -> None:
        assert self._wakeup is not None
        if key.fileobj is self._wakeup.reader:
            self._wakeup.drain()
        elif key.fileobj is self._listener:
            self._receive_from_client()
        else:
            self._receive_from_server(key.data)

    def _receive_from_client(self) -> None:
        assert self._listener is not None
        try:
            datagram, client = self._listener.recvfrom(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:                # e.g. an ICMP error for an earlier send
            log.debug("relay: client socket error: %s", exc)
            return
        if client not in self._upstreams and not self._open_upstream(client):
            return
        self.schedule.receive(Direction.UPSTREAM, client, datagram, time.monotonic())

    def _receive_from_server(self, upstream: _Upstream) -> None:
        try:
            datagram = upstream.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:                # ECONNREFUSED: no server listening
            log.debug("relay: upstream for %s: %s", upstream.client, exc)
            return
        self.schedule.receive(Direction.DOWNSTREAM, upstream.client, datagram,
                              time.monotonic())

    def _open_upstream(self, client: Address) -> bool:
        assert self._selector is not None
        if len(self._upstreams) >= self.max_clients:
            self.refused_clients += 1
            return False
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(self.server_addr)        # only the server's replies reach it
        upstream = _Upstream(client, sock)
        self._upstreams[client] = upstream
        self._selector.register(sock, selectors.EVENT_READ, data=upstream)
        return True

    def _send(self, outgoing: Outgoing) -> None:
        assert self._listener is not None
        try:
            if outgoing.direction is Direction.UPSTREAM:
                self._upstreams[outgoing.flow].sock.send(outgoing.datagram)
            else:
                self._listener.sendto(outgoing.datagram, outgoing.flow)
        except OSError as exc:                # full buffer or refused: UDP may lose it
            log.debug("relay: %s send to %s failed: %s",
                      outgoing.direction.value, outgoing.flow, exc)

    def _close_all(self) -> None:
        for upstream in self._upstreams.values():
            upstream.sock.close()
        if self._listener is not None:
            self._listener.close()
        if self._wakeup is not None:
            self._wakeup.close()
        if self._selector is not None:
            self._selector.close()
        self._upstreams.clear()
        self._thread = None
