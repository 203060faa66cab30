"""Lesson 02 exercise: a bounded line buffer for a TCP byte stream.

Write your own ``LineBuffer``: bytes in as they arrive, complete lines out,
and never more than ``max_line_bytes`` held for one line. Check it with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/02_framing
"""
from __future__ import annotations

# The package's limit and error, so the server could use your class.
from chat_sync.framing import LineTooLong  # noqa: F401
from chat_sync.protocol import MAX_LINE_BYTES


class LineBuffer:
    """Split a byte stream into lines of at most ``max_line_bytes``."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        """Remember the limit and start with nothing buffered."""
        raise NotImplementedError("exercise: write LineBuffer.__init__")

    def feed(self, data: bytes) -> list[bytes]:
        """Add the bytes of one ``recv``; return the lines they complete, in order.

        - A line ends at ``b"\\n"``; return it without the newline, and
          without a ``b"\\r"`` just before it (``nc`` and telnet send CRLF).
          A ``b"\\r"`` anywhere else stays. Skip empty lines.
        - Keep the bytes after the last newline for the next call.
        - Return ``bytes``, not ``bytearray``.
        - Raise ``LineTooLong(self.max_line_bytes, lines)`` when a line (not
          counting its line ending) is longer than ``max_line_bytes``, where
          ``lines`` are the complete lines found before it in this call: they
          still get answered, whatever way TCP split the bytes.
        - Raise it as soon as the line is certain to be too long: when more
          than ``max_line_bytes`` bytes wait with no newline, do not wait for
          one. (A ``b"\\r"`` at the very end may still become a line ending.)
        """
        raise NotImplementedError("exercise: write LineBuffer.feed")
