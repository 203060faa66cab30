"""Properties of the sans-IO cores, checked on inputs that hypothesis makes up.

The example-based tests (test_framing, test_protocol, test_rooms,
test_udp_server_core) say what the cores do on inputs a person thought of; these
say what must hold on *any* input a peer can send:

- framing: however TCP splits a stream, the same lines come out, and a line
  over the limit is refused at the same byte, with the lines before it;
- protocol: ``decode`` and ``parse_request`` fail only with a typed
  ``ProtocolError``, and every server message survives ``encode``/``decode``;
- ChatCore: any interleaving of connects, disconnects and lines never raises,
  never produces an unencodable message, keeps ``seq`` strictly increasing
  and announces each successful join exactly once;
- UdpChat: any datagrams from a few addresses never raise, and every datagram
  sent back fits the limit, is JSON, goes only to an address that sent a
  well-formed request and, until that address proves it is real by acking,
  stays within the anti-amplification budget.

Two tests at the end are marked ``xfail(strict=True)``: bugs these properties
found, each shrunk to a minimal example; fixing one turns its test into an
XPASS, which fails the run until the marker goes.

Runs are derandomized (the same examples every run), so a CI failure is
reproducible by running the file again. To search further locally, set
``CHAT_SYNC_EXPLORE=1``: random seeds and 20 times the examples (and the
time limit); a failure prints the ``@reproduce_failure`` line to replay it.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import fields
from typing import Any, Hashable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_sync import udp_server_core
from chat_sync import protocol as p
from chat_sync.udp_server_core import Action, Address, Send, UdpChat
from chat_sync.framing import LineBuffer, LineTooLong
from chat_sync.rooms import Broadcast, ChatCore, Output, Reply

EXPLORE = bool(os.environ.get("CHAT_SYNC_EXPLORE"))
SCALE = 20 if EXPLORE else 1
TIMEOUT_S = 60 * SCALE


def profile(max_examples: int) -> settings:
    """Bounded, reproducible runs; no deadline (a loaded CI machine is not a bug)."""
    return settings(max_examples=max_examples * SCALE, deadline=None,
                    derandomize=not EXPLORE, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- Strategies ------------------------------------------------------------------
ANY_CHAR = st.characters()                        # lone surrogates included
VALID_CHAR = st.characters(codec="utf-8")         # Unicode that can be sent
TRICKY_NAME_CHARS = "aAzZ09_-ßİıKΩéＡｚ０\u212a\u0301\u200f\u0000 .:\ud800\U0001f600"

BIG_INTS = st.one_of(st.sampled_from([2**53 - 1, 2**53, -2**53, 2**63]),
                     st.integers(300, 400).map(lambda digits: -(10**digits)))
# Over 4300 digits: str() of one raises ValueError (CPython's guard), so does json.dumps.
MONSTER_INTS = st.integers(4301, 4400).map(lambda digits: 10**digits)


def json_values(text: st.SearchStrategy[str], *, monsters: bool) -> st.SearchStrategy[Any]:
    """Anything ``json`` could hand over, and the odd values only Python has.

    ``monsters``: ints too big to write as JSON (for objects never serialised).
    """
    ints = st.one_of(st.integers(), BIG_INTS, MONSTER_INTS) if monsters else \
        st.one_of(st.integers(), BIG_INTS)
    leaves = st.one_of(st.none(), st.booleans(), ints,
                       st.floats(allow_nan=True, allow_infinity=True), text)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(text, inner, max_size=4), max_leaves=12)


ANY_TEXT = st.text(ANY_CHAR, max_size=40)


def request_objects(*, monsters: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts shaped like requests: the known keys (often), odd values, stray keys."""
    any_json = json_values(ANY_TEXT, monsters=monsters)
    ints = st.one_of(st.integers(-3, 3), st.integers(), BIG_INTS,
                     MONSTER_INTS if monsters else BIG_INTS)
    names = st.one_of(st.text(st.sampled_from(TRICKY_NAME_CHARS), max_size=36),
                      st.text(ANY_CHAR, min_size=20, max_size=40), any_json)
    known = {
        "type": st.one_of(st.sampled_from([t.value for t in p.MessageType]),
                          st.sampled_from(["JOIN", "Message", " ping", "ping\x00", "join\ud800"]),
                          st.text(ANY_CHAR, max_size=80), any_json),
        "id": st.one_of(ints, st.text(ANY_CHAR, max_size=70), any_json),
        "room": names, "user": names, "to": names,
        "text": st.one_of(ANY_TEXT, any_json,         # and around the 4000-character limit:
                          st.builds(lambda n, tail: "é" * n + tail, st.integers(3990, 4000),
                                    st.text(ANY_CHAR, max_size=12))),
        "since": st.one_of(ints, any_json),
    }
    return st.builds(lambda fields, stray: {**stray, **fields},
                     st.fixed_dictionaries({}, optional=known),
                     st.dictionaries(ANY_TEXT, any_json, max_size=3))


