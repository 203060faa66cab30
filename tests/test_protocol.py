"""decode / parse_request / encode, fed bytes and dicts directly."""
from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest

from chat_sync import protocol as p
from chat_sync.protocol import ErrorCode, ProtocolError

pytestmark = pytest.mark.timeout(10)


def parse(data: bytes, limits: p.Limits = p.Limits()) -> p.Request:
    return p.parse_request(p.decode(data), limits)


def refused(data: bytes, limits: p.Limits = p.Limits()) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(data, limits)
    return caught.value


def refused_obj(obj: dict[str, Any], limits: p.Limits = p.Limits()) -> ProtocolError:
    return refused(json.dumps(obj).encode("utf-8"), limits)


# -- decode: bytes -> a JSON object -------------------------------------------

@pytest.mark.parametrize("data", [
    b"\xff",
    b'{"type":"message","text":"\xff"}',
    b'{"type":"message","text":"\xc3"}',             # truncated two-byte sequence
    b'{"type":"message","text":"\xc0\xaf"}',         # overlong "/"
    b'{"type":"message","text":"\xed\xa0\x80"}',     # a surrogate, UTF-8 encoded
])
def test_bad_utf8(data: bytes) -> None:
    error = refused(data)
    assert error.code is ErrorCode.BAD_UTF8
    assert error.to_message()["code"] == "bad_utf8"


BAD_JSON = {
    "unclosed": b"{",
    "trailing comma": b'{"type":"ping",}',
    "single quotes": b"{'type':'ping'}",
    "trailing data": b'{"type":"ping"} trailing',
    "bom": b"\xef\xbb\xbf" + b'{"type":"ping"}',          # a BOM is not JSON
    "NaN": b'{"type":"ping","n":NaN}',
    "Infinity": b'{"type":"ping","n":Infinity}',
    "-Infinity": b'{"type":"ping","n":-Infinity}',
    "duplicate keys": b'{"type":"ping","type":"ping"}',
    "nested duplicate keys": b'{"type":"ping","x":{"a":1,"a":2}}',
    "5000-digit int": b'{"type":"ping","n":' + b"9" * 5000 + b"}",
    "deep arrays": b"[" * 50000,
    "deep objects": b'{"a":' * 13000,
    "deep closed arrays": b"[" * 30000 + b"]" * 30000,
    "empty array": b"[]",
    "array": b'["type","ping"]',
    "number": b"1",
    "string": b'"ping"',
    "null": b"null",
    "true": b"true",
    "empty": b"",
    "whitespace": b"   ",
}


@pytest.mark.parametrize("data", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_bad_json(data: bytes) -> None:
    assert len(data) <= p.MAX_LINE_BYTES      # every trap fits in one legal line
    error = refused(data)
    assert error.code is ErrorCode.BAD_JSON
    assert len(error.text) < 200
    p.encode(error.to_message())              # the error itself is always sendable


def test_a_duplicate_key_is_named_the_first_that_came_twice() -> None:
    error = refused(b'{"type":"ping","b":1,"a":2,"b":3,"a":4}')
    assert error.code is ErrorCode.BAD_JSON
    assert "duplicate key 'b'" in error.text


def test_deep_nesting_is_bad_json_not_recursion_error() -> None:
    data = b"[" * 50000
    assert len(data) < p.MAX_LINE_BYTES     # fits in one legal line
    with pytest.raises(ProtocolError) as caught:
        p.decode(data)
    assert caught.value.code is ErrorCode.BAD_JSON
    assert "deep" in caught.value.text


def test_decode_returns_the_object() -> None:
    assert p.decode('{"type":"message","text":"héllo 👋"}'.encode()) == {
        "type": "message", "text": "héllo 👋"}


# -- encode ---------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    p.chat_message("lobby", "alice", "line one\nline two \u2028 \"quoted\" 👋", 7, 1700000000.1234),
    p.system("lobby", p.SystemEvent.JOIN, "bob", "bob joined", 8, 1.0),
    p.system(None, p.SystemEvent.SHUTDOWN, None, "bye", None, 2.0),
    p.welcome("0.1.0", p.Limits(), 0, "run1"),
    p.whisper("alice", "bob", "psst", 3.0, "req-1"),
    p.rooms_reply([("lobby", 2), ("dev", 1)], 5),
    p.who_reply("lobby", ["alice", "bob"]),
    p.pong(9),
    p.error(ErrorCode.BAD_MESSAGE, "text: is required", field="text", id="x"),
])
def test_encode_decode_round_trip(message: dict[str, Any]) -> None:
    line = p.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1     # one message, one line
    assert p.decode(line[:-1]) == message
    assert p.decode(p.encode_datagram(message)) == message
    assert b"\n" not in p.encode_datagram(message)


