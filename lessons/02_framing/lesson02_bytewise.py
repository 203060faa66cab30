"""Lesson 02: what a long line sent one byte per ``recv`` costs each ``LineBuffer``.

    python lessons/02_framing/lesson02_bytewise.py --kib 64
    python lessons/02_framing/lesson02_bytewise.py --kib 1024

Feeds one line of that many KiB, then its newline, one byte per ``feed``
(as a peer sending a byte at a time would make ``recv`` return them), to
the package's ``LineBuffer`` and to the lesson's plain one, and prints the
seconds each took. The times are this machine's; the ratio is the lesson.
"""
from __future__ import annotations

import argparse
import time

from chat_sync import framing
from lesson02_solution import LineBuffer as PlainLineBuffer


def seconds_to_feed(buffer: framing.LineBuffer | PlainLineBuffer, size: int) -> float:
    """Feed ``size`` bytes and a newline, one byte per call; the wall time it took."""
    byte = b"x"
    start = time.perf_counter()
    for _ in range(size):
        assert buffer.feed(byte) == []
    assert buffer.feed(b"\n") == [byte * size]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time a long line fed byte by byte.")
    parser.add_argument("--kib", type=int, default=64, help="the line's length in KiB")
    args = parser.parse_args(argv)
    size = args.kib * 1024
    for name, buffer in [("package", framing.LineBuffer(size)),
                         ("plain", PlainLineBuffer(size))]:
        print(f"{name:>7}: {args.kib} KiB, one byte per feed: "
              f"{seconds_to_feed(buffer, size):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
