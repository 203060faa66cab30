"""The chat log: every room broadcast, one line each, written off the event loop.

Theory of operation
-------------------
The event loop must never wait for a disk. ``ChatLog.add`` only appends a
tuple to a list, and ``flush``, once per loop turn, puts the whole list on
a queue: one put, and one wake-up of the writer thread, per turn rather
than per broadcast (each wake-up costs a lock, a notify, and the GIL
passing to the writer and back; measured, that was a fifth of the loop's
time). ``write`` is ``add`` and ``flush`` at once, for a caller without
turns. One writer thread formats the entries and hands them to a
``RotatingFileHandler`` (path, size and backup count from config).
``close`` flushes, puts a sentinel, and the thread drains everything
before it and exits.

Woken by a batch, the writer first lets more pile up for ``GATHER_S``
(group commit), then writes all it has as few records as the size limit
allows: one rollover check (two ``stat`` calls), one write, one flush per
record instead of per line, about 40 µs each, which would otherwise be
paid every turn. While it waits, the loop's puts wake nobody. The price: a
line reaches the file up to ``GATHER_S`` after its broadcast. A record
never holds more than ``max_bytes``, so rotation still keeps every file
within it.

Every field is passed through ``escape`` first: a user who types
``"hi\\n2026-01-01 lobby system: server owned"`` gets one log line showing a
literal ``\\n``, not two lines. Control characters (C0, C1, DEL), line and
paragraph separators and bidi/format characters are all escaped. The same
function makes peer-supplied text safe in the operational log on stderr.

The operational log (``log_to_stderr``) is off the loop too: stderr may be a
pipe nobody reads, and a write to a full pipe blocks. ``NonBlockingHandler``
puts records on a bounded queue that a writer thread empties; when the queue
is full a record is dropped and counted, never waited for, and the next
record that fits is preceded by one saying how many were lost.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time

from .protocol import DEFAULT_IGNORABLE, SYSTEM_USER

_log = logging.getLogger("chat_sync.logs")

# Cc: control, Cf: format (bidi overrides, zero-width, invisible tags), Zl/Zp: line and
# paragraph separators. Matches every code point of those categories in Unicode 14. Also
# Cs: lone surrogates, which JSON can carry and no file or terminal encoding can write;
# and every default-ignorable code point (variation selectors, Hangul fillers, ...),
# which render as nothing, so "alice" + U+E0100 shows as alice\U000e0100.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u0600-\u0605\u06dd\u070f\u0890\u0891"
                     "\u08e2\u2028\u2029\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
                     f"{DEFAULT_IGNORABLE}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if ord(char) > 0xFFFF:
        return f"\\U{ord(char):08x}"
    return _NAMED.get(char) or f"\\u{ord(char):04x}"


def escape(text: str) -> str:
    """``text`` with every character that could forge or disguise a line escaped."""
    if text.isascii() and text.isprintable():   # most chat: nothing to look for (0.1 us, not 0.5)
        return text
    return _UNSAFE.sub(_escape_char, text)


def format_entry(ts: float, room: str, user: str | None, text: str) -> str:
    """One chat-log line: ``{timestamp} {room} {user|system}: {text}``."""
    stamp = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    who = escape(user) if user is not None else SYSTEM_USER
    # Backslashes are doubled first, so a typed "\\n" cannot pass for an escaped newline.
    text = escape(text.replace("\\", "\\\\"))
    return f"{stamp.isoformat(timespec='milliseconds')} {escape(room)} {who}: {text}"


Entry = tuple[float, str, str | None, str]    # ts, room, user (None: system), text
GATHER_S = 0.05      # the chat log writer waits this long for more entries
LOG_QUEUE_RECORDS = 10_000   # operational log records waiting for stderr, at most
CLOSE_WAIT_S = 2.0           # how long close() waits for a stalled stream


class NonBlockingHandler(logging.handlers.QueueHandler):
    """Hands records to ``target`` on a writer thread; never blocks the caller.

    ``dropped`` counts the records the full queue refused, in all.
    """

    def __init__(self, target: logging.Handler, capacity: int = LOG_QUEUE_RECORDS) -> None:
        self._records: queue.Queue[logging.LogRecord | None] = queue.Queue(capacity)
        super().__init__(self._records)
        self.target = target
        self.dropped = 0
        self._unreported = 0          # dropped since the last record that got through
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def enqueue(self, record: logging.LogRecord) -> None:
        """Called under the handler's lock, so the counts need no other."""
        if self._unreported:
            notice = logging.LogRecord(
                "chat_sync.logs", logging.WARNING, __file__, 0,
                "dropped %d log records: stderr was not read fast enough",
                (self._unreported,), None)
            if not self._put(notice):
                self._count_drop()
                return
            self._unreported = 0
        if not self._put(record):
            self._count_drop()

    def _put(self, record: logging.LogRecord | None) -> bool:
        try:
            self._records.put_nowait(record)
        except queue.Full:
            return False
        return True

    def _count_drop(self) -> None:
        self.dropped += 1
        self._unreported += 1

    def _run(self) -> None:
        while True:
            record = self._records.get()
            if record is None:
                return
            self.target.handle(record)

    def close(self) -> None:
        """Write what is queued (waiting ``CLOSE_WAIT_S`` at most), then stop."""
        if not self._thread.is_alive():
            return                      # closed already (by the program, then atexit)
        if self._put(None) or self._wait_put():
            self._thread.join(CLOSE_WAIT_S)
        try:
            self.target.flush()
        except (OSError, ValueError):   # stderr closed or broken: nothing more to say
            pass
        super().close()

    def _wait_put(self) -> bool:
        try:
            self._records.put(None, timeout=CLOSE_WAIT_S)
        except queue.Full:
            return False
        return True


