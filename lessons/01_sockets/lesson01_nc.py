"""Lesson 01: a small ``nc`` in Python, for machines without one.

    python lessons/01_sockets/lesson01_nc.py --port PORT

Connects to 127.0.0.1:PORT (``--host`` for another), sends each line you
type, and prints each line the server sends, as they come. End your input
(Ctrl-D; Ctrl-Z then Enter on Windows) and it half-closes: it sends no more,
and prints what the server still sends until the server closes too.

It waits for two things at once, the keyboard and the server, so it uses a
thread for each; lesson 06 explains why a client must.
"""
from __future__ import annotations

import argparse
import socket
import sys
import threading


def print_replies(sock: socket.socket) -> None:
    """The reader thread: print what the server sends until it closes."""
    for line in sock.makefile("r", encoding="utf-8", errors="replace", newline="\n"):
        print(line, end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Type lines to a TCP server, see its lines.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with socket.create_connection((args.host, args.port), timeout=5) as sock:
        sock.settimeout(None)                       # connected: now wait as long as it takes
        reader = threading.Thread(target=print_replies, args=(sock,), daemon=True)
        reader.start()
        try:
            for line in sys.stdin:
                sock.sendall(line.rstrip("\r\n").encode("utf-8") + b"\n")
            sock.shutdown(socket.SHUT_WR)           # "I will send no more": a half-close
        except (ConnectionError, KeyboardInterrupt):
            return 0
        reader.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
