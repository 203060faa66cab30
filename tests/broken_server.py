"""Chat servers that break the protocol on purpose, for the checker's tests.

``BrokenServer(*flags)`` is chat_sync's own ``ChatCore`` behind a small
threaded shell (a thread per connection, one lock around the core), so with
no flag it keeps every promise and the checker passes it, and each flag in
``FLAGS`` breaks exactly one promise. ``BrokenServer(mode=...)`` is a server
that speaks no protocol at all: ``echo``, ``close``, ``hang``, ``flood``,
``garbage``, or ``hostile`` (JSON whose every key has the wrong type).

It binds 127.0.0.1 port 0 and stops on ``stop()`` (or leaving ``with``): a
wake-up socketpair ends the accept loop, and each connection's socket is
shut down, which ends its thread's ``recv``.
"""
from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from types import TracebackType
from typing import Any

from chat_sync import protocol as p
from chat_sync.rooms import Broadcast, ChatCore, Output, Reply, Room

FLAGS = {
    "no_welcome": "sends no welcome",
    "answer_empty": "answers an empty line with bad_json",
    "drop_partial": "drops the unfinished end of each read (no reassembly)",
    "stale_welcome_seq": "says seq 0 in every welcome",
    "small_limits": "announces max_text_chars 100, but enforces 4000",
    "trust_user": "stamps a message with the user key it carries",
    "leak_rooms": "sends every message to every connection",
    "no_history_flag": "replays history without history: true",
    "ignore_since": "replays the whole history, since or not",
    "seq_per_room": "counts seq per room",
    "whisper_to_room": "lets the sender's room overhear its whispers",
    "utf8_replace": "reads bad UTF-8 as U+FFFD instead of refusing it",
    "unknown_as_bad_message": "says bad_message for an unknown type",
    "close_on_error": "closes a connection after any error",
    "no_line_limit": "reads lines of any length",
    "silent_hangup": "tells a room nothing when a member hangs up",
    "tight_burst": "answers only 10 pings per connection, then rate_limited",
    "loud_rooms": "announces every join and leave to the room, past presence_limit too",
}
MODES = ("chat", "echo", "close", "hang", "flood", "garbage", "hostile")
# hostile: JSON the checker must survive, in every key it reads.
HOSTILE = [b'{"type":"welcome","limits":{"max_line_bytes":10,"max_text_chars":1e999,'
           b'"max_user_chars":99999999999},"seq":"0","epoch":["x"]}',
           b'{"type":"error","code":["x"],"id":{"a":1},"field":[]}',
           b'{"type":"pong","id":"\\ud800","text":"\\ud800\\u001b[31m"}',
           b'{"type":"system","event":"join","user":["u"],"room":5,"seq":[1],"history":"y"}',
           b'{"type":"message","text":"\\ud800","seq":1e999,"ts":"now","user":null}',
           b'{"type":"rooms","rooms":[{"name":[1]},5,null]}',
           b'{"type":"who","room":null,"users":[1,null,{"a":2}]}',
           b'{"type":"whisper","from":5,"to":[],"text":{}}']
MAX_LINE = p.MAX_LINE_BYTES
PING_ALLOWANCE = 10            # tight_burst
LIMITS = p.Limits(presence_limit=3)   # small enough for the checker to test it


class LoudRooms(ChatCore):
    """loud_rooms: every room hears every join and leave, as before presence_limit."""

    def _announced(self, room: Room) -> bool:
        return True


class PerRoomSeq(ChatCore):
    """seq_per_room: each room numbers its broadcasts from 1."""

    def __init__(self) -> None:
        super().__init__(LIMITS)
        self.room_seqs: dict[str, int] = {}

    def _broadcast(self, room: Room, message: dict[str, Any], sender: Any,
                   rid: p.RequestId) -> list[Output]:
        self.room_seqs[room.name] = message["seq"] = self.room_seqs.get(room.name, 0) + 1
        return super()._broadcast(room, message, sender, rid)