# Which request class a ``type`` names: an error's ``field`` must be one of its fields.
REQUEST_CLASSES: dict[str, type] = {
    p.MessageType.JOIN: p.Join, p.MessageType.MESSAGE: p.Message,
    p.MessageType.LEAVE: p.Leave, p.MessageType.ROOMS: p.ListRooms,
    p.MessageType.WHO: p.Who, p.MessageType.WHISPER: p.Whisper, p.MessageType.PING: p.Ping,
}


# -- Framing ------------------------------------------------------------------------
STREAM_PIECES = st.one_of(st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r\n"]),
                          st.binary(min_size=1, max_size=12),
                          st.integers(1, 40).map(lambda n: b"x" * n))


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[int, bytes, list[bytes]]:
    """(limit, stream, chunks): a byte stream rich in line endings, cut anywhere."""
    limit = draw(st.integers(1, 24))
    stream = b"".join(draw(st.lists(STREAM_PIECES, max_size=30)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    return limit, stream, chunks


def frame_reference(stream: bytes, limit: int) -> tuple[list[bytes], int | None]:
    """What a correct framer makes of the whole stream, written the plain way.

    Returns the complete non-empty lines (a CR before the LF dropped) and the
    offset of the byte that makes a line certainly too long, or None. A line is
    measured without a CR it ends on, since that CR may still belong to CRLF.
    """
    lines: list[bytes] = []
    line = bytearray()
    for offset, byte in enumerate(stream):
        if byte == 0x0A:
            if line.endswith(b"\r"):
                del line[-1]
            if line:
                lines.append(bytes(line))
            line.clear()
            continue
        line.append(byte)
        length = len(line) - 1 if line.endswith(b"\r") else len(line)
        if length > limit:
            return lines, offset
    return lines, None


@pytest.mark.timeout(TIMEOUT_S)
@profile(400)
@given(split_streams())
def test_framing_is_independent_of_how_the_stream_is_split(
        case: tuple[int, bytes, list[bytes]]) -> None:
    limit, stream, chunks = case
    expected, error_at = frame_reference(stream, limit)
    buffer = LineBuffer(limit)
    lines: list[bytes] = []
    offset = 0                                   # stream offset of the chunk being fed
    for chunk in chunks:
        try:
            lines += buffer.feed(chunk)
        except LineTooLong as exc:               # nothing else may escape
            assert exc.code == p.ErrorCode.LINE_TOO_LONG
            assert error_at is not None, f"refused a stream with no long line: {stream!r}"
            assert offset <= error_at < offset + len(chunk), \
                f"refused in the chunk at {offset}, but byte {error_at} made it certain"
            assert lines + exc.lines == expected
            return
        offset += len(chunk)
    assert error_at is None, f"byte {error_at} made a line too long, but nothing was raised"
    assert lines == expected
    assert buffer.pending == len(stream) - (stream.rfind(b"\n") + 1)
    assert buffer.feed(b"") == []                # end of stream: the tail is dropped


@pytest.mark.timeout(TIMEOUT_S)
@profile(150)
@given(split_streams())
def test_framing_copies_what_it_keeps_from_a_reused_receive_buffer(
        case: tuple[int, bytes, list[bytes]]) -> None:
    """The server recv_into()s one shared buffer and feeds memoryviews of it."""
    limit, stream, chunks = case
    expected, error_at = frame_reference(stream, limit)
    shared = bytearray(64)
    buffer = LineBuffer(limit)
    lines: list[bytes] = []
    try:
        for chunk in chunks:
            for start in range(0, len(chunk), len(shared)):
                piece = chunk[start:start + len(shared)]
                shared[:len(piece)] = piece
                lines += buffer.feed(memoryview(shared)[:len(piece)])
                shared[:] = b"\xee" * len(shared)   # the next recv overwrites it
    except LineTooLong as exc:
        lines += exc.lines
        assert error_at is not None
    else:
        assert error_at is None
    assert lines == expected


# -- Protocol -----------------------------------------------------------------------
JSONISH_BYTES = st.one_of(
    st.binary(max_size=60),
    json_values(ANY_TEXT, monsters=False).map(lambda value: json.dumps(value).encode("ascii")),
    st.integers(1, 5000).map(lambda n: b"[" * n),
    st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(4290, 4310).map(lambda n: b'{"id":' + b"9" * n + b"}"),
    st.sampled_from([b'{"a":NaN}', b'{"a":-Infinity}', b'{"a":1e999}', b'{"a":1,"a":2}',
                     b'{"t":"\\ud800"}', b'"\\udfff"', b"\xef\xbb\xbf{}", b"{}\x00",
                     b'{"t":"\xed\xa0\x80"}', b"\xc0\x80", b"\xf4\x90\x80\x80"]),
)


@pytest.mark.timeout(TIMEOUT_S)
@profile(400)
@given(JSONISH_BYTES)
def test_decode_fails_only_with_bad_utf8_or_bad_json(data: bytes) -> None:
    try:
        obj = p.decode(data)
    except p.ProtocolError as exc:
        assert exc.code in (p.ErrorCode.BAD_UTF8, p.ErrorCode.BAD_JSON)
        p.encode(exc.to_message())               # the error itself can be sent
        return
    assert isinstance(obj, dict)


@pytest.mark.timeout(TIMEOUT_S)
@profile(200)
@given(st.one_of(JSONISH_BYTES, request_objects(monsters=False).map(
    lambda obj: json.dumps(obj).encode("ascii"))))
def test_peek_id_never_raises_and_finds_only_sendable_ids(data: bytes) -> None:
    """The id of a line that will not be handled (rate limited), to answer it."""
    if not hasattr(p, "peek_id"):
        pytest.skip("protocol.peek_id is not there (yet)")
    rid = p.peek_id(data)
    if rid is not None:
        assert not isinstance(rid, bool) and isinstance(rid, (int, str))
        assert p.decode(data)["id"] == rid
        p.encode(p.error(p.ErrorCode.RATE_LIMITED if hasattr(p.ErrorCode, "RATE_LIMITED")
                         else p.ErrorCode.BAD_MESSAGE, "x", id=rid))


def check_parsed(request: p.Request, obj: dict[str, Any]) -> None:
    """A request that passed validation holds only sendable, in-range values."""
    assert isinstance(request, REQUEST_CLASSES[obj["type"]])
    for f in fields(request):
        value = getattr(request, f.name)
        if isinstance(value, str):
            value.encode("utf-8")                # no lone surrogate got through
    assert request.id is None or request.id == obj["id"]
    p.encode({"id": request.id})                 # an id is echoed in replies


@pytest.mark.timeout(TIMEOUT_S)
@profile(400)
@given(request_objects(monsters=True))
def test_parse_request_fails_only_with_a_typed_error_naming_a_real_field(
        obj: dict[str, Any]) -> None:
    try:
        request = p.parse_request(obj)
    except p.ProtocolError as exc:
        assert exc.code in set(p.ErrorCode)
        if exc.field is not None:
            kind = obj.get("type")
            cls = REQUEST_CLASSES.get(kind) if isinstance(kind, str) else None
            allowed = {"type", "id"} | ({f.name for f in fields(cls)} if cls else set())
            assert exc.field in allowed, (exc.field, kind)
        if exc.id is not None:
            assert exc.id == obj["id"]
        p.encode(exc.to_message())               # the error reply itself can be sent
        return
    check_parsed(request, obj)


VALID_TEXT = st.text(VALID_CHAR, max_size=60)
REQUEST_IDS = st.one_of(st.none(), st.integers(-2**53 + 1, 2**53 - 1), VALID_TEXT)
TIMESTAMPS = st.floats(0, 4e9, allow_nan=False, allow_infinity=False)
SEQS = st.integers(0, 2**53)

SERVER_MESSAGES = st.one_of(
    st.builds(p.chat_message, VALID_TEXT, VALID_TEXT, VALID_TEXT, SEQS, TIMESTAMPS),
    st.builds(p.system, st.none() | VALID_TEXT, st.sampled_from(p.SystemEvent),
              st.none() | VALID_TEXT, VALID_TEXT, st.none() | SEQS, TIMESTAMPS),
    st.builds(p.whisper, VALID_TEXT, VALID_TEXT, VALID_TEXT, TIMESTAMPS, REQUEST_IDS),
    st.builds(p.rooms_reply, st.lists(st.tuples(VALID_TEXT, st.integers(0, 10**6)),
                                      max_size=5), REQUEST_IDS),
    st.builds(p.who_reply, VALID_TEXT, st.lists(VALID_TEXT, max_size=5), REQUEST_IDS),
    st.builds(p.error, st.sampled_from(p.ErrorCode), VALID_TEXT,
              field=st.none() | VALID_TEXT, id=REQUEST_IDS),
    st.builds(p.welcome, VALID_TEXT,
              st.builds(p.Limits, *[st.integers(1, 2**31)] * 4), SEQS, VALID_TEXT),
    st.builds(p.pong, REQUEST_IDS),
)


@pytest.mark.timeout(TIMEOUT_S)
@profile(400)
@given(SERVER_MESSAGES)
def test_every_server_message_round_trips(message: dict[str, Any]) -> None:
    line = p.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1   # one message, one line
    assert p.decode(line[:-1]) == message
    assert p.decode(p.encode_datagram(message)) == message


@pytest.mark.timeout(TIMEOUT_S)
@profile(400)
@given(SERVER_MESSAGES, REQUEST_IDS.filter(lambda rid: rid is not None))
def test_a_senders_copy_spliced_is_the_copy_encoded(message: dict[str, Any],
                                                    rid: p.RequestId) -> None:
    message = {key: value for key, value in message.items() if key != "id"}
    assert p.with_id(p.encode(message), rid) == p.encode({**message, "id": rid})


# -- ChatCore ---------------------------------------------------------------------------
CONNS = st.integers(1, 4)
CORE_NAMES = st.sampled_from(["ann", "Ann", "ＡＮＮ", "bob", "ｂｏｂ", "system", "SYSTEM",
                              "carl", "Kelvin", "\u212aelvin", "straße", "STRASSE", "a" * 24,
                              "\U00020000" * 24])          # 4 bytes a letter, at the limit
CORE_ROOMS = st.sampled_from(["lobby", "LOBBY", "ｌｏｂｂｙ", "r2", "r3", "r4", "b" * 32,
                              "\U00020001" * 32])
CORE_TEXTS = st.one_of(st.text(ANY_CHAR, max_size=10), st.just("x" * 4000),
                       st.just("x" * 4001), json_values(ANY_TEXT, monsters=False))


def _line(obj: dict[str, Any]) -> bytes:
    """As a client would write it: lone surrogates become \\ud800 escapes."""
    return json.dumps(obj).encode("ascii")


CORE_REQUESTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("join"), "room": CORE_ROOMS, "user": CORE_NAMES},
                          optional={"since": st.integers(-1, 30), "id": st.integers(1, 3)}),
    st.fixed_dictionaries({"type": st.just("message"), "text": CORE_TEXTS},
                          optional={"room": CORE_ROOMS, "id": st.integers(1, 3) | VALID_TEXT}),
    st.fixed_dictionaries({"type": st.just("whisper"), "to": CORE_NAMES, "text": CORE_TEXTS},
                          optional={"id": st.integers(1, 3)}),
    st.fixed_dictionaries({"type": st.sampled_from(["leave", "who", "rooms", "ping"])},
                          optional={"id": st.integers(1, 3)}),
    request_objects(monsters=False),
).map(_line)
CORE_LINES = st.one_of(CORE_REQUESTS, CORE_REQUESTS, JSONISH_BYTES)
CORE_STEPS = st.lists(st.one_of(st.tuples(st.just("line"), CONNS, CORE_LINES),
                                st.tuples(st.just("line"), CONNS, CORE_LINES),
                                st.tuples(st.just("connect"), CONNS, st.just(b"")),
                                st.tuples(st.just("disconnect"), CONNS, st.just(b""))),
                      max_size=40)