def test_encode_writes_utf8_not_ascii_escapes() -> None:
    assert "é👋".encode() in p.encode(p.chat_message("r", "u", "é👋", 1, 0.0))


def test_encode_refuses_nan_as_our_own_bug() -> None:
    with pytest.raises(ValueError):
        p.encode({"type": "pong", "x": float("nan")})


def test_builders_round_ts_and_omit_absent_fields() -> None:
    assert p.chat_message("r", "u", "t", 1, 1.23456)["ts"] == 1.235
    shutdown = p.system(None, p.SystemEvent.SHUTDOWN, None, "bye", None, 0.0)
    assert shutdown == {"type": "system", "event": "shutdown", "text": "bye", "ts": 0.0}
    assert "id" not in p.pong()
    assert p.pong(0) == {"type": "pong", "id": 0}         # 0 is an id, not "no id"
    assert "field" not in p.error(ErrorCode.BAD_JSON, "x")


# -- parse_request: every request type, every field ------------------------------

def test_every_request_type_parses() -> None:
    assert parse(b'{"type":"join","room":"lobby","user":"alice"}') == p.Join("lobby", "alice")
    assert parse(b'{"type":"join","room":"dev","user":"bob","since":4,"id":1}') == p.Join(
        "dev", "bob", since=4, id=1)
    assert parse(b'{"type":"message","text":"hi"}') == p.Message("hi")
    assert parse(b'{"type":"message","text":"hi","room":"dev","id":"a"}') == p.Message(
        "hi", room="dev", id="a")
    assert parse(b'{"type":"leave"}') == p.Leave()
    assert parse(b'{"type":"rooms","id":2}') == p.ListRooms(id=2)
    assert parse(b'{"type":"who"}') == p.Who()
    assert parse(b'{"type":"whisper","to":"bob","text":"psst"}') == p.Whisper("bob", "psst")
    assert parse(b'{"type":"ping","id":"p"}') == p.Ping(id="p")


def test_unknown_keys_are_ignored() -> None:
    assert parse(b'{"type":"ping","user":"mallory","\\ud800":1,"x":[1,2]}') == p.Ping()


def test_client_supplied_user_on_a_message_is_dropped() -> None:
    request = parse(b'{"type":"message","text":"hi","user":"admin"}')
    assert request == p.Message("hi")


