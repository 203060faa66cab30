"""UDP chat servers that break the protocol on purpose, for the checker's tests.

``BrokenUdpServer(*flags)`` is chat_sync's own ``UdpServer`` with a switch
per promise: with no flag it is the real server, and each flag in ``FLAGS``
bends one thing, in the shell (what goes out, what is retransmitted) or in
the core (``BrokenChat``: how ids and stream numbers are kept).
``NonsenseUdpServer(mode)`` speaks no protocol at all: ``silent`` (a bound
port that never answers), ``garbage`` or ``echo``.

Both bind 127.0.0.1 port 0 and stop on ``stop()`` (or leaving ``with``).
"""
from __future__ import annotations

import json
import selectors
import socket
import threading
from types import TracebackType
from typing import Any

from broken_server import LoudRooms
from chat_sync import config as cfg
from chat_sync.receiving import DedupWindow
from chat_sync.serving import ServerHandle
from chat_sync.udp_server import UdpServer
from chat_sync.udp_server_core import Action, Peer, UdpChat

FLAGS = {
    "no_acks": "never acks a request",
    "apply_duplicates": "acks a copy of a request, and applies it again",
    "no_retransmit": "sends each datagram once, acked or not",
    "no_backoff": "retransmits every 0.2 s, never waiting longer",
    "n_holes": "skips n 3 in every client's stream",
    "no_sid": "leaves the sid out of every datagram but the welcome",
    "trust_address": "takes a datagram without a sid from a session's address as its",
    "no_size_limit": "reads and sends datagrams of any size",
    "no_id_window": "takes ids however far ahead (and then drops the real ones)",
    "no_forgot": "never says forgot in a welcome",
    "loud_rooms": "announces every join and leave to the room, past presence_limit too",
}
MODES = ("silent", "garbage", "echo")
PRESENCE_LIMIT = 3             # small enough for the checker to fill a room past it
ANY_SIZE = 65_000


class ForgetfulWindow(DedupWindow):
    """apply_duplicates: every id is new, however often it comes."""

    def seen(self, request_id: int) -> bool:
        super().seen(request_id)
        return False


class BoundlessWindow(DedupWindow):
    """no_id_window: no id is too far ahead."""

    def in_window(self, request_id: int) -> bool:
        return True


class BrokenChat(UdpChat):
    """The core, with the flags that bend how it keeps ids and stream numbers."""

    flags: frozenset[str] = frozenset()

    def receive(self, addr: tuple[str, int], data: bytes, now: float,
                wall: float) -> list[Action]:
        peer = self.peers.get(addr)
        if "trust_address" in self.flags and peer is not None:
            data = _with_sid(data, peer.sid)
        return super().receive(addr, data, now, wall)

    def _connect(self, addr: tuple[str, int], size: int, now: float, rid: int) -> Peer:
        peer = super()._connect(addr, size, now, rid)
        window = {"apply_duplicates": ForgetfulWindow, "no_id_window": BoundlessWindow}
        for flag, kind in window.items():
            if flag in self.flags:
                peer.dedup = kind(first=rid)
        return peer

    def _stamp(self, peer: Peer, body: bytes) -> list[Action]:
        actions = super()._stamp(peer, body)
        if "n_holes" in self.flags and peer.next_n == 3:
            peer.next_n = 4
        return actions


class BrokenUdpServer(UdpServer):
    def __init__(self, *flags: str) -> None:
        unknown = set(flags) - set(FLAGS)
        if unknown:
            raise ValueError(f"unknown flags {sorted(unknown)}")
        delays = {"base_delay": 0.2, "max_delay": 0.2} if "no_backoff" in flags else {}
        super().__init__(cfg.UdpServerConfig(host="127.0.0.1", port=0,
                                             presence_limit=PRESENCE_LIMIT, **delays))
        self.flags = frozenset(flags)
        self.chat.__class__ = BrokenChat         # the same core, its flags switched on
        if "loud_rooms" in self.flags:
            self.chat.core.__class__ = LoudRooms
        self.chat.flags = self.flags
        if "no_size_limit" in self.flags:
            self.chat.max_datagram_bytes = ANY_SIZE

    def _sendto(self, payload: bytes, addr: tuple[str, int]) -> None:
        if "no_acks" in self.flags and payload.startswith(b'{"type":"ack","id"'):
            return
        if self.flags & {"no_sid", "no_forgot"}:
            message = json.loads(payload)
            if "no_sid" in self.flags and message.get("type") != "welcome":
                message.pop("sid", None)
            if "no_forgot" in self.flags:
                message.pop("forgot", None)
            payload = json.dumps(message, separators=(",", ":")).encode()
        super()._sendto(payload, addr)

    def _transmit(self, key: Any, payload: bytes) -> None:
        if "no_retransmit" not in self.flags:
            super()._transmit(key, payload)


def broken(*flags: str) -> ServerHandle[UdpServer]:
    """A ``BrokenUdpServer`` running in a background thread."""
    return ServerHandle(BrokenUdpServer(*flags), name="broken-udp-server")


def _with_sid(data: bytes, sid: str) -> bytes:
    """trust_address: the datagram as if it carried ``sid`` (unchanged if it is no object)."""
    try:
        message = json.loads(data)
    except ValueError:
        return data
    if not isinstance(message, dict) or "sid" in message:
        return data
    return json.dumps({**message, "sid": sid}, separators=(",", ":")).encode()


class NonsenseUdpServer:
    """A UDP port that is no chat server: silent, or answering garbage or an echo."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def __enter__(self) -> NonsenseUdpServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self._wake_w.send(b"\0")
        self._thread.join(10)
        for sock in (self.sock, self._wake_r, self._wake_w):
            sock.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        if self.mode != "silent":
            selector.register(self.sock, selectors.EVENT_READ)
        while not any(key.fileobj is self._wake_r for key, _ in selector.select()):
            try:
                data, addr = self.sock.recvfrom(65_535)
                answer = data if self.mode == "echo" else b"\x00\xffnot json at all"
                self.sock.sendto(answer, addr)
            except OSError:
                pass
        selector.close()
