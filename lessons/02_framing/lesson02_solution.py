"""Lesson 02 reference solution: the plain ``LineBuffer``.

It is correct and short, and it does two things the package's
``chat_sync/framing.py`` avoids (see the lesson's README): it searches the
buffer from the start on every call, and it deletes each line from the
front of the buffer as it finds it.
"""
from __future__ import annotations

from chat_sync.framing import LineTooLong
from chat_sync.protocol import MAX_LINE_BYTES


class LineBuffer:
    """Split a byte stream into lines of at most ``max_line_bytes``."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.buffer = bytearray()           # bytes after the last newline seen

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete lines, without line endings.

        Raises LineTooLong, carrying the lines before it, when a line exceeds
        the limit.
        """
        self.buffer += data
        lines: list[bytes] = []
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            self.check_length(len(line), lines)
            if line:
                lines.append(line)
        waiting = len(self.buffer)
        if self.buffer.endswith(b"\r"):     # may be the start of a "\r\n"
            waiting -= 1
        self.check_length(waiting, lines)
        return lines

    def check_length(self, length: int, lines: list[bytes]) -> None:
        if length > self.max_line_bytes:
            raise LineTooLong(self.max_line_bytes, lines)