class CoreRun:
    """Feed a ChatCore and check every batch of outputs against the invariants."""

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        self.now = 1_700_000_000.0
        self.last_seq = 0

    def step(self, op: str, conn: Hashable, line: bytes) -> None:
        self.now += 0.5
        if op == "connect":
            if conn not in self.core.members:
                self.check(self.core.connect(conn))
            return
        if op == "disconnect":
            if conn in self.core.members:
                self.check(self.core.disconnect(conn, self.now))
            return
        if conn not in self.core.members:
            self.check(self.core.connect(conn))
        outputs = self.core.receive(conn, line, self.now)
        self.check(outputs)
        self.check_join_notices(conn, line, outputs)

    def check(self, outputs: list[Output]) -> None:
        for output in outputs:
            p.encode(output.message)             # nothing unencodable goes out
            targets = [output.to] if isinstance(output, Reply) else list(output.to)
            for target in targets:
                assert target in self.core.members, f"output to a gone connection: {output}"
            if isinstance(output, Broadcast):
                assert len(set(output.to)) == len(output.to), output
                seq = output.message["seq"]
                assert seq > self.last_seq, f"seq {seq} after {self.last_seq}"
                self.last_seq = seq
                if output.own is not None:       # the sender's copy, if it had an id
                    assert output.own[0] in output.to, f"{output.own[0]} is not of {output}"
        self.check_state()

    def check_join_notices(self, conn: Hashable, line: bytes, outputs: list[Output]) -> None:
        notices = [o for o in outputs if isinstance(o, Broadcast)
                   and o.message["type"] == "system" and o.message["event"] == "join"]
        refused = any(isinstance(o, Reply) and o.to == conn and o.message["type"] == "error"
                      for o in outputs)
        try:
            is_join = isinstance(p.parse_request(p.decode(line)), p.Join)
        except p.ProtocolError:
            is_join = False
        assert len(notices) == (1 if is_join and not refused else 0), outputs
        if notices:
            member = self.core.members[conn]
            assert member.room is not None
            assert notices[0].message["user"] == member.user
            assert notices[0].message["room"] == member.room.name

    def check_state(self) -> None:
        """Rooms and members agree: nobody is in a room the core forgot."""
        rooms = list(self.core.rooms.values())
        for room in rooms:
            for conn, user in room.members.items():
                assert self.core.members[conn].room is room
                assert self.core.members[conn].user == user
        for member in self.core.members.values():
            if member.room is not None:
                assert any(member.room is room for room in rooms), member
                assert member.conn in member.room.members
        users = [p.name_key(m.user) for m in self.core.members.values() if m.user is not None]
        assert len(users) == len(set(users)), users
        assert len(self.core.rooms) <= self.core.max_rooms


