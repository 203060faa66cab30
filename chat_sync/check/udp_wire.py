"""The checker's end of a UDP conversation: a datagram peer with deadlines, and its session.

Theory of operation
-------------------
UDP has no connection to open, so a ``UdpPeer`` is a socket of its own: its
own address, hence its own session on the server. The socket is
``connect()``ed to the server, so it hears no one else, and an ICMP "port
unreachable" comes back as an error instead of silence. Every wait ends at
the rule's deadline, as over TCP (``wire``).

A peer does what the README asks of a client, so that each rule can look at
one promise alone:

- it learns the ``sid`` from the welcome and puts it in every datagram after;
- it numbers its requests 1, 2, 3 ... (``id``);
- it acks every server datagram that carries ``n``, at once, with the sid
  (``auto_ack = False`` lets a rule watch the server retransmit instead).

It sends each request once. The checker is meant for a server on this
machine or its network, where a datagram is next to never lost; a rule that
needs a retransmission sends the copy itself, byte for byte. What the server
sends is kept: every message (``received``), the ``n`` of each, in the order
they came (``stream``), and the size of the largest datagram.

To see that something did *not* happen, a rule pings and reads up to the
pong: a server handles one address's datagrams in order, so whatever an
earlier datagram caused was sent before the pong.
"""
from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any, TypeGuard

from .. import protocol as p
from .wire import (KEPT_MESSAGES, MAX_PASSED_OVER, Conversation, Failed, Match, Message,
                   RuleSession, is_seq, notice, of_type, pong, server_message)

T = p.MessageType
RECEIVE_BYTES = 65_535           # the largest UDP payload: a datagram is read whole


def is_n(value: object) -> TypeGuard[int]:
    """Whether ``value`` can be a stream counter: an integer from 1."""
    return is_seq(value) and value >= 1


def stream_counter(message: Message) -> int | None:
    """The ``n`` a server datagram carries on its reliable stream (an ack carries none)."""
    n = message.get("n")
    return n if is_n(n) and message.get("type") != T.ACK else None


def acks_of(rid: int) -> Match:
    """The server's ack of request ``rid``."""
    return lambda m: m.get("type") == T.ACK and m.get("id") == rid and "n" not in m


class UdpSession(RuleSession):
    """What one UDP rule works with: a ``RuleSession`` and its peers."""

    def __init__(self, host: str, port: int, timeout: float,
                 presence_limit: int | None = None) -> None:
        super().__init__(host, port, timeout)
        self.peers: list[UdpPeer] = []
        self.presence_limit = presence_limit    # the server's, if told: the welcome has none

    def open(self) -> UdpPeer:
        """A peer with a socket of its own, which has sent nothing yet."""
        peer = UdpPeer(self, f"c{len(self.peers) + 1}")
        self.peers.append(peer)
        return peer

    def join(self, room: str, user: str | None = None, **extra: Any) -> UdpPeer:
        """A peer joined to ``room`` as ``user``, once its own join notice is in.

        The broadcasts that came before that notice, the replay, are kept in
        ``peer.replay``; its id is ``peer.join_id``.
        """
        peer = self.open()
        peer.user, peer.room = user or self.name(), room
        peer.join_id = peer.send(type="join", room=room, user=peer.user, **extra)
        peer.welcome = peer.expect("a welcome, in answer to a join", of_type(T.WELCOME))
        seen = peer.until(f"{peer.user}'s own join notice", notice("join", peer.user, room))
        peer.joined = seen[-1]
        peer.replay = [m for m in seen[:-1] if m.get("type") in (T.MESSAGE, T.SYSTEM)]
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