class BrokenServer:
    def __init__(self, *flags: str, mode: str = "chat") -> None:
        unknown = set(flags) - set(FLAGS)
        if unknown or mode not in MODES:
            raise ValueError(f"unknown flags {sorted(unknown)} or mode {mode!r}")
        self.flags, self.mode = frozenset(flags), mode
        self.core = (PerRoomSeq() if "seq_per_room" in self.flags else
                     LoudRooms(LIMITS) if "loud_rooms" in self.flags else ChatCore(LIMITS))
        self.lock = threading.Lock()          # the core, and every send, one at a time
        self.socks: dict[int, socket.socket] = {}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._start(self._accept_loop)

    # -- life ----------------------------------------------------------------------
    def __enter__(self) -> BrokenServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping = True
        self._wake_w.send(b"\0")
        with self.lock:
            for sock in self.socks.values():
                _shutdown(sock)
        for thread in self._threads:
            thread.join(10)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        while not self._stopping:
            for key, _ in selector.select():
                if key.fileobj is self.listener and not self._stopping:
                    sock, _ = self.listener.accept()
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with self.lock:
                        self.socks[sock.fileno()] = sock
                    self._start(self._serve, sock)
        selector.close()

    # -- one connection --------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        conn = sock.fileno()
        try:
            if self.mode == "chat":
                self._chat(conn, sock)
            else:
                self._nonsense(sock)
        except OSError:
            pass
        finally:
            with self.lock:
                self.socks.pop(conn, None)
                if self.mode == "chat" and conn in self.core.members:
                    outputs = self.core.disconnect(conn, time.time())
                    if "silent_hangup" not in self.flags:
                        self._deliver(outputs)
            _linger(sock)
            sock.close()

    def _nonsense(self, sock: socket.socket) -> None:
        if self.mode == "close":
            return
        if self.mode == "flood":
            line = p.encode({"type": "system", "text": "flood " * 100})
            while not self._stopping:
                sock.sendall(line * 100)
        if self.mode == "hostile":
            sock.sendall(HOSTILE[0] + b"\n")
        while data := sock.recv(65536):
            if self.mode == "hostile":
                sock.sendall(b"\n".join(HOSTILE) + b"\n")
            if self.mode == "echo":
                sock.sendall(data)
            elif self.mode == "garbage":
                sock.sendall(b"\x00\xffnot json at all\n" * data.count(b"\n"))

    def _chat(self, conn: int, sock: socket.socket) -> None:
        with self.lock:
            welcome = self.core.connect(conn)
            if "no_welcome" not in self.flags:
                self._deliver(welcome)
        buffer = b""
        pings = 0
        while data := sock.recv(65536):
            *lines, buffer = (buffer + data).split(b"\n")
            if "drop_partial" in self.flags:
                buffer = b""
            for line in lines + ([buffer] if len(buffer) > MAX_LINE else []):
                line = line.removesuffix(b"\r")
                if len(line) > MAX_LINE and "no_line_limit" not in self.flags:
                    self._reply(conn, p.error(p.ErrorCode.LINE_TOO_LONG, "line too long"))
                    return
                if not line:
                    if "answer_empty" in self.flags:
                        self._reply(conn, p.error(p.ErrorCode.BAD_JSON, "empty line"))
                    continue
                request = _peek(line)
                if request.get("type") == "ping" and "tight_burst" in self.flags:
                    pings += 1
                    if pings > PING_ALLOWANCE:
                        self._reply(conn, p.error(p.ErrorCode.RATE_LIMITED, "slow down",
                                                  id=request.get("id")))
                        continue
                if not self._request(conn, self._rewrite(line, request), request):
                    return

    def _rewrite(self, line: bytes, request: dict[str, Any]) -> bytes:
        """The line the core gets: what ignore_since and utf8_replace make of it."""
        if "utf8_replace" in self.flags:
            line = line.decode("utf-8", "replace").encode("utf-8")
        if "ignore_since" in self.flags and "since" in request:
            line = json.dumps({k: v for k, v in request.items() if k != "since"}).encode()
        return line

    def _request(self, conn: int, line: bytes, request: dict[str, Any]) -> bool:
        """Feed one line to the core and send what it says; False to close the connection."""
        with self.lock:
            outputs = self.core.receive(conn, line, time.time())
            claimed = request.get("user")
            if "trust_user" in self.flags and request.get("type") == "message" and claimed:
                for output in outputs:
                    if output.message.get("type") == "message":
                        output.message["user"] = claimed
            self._deliver(outputs)
        errors = [o for o in outputs if o.message.get("type") == "error"]
        return not (errors and "close_on_error" in self.flags)

    def _deliver(self, outputs: list[Output]) -> None:
        """Send each output to its connections, through the flags that bend it. Hold the lock."""
        for output in (part for whole in outputs for part in _apart(whole)):
            message = dict(output.message)
            to = list(output.to) if isinstance(output, Broadcast) else [output.to]
            kind = message.get("type")
            if kind == "welcome" and "stale_welcome_seq" in self.flags:
                message["seq"] = 0
            if kind == "welcome" and "small_limits" in self.flags:
                message["limits"] = {**message["limits"], "max_text_chars": 100}
            if "no_history_flag" in self.flags:
                message.pop("history", None)
            if kind == "error" and message["code"] == "unknown_type" and (
                    "unknown_as_bad_message" in self.flags):
                message["code"] = "bad_message"
            if kind == "message" and "leak_rooms" in self.flags:
                to = list(self.socks)
            if kind == "whisper" and "whisper_to_room" in self.flags:
                sender = self.core.user_named(message["from"])
                room = next((m.room for m in self.core.members.values() if m.user == sender),
                            None)
                to += [c for c in (room.members if room else ()) if c not in to]
            for conn in to:
                sock = self.socks.get(conn)
                if sock is not None:
                    try:
                        sock.sendall(p.encode(message))
                    except OSError:
                        _shutdown(sock)

    def _reply(self, conn: int, message: dict[str, Any]) -> None:
        with self.lock:
            self._deliver([Reply(conn, message)])


def _apart(output: Output) -> list[Output]:
    """A broadcast with the sender's copy as two outputs: to the others, and to the sender
    (so each flag bends both as it would any other)."""
    if isinstance(output, Reply) or output.own is None:
        return [output]
    sender, rid = output.own
    others = tuple(conn for conn in output.to if conn != sender)
    return [Broadcast(others, output.message, output.room),
            Reply(sender, {**output.message, "id": rid})]


def _peek(line: bytes) -> dict[str, Any]:
    """The line as a dict if it is a JSON object, else {} (the core judges it)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _linger(sock: socket.socket) -> None:
    """Shut our side and read theirs to its end (1 s at most) before closing.

    Closing with input unread resets the connection, and the peer loses the
    last reply with it.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