@pytest.mark.parametrize("obj, field", [
    ({}, "type"),
    ({"type": None}, "type"),
    ({"type": 1}, "type"),
    ({"type": ["join"]}, "type"),
    ({"type": "join", "user": "alice"}, "room"),
    ({"type": "join", "room": "lobby"}, "user"),
    ({"type": "join", "room": 5, "user": "alice"}, "room"),
    ({"type": "join", "room": "lobby", "user": True}, "user"),
    ({"type": "join", "room": "lobby", "user": ["alice"]}, "user"),
    ({"type": "join", "room": "", "user": "alice"}, "room"),
    ({"type": "join", "room": "lobby", "user": ""}, "user"),
    ({"type": "join", "room": "r" * 33, "user": "alice"}, "room"),
    ({"type": "join", "room": "lobby", "user": "u" * 25}, "user"),
    ({"type": "join", "room": "lob by", "user": "alice"}, "room"),
    ({"type": "join", "room": "lobby", "user": "al/ice"}, "user"),
    ({"type": "join", "room": "lobby", "user": "alice\n"}, "user"),
    ({"type": "join", "room": "lobby", "user": "al\u202eice"}, "user"),      # bidi override
    ({"type": "join", "room": "lobby", "user": "al\u200bice"}, "user"),      # zero width
    ({"type": "join", "room": "lobby", "user": "ali☺ce"}, "user"),           # a symbol
    ({"type": "join", "room": "lobby", "user": "al\x00ice"}, "user"),
    ({"type": "join", "room": "lobby", "user": "ａｌｉｃｅ！"}, "user"),     # NFKC gives "!"
    ({"type": "join", "room": "lobby", "user": "alice", "since": -1}, "since"),
    ({"type": "join", "room": "lobby", "user": "alice", "since": True}, "since"),
    ({"type": "join", "room": "lobby", "user": "alice", "since": False}, "since"),
    ({"type": "join", "room": "lobby", "user": "alice", "since": 1.0}, "since"),
    ({"type": "join", "room": "lobby", "user": "alice", "since": "3"}, "since"),
    ({"type": "message"}, "text"),
    ({"type": "message", "text": None}, "text"),
    ({"type": "message", "text": 5}, "text"),
    ({"type": "message", "text": ["hi"]}, "text"),
    ({"type": "message", "text": ""}, "text"),
    ({"type": "message", "text": "x" * 4001}, "text"),
    ({"type": "message", "text": "hi", "room": 3}, "room"),
    ({"type": "message", "text": "hi", "room": "no room"}, "room"),
    ({"type": "whisper", "text": "psst"}, "to"),
    ({"type": "whisper", "to": "bob"}, "text"),
    ({"type": "whisper", "to": 7, "text": "psst"}, "to"),
    ({"type": "whisper", "to": "b o b", "text": "psst"}, "to"),
    ({"type": "whisper", "to": "bob", "text": ""}, "text"),
    ({"type": "whisper", "to": "bob", "text": "x" * 4001}, "text"),
    ({"type": "ping", "id": True}, "id"),
    ({"type": "ping", "id": 1.5}, "id"),
    ({"type": "ping", "id": [1]}, "id"),
    ({"type": "ping", "id": {"a": 1}}, "id"),
    ({"type": "ping", "id": 2**53}, "id"),
    ({"type": "ping", "id": -2**53}, "id"),
    ({"type": "ping", "id": "i" * 65}, "id"),
])
def test_bad_field_is_bad_message_naming_the_field(obj: dict[str, Any], field: str) -> None:
    error = refused_obj(obj)
    assert error.code is ErrorCode.BAD_MESSAGE
    assert error.field == field
    message = error.to_message()
    assert message["type"] == "error" and message["code"] == "bad_message"
    assert message["field"] == field
    p.encode(message)


@pytest.mark.parametrize("obj", [
    {"type": "join", "room": "r" * 32, "user": "u" * 24, "since": 0},
    {"type": "message", "text": "x" * 4000},
    {"type": "whisper", "to": "bob", "text": "x" * 4000},
    {"type": "ping", "id": 2**53 - 1},
    {"type": "ping", "id": -2**53 + 1},
    {"type": "ping", "id": "i" * 64},
    {"type": "ping", "id": 0},
    {"type": "ping", "id": ""},
    {"type": "ping", "id": None},
])
def test_values_at_the_limits_are_accepted(obj: dict[str, Any]) -> None:
    parse(json.dumps(obj).encode())


def test_limits_come_from_the_limits_object() -> None:
    small = p.Limits(max_text_chars=3, max_user_chars=4, max_room_chars=5)
    assert parse(b'{"type":"message","text":"abc"}', small) == p.Message("abc")
    assert refused(b'{"type":"message","text":"abcd"}', small).field == "text"
    assert refused(b'{"type":"join","room":"abcdef","user":"abc"}', small).field == "room"
    assert refused(b'{"type":"join","room":"abc","user":"abcde"}', small).field == "user"


def test_an_error_carries_the_request_id() -> None:
    error = refused(b'{"type":"message","id":"m1"}')
    assert error.id == "m1"
    assert error.to_message() == {"type": "error", "code": "bad_message",
                                  "text": "text: is required", "field": "text", "id": "m1"}


def test_a_bad_id_is_reported_without_an_id() -> None:
    error = refused(b'{"type":"ping","id":true}')
    assert error.id is None and "id" not in error.to_message()


def test_lone_surrogate_in_text_is_bad_message() -> None:
    error = refused(b'{"type":"message","text":"\\ud800","id":3}')
    assert error.code is ErrorCode.BAD_MESSAGE
    assert error.field == "text" and error.id == 3
    p.encode(error.to_message())


@pytest.mark.parametrize("obj, field", [
    ({"type": "join", "room": "lobby", "user": "\udc00"}, "user"),
    ({"type": "join", "room": "\ud83d", "user": "alice"}, "room"),
    ({"type": "whisper", "to": "bob", "text": "a\udfffb"}, "text"),
    ({"type": "ping", "id": "\ud800"}, "id"),
])
def test_lone_surrogates_anywhere_are_bad_message(obj: dict[str, Any], field: str) -> None:
    data = json.dumps(obj).encode("ascii")      # json writes them as \\uXXXX escapes
    error = refused(data)
    assert (error.code, error.field) == (ErrorCode.BAD_MESSAGE, field)
    p.encode(error.to_message())


