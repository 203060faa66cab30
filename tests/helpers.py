"""Shared test helpers: a line client over a real socket, waiting with deadlines.

Rules the suite keeps (see shared/STYLE.md): every read has a timeout, and
nothing sleeps to synchronise; a test waits for a line, an EOF, an event or
a predicate, each with a deadline, and fails with a message saying which.
"""
from __future__ import annotations

import json
import queue
import socket
import threading
import time
from typing import IO, Any, Callable, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0


def request_line(**fields: Any) -> bytes:
    """One request as a line without its newline, the way ``ChatCore.receive`` wants it."""
    return json.dumps(fields).encode("utf-8")


def wait_for(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT_S,
             what: str = "condition") -> T:
    """Return ``predicate()``'s first truthy value; fail the test after ``timeout`` s.

    For state only observable by looking (a file on disk, a thread's flag).
    The short pause between looks is a poll interval, not a guess at how long
    something takes: the deadline is what bounds the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.005)


class LineClient:
    """A blocking test client: send dicts or raw bytes, receive lines with a timeout."""

    def __init__(self, host: str, port: int, *, rcvbuf: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised window (and its scale) is small too.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self._buffer = bytearray()
        self.eof = False

    # -- sending ---------------------------------------------------------------
    def send(self, **fields: Any) -> None:
        self.send_raw(json.dumps(fields).encode("utf-8") + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving -------------------------------------------------------------
    def recv_line(self, timeout: float = DEFAULT_TIMEOUT_S) -> bytes | None:
        """The next line without its newline, or None at end of stream.

        Raises AssertionError if no complete line arrives within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line within {timeout} s; "
                                     f"have {bytes(self._buffer[:200])!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self._buffer += data

    def recv_message(self, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """The next message; fails the test on timeout or end of stream."""
        line = self.recv_line(timeout)
        if line is None:
            raise AssertionError("connection closed while a message was expected")
        message = json.loads(line)
        assert isinstance(message, dict), message
        return message

    def recv_until(self, predicate: Callable[[dict[str, Any]], bool],
                   timeout: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """Messages up to and including the first that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            message = self.recv_message(max(0.0, deadline - time.monotonic()))
            seen.append(message)
            if predicate(message):
                return seen

    def recv_until_closed(self, timeout: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """Every message left before the server closes the connection."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            line = self.recv_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                return seen
            seen.append(json.loads(line))

    # -- conveniences ----------------------------------------------------------
    def join(self, room: str, user: str, **extra: Any) -> list[dict[str, Any]]:
        """Join and return what arrived up to our own join notice (history included)."""
        self.send(type="join", room=room, user=user, **extra)
        return self.recv_until(lambda m: m.get("type") == "system" and m.get("event") == "join"
                               and m.get("user") == user)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(host: str, port: int, **kwargs: Any) -> LineClient:
    """A client that has read its welcome."""
    client = LineClient(host, port, **kwargs)
    welcome = client.recv_message()
    assert welcome["type"] == "welcome", welcome
    return client


class StreamLines:
    """Read a subprocess pipe on a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def readline(self, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
        """The next line, or None at end of stream; fails the test on timeout."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s; so far: {self.seen}")
        if line is not None:
            self.seen.append(line)
        return line

    def wait_for_line(self, predicate: Callable[[str], bool],
                      timeout: float = DEFAULT_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"stream ended without the line; saw: {self.seen}")
            if predicate(line):
                return line

    def rest(self, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """Everything until end of stream, joined."""
        deadline = time.monotonic() + timeout
        while self.readline(max(0.0, deadline - time.monotonic())) is not None:
            pass
        return "".join(self.seen)
