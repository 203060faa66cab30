"""chat_sync: a small, real chat server and client over TCP and UDP, built to be read.

Public surface:

- ``protocol``: message types, limits, error codes, ``decode``/``encode``.
- ``framing.LineBuffer``: newline framing for a byte stream.
- ``rooms.ChatCore``: rooms, history and ``seq``, with no I/O.
- ``tcp_server.serve``: run a TCP server in a thread and get a handle.
- ``config``: settings dataclasses and the YAML/TOML/JSON loader.
"""
from __future__ import annotations

__version__ = "0.1.0"