def test_full_width_names_are_nfkc_normalised() -> None:
    request = parse('{"type":"join","room":"ｌｏｂｂｙ","user":"ＡＬＩＣＥ"}'.encode())
    assert request == p.Join("lobby", "ALICE")
    whisper = parse('{"type":"whisper","to":"ｂｏｂ","text":"x"}'.encode())
    assert isinstance(whisper, p.Whisper) and whisper.to == "bob"


def test_name_length_is_counted_after_normalisation() -> None:
    # U+FDFA is one character that NFKC expands to eighteen.
    error = refused_obj({"type": "join", "room": "lobby", "user": "ab\ufdfa"})
    assert error.field == "user"


def test_letters_of_any_script_are_names() -> None:
    request = parse('{"type":"join","room":"комната_1","user":"Zoë-李"}'.encode())
    assert request == p.Join("комната_1", "Zoë-李")


def test_name_key_folds_case_and_width() -> None:
    assert p.name_key("Alice") == p.name_key("ALICE") == p.name_key("ａｌｉｃｅ")
    assert p.name_key("Straße") == p.name_key("STRASSE")
    assert p.name_key("alice") != p.name_key("alicia")


@pytest.mark.parametrize("rid", [42, "req-9", None])
def test_unknown_type_carries_the_id(rid: int | str | None) -> None:
    obj: dict[str, Any] = {"type": "dance"}
    if rid is not None:
        obj["id"] = rid
    error = refused_obj(obj)
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert error.field == "type"
    assert error.id == rid
    assert error.to_message().get("id") == rid


@pytest.mark.parametrize("kind", ["welcome", "pong", "error", "system", "ack", "JOIN", ""])
def test_server_only_and_misspelt_types_are_unknown(kind: str) -> None:
    assert refused_obj({"type": kind}).code is ErrorCode.UNKNOWN_TYPE


def test_unknown_type_text_is_short_and_sendable() -> None:
    error = refused_obj({"type": "x" * 10000, "id": 1})
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert len(error.text) < 100
    error = refused(b'{"type":"\\ud800dance"}')
    assert error.code is ErrorCode.UNKNOWN_TYPE
    p.encode(error.to_message())


def test_requests_are_frozen() -> None:
    request = p.Message("hi")
    with pytest.raises(AttributeError):
        request.text = "changed"      # type: ignore[misc]


@pytest.mark.parametrize("name", ["Zoë-李", "田中さん", "김철수", "हिन्दी", "алиса", "Ωμέγα"])
def test_names_in_one_script_or_a_language_mix_are_accepted(name: str) -> None:
    assert p.check_name(name, "user", p.MAX_USER_CHARS) == unicodedata.normalize("NFKC", name)


@pytest.mark.parametrize("name", ["\u0430lice", "p\u0430ypal", "Ωmega", "alice\u3164",
                                  "x\ufe0f", "\u0308a"])
def test_mixed_scripts_and_invisible_characters_are_refused(name: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.check_name(name, "user", p.MAX_USER_CHARS)
    assert caught.value.code is p.ErrorCode.BAD_MESSAGE and caught.value.field == "user"


# -- default-ignorable code points and confusables (issue 9, item 5) ----------------------

@pytest.mark.parametrize("name", ["alice\U000e0100", "alice\u17b4", "ali\u17b5ce",
                                  "bob\u180b", "\u115fbob", "bob\U000e0041"])
def test_default_ignorable_code_points_are_refused_in_names(name: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.check_name(name, "user", p.MAX_USER_CHARS)
    assert caught.value.code is p.ErrorCode.BAD_MESSAGE and caught.value.field == "user"
    assert "invisible" in caught.value.text


@pytest.mark.parametrize("one, other", [("joe", "јое"), ("paypal", "раураl"),
                                        ("alice", "аlісе"), ("Joe", "ЈОЕ"), ("bob", "ЬоЬ"),
                                        ("MIKE", "rnike")])
def test_whole_script_confusables_share_a_skeleton(one: str, other: str) -> None:
    assert p.name_key(one) != p.name_key(other)
    assert p.skeletons(one) & p.skeletons(other)


@pytest.mark.parametrize("one, other", [("joe", "joy"), ("алиса", "alisa"), ("bob", "rob")])
def test_different_names_have_different_skeletons(one: str, other: str) -> None:
    assert not p.skeletons(one) & p.skeletons(other)
