"""Lesson 12 reference: the package's own server, ``python -m chat_sync.tcp_server``.

The capstone's reference is the whole of ``chat_sync``: read
``chat_sync/tcp_server.py`` (the loop), ``tcp_server_core.py`` (a
connection's state), ``rooms.py`` (the chat), ``protocol.py`` and
``framing.py`` (the wire) and ``guard.py`` (the limits) after you have
written yours, not before.
"""
from __future__ import annotations

from chat_sync import tcp_server


def main(argv: list[str] | None = None) -> int:
    """Run chat_sync's TCP server with these options (``--port 0``, ``--host`` ...)."""
    return tcp_server.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
