"""The checker's end of the wire: a connection with deadlines, and one rule's session.

Theory of operation
-------------------
A rule is a plain function of a ``Session``. The session holds the server's
address, the rule's deadline and a source of user and room names that no
other rule (and no earlier run) has used, so rules never meet each other's
leftovers. It opens ``Peer`` connections and closes them all when the rule
ends.

A ``Peer`` is a blocking socket whose every connect, send and receive waits
at most until the rule's deadline. Lines come out of ``framing.LineBuffer``
(bounded: an endless line cannot grow it) and each is decoded by
``protocol.decode``. Whatever goes wrong becomes ``Failed``, whose text says
what was expected, what was sent last and what came back, each shortened to
a line: a server that hangs, closes, answers garbage or floods fails the
rule, and never hangs or crashes the checker.

Keys a message does not define are ignored (the README says so), so no rule
compares whole messages: each looks only at the keys it is about.

To see that something did *not* arrive, a rule pings and reads up to the
pong: a server answers one connection's lines in order, so what it had
queued for that connection comes first. (A threaded server may still be
writing to it from another thread; then a leak can slip past, but a correct
server never fails.)
"""
from __future__ import annotations

import itertools
import json
import secrets
import socket
import time
from collections import deque
from typing import Any, Callable, Sequence, TypeGuard

from .. import protocol as p
from ..framing import LineBuffer, LineTooLong

Message = dict[str, Any]
Match = Callable[[Message], bool]

MAX_SERVER_LINE = 1 << 20          # a longer line from the server is garbage
SHOWN_CHARS = 110                  # a line in a FAIL report is cut to this
KEPT_MESSAGES = 1000               # each peer's log of what it received
MAX_PASSED_OVER = 10_000           # messages a rule reads past before it calls it a flood
# Types only a client sends: a server that sends one back is echoing, not answering.
CLIENT_ONLY = frozenset({p.MessageType.JOIN, p.MessageType.LEAVE, p.MessageType.PING})
# The least a server may offer (README, "What a client may rely on").
# (presence_limit is no size a client relies on: any value is allowed; see rooms.presence.)
FLOOR_LIMITS = {key: value for key, value in p.Limits().to_dict().items()
                if key != "presence_limit"}
PRESENCE_CHECKED = 8   # the largest presence_limit the checker fills a room past
# The most the checker believes: a rule sends a line, a text or a name of the length
# announced, so an absurd one must not make it build a gigabyte.
CEILING_LIMITS = {"max_line_bytes": 1 << 24, "max_text_chars": 1 << 20,
                  "max_user_chars": 1000, "max_room_chars": 1000}


class Failed(Exception):
    """The server broke the rule; ``str()`` says how, in a few short lines."""


class NotChecked(Exception):
    """The server's settings put the rule out of the checker's reach (SKIP);
    ``str()`` says which, and how to run the server so that it can be checked."""


def shorten(data: bytes | str | Message, limit: int = SHOWN_CHARS) -> str:
    """One line of at most ``limit`` characters, for a FAIL report."""
    if isinstance(data, dict):
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    elif isinstance(data, bytes):
        text = repr(data)
    else:
        text = data
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")   # lone surrogates
    return text if len(text) <= limit else text[:limit - 1] + "…"


class RuleSession:
    """What every rule has, over TCP or UDP: the server, a deadline, fresh names."""

    _names = itertools.count(1)
    _run = secrets.token_hex(2)     # tells this run's names from an earlier run's

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def name(self, prefix: str = "u") -> str:
        """A user or room name nobody else has used: a letter, then letters and digits."""
        return f"{prefix}{self._run}{next(self._names)}"

    def close(self) -> None:
        """Close every socket the rule opened (the transport's session knows them)."""


