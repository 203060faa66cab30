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
  ``--baseline raw asyncio nolog`` runs the same load, interleaved round by
  round, against a relay that only copies bytes, the same chat on asyncio,
  and chat_sync without its log; the headline is the server's CPU per delivery.
- ``latency``: delivery times at 25%, 50% and 90% of the saturation rate.
- ``curves``: CPU per delivery by room size, RSS per client by clients
  connected, for every design; ``--plot FILE`` draws them.
- ``connections``: many clients held at once, joined to rooms of
  ``--room-size``; server RSS per client and the time for one message to
  reach a whole room.
- ``cluster``: the fanout load against two servers on a Redis bus (a
  ``redis-server`` of its own), one server on it, and one alone, clients
  split between the two; throughput, CPU per delivery (both servers'),
  and the latency the bus adds, every delivery checked against the
  cluster-wide ``seq``.
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
- ``raw-relay``, ``asyncio-chat``: serve a baseline (the comparisons start them).

Trade-off: the soak's clients are threads with blocking sockets (each read
and write bounded by a timeout), not one selector: simpler to read, and
the load they make is small next to the server's own work.

Modules: one per scenario (``fanout``, ``latency``, ``curves``,
``connections``, ``cluster``, ``udp``, ``idle``, ``soak``), ``load`` (the many-clients
generator), ``peer`` (one blocking client), ``baselines`` (what chat_sync is
compared with), ``designs`` (starting and pinning any of them), ``measure``
(the server as a subprocess, its CPU and RSS, pinning, file limits, medians
and ranges) and ``command`` (the CLI).
"""
from __future__ import annotations

from .command import main

__all__ = ["main"]
