"""The TCP rules of the errors and limits stages: what a server refuses, and how.

Each rule sends something the README says is wrong, or right at a limit,
and checks the typed error (its ``code``, and its ``id`` and ``field`` where
the README promises them) or the answer. ``Peer.refused`` sends a ping after
the bad line: the error must come before the pong, and the pong shows that
the connection stayed open, as the README's error table says it does.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import protocol as p
from .tcp_rules import T, say_many
from .wire import Failed, Session, chat, is_seq, pong, shorten

E = p.ErrorCode


def padded(message: dict[str, Any], length: int) -> bytes:
    """``message`` as a line of exactly ``length`` bytes before its newline (a ``pad`` key)."""
    bare = len(p.encode({**message, "pad": ""})) - 1
    return p.encode({**message, "pad": "x" * (length - bare)})


def refused_each(s: Session, lines: Iterable[bytes], code: E) -> None:
    """Each of ``lines``, one after another on one connection, gets a ``code`` error."""
    peer = s.connect()
    for line in lines:
        peer.refused(line + b"\n", code)


# -- errors -------------------------------------------------------------------------
def bad_json(s: Session) -> None:
    """Broken JSON lines each get bad_json."""
    refused_each(s, (b'{"type": "ping", "id": 1', b'{type: "ping"}', b'{"type":"ping"}}',
                     b"hello"), E.BAD_JSON)


def not_object(s: Session) -> None:
    """JSON that is not an object (an array, a string, a number, null) gets bad_json."""
    refused_each(s, (b'[{"type": "ping"}]', b'"ping"', b"42", b"null"), E.BAD_JSON)


def nan(s: Session) -> None:
    """NaN, Infinity and -Infinity are not JSON: bad_json."""
    refused_each(s, (b'{"type":"ping","x":' + constant + b"}"
                     for constant in (b"NaN", b"Infinity", b"-Infinity")), E.BAD_JSON)


def duplicate_keys(s: Session) -> None:
    """An object that names a key twice gets bad_json."""
    refused_each(s, (b'{"type":"ping","type":"ping"}', b'{"type":"ping","id":1,"id":2}'),
                 E.BAD_JSON)


def deep_nesting(s: Session) -> None:
    """20,000 nested brackets get bad_json or a pong, and the server lives on."""
    peer = s.connect()
    depth = min(20_000, (s.limits()["max_line_bytes"] - 100) // 2)
    line = b'{"type":"ping","id":"deep","x":' + b"[" * depth + b"]" * depth + b"}\n"
    rid = peer.new_id()
    peer.send_bytes(line + p.encode({"type": "ping", "id": rid}))
    seen = peer.until(f"an answer, then a pong with id {rid!r}", pong(rid), errors_ok=True)
    first = seen[0]
    if not (pong("deep")(first) or first.get("code") == E.BAD_JSON):
        raise Failed(f"expected a bad_json error or a pong with id 'deep'\n"
                     f"{peer.exchange(first)}")
    s.connect()                  # and the server still takes connections


def lone_surrogate(s: Session) -> None:
    """A text holding a lone surrogate (\\ud800) gets an error and is not broadcast."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    a.refused(b'{"type":"message","text":"x\\ud800","id":"sur"}\n',
              (E.BAD_MESSAGE, E.BAD_JSON), "sur")
    say_ok = f"after the surrogate {a.user}"
    a.send(type="message", text=say_ok)
    seen = b.until("the next message", chat(say_ok, room))
    if len(seen) > 1:
        raise Failed(f"{a.user} sent a lone surrogate; {b.user} got {shorten(seen[0])}")


