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
  ``LineTooLong`` (a ``ProtocolError`` with code ``line_too_long``) as soon
  as that is certain, before the newline arrives, so a peer cannot make the
  server hold a gigabyte. The complete lines that came before it in the same
  read ride on the error (``.lines``): how TCP split the bytes must not decide
  which requests are answered. After the error the stream cannot be
  re-synchronised: close it.
- ``feed(b"")`` means end of stream; an unterminated tail is dropped and
  reported by ``pending``.
- Each byte is scanned once: the search for ``\\n`` resumes where the last
  one stopped, so a long line arriving a byte at a time costs O(n), not O(n²).
"""
from __future__ import annotations

from .protocol import MAX_LINE_BYTES, ErrorCode, ProtocolError


class LineTooLong(ProtocolError):
    """A line passed ``max_line_bytes``; ``lines`` are the complete ones before it."""

    def __init__(self, max_line_bytes: int, lines: list[bytes]) -> None:
        super().__init__(ErrorCode.LINE_TOO_LONG, f"line longer than {max_line_bytes} bytes")
        self.lines = lines


class LineBuffer:
    """Split a byte stream into lines of at most ``max_line_bytes``."""

    __slots__ = ("max_line_bytes", "_buffer", "_scanned")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._scanned = 0          # bytes of _buffer known to hold no b"\n"

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete line."""
        return len(self._buffer)

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Add received bytes; return the complete lines, without line endings.

        Raises LineTooLong when a line exceeds the limit.
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
            self._check_length(len(line), lines)
            if line:
                lines.append(line)
            start = end + 1
        if start:
            del self._buffer[:start]
        self._scanned = len(self._buffer)
        tail = len(self._buffer)
        if tail and self._buffer[-1] == 0x0D:   # a "\r" that may end the line
            tail -= 1
        self._check_length(tail, lines)
        return lines

    def _check_length(self, length: int, lines: list[bytes]) -> None:
        if length > self.max_line_bytes:
            raise LineTooLong(self.max_line_bytes, lines)