@pytest.mark.timeout(TIMEOUT_S)
@profile(300)
@given(st.sampled_from([(20, 1000), (2, 2), (0, 1)]), CORE_STEPS)
def test_chat_core_survives_any_sequence_and_keeps_its_invariants(
        sizes: tuple[int, int], steps: list[tuple[str, int, bytes]]) -> None:
    history_size, max_rooms = sizes
    run = CoreRun(ChatCore(history_size=history_size, max_rooms=max_rooms, epoch="e"))
    for op, conn, line in steps:
        run.step(op, conn, line)
    for member in list(run.core.members):          # everybody leaves: notices still flow
        run.step("disconnect", member, b"")
    assert not run.core.members


# -- UdpChat -------------------------------------------------------------------------
ADDRESSES: list[Address] = [("127.0.0.1", 40001), ("127.0.0.1", 40002), ("::1", 40003)]


def _datagram(obj: dict[str, Any]) -> bytes:
    """UTF-8 as a client sends it (sizes count), lone surrogates as \\ud800 escapes."""
    try:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj).encode("ascii")


# Requests without an id: the run gives each the sender's next id, as a client does
# (an "id" drawn here stands for a retransmission or a client that got ids wrong).
UDP_REQUESTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("join"), "room": CORE_ROOMS, "user": CORE_NAMES},
                          optional={"since": st.integers(-1, 30), "id": st.integers(1, 4)}),
    st.fixed_dictionaries({"type": st.just("message"),
                           "text": st.one_of(st.text(ANY_CHAR, max_size=10),
                                             st.integers(900, 1200).map(lambda n: "é" * n),
                                             st.integers(250, 300).map(lambda n: "😀" * n),
                                             st.integers(900, 1200).map(lambda n: "\\" * n),
                                             st.integers(150, 300).map(lambda n: "\x01" * n))},
                          optional={"id": st.integers(1, 4)}),
    st.fixed_dictionaries({"type": st.just("whisper"), "to": CORE_NAMES,
                           "text": st.integers(1, 400).map(lambda n: '"' * n)}),
    st.fixed_dictionaries({"type": st.sampled_from(["leave", "who", "rooms", "ping", "nope"])}),
)
UDP_RAW = st.one_of(
    st.fixed_dictionaries({"type": st.just("ack"),
                           "n": st.integers(0, 8) | json_values(ANY_TEXT, monsters=False)}),
    request_objects(monsters=False),
).map(_datagram)
UDP_STEPS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from(ADDRESSES), UDP_REQUESTS),
    st.tuples(st.just("request"), st.sampled_from(ADDRESSES), UDP_REQUESTS),
    st.tuples(st.just("datagram"), st.sampled_from(ADDRESSES), st.one_of(UDP_RAW, JSONISH_BYTES)),
    st.tuples(st.just("ack_all"), st.sampled_from(ADDRESSES), st.none()),
    st.tuples(st.just("ack_all"), st.sampled_from(ADDRESSES), st.none()),
    st.tuples(st.just("tick"), st.sampled_from(ADDRESSES), st.none()),
    st.tuples(st.just("give_up"), st.sampled_from(ADDRESSES), st.none()),
    st.tuples(st.just("resend"), st.sampled_from(ADDRESSES), st.none()),
), max_size=50)