def bad_utf8(s: Session) -> None:
    """Lines that are not UTF-8 (a stray 0xff, an overlong '/', a surrogate) get bad_utf8."""
    refused_each(s, (b'{"type":"ping","id":"' + junk + b'"}'
                     for junk in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80")), E.BAD_UTF8)


def unknown_type(s: Session) -> None:
    """An unknown type gets unknown_type with field type and the request's id."""
    peer = s.connect()
    rid = peer.new_id()
    peer.refused(p.encode({"type": "shout", "text": "hi", "id": rid}), E.UNKNOWN_TYPE, rid,
                 "type")


def no_type(s: Session) -> None:
    """An object with no type, or a type that is not a string, gets bad_message (field type)."""
    peer = s.connect()
    for request in ({"text": "hi"}, {"type": 5}, {"type": None}):
        rid = peer.new_id()
        peer.refused(p.encode({**request, "id": rid}), E.BAD_MESSAGE, rid, "type")


def bad_field(s: Session) -> None:
    """A missing, mistyped or out-of-range field gets bad_message naming it, with the id."""
    a = s.join(s.name("r"))
    cases: list[tuple[dict[str, Any], str]] = [
             ({"type": "join", "user": a.user}, "room"),
             ({"type": "join", "room": s.name("r"), "user": "bad!name"}, "user"),
             ({"type": "join", "room": s.name("r"), "user": a.user, "since": "3"}, "since"),
             ({"type": "message", "text": 5}, "text"),
             ({"type": "message"}, "text"),
             ({"type": "whisper", "text": "hi"}, "to")]
    for request, field in cases:
        rid = a.new_id()
        a.refused(p.encode({**request, "id": rid}), E.BAD_MESSAGE, rid, field)


def not_joined(s: Session) -> None:
    """Before a join, message, leave and who get not_joined; so does a whisper."""
    b = s.join(s.name("r"))
    peer = s.connect()
    for request in ({"type": "message", "text": "anyone?"}, {"type": "leave"},
                    {"type": "who"}, {"type": "whisper", "to": b.user, "text": "hi"}):
        rid = peer.new_id()
        peer.refused(p.encode({**request, "id": rid}), E.NOT_JOINED, rid)


def system_name(s: Session) -> None:
    """The name 'system', in any case, is reserved: name_taken."""
    room = s.name("r")
    for name in ("system", "System", "SYSTEM"):
        peer = s.connect()
        rid = peer.new_id()
        peer.refused(p.encode({"type": "join", "room": room, "user": name, "id": rid}),
                     E.NAME_TAKEN, rid)


def no_such_user(s: Session) -> None:
    """A whisper to a name nobody holds gets no_such_user, with the id."""
    a = s.join(s.name("r"))
    rid = a.new_id()
    a.refused(p.encode({"type": "whisper", "to": s.name(), "text": "hello?", "id": rid}),
              E.NO_SUCH_USER, rid)


def line_too_long(s: Session) -> None:
    """A line one byte over max_line_bytes gets line_too_long, then the server closes."""
    peer = s.connect()
    limit = s.limits()["max_line_bytes"]
    peer.send_bytes(padded({"type": "ping", "id": "long"}, limit + 1))
    answer = peer.expect("a line_too_long error",
                         lambda m: m.get("type") in (T.ERROR, T.PONG), errors_ok=True)
    if answer.get("code") != E.LINE_TOO_LONG:
        raise Failed(f"expected a line_too_long error (the line was {limit + 1} bytes)\n"
                     f"{peer.exchange(answer)}")
    peer.closed()


def survives(s: Session) -> None:
    """Seven bad lines get seven errors; then the sender is still heard in its room."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    garbage = [b"\x00\x01\x02", b"not json", b"\xff\xfe", b'{"type":"shout"}',
               b'{"type":"message"}', b"[]", b'{"type":"join","room":5}']
    a.send_bytes(b"\n".join(garbage) + b"\n" + p.encode({"type": "message", "text": "still"}))
    seen = a.until("the sender's copy of 'still'", chat("still", room), errors_ok=True)
    errors = [m for m in seen if m.get("type") == T.ERROR]
    if len(errors) != len(garbage):
        raise Failed(f"{len(garbage)} bad lines got {len(errors)} errors\n{a.sent()}\n"
                     f"got {shorten(str(seen))}")
    b.expect(f"{a.user}'s message after the bad lines", chat("still", room))
    s.connect()


# -- limits -------------------------------------------------------------------------
def line_max(s: Session) -> None:
    """A line of exactly max_line_bytes is read (a ping padded to it gets its pong)."""
    peer = s.connect()
    limit = s.limits()["max_line_bytes"]
    peer.send_bytes(padded({"type": "ping", "id": "at-the-limit"}, limit))
    peer.expect(f"a pong to a {limit}-byte line", pong("at-the-limit"))


def text_max(s: Session) -> None:
    """A text of max_text_chars characters is said; one more gets bad_message (field text)."""
    a = s.join(s.name("r"))
    limits = s.limits()
    count = limits["max_text_chars"]
    if count + 200 > limits["max_line_bytes"]:
        raise Failed(f"the welcome's max_text_chars {count} does not fit in a line of its "
                     f"max_line_bytes {limits['max_line_bytes']}")
    letter = "é" if 2 * count + 200 < limits["max_line_bytes"] else "x"
    a.send(type="message", text=letter * count)
    a.expect(f"the sender's copy of its {count}-character text",
             chat(letter * count, a.room))
    rid = a.new_id()
    a.refused(p.encode({"type": "message", "text": letter * (count + 1), "id": rid}),
              E.BAD_MESSAGE, rid, "text")


def text_empty(s: Session) -> None:
    """An empty text gets bad_message (field text)."""
    a = s.join(s.name("r"))
    rid = a.new_id()
    a.refused(p.encode({"type": "message", "text": "", "id": rid}), E.BAD_MESSAGE, rid, "text")


def user_max(s: Session) -> None:
    """A user name of max_user_chars joins; one character more gets bad_message (field user)."""
    count = s.limits()["max_user_chars"]
    room = s.name("r")
    s.join(room, user=s.name().ljust(count, "x"))
    peer = s.connect()
    rid = peer.new_id()
    peer.refused(p.encode({"type": "join", "room": room, "user": s.name().ljust(count + 1, "x"),
                           "id": rid}), E.BAD_MESSAGE, rid, "user")


def room_max(s: Session) -> None:
    """A room name of max_room_chars is joined; one more character: bad_message (field room)."""
    count = s.limits()["max_room_chars"]
    s.join(s.name("r").ljust(count, "x"))
    peer = s.connect()
    rid = peer.new_id()
    peer.refused(p.encode({"type": "join", "room": s.name("r").ljust(count + 1, "x"),
                           "user": s.name(), "id": rid}), E.BAD_MESSAGE, rid, "room")


def burst(s: Session) -> None:
    """40 pings in one send get 40 pongs, none of them rate_limited."""
    peer = s.connect()
    ids = [peer.new_id() for _ in range(p.RATE_BURST)]
    peer.send_bytes(b"".join(p.encode({"type": "ping", "id": rid}) for rid in ids))
    seen = peer.until(f"a pong with id {ids[-1]!r}", pong(ids[-1]), errors_ok=True)
    answered = [m.get("id") for m in seen if m.get("type") == T.PONG]
    errors = [m for m in seen if m.get("type") == T.ERROR]
    if errors or answered != ids:
        raise Failed(f"{len(ids)} pings at once got {len(answered)} pongs and "
                     f"{len(errors)} errors\ngot {shorten(errors[0] if errors else seen[-1])}")


def history_depth(s: Session) -> None:
    """After 24 messages in a room, a joiner is replayed at least the last 20."""
    room = s.name("r")
    a = s.join(room)
    said = say_many(a, 24)
    b = s.join(room)
    replayed = {m["seq"] for m in b.replay if m.get("history") is True and is_seq(m.get("seq"))}
    want = [m["seq"] for m in said[-p.HISTORY_SIZE:]]
    missing = [seq for seq in want if seq not in replayed]
    if missing:
        raise Failed(f"expected the last {p.HISTORY_SIZE} broadcasts replayed; seqs "
                     f"{missing} were not\ngot {shorten(str(b.replay))}")