class Session(RuleSession):
    """What one TCP rule works with: a ``RuleSession`` and its connections."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout)
        self.peers: list[Peer] = []
        self.welcome: Message | None = None    # the first welcome any peer got

    def limits(self) -> dict[str, int]:
        """The limits the server announced in its welcome (at most ``CEILING_LIMITS``),
        else the README's floor."""
        announced = (self.welcome or {}).get("limits")
        limits = dict(FLOOR_LIMITS)
        if isinstance(announced, dict):
            for key in limits:
                value = announced.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    limits[key] = min(value, CEILING_LIMITS[key])
        return limits

    def connect(self, welcome: bool = True) -> Peer:
        """A new connection; with ``welcome``, its welcome is read first (Failed if none)."""
        peer = Peer(self, f"c{len(self.peers) + 1}")
        self.peers.append(peer)
        if welcome:
            first = peer.receive()
            if first.get("type") != p.MessageType.WELCOME:
                raise Failed(f"expected a welcome on connecting\n{peer.exchange(first)}")
            peer.welcome = first
            self.welcome = self.welcome or first
        return peer

    def join(self, room: str, user: str | None = None, **extra: Any) -> Peer:
        """A connection joined to ``room`` as ``user``, once its own join notice is in.

        What came before that notice, the replay, is kept in ``peer.replay``.
        """
        peer = self.connect()
        peer.user = user or self.name()
        peer.room = room
        peer.send(type="join", room=room, user=peer.user, **extra)
        seen = peer.until(f"{peer.user}'s own join notice", notice("join", peer.user, room))
        peer.joined, peer.replay = seen[-1], seen[:-1]
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


class Conversation:
    """What a TCP connection and a UDP peer share: waiting for the message a rule
    expects, and saying in a FAIL report what was sent and what came back."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.user = ""
        self.room = ""
        self.welcome: Message = {}
        self.joined: Message = {}             # its own join notice
        self.replay: list[Message] = []       # what came before it
        self.received: deque[Message] = deque(maxlen=KEPT_MESSAGES)
        self.last_sent = b""
        self._ids = itertools.count(1)

    def next_message(self) -> Message:
        """The next message; Failed if none comes by the deadline. Each transport's own."""
        raise NotImplementedError

    def ping(self) -> list[Message]:
        """Ping and read up to the pong; returns what arrived before it. Each transport's."""
        raise NotImplementedError

    def expect(self, what: str, match: Match, errors_ok: bool = False) -> Message:
        """The first message that ``match``es; others are passed over.

        An error nobody asked for answers what was sent, so unless
        ``errors_ok`` it fails the rule at once.
        """
        for _ in range(MAX_PASSED_OVER):
            try:
                message = self.next_message()
            except Failed as exc:
                raise Failed(f"expected {what}\n{exc}") from None
            if match(message):
                return message
            if message.get("type") == p.MessageType.ERROR and not errors_ok:
                raise Failed(f"expected {what}\n{self.exchange(message)}")
        raise Failed(f"expected {what}\n{self.sent()}\ngot {MAX_PASSED_OVER} other messages "
                     "first (a flood?)")

    def until(self, what: str, match: Match, errors_ok: bool = False) -> list[Message]:
        """Every message up to and including the first that ``match``es."""
        seen: list[Message] = []

        def record(message: Message) -> bool:
            seen.append(message)
            return match(message)

        self.expect(what, record, errors_ok)
        return seen

    # -- reporting -------------------------------------------------------------
    def sent(self) -> str:
        """What was sent last, for a FAIL report."""
        return f"sent {shorten(self.last_sent)}" if self.last_sent else "sent nothing"

    def exchange(self, got: Message | bytes) -> str:
        """'sent X' and 'got Y', for a FAIL report."""
        return f"{self.sent()}\ngot {shorten(got)}"