def _introduces(data: bytes) -> bool:
    """Whether a datagram may make the server talk to its sender: JSON with a valid id."""
    try:
        obj = p.decode(data)
    except p.ProtocolError:
        return False
    rid = obj.get("id")
    return (obj.get("type") != "ack" and isinstance(rid, int) and not isinstance(rid, bool)
            and 0 < rid < 2**53)


def _acked_n(data: bytes) -> int | None:
    try:
        obj = p.decode(data)
    except p.ProtocolError:
        return None
    n = obj.get("n")
    return n if obj.get("type") == "ack" and isinstance(n, int) else None


class UdpRun:
    """Feed a UdpChat as a few peers would, and check every datagram it would send.

    What the run knows of each address is what a packet capture would show, so
    its checks are looser than the server's own books, never stricter: bytes in
    count every datagram, and an address counts as verified from its first ack
    of an ``n`` it was really sent.
    """

    def __init__(self, chat: UdpChat) -> None:
        self.chat = chat
        self.now = 100.0
        self.introduced: set[Address] = set()      # sent something worth answering
        self.bytes_in: Counter[Address] = Counter()
        self.bytes_out: Counter[Address] = Counter()
        self.sent_n: dict[Address, set[int]] = defaultdict(set)
        self.acked_n: dict[Address, set[int]] = defaultdict(set)
        self.next_id: Counter[Address] = Counter()
        self.verified: set[Address] = set()        # acked an n it was sent (sticky: looser)
        self.reliable: dict[Address, list[Send]] = defaultdict(list)
        self.sid: dict[Address, str] = {}          # the session id the server last said

    def step(self, op: str, addr: Address, data: Any) -> None:
        self.now += 1.0
        actions: list[Action]
        if op == "request":
            if "id" not in data:
                self.next_id[addr] += 1
                data = {**data, "id": self.next_id[addr]}
            if addr in self.sid and "sid" not in data:
                data = {**data, "sid": self.sid[addr]}   # as a well-behaved client does
            self.step("datagram", addr, _datagram(data))
            return
        if op == "ack_all":                        # a well-behaved client acks what it got
            while unacked := sorted(self.sent_n[addr] - self.acked_n[addr]):
                self.acked_n[addr].add(unacked[0])     # (an ack may release more)
                ack = {"type": "ack", "n": unacked[0], "sid": self.sid.get(addr)}
                self.step("datagram", addr, _datagram(ack))
            return
        if op == "datagram":
            if _introduces(data) and len(data) <= self.chat.max_datagram_bytes:
                self.introduced.add(addr)
            if _acked_n(data) in self.sent_n[addr]:
                self.verified.add(addr)
            self.bytes_in[addr] += len(data)
            actions = self.chat.receive(addr, data, self.now, self.now)
        elif op == "tick":
            self.now += 5.0
            actions = self.chat.expire(self.now, self.now)
        elif op == "give_up":
            peer = self.chat.peers.get(addr)
            unacked = sorted(peer.unacked) if peer is not None else []
            actions = self.chat.give_up((addr, unacked[0] if unacked else 1), self.now)
        else:
            if not self.reliable[addr] or not hasattr(self.chat, "resend"):
                return
            send = self.reliable[addr].pop(0)
            assert send.key is not None
            actions = self.chat.resend(send.key, send.payload)
        for action in actions:
            if isinstance(action, Send):
                self.check_send(action)

    def check_send(self, send: Send) -> None:
        size = len(send.payload)
        assert size <= self.chat.max_datagram_bytes, f"{size}-byte datagram: {send.payload!r}"
        message = p.decode(send.payload)           # valid UTF-8 JSON, no duplicate keys
        assert send.addr in self.introduced, f"sent to a stranger: {send}"
        if isinstance(message.get("n"), int):
            self.sent_n[send.addr].add(message["n"])
        if isinstance(message.get("sid"), str):
            self.sid[send.addr] = message["sid"]
        if send.key is not None:
            self.reliable[send.addr].append(send)
        self.bytes_out[send.addr] += len(send.payload)
        factor = getattr(udp_server_core, "AMPLIFICATION_FACTOR", None)   # anti-amplification
        if factor is not None and send.addr not in self.verified:
            sent, received = self.bytes_out[send.addr], self.bytes_in[send.addr]
            assert sent <= factor * received, f"{sent} bytes to an unverified address " \
                                              f"that sent {received}"


