"""The chat_sync wire protocol: every message type, limit and error code, defined once.

Theory of operation
-------------------
A peer sends UTF-8 JSON objects, one per line (TCP) or one per datagram (UDP).
This module turns one such unit of bytes into a validated, frozen request
object, or raises ``ProtocolError`` whose ``code`` is one of ``ErrorCode``.
It never touches a socket or a clock, so tests feed it bytes directly.

Rules:
- Only what validation has checked is ever copied into an outgoing message.
  A request's unknown keys are ignored, never echoed, so nothing odd that
  ``json`` let through (a lone surrogate, a huge number) reaches a broadcast.
- Python's ``json`` accepts things JSON does not: ``NaN``/``Infinity``,
  duplicate keys (last one wins), and raises ``RecursionError`` (not
  ``ValueError``) on deep nesting. Each of these is a typed ``bad_json``.
- Names are NFKC-normalised, so look-alike full-width letters collapse to
  the plain ones, and compared case-folded (see ``name_key``).

The server-to-client builders at the bottom are the only places that spell
an outgoing message's keys; the server and the clients use them.
"""
from __future__ import annotations

import enum
import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

PROTOCOL_VERSION = 1

# -- Defaults and limits (the one place each number is written) -------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 7420
DEFAULT_UDP_PORT = 7421
DEFAULT_ROOM = "lobby"
SYSTEM_USER = "system"              # the server's name in the chat log; no user may take it

MAX_LINE_BYTES = 64 * 1024          # one TCP line, newline excluded
MAX_TEXT_CHARS = 4000               # text of a message or whisper
MAX_USER_CHARS = 24
MAX_ROOM_CHARS = 32
MAX_ID_CHARS = 64                   # a string request id
MAX_DATAGRAM_BYTES = 1200           # one UDP datagram, both ways
MIN_DATAGRAM_BYTES = 576            # the least a limit may be: every IPv4 host takes 576,
                                    # and the longest join notice fits in it
HISTORY_SIZE = 20                   # broadcasts replayed per room on join
PRESENCE_LIMIT = 100                # members above which joins and leaves go unannounced
SESSION_ID_BYTES = 8                # UDP: a session's random id, sent as 16 hex digits
MAX_SEND_BUFFER_BYTES = 1024 * 1024 # unsent bytes held for one TCP client
MAX_CLIENTS = 1000
MAX_ROOMS = 1000

# -- Defaults of the TCP server's per-connection limits (see ``guard``) -------
RATE_LIMIT_PER_S = 20.0             # requests a second, sustained
RATE_BURST = 40                     # ... and at once, after a pause
RATE_ABUSE_LIMIT = 100              # refusals in a row before the connection is cut
SEND_BUFFER_SOFT_BYTES = 256 * 1024 # unsent bytes a client may hold for a while
SLOW_READER_GRACE_S = 10.0          # ... this long
JOIN_TIMEOUT_S = 30.0               # from connect (or TLS handshake) to join
PARTIAL_LINE_TIMEOUT_S = 30.0       # an unfinished line, at most
MAX_CLIENTS_PER_IP = 32
TLS_HANDSHAKE_TIMEOUT_S = 5.0
KEEPALIVE_IDLE_S = 30.0             # TCP keepalive: a silent peer is probed after this,
KEEPALIVE_INTERVAL_S = 10.0         # ... every this long,
KEEPALIVE_PROBES = 3                # ... and dropped after this many unanswered (~1 min)


class MessageType(enum.StrEnum):
    """Every ``type`` value on the wire, both directions."""

    # client -> server
    JOIN = "join"
    MESSAGE = "message"      # also server -> client, as the room broadcast
    LEAVE = "leave"
    ROOMS = "rooms"          # also the reply
    WHO = "who"              # also the reply
    WHISPER = "whisper"      # also the delivery
    PING = "ping"
    # server -> client
    WELCOME = "welcome"
    SYSTEM = "system"
    PONG = "pong"
    ERROR = "error"
    ACK = "ack"              # UDP only, both ways


