"""chat_sync: a small, real chat server and client over TCP and UDP, built to be read.

Public surface:

- ``protocol``: message types, limits, error codes, ``decode``/``encode``.
- ``framing.LineBuffer``: newline framing for a byte stream.
- ``rooms.ChatCore``: rooms, history and ``seq``, with no I/O.
- ``tcp_server.serve``: run a TCP server in a thread and get a handle
  (``serving.ServerHandle``).
- ``config``: settings dataclasses and the YAML/TOML/JSON loader.
- ``guard``: per-connection limits (rate, slow readers, timeouts), no I/O.
- ``tcp_client.ChatClient``: a client for programs, tests and notebooks.
- ``client_events``: what both clients report, ``Received``, ``Notice``, ``Closed``.
- ``udp_server.serve``, ``udp_client``: the same chat over reliable UDP.
- ``faultrelay.FaultRelay``: a seeded UDP relay that loses, duplicates, reorders.
- ``recorder.RecordingRelay``, ``pcap.write_pcap``: record TCP traffic, export it;
  ``RecordingRelay.cut``/``resume``: a network outage on demand.
- ``datagram_recorder.RecordingFaultRelay``: ``FaultRelay`` that records every datagram.
- ``records``: what a recording holds (``Segment``, ``ConnEvent``, ``Datagram``).
- ``record``: ``chat-sync record``, the relay that prints the wire as it passes.
- ``dissector.path()``: the Wireshark dissector ``chatsync.lua`` (``chat-sync dissector``).
- ``bench``: ``python -m chat_sync.bench``, benchmarks that verify what they count.
"""
from __future__ import annotations

__version__ = "0.1.0"
