"""Lesson 04: ``check_name`` and ``fan_out``, tested with values alone: no socket, no clock.

``protocol.check_name`` is the oracle for names: on every value below, yours
must accept what it accepts, with the same result, and refuse what it
refuses, with the same code and field.
"""
from __future__ import annotations

import json

import pytest

from chat_sync import protocol
from chat_sync.protocol import ErrorCode, ProtocolError
from chat_sync.rooms import Broadcast, ChatCore, Reply
from lesson_target import load

target = load(__file__)

NAMES: list[object] = [
    "alice", "Bob_1", "a-b", "_", "Zoë", "名前", "Алиса", "x" * 24,
    "\uff21lice",           # full-width Ａ: NFKC makes it "Alice"
    "\ufb00" * 12,          # the ligature ﬀ is "ff" after NFKC: 24 characters
    "\ufb00" * 13,          # ... and here 26: too long, though only 13 were sent
    "", "x" * 25, "bob!", "a b", "tab\t", "nul\0", "\u202eevil", "zero\u200bwidth",
    "emoji\U0001f600", "\ud800", "ok\udfff", 5, None, ["alice"], b"alice", True,
]


def outcome(check, value: object):  # type: ignore[no-untyped-def]
    """What ``check`` makes of ``value``, labelled, so a failure says which part differs."""
    try:
        return {"returned": check(value, "user", 24)}
    except ProtocolError as exc:
        return {"refused with code": exc.code, "field": exc.field,
                "text starts with the field's name": exc.text.startswith("user")}


@pytest.mark.parametrize("value", NAMES, ids=repr)
def test_check_name_agrees_with_the_package(value: object) -> None:
    assert outcome(target.check_name, value) == outcome(protocol.check_name, value)


def test_check_name_normalises_and_names_the_field() -> None:
    assert target.check_name("\uff21lice", "user", 24) == "Alice"
    with pytest.raises(ProtocolError) as caught:
        target.check_name("lobby!", "room", 32)
    assert (caught.value.code, caught.value.field) == (ErrorCode.BAD_MESSAGE, "room")
    assert caught.value.text.startswith("room")
    assert caught.value.to_message()["type"] == "error"


def test_check_name_counts_after_normalising() -> None:
    assert target.check_name("\ufb00" * 4, "room", 8) == "ff" * 4
    with pytest.raises(ProtocolError):
        target.check_name("\ufb00" * 5, "room", 8)


def test_fan_out_sends_a_reply_to_its_connection() -> None:
    lines = target.fan_out([Reply("alice", protocol.pong(7))])
    assert lines == {"alice": [b'{"type":"pong","id":7}\n']}


def test_fan_out_encodes_a_broadcast_once_for_every_member() -> None:
    notice = {"type": "system", "room": "lobby", "event": "join", "user": "carol",
              "text": "carol joined", "seq": 3, "ts": 1.0}
    lines = target.fan_out([Broadcast(("alice", "bob", "carol"), notice, "lobby")])
    assert set(lines) == {"alice", "bob", "carol"}
    assert lines["alice"][0] is lines["bob"][0] is lines["carol"][0], "encoded once, shared"
    assert json.loads(lines["alice"][0]) == notice


def test_fan_out_gives_the_sender_its_copy_with_the_id() -> None:
    message = {"type": "message", "room": "lobby", "user": "bob", "text": "hi", "seq": 4,
               "ts": 1.0}
    lines = target.fan_out([Broadcast(("alice", "bob", "carol"), message, "lobby",
                                      own=("bob", "m1"))])
    assert lines["alice"][0] is lines["carol"][0], "encoded once, shared by the others"
    assert json.loads(lines["alice"][0]) == message
    assert json.loads(lines["bob"][0]) == {**message, "id": "m1"}


def test_fan_out_keeps_order_and_skips_empty_broadcasts() -> None:
    outputs = [Broadcast(("bob",), {"type": "system", "text": "1"}, "lobby"),
               Broadcast((), {"type": "system", "text": "2"}, "lobby"),
               Reply("bob", {"type": "system", "text": "3"})]
    assert target.fan_out(outputs) == {"bob": [b'{"type":"system","text":"1"}\n',
                                               b'{"type":"system","text":"3"}\n']}


def test_fan_out_delivers_a_real_conversation() -> None:
    core = ChatCore()
    inbox: dict[object, list[bytes]] = {}

    def deliver(outputs: list[Reply | Broadcast]) -> None:
        for conn, lines in target.fan_out(outputs).items():
            inbox.setdefault(conn, []).extend(lines)

    deliver(core.connect(1))
    deliver(core.connect(2))
    deliver(core.receive(1, b'{"type":"join","room":"lobby","user":"alice"}', 1.0))
    deliver(core.receive(2, b'{"type":"join","room":"lobby","user":"bob"}', 2.0))
    deliver(core.receive(2, b'{"type":"message","text":"hi","id":9}', 3.0))
    alice = [json.loads(line) for line in inbox[1]]
    bob = [json.loads(line) for line in inbox[2]]
    assert [m["type"] for m in alice] == ["welcome", "system", "system", "message"]
    assert [m.get("history", False) for m in bob] == [False, True, False, False]
    assert alice[-1]["text"] == bob[-1]["text"] == "hi" and bob[-1]["id"] == 9
    assert "id" not in alice[-1]