class SystemEvent(enum.StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    SHUTDOWN = "shutdown"
    HISTORY_GAP = "history_gap"      # a rejoin's ``since`` is older than the room remembers
    BUS_DOWN = "bus_down"            # a cluster's bus is unreachable: requests are refused
    BUS_UP = "bus_up"                # ... and back


class ErrorCode(enum.StrEnum):
    """Codes of the ``error`` message. The peer misbehaved or asked the impossible."""

    BAD_JSON = "bad_json"            # not a JSON object (syntax, NaN, duplicate keys, nesting)
    BAD_UTF8 = "bad_utf8"            # bytes are not UTF-8
    BAD_MESSAGE = "bad_message"      # a field is missing, of the wrong type or out of range
    UNKNOWN_TYPE = "unknown_type"
    NOT_JOINED = "not_joined"        # the request needs a room (or a name) first
    NAME_TAKEN = "name_taken"
    NO_SUCH_USER = "no_such_user"
    LINE_TOO_LONG = "line_too_long"  # the connection is closed after this one
    DATAGRAM_TOO_LARGE = "datagram_too_large"
    SERVER_FULL = "server_full"      # the connection is closed after this one
    SLOW_READER = "slow_reader"      # the connection is closed after this one
    RATE_LIMITED = "rate_limited"    # not applied; closed after too many in a row
    TIMEOUT = "timeout"              # no join, or a line left unfinished; closed after this one
    TOO_MANY_CONNECTIONS = "too_many_connections"  # from one address; closed after this one
    TLS_REQUIRED = "tls_required"    # plain text on a TLS port; closed after this one
    UNAVAILABLE = "unavailable"      # a cluster's bus is down: the request was not applied
    ID_OUT_OF_WINDOW = "id_out_of_window"  # UDP: an id far beyond the session's; not applied


class ProtocolError(Exception):
    """The peer sent something the protocol forbids; answer with ``to_message()``.

    ``field`` names the offending key where there is one; ``id`` is the
    request's id when it was readable, so the error can answer it.
    """

    def __init__(self, code: ErrorCode, text: str, *, field: str | None = None,
                 id: int | str | None = None) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text
        self.field = field
        self.id = id

    def to_message(self) -> dict[str, Any]:
        return error(self.code, self.text, field=self.field, id=self.id)


@dataclass(frozen=True)
class Limits:
    """The limits a server enforces; the welcome message tells clients."""

    max_line_bytes: int = MAX_LINE_BYTES
    max_text_chars: int = MAX_TEXT_CHARS
    max_user_chars: int = MAX_USER_CHARS
    max_room_chars: int = MAX_ROOM_CHARS
    presence_limit: int = PRESENCE_LIMIT  # not a size: rooms above it are quiet (see rooms)

    def to_dict(self) -> dict[str, int]:
        return {"max_line_bytes": self.max_line_bytes,
                "max_text_chars": self.max_text_chars,
                "max_user_chars": self.max_user_chars,
                "max_room_chars": self.max_room_chars,
                "presence_limit": self.presence_limit}


# -- Requests (client -> server), validated when built ----------------------
# slots=True: one is built per request, and with slots a frozen one is built in
# half the time (0.6 us, not 1.2).
RequestId = Union[int, str, None]


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    user: str
    since: int | None = None
    id: RequestId = None
    resume: str | None = None      # the welcome's token of the connection that had the name


@dataclass(frozen=True, slots=True)
class Message:
    text: str
    room: str | None = None
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Leave:
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class ListRooms:
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Who:
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Whisper:
    to: str
    text: str
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId = None


Request = Union[Join, Message, Leave, ListRooms, Who, Whisper, Ping]


# -- Bytes -> dict ------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class DuplicateKey(ValueError):
    """A JSON object names ``key`` twice (``json`` would keep the last silently)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` for ``json.loads``; raises DuplicateKey."""
    obj = dict(pairs)
    if len(obj) < len(pairs):               # a key came twice: find the first one that did
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


# Built once: json.loads with hooks builds a new decoder per call (3.4 us a line, not 2.4).
_DECODER = json.JSONDecoder(object_pairs_hook=no_duplicate_keys, parse_constant=_reject_constant)


def decode(data: bytes) -> dict[str, Any]:
    """Parse one line or datagram (without its newline) into a JSON object.

    Raises ProtocolError(BAD_UTF8 or BAD_JSON).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_UTF8,
                            f"invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = _DECODER.decode(text)
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_JSON, "JSON nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON,
                            f"expected a JSON object, got {type(obj).__name__}")
    return obj


# Built once too: json.dumps with options builds a new encoder per call (6.5-7.4 us
# a message, not 4.1-5.5).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(message: dict[str, Any]) -> bytes:
    """One message as a newline-terminated UTF-8 JSON line."""
    return (_ENCODER.encode(message) + "\n").encode("utf-8")


def with_id(line: bytes, rid: RequestId) -> bytes:
    """An encoded message's ``line`` with ``"id": rid`` as its last key: the bytes
    ``encode({**message, "id": rid})`` would make, without encoding it all again
    (a sender's own copy of a broadcast).
    """
    # An id is an int or a str (_request_id); for a str, the escaping _ENCODER uses.
    value = str(rid) if isinstance(rid, int) else json.encoder.encode_basestring(str(rid))
    return b'%s,"id":%s}\n' % (line[:-2], value.encode("utf-8"))


def encode_datagram(message: dict[str, Any]) -> bytes:
    """One message as a UDP datagram: the same JSON, no newline."""
    return _ENCODER.encode(message).encode("utf-8")


# -- Field checks -------------------------------------------------------------
def _bad(field: str, text: str, rid: RequestId) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_MESSAGE, f"{field}: {text}", field=field, id=rid)


def _request_id(obj: dict[str, Any]) -> RequestId:
    rid = obj.get("id")
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        raise _bad("id", "must be an integer or a string", None)
    if isinstance(rid, int) and not -2**53 < rid < 2**53:
        raise _bad("id", "integer out of range", None)
    if isinstance(rid, str) and (len(rid) > MAX_ID_CHARS or not _encodable(rid)):
        raise _bad("id", f"must be at most {MAX_ID_CHARS} characters of valid Unicode", None)
    return rid


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates ("\\ud800" parses, then cannot be sent)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(obj: dict[str, Any], field: str, limit: int, rid: RequestId) -> str:
    value = obj.get(field)
    if not isinstance(value, str):
        raise _bad(field, "must be a string" if field in obj else "is required", rid)
    if not 1 <= len(value) <= limit:
        raise _bad(field, f"must be 1 to {limit} characters, got {len(value)}", rid)
    if not _encodable(value):
        raise _bad(field, "holds a lone surrogate", rid)
    return value


# Default_Ignorable_Code_Point (Unicode 14, DerivedCoreProperties.txt): characters
# that render as nothing, such as Hangul fillers, variation selectors (U+E0100), Khmer
# inherent vowels (U+17B4) and tags. A name must not hide one; ``logs.escape`` (the
# chat log, stderr and the terminal) shows each as an escape.
DEFAULT_IGNORABLE = ("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
                     "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
                     "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff")
_INVISIBLE = re.compile(f"[{DEFAULT_IGNORABLE}]")
# Scripts that may share a name: Unicode TS #39's "highly restrictive" level, as
# Japanese (Latin, Han, kana), Korean (Latin, Han, Hangul) and Chinese (Latin, Han,
# Bopomofo) are written. Any other mix, such as Latin with Cyrillic ("аlice" with a
# Cyrillic "а"), is refused.
_SCRIPT_MIXES = ({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}, {"LATIN", "CJK", "HANGUL"},
                 {"LATIN", "CJK", "BOPOMOFO"})


def check_name(value: object, field: str, limit: int, rid: RequestId = None) -> str:
    """Return the NFKC form of a user or room name, or raise BAD_MESSAGE.

    A name is 1..limit letters, digits, '_' or '-', and the combining marks
    that scripts such as Devanagari need after a letter. Letters may be any
    script's but one script per name (or a mix a language uses, like
    Japanese), so a Cyrillic "а" cannot pass for a Latin "a" inside a Latin
    name. Control, format (bidi overrides), symbol and invisible characters
    are refused.
    """
    if not isinstance(value, str):
        raise _bad(field, "must be a string", rid)
    if not _encodable(value):
        raise _bad(field, "holds a lone surrogate", rid)
    name = unicodedata.normalize("NFKC", value)
    if not 1 <= len(name) <= limit:
        raise _bad(field, f"must be 1 to {limit} characters, got {len(name)}", rid)
    invisible = _INVISIBLE.search(name)
    if invisible is not None:
        raise _bad(field, f"holds an invisible character (U+{ord(invisible.group()):04X}), "
                          "which could make it pass for another name", rid)
    scripts: set[str] = set()
    for index, char in enumerate(name):
        mark = unicodedata.category(char) in ("Mn", "Mc") and index > 0
        if not (char.isalnum() or char in "_-" or mark):
            raise _bad(field, f"may hold only letters, digits, '_' and '-', not {char!r}", rid)
        if char.isalpha():
            scripts.add(_script(char))
    if len(scripts) > 1 and not any(scripts <= mix for mix in _SCRIPT_MIXES):
        raise _bad(field, f"mixes scripts ({', '.join(sorted(scripts)).lower()}); "
                          "letters that look alike could pass for another name", rid)
    return name


def _script(letter: str) -> str:
    """A letter's script, as the first word of its Unicode name ("LATIN", "CYRILLIC")."""
    return unicodedata.name(letter, "UNKNOWN").split()[0]


def peek_id(data: bytes) -> RequestId:
    """The ``id`` of a line that will not be handled (to answer it), or None.

    Never raises: a line too broken to read has no id worth echoing.
    """
    try:
        return _request_id(decode(data))
    except ProtocolError:
        return None


def name_key(name: str) -> str:
    """The form in which two names are compared: 'Alice' and 'ALICE' clash."""
    return unicodedata.normalize("NFKC", name).casefold()


def skeletons(name: str) -> frozenset[str]:
    """The UTS #39 skeletons of a name, case-folded: names that look alike share one.

    Each character of the name's NFD form is replaced by its prototype from
    Unicode's confusables data (Cyrillic "ј" by Latin "j", "0" by "O"), so an
    all-Cyrillic "јое" has the skeleton of "joe" although no script is mixed.
    Two, because case matters to the data: as written (Cyrillic "Ь" looks
    like "b", "ь" does not) and folded first ("M" and "m", which looks like "rn").
    """
    return frozenset((_skeleton(unicodedata.normalize("NFKC", name)), _skeleton(name_key(name))))


def _skeleton(name: str) -> str:
    prototypes = _confusables()
    mapped = "".join(prototypes.get(char, char) for char in unicodedata.normalize("NFD", name))
    return unicodedata.normalize("NFD", mapped).casefold()


@functools.cache
def _confusables() -> dict[str, str]:
    """confusables.txt, shipped beside this module: Unicode's confusables.txt cut
    down to the characters a name may hold (letters, digits, marks)."""
    prototypes: dict[str, str] = {}
    text = Path(__file__).with_name("confusables.txt").read_text(encoding="ascii")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            source, *target = line.split()
            prototypes[chr(int(source, 16))] = "".join(chr(int(h, 16)) for h in target)
    return prototypes


def parse_request(obj: dict[str, Any], limits: Limits = Limits()) -> Request:
    """Validate a decoded object as a client request.

    Raises ProtocolError(BAD_MESSAGE or UNKNOWN_TYPE), carrying the request's id.
    """
    rid = _request_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _bad("type", "must be a string" if "type" in obj else "is required", rid)
    if kind == MessageType.JOIN:
        since = obj.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                                  or since < 0):
            raise _bad("since", "must be a non-negative integer", rid)
        resume = obj.get("resume")
        if resume is not None and not (isinstance(resume, str)
                                       and 1 <= len(resume) <= MAX_ID_CHARS):
            raise _bad("resume", f"must be a string of 1 to {MAX_ID_CHARS} characters", rid)
        return Join(room=check_name(obj.get("room"), "room", limits.max_room_chars, rid),
                    user=check_name(obj.get("user"), "user", limits.max_user_chars, rid),
                    since=since, id=rid, resume=resume)
    if kind == MessageType.MESSAGE:
        room = obj.get("room")
        if room is not None:
            room = check_name(room, "room", limits.max_room_chars, rid)
        return Message(text=_text(obj, "text", limits.max_text_chars, rid), room=room, id=rid)
    if kind == MessageType.WHISPER:
        return Whisper(to=check_name(obj.get("to"), "to", limits.max_user_chars, rid),
                       text=_text(obj, "text", limits.max_text_chars, rid), id=rid)
    if kind == MessageType.LEAVE:
        return Leave(id=rid)
    if kind == MessageType.ROOMS:
        return ListRooms(id=rid)
    if kind == MessageType.WHO:
        return Who(id=rid)
    if kind == MessageType.PING:
        return Ping(id=rid)
    shown = kind if len(kind) <= 32 and _encodable(kind) else kind[:32].encode(
        "utf-8", "backslashreplace").decode("ascii", "replace") + "…"
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {shown!r}", field="type", id=rid)


