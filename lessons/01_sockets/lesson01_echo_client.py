"""Lesson 01: send lines to an echo server and read each one back.

    python lessons/01_sockets/lesson01_echo_client.py --port PORT "hello" "world"

Every line goes out in one ``sendall``; the echoes come back in whatever
pieces the stream delivers, and ``read_line`` (the lesson's exercise) cuts them apart
again. Set ``CHAT_SYNC_LESSON=WORKSPACE`` (your workspace; see
``lessons/lesson_target.py``) to run your own ``read_line``.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # lessons/: lesson_target
from lesson_target import load  # noqa: E402

read_line = load(__file__).read_line    # the reference, or yours: CHAT_SYNC_LESSON


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send lines to an echo server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("lines", nargs="+", metavar="LINE")
    args = parser.parse_args(argv)
    with socket.create_connection((args.host, args.port), timeout=5) as sock:
        request = b""
        for line in args.lines:
            request += line.encode("utf-8") + b"\n"
        sock.sendall(request)       # every line in one go: the server sees one stream
        for _ in args.lines:
            echo = read_line(sock)
            if echo is None:
                print("the server closed the connection")
                return 1
            print(echo.decode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
