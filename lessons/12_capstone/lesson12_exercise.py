"""Lesson 12, the capstone: the whole TCP chat server, from this empty file.

Write, here or in modules of your own next to this file, a chat server that
keeps every promise of the top-level README's "The protocol" section:
newline-delimited UTF-8 JSON, a welcome, rooms with join and leave notices,
history with one server-wide ``seq`` and ``since``, whispers, typed errors,
and the limits it announces. Use what the course taught (a selectors loop,
bounded buffers, a sans-IO core), but import nothing from ``chat_sync``
except, if you like, ``chat_sync.protocol``'s constants: the point is to
write the rest yourself.

The tests start this file as a program and run ``chat-sync check`` against
it, one test per stage:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/12_capstone
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the chat server until SIGTERM or Ctrl-C; return the exit status, 0.

    Options: ``--host`` (default 127.0.0.1), ``--port`` (default 7420;
    0 picks any free port) and ``--presence-limit`` (default 100: members
    above which a room's joins and leaves go only to whoever joins or
    leaves; the tests give 3). When the server is ready, print
    ``listening on HOST:PORT`` (the real port) on stdout, and flush it: the
    tests wait for that line. On SIGTERM, close every connection and exit 0.
    """
    raise NotImplementedError("exercise: write the chat server")


if __name__ == "__main__":
    raise SystemExit(main())