class Peer(Conversation):
    """One connection to the server under test; every wait ends at the session's deadline."""

    def __init__(self, session: Session, label: str) -> None:
        super().__init__(label)
        self.session = session
        self.eof = False
        self._lines = LineBuffer(MAX_SERVER_LINE)
        self._inbox: deque[bytes] = deque()
        try:
            self.sock = socket.create_connection((session.host, session.port),
                                                 timeout=max(session.remaining(), 0.01))
        except OSError as exc:
            raise Failed(f"could not connect: {exc.strerror or exc}"
                         " (did an earlier rule stop the server?)") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- sending ---------------------------------------------------------------
    def send(self, **message: Any) -> None:
        """Send one request, built from keyword arguments, as a line of JSON."""
        self.send_bytes(p.encode(message))

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes: a line, part of one, or several."""
        self.last_sent = data
        self.sock.settimeout(max(self.session.remaining(), 0.01))
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Failed(f"the server stopped reading: {self.sent()} did not go out "
                         f"within {self.session.timeout:g} s") from None
        except OSError as exc:
            raise Failed(f"{self.sent()}, which failed: {exc.strerror or exc}") from None

    def new_id(self) -> str:
        """A request id unique on this connection."""
        return f"{self.label}-{next(self._ids)}"

    # -- receiving -------------------------------------------------------------
    def next_message(self) -> Message:
        return self.receive()

    def receive(self) -> Message:
        """The next message from the server; Failed on silence, a close, or garbage."""
        line = self._next_line(self.session.deadline)
        if line is None:
            raise Failed(f"{self.sent()}\ngot nothing within {self.session.timeout:g} s")
        message = server_message(line, "line", self.sent())
        self.received.append(message)
        return message

    def ping(self) -> list[Message]:
        """Ping and read up to the pong; returns what arrived before it."""
        rid = self.new_id()
        self.send(type="ping", id=rid)
        return self.until(f"a pong with id {rid!r}", pong(rid))[:-1]

    def refused(self, line: bytes, code: str | tuple[str, ...] | None, rid: p.RequestId = None,
                field: str | None = None) -> Message:
        """Send ``line`` and a ping: an error must come before the pong.

        The error must have ``code`` (one of them, if a tuple; any, if None)
        and, when given, the ``id`` ``rid`` and the ``field``. The pong shows
        that the connection stayed open.
        """
        codes = (code,) if isinstance(code, str) else code
        what = ("an error" if codes is None else f"a {' or '.join(codes)} error") + (
            f" with id {rid!r}" if rid is not None else "") + (
            f" and field {field!r}" if field else "")
        ping_id = self.new_id()
        self.send_bytes(line + p.encode({"type": "ping", "id": ping_id}))
        seen = self.until(f"{what}, then a pong with id {ping_id!r}", pong(ping_id),
                          errors_ok=True)
        errors = [m for m in seen if m.get("type") == p.MessageType.ERROR]
        if not errors:
            raise Failed(f"expected {what}\n{self.exchange(seen[0])}")
        error = errors[0]
        if ((codes is not None and error.get("code") not in codes)
                or (rid is not None and error.get("id") != rid)
                or (field is not None and error.get("field") != field)):
            raise Failed(f"expected {what}\n{self.exchange(error)}")
        return error

    def closed(self) -> None:
        """Wait for the server to close the connection; what arrives first is dropped."""
        while not self.eof:
            try:
                line = self._next_line(self.session.deadline)
            except Failed:
                if self.eof:
                    return
                raise
            if line is None:
                raise Failed(f"expected the server to close the connection\n{self.sent()}\n"
                             f"it was still open after {self.session.timeout:g} s")

    def silent(self, seconds: float) -> None:
        """Nothing but a welcome may arrive for ``seconds``."""
        until = min(time.monotonic() + seconds, self.session.deadline)
        while (line := self._next_line(until)) is not None:
            if not _is_welcome(line):
                raise Failed(f"sent part of a line, {shorten(self.last_sent)}\n"
                             f"got an answer before it was whole: {shorten(line)}")

    # -- the socket ------------------------------------------------------------
    def _next_line(self, until: float) -> bytes | None:
        """The next line, or None if none is whole by ``until``. Failed at a close."""
        while not self._inbox:
            if self.eof:
                raise Failed(f"{self.sent()}\nthe server closed the connection")
            left = until - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as exc:          # a reset: what was unread is lost with it
                self.eof = True
                raise Failed(f"{self.sent()}\nthe connection failed: "
                             f"{exc.strerror or exc}") from None
            if not data:
                self.eof = True
            try:
                self._inbox.extend(self._lines.feed(data))
            except LineTooLong:
                self.eof = True
                raise Failed(f"{self.sent()}\ngot a line longer than {MAX_SERVER_LINE} "
                             "bytes") from None
        return self._inbox.popleft()

    def close(self) -> None:
        self.sock.close()


def server_message(data: bytes, unit: str, sent: str) -> Message:
    """A line or datagram from the server as a message; Failed (after ``sent``) unless
    it is a JSON object with a string type that a server may send."""
    try:
        message = p.decode(data)
    except p.ProtocolError:
        raise Failed(f"{sent}\ngot a {unit} that is not a JSON object: {shorten(data)}") from None
    kind = message.get("type")
    if not isinstance(kind, str):
        raise Failed(f"{sent}\ngot a message with no string type: {shorten(message)}")
    if kind in CLIENT_ONLY:
        raise Failed(f"{sent}\ngot a {kind!r} message, which only clients send "
                     f"(an echo?): {shorten(message)}")
    return message


def _is_welcome(line: bytes) -> bool:
    try:
        return p.decode(line).get("type") == p.MessageType.WELCOME
    except p.ProtocolError:
        return False


# -- what rules look for ----------------------------------------------------------
def pong(rid: p.RequestId) -> Match:
    return lambda m: m.get("type") == p.MessageType.PONG and m.get("id") == rid


def of_type(kind: str) -> Match:
    return lambda m: m.get("type") == kind


def notice(event: str, user: str, room: str, live: bool = True) -> Match:
    """A system notice of ``event`` about ``user`` in ``room`` (a live one, by default)."""
    def match(m: Message) -> bool:
        return (m.get("type") == p.MessageType.SYSTEM and m.get("event") == event
                and same_name(m.get("user"), user) and same_name(m.get("room"), room)
                and (not live or not m.get("history")))
    return match


def chat(text: str | None = None, room: str | None = None, live: bool = True) -> Match:
    """A room ``message`` (with ``text``, in ``room``; a live one, by default)."""
    def match(m: Message) -> bool:
        return (m.get("type") == p.MessageType.MESSAGE
                and (text is None or m.get("text") == text)
                and (room is None or same_name(m.get("room"), room))
                and (not live or not m.get("history")))
    return match


def same_name(a: object, b: object) -> bool:
    """Names compare as the README says: NFKC, case-folded."""
    return isinstance(a, str) and isinstance(b, str) and p.name_key(a) == p.name_key(b)


def presence_limit(welcome: Message | None) -> int:
    """The welcome's presence_limit, if the checker can fill a room past it."""
    limits = (welcome or {}).get("limits") or {}
    limit = limits.get("presence_limit")
    if not is_seq(limit):
        raise Failed(f"expected a whole number presence_limit in the welcome's limits\n"
                     f"got limits {shorten(limits)}")
    return checkable_presence_limit(limit)


def told_nothing(members: Sequence[Conversation], quiet: Conversation, limit: int) -> None:
    """No member heard of ``quiet`` joining and leaving a room one past ``limit``."""
    for peer in members:
        heard = [m for m in peer.ping() if m.get("type") == p.MessageType.SYSTEM
                 and same_name(m.get("user"), quiet.user)]
        if heard:
            raise Failed(f"{quiet.user} joined and left a room of {limit + 1} (presence_limit "
                         f"{limit}); {peer.user} was told\ngot {shorten(heard[0])}")


def checkable_presence_limit(limit: int) -> int:
    """``limit``, if the checker fills a room that far (NotChecked past ``PRESENCE_CHECKED``)."""
    if limit > PRESENCE_CHECKED:
        raise NotChecked(f"presence_limit is {limit}: the checker puts at most "
                         f"{PRESENCE_CHECKED + 1} clients in a room; run the server "
                         f"with --presence-limit 3 to check this rule")
    return limit


def is_seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