@pytest.mark.timeout(TIMEOUT_S)
@profile(300)
@given(st.sampled_from([1200, 700]), UDP_STEPS)
def test_udp_chat_survives_any_datagrams_and_every_reply_fits(
        max_datagram_bytes: int, steps: list[tuple[str, Address, Any]]) -> None:
    """Every datagram out fits, is JSON, goes to an address that asked, within 3x if unverified."""
    run = UdpRun(UdpChat(ChatCore(epoch="e"), max_datagram_bytes=max_datagram_bytes,
                         client_timeout_s=10.0))
    for op, addr, data in steps:
        run.step(op, addr, data)


def verified_run(max_datagram_bytes: int, *addresses: Address,
                 limits: p.Limits = p.Limits()) -> UdpRun:
    """A UdpChat whose ``addresses`` have each acked what they were sent: no byte budget."""
    run = UdpRun(UdpChat(ChatCore(limits, epoch="e"), max_datagram_bytes=max_datagram_bytes))
    for addr in addresses:
        for _ in range(5):
            run.step("request", addr, {"type": "ping"})
            run.step("ack_all", addr, None)
        peer = run.chat.peers.get(addr)
        if addr not in run.verified or not getattr(peer, "verified", True):
            pytest.fail(f"{addr} could not get verified")   # not the bug below: fail, not xfail
    return run


