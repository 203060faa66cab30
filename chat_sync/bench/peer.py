"""One blocking TCP client of the line protocol, for the scenarios that talk like a person."""
from __future__ import annotations

import json
import socket
import struct
from collections import Counter, deque
from typing import Any, Callable

from .. import protocol as p
from .measure import RECV_BYTES


class ClosedByServer(ConnectionError):
    """The server ended the stream."""


class Refused(Exception):
    """The server answered with an error where the client wanted something else."""


PEER_FAILURES = (OSError, ValueError, Refused)      # how a TcpPeer's conversation can end


class TcpPeer:
    """One blocking TCP client of the line protocol; every call bounded by the socket timeout.

    ``errors`` counts the codes of the errors it has parsed.
    """

    def __init__(self, address: tuple[str, int], timeout: float = 10.0, *,
                 rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:      # before connect, so the advertised window is small
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.inbuf = bytearray()
        self.pending: deque[bytes] = deque()        # complete lines not handed out yet
        self.errors: Counter[str] = Counter()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(p.encode(message))

    def lines(self) -> list[bytes]:
        """The complete lines waiting, or those of one ``recv``; raises ClosedByServer."""
        if not self.pending:
            self._fill()
        lines = list(self.pending)
        self.pending.clear()
        return lines

    def next_message(self) -> dict[str, Any]:
        while not self.pending:
            self._fill()
        message: dict[str, Any] = json.loads(self.pending.popleft())
        if message.get("type") == "error":
            self.errors[str(message.get("code"))] += 1
        return message

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read messages until one satisfies ``predicate``; returns it."""
        while True:
            message = self.next_message()
            if predicate(message):
                return message

    def join(self, room: str, user: str) -> None:
        """Join and wait for our own join notice; raises Refused if an error answers."""
        self.send({"type": "join", "room": room, "user": user})
        answer = self.until(lambda m: m.get("type") == "error" or (
            m.get("type") == "system" and m.get("user") == user and not m.get("history")))
        if answer.get("type") == "error":
            raise Refused(str(answer.get("code")))

    def close(self, reset: bool = False) -> None:
        """Close; with ``reset`` (SO_LINGER 0) the server gets an RST instead of a FIN."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(RECV_BYTES)
        if not data:
            raise ClosedByServer("closed by the server")
        self.inbuf += data
        end = self.inbuf.rfind(b"\n")
        if end >= 0:
            self.pending.extend(bytes(self.inbuf[:end]).split(b"\n"))
            del self.inbuf[:end + 1]