def log_to_stderr(level: str) -> NonBlockingHandler:
    """Send the operational log to stderr at ``level``, through a ``NonBlockingHandler``."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler = NonBlockingHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    atexit.register(handler.close)
    return handler


class _ByteRotatingHandler(logging.handlers.RotatingFileHandler):
    """Rotates on the bytes a record takes in UTF-8 (the base class counts
    characters), and keeps a write error for ``ChatLog`` to report instead of
    printing a traceback, which holds the chat line, to stderr per record."""

    error: Exception | None = None

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.maxBytes <= 0 or (os.path.exists(self.baseFilename)
                                  and not os.path.isfile(self.baseFilename)):
            return False
        if self.stream is None:
            self.stream = self._open()
        size = len(f"{self.format(record)}\n".encode("utf-8"))
        self.stream.seek(0, 2)
        return bool(self.stream.tell()) and self.stream.tell() + size > self.maxBytes

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        self.error = error if isinstance(error, Exception) else None
        # Drop what the file's buffer holds (it would grow) and reopen at the next record.
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


class ChatLog:
    """A rotating chat log written by its own thread.

    A write error (a full disk) loses the chat log's lines, never a chat
    message: it is logged once on stderr with the reason, and again when the
    log is written once more, with how many lines were lost.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self._handler = _ByteRotatingHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._path = path
        self._lost = 0                  # lines lost in this episode of write errors
        self._queued = 0                # entries written to the queue (by the caller) ...
        self._done = 0                  # ... and taken care of (by the writer): for idle()
        self._pending: list[Entry] = []     # added, not yet handed to the writer
        self._queue: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="chat-log", daemon=True)
        self._thread.start()

    def add(self, ts: float, room: str, user: str | None, text: str) -> None:
        """Hold one entry until ``flush``. ``user`` None marks a system notice."""
        self._pending.append((ts, room, user, text))

    def flush(self) -> None:
        """Hand the entries added since the last flush to the writer; returns at once."""
        if self._pending:
            self._queued += len(self._pending)
            self._queue.put(self._pending)
            self._pending = []

    def write(self, ts: float, room: str, user: str | None, text: str) -> None:
        """Queue one entry now (``add`` and ``flush``); returns at once."""
        self.add(ts, room, user, text)
        self.flush()

    def idle(self) -> bool:
        """True when every entry the caller wrote is in the file, or lost: for tests.

        Each counter has one writer thread, so no lock is needed to read them.
        """
        return self._done >= self._queued

    def close(self) -> None:
        """Write everything added so far, then stop the thread and close the file."""
        self.flush()
        self._queue.put(None)
        self._thread.join()
        try:
            self._handler.close()
        except OSError:     # its last flush: already reported, or the file is gone
            pass

    def _run(self) -> None:
        closing = False
        while not closing:
            batches = [self._queue.get()]           # wait for the first ...
            if batches[0] is not None:
                time.sleep(GATHER_S)                # ... let more come (see above) ...
            while not self._queue.empty():
                batches.append(self._queue.get())   # ... then take them all
            closing = batches[-1] is None           # close() puts it last
            lines = [format_entry(*entry) for batch in batches if batch is not None
                     for entry in batch]
            for chunk in self._chunks(lines):
                record = logging.LogRecord("chat_sync.chat", logging.INFO, __file__, 0,
                                           "\n".join(chunk), None, None)
                self._handler.handle(record)
                self._check_written(len(chunk))
            self._done += len(lines)

    def _check_written(self, count: int) -> None:
        """Say once per episode that lines are lost, and when they are not any more."""
        error, self._handler.error = self._handler.error, None
        if error is not None:
            if not self._lost:
                _log.warning("chat log %s: cannot write (%s); chat lines are lost until "
                             "it can", self._path, error)
            self._lost += count
        elif self._lost:
            _log.warning("chat log %s: writing again; %d lines were lost", self._path,
                         self._lost)
            self._lost = 0

    def _chunks(self, lines: list[str]) -> list[list[str]]:
        """``lines`` in runs that each fit ``max_bytes`` (a longer line runs alone)."""
        limit = self._handler.maxBytes
        chunks: list[list[str]] = []
        size = 0
        for line in lines:
            length = len(line.encode("utf-8")) + 1
            if not chunks or (limit and size + length > limit):
                chunks.append([])
                size = 0
            chunks[-1].append(line)
            size += length
        return chunks