@pytest.mark.timeout(TIMEOUT_S)
def test_udp_whisper_to_a_longer_spelling_of_a_name_fits() -> None:
    alice, bob = ("127.0.0.1", 40001), ("127.0.0.1", 40002)
    run = verified_run(p.MAX_DATAGRAM_BYTES, alice, bob)
    run.step("request", alice, {"type": "join", "room": "lobby", "user": "\u1e9e" * 24})  # ẞ
    run.step("request", bob, {"type": "join", "room": "lobby", "user": "bob"})
    for addr in (alice, bob):
        run.step("ack_all", addr, None)
    for size in range(1000, 1100):                # across the limit, one byte at a time
        run.step("request", bob, {"type": "whisper", "to": "\u00df" * 24, "text": "x" * size})
        for addr in (alice, bob):
            run.step("ack_all", addr, None)


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("presence_limit", [p.PRESENCE_LIMIT, 0], ids=["announced", "quiet"])
def test_udp_join_notice_fits_the_smallest_datagram_limit(presence_limit: int) -> None:
    """Names of 4-byte letters at their length limits: the longest join notice fits
    (a quiet room's, which says so, is the longest)."""
    with pytest.raises(ValueError):
        UdpChat(ChatCore(epoch="e"), max_datagram_bytes=p.MIN_DATAGRAM_BYTES - 1)
    addr: Address = ("127.0.0.1", 40001)
    run = verified_run(p.MIN_DATAGRAM_BYTES, addr,
                       limits=p.Limits(presence_limit=presence_limit))
    run.step("request", addr, {"type": "join", "room": "\U00020001" * 32,
                               "user": "\U00020000" * 24})