class UdpPeer(Conversation):
    """One client address talking to the server under test; every wait ends at the deadline."""

    def __init__(self, session: UdpSession, label: str) -> None:
        super().__init__(label)
        self.session = session
        self.sid: str | None = None           # from the welcome
        self.join_id = 0
        self.auto_ack = True
        self.left = False                     # it sent a leave: its session is over
        self.stream: deque[int] = deque(maxlen=KEPT_MESSAGES)   # each n, as it came
        self.largest = 0                      # bytes of the largest datagram received
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                session.host, session.port, type=socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(family, kind, proto)
            self.sock.connect(address)
        except OSError as exc:
            raise Failed(f"could not open a UDP socket to {session.host}:{session.port}: "
                         f"{exc.strerror or exc}") from None

    # -- sending ---------------------------------------------------------------
    def send(self, **message: Any) -> int:
        """Send one request built from keyword arguments; returns its id.

        The id is the next one unless given; the sid is the welcome's unless
        given (``sid=None`` sends none).
        """
        message.setdefault("id", next(self._ids))
        message.setdefault("sid", self.sid)
        message = {key: value for key, value in message.items() if value is not None}
        self.send_bytes(p.encode_datagram(message))
        rid: int = message.get("id", 0)
        return rid

    def send_bytes(self, data: bytes) -> None:
        """Send one datagram of any bytes (a copy of an earlier one, garbage, ...)."""
        self.last_sent = data
        self._send(data)

    def ack(self, n: int, sid: str | None) -> None:
        """Ack the server's datagram ``n`` (the report still shows the last request)."""
        ack: Message = {"type": T.ACK.value, "n": n}
        if sid is not None:
            ack["sid"] = sid
        self._send(p.encode_datagram(ack))

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:      # ECONNREFUSED: an ICMP error from an earlier datagram
            raise Failed(f"{self.sent()}, which failed: {exc.strerror or exc}") from None

    # -- receiving -------------------------------------------------------------
    def receive(self, until: float | None = None) -> Message | None:
        """The next datagram from the server as a message, or None if none by ``until``
        (the deadline by default). Failed on garbage, an echo, or a closed port."""
        data = self._next_datagram(self.session.deadline if until is None else until)
        if data is None:
            return None
        self.largest = max(self.largest, len(data))
        message = server_message(data, "datagram", self.sent())
        kind = message["type"]
        self.received.append(message)
        sid = message.get("sid")
        if kind == T.WELCOME and self.sid is None and isinstance(sid, str):
            self.sid, self.welcome = sid, message
        n = stream_counter(message)
        if n is not None:
            self.stream.append(n)
            if self.auto_ack:
                self.ack(n, self.sid or (sid if isinstance(sid, str) else None))
        return message

    def next_message(self) -> Message:
        message = self.receive()
        if message is None:
            raise Failed(f"{self.sent()}\ngot nothing within {self.session.timeout:g} s")
        return message

    def ping(self) -> list[Message]:
        """Ping and read up to the pong; returns what arrived before it."""
        rid = self.send(type="ping")
        return self.until(f"a pong with id {rid}", pong(rid), errors_ok=True)[:-1]

    def drain(self, seconds: float) -> list[Message]:
        """Everything that arrives for ``seconds`` (or until the deadline)."""
        until = min(time.monotonic() + seconds, self.session.deadline)
        seen: list[Message] = []
        while len(seen) < MAX_PASSED_OVER and (message := self.receive(until)) is not None:
            seen.append(message)
        return seen

    def count(self, match: Match) -> int:
        """How many of the messages received so far ``match``, a retransmission (a
        stream counter ``n`` seen before) not counted again: the server sends its
        datagram again until the ack reaches it, and that is one delivery."""
        times = 0
        counters: set[int] = set()
        for message in self.received:
            if not match(message):
                continue
            n = stream_counter(message)
            if n is not None:
                if n in counters:
                    continue
                counters.add(n)
            times += 1
        return times

    # -- the socket ------------------------------------------------------------
    def _next_datagram(self, until: float) -> bytes | None:
        left = until - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            return self.sock.recv(RECEIVE_BYTES)
        except socket.timeout:
            return None
        except ConnectionRefusedError:
            raise Failed(f"{self.sent()}\nthe port is closed (ICMP port unreachable): "
                         "is a UDP server running there?") from None
        except OSError as exc:
            raise Failed(f"{self.sent()}\nthe socket failed: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Say goodbye (a leave ends a UDP session), then close the socket."""
        if self.sid is not None and not self.left:
            try:
                self.sock.send(p.encode_datagram({"type": T.LEAVE.value, "id": next(self._ids),
                                                  "sid": self.sid}))
            except OSError:
                pass
        self.sock.close()


def unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why no UDP server answers at ``host:port``, or None if something does.

    UDP has no connection to open: a join from a new address must get an
    answer, any datagram at all (a chat server's is a welcome), by ``timeout``.
    (A join, not a ping: an address not verified yet may be sent only 3x the
    bytes it sent, and a welcome is bigger than three pings.)
    """
    session = UdpSession(host, port, timeout)
    try:
        peer = session.open()
        peer.left = True            # a probe: no leave; the server forgets it unverified
        peer.send(type="join", room=session.name("probe"), user=session.name("probe"))
        if peer._next_datagram(session.deadline) is None:
            return f"no answer to a join within {timeout:g} s (is a UDP server running there?)"
    except Failed as exc:
        return str(exc).splitlines()[-1]
    finally:
        session.close()
    return None