# -- Server -> client builders ------------------------------------------------
def _with_id(message: dict[str, Any], rid: RequestId) -> dict[str, Any]:
    if rid is not None:
        message["id"] = rid
    return message


def welcome(version: str, limits: Limits, seq: int, epoch: str,
            resume: str | None = None) -> dict[str, Any]:
    """``epoch`` names this run of the server: a new one means ``seq`` started afresh.

    ``resume`` (TCP) is this connection's secret: a later connection that joins
    with it takes over the name this one holds, from its ghost.
    """
    message = {"type": MessageType.WELCOME.value, "server": "chat_sync", "version": version,
               "protocol": PROTOCOL_VERSION, "limits": limits.to_dict(), "seq": seq,
               "epoch": epoch}
    if resume is not None:
        message["resume"] = resume
    return message


def chat_message(room: str, user: str, text: str, seq: int, ts: float) -> dict[str, Any]:
    return {"type": MessageType.MESSAGE.value, "room": room, "user": user, "text": text,
            "seq": seq, "ts": round(ts, 3)}


def system(room: str | None, event: SystemEvent, user: str | None, text: str,
           seq: int | None, ts: float) -> dict[str, Any]:
    message: dict[str, Any] = {"type": MessageType.SYSTEM.value}
    if room is not None:
        message["room"] = room
    message["event"] = event.value
    if user is not None:
        message["user"] = user
    message["text"] = text
    if seq is not None:
        message["seq"] = seq
    message["ts"] = round(ts, 3)
    return message


def whisper(sender: str, to: str, text: str, ts: float, rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.WHISPER.value, "from": sender, "to": to,
                     "text": text, "ts": round(ts, 3)}, rid)


def rooms_reply(rooms: list[tuple[str, int]], rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.ROOMS.value,
                     "rooms": [{"name": name, "members": count} for name, count in rooms]}, rid)


def who_reply(room: str, users: list[str], rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.WHO.value, "room": room, "users": users}, rid)


def pong(rid: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": MessageType.PONG.value}, rid)


def error(code: ErrorCode, text: str, *, field: str | None = None,
          id: RequestId = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": MessageType.ERROR.value, "code": code.value, "text": text}
    if field is not None:
        message["field"] = field
    return _with_id(message, id)
