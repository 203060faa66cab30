"""Newline framing for a TCP byte stream, with no I/O.

Theory of operation
-------------------
TCP delivers a stream, not messages: one ``recv`` may hold half a line, or
ten lines and the start of an eleventh. ``LineBuffer.feed`` takes whatever
arrived and returns the complete lines in it; the rest waits for the next
call. Rules:

- A line ends at ``\\n``; a ``\\r`` just before it is dropped (telnet and
  netcat users send CRLF). Empty lines are skipped.
- The buffer is bounded: a line longer than ``max_line_bytes`` raises
  ``ProtocolError(LINE_TOO_LONG)`` as soon as that is certain, before the
  newline arrives, so a peer cannot make the server hold a gigabyte.
  After that error the stream cannot be re-synchronised: close it.
- ``feed(b"")`` means end of stream; an unterminated tail is dropped and
  reported by ``pending``.
- Each byte is scanned once: the search for ``\\n`` resumes where the last
  one stopped, so a long line arriving a byte at a time costs O(n), not O(n²).
"""
from __future__ import annotations

from .protocol import MAX_LINE_BYTES, ErrorCode, ProtocolError


class LineBuffer:
    """Split a byte stream into lines of at most ``max_line_bytes``."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._scanned = 0          # bytes of _buffer known to hold no b"\n"

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete line."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete lines, without line endings.

        Raises ProtocolError(LINE_TOO_LONG) when a line exceeds the limit.
        """
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            if line.endswith(b"\r"):
                line = line[:-1]
            self._check_length(len(line))
            if line:
                lines.append(line)
            start = end + 1
        if start:
            del self._buffer[:start]
        self._scanned = len(self._buffer)
        tail = len(self._buffer)
        if tail and self._buffer[-1] == 0x0D:   # a "\r" that may end the line
            tail -= 1
        self._check_length(tail)
        return lines

    def _check_length(self, length: int) -> None:
        if length > self.max_line_bytes:
            raise ProtocolError(ErrorCode.LINE_TOO_LONG,
                                f"line longer than {self.max_line_bytes} bytes")
