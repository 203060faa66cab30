"""Lesson 05: ``replay`` and ``join_room``, held to what the real ``ChatCore`` does.

No socket and no clock: a small harness drives the student's ``join_room``
and, side by side, a real ``ChatCore`` through the same script of joins,
moves and messages, and every step must produce the same outputs and leave
the same histories.
"""
from __future__ import annotations

import collections
import itertools
import json
from typing import Any

import pytest

from chat_sync import protocol
from chat_sync.protocol import SystemEvent
from chat_sync.rooms import Broadcast, ChatCore, Output, Reply, Room
from lesson_target import load

target = load(__file__)
NOW = 1795600000.0


def chat(seq: int, text: str = "hi", room: str = "lobby") -> dict[str, Any]:
    return protocol.chat_message(room, "alice", text, seq, NOW)


def is_gap_notice(message: dict[str, Any]) -> bool:
    """The ``history_gap`` notice ChatCore adds when ``since`` is older than history.

    The lesson's ``join_room`` leaves it out, as it leaves out names and ids.
    """
    return message.get("event") == SystemEvent.HISTORY_GAP


def join_line(room: str, user: str, since: int | None = None) -> bytes:
    request: dict[str, Any] = {"type": "join", "room": room, "user": user}
    if since is not None:
        request["since"] = since
    return json.dumps(request).encode("utf-8")


def say_line(text: str) -> bytes:
    return json.dumps({"type": "message", "text": text}).encode("utf-8")


# -- replay ---------------------------------------------------------------------
HISTORY = [chat(2, "a"), chat(4, "b"), chat(6, "c"), chat(8, "d"), chat(9, "e")]


@pytest.mark.parametrize(("since", "seqs"), [(None, [2, 4, 6, 8, 9]), (0, [2, 4, 6, 8, 9]),
                                             (4, [6, 8, 9]), (5, [6, 8, 9]), (8, [9]),
                                             (9, []), (100, [])])
def test_replay_sends_what_came_after_since(since: int | None, seqs: list[int]) -> None:
    replayed = target.replay(HISTORY, since)
    assert [message["seq"] for message in replayed] == seqs
    assert all(message["history"] is True for message in replayed)


def test_replay_copies_and_leaves_the_history_untouched() -> None:
    history = collections.deque([chat(1, "one"), chat(2, "two")], maxlen=20)
    before = [dict(message) for message in history]
    replayed = target.replay(history, None)
    assert list(history) == before, "the broadcast messages themselves must not change"
    assert replayed == [{**message, "history": True} for message in before]
    assert not any(copy is original for copy, original in zip(replayed, history))
    assert target.replay(history, None) == replayed, "replaying twice gives the same"


@pytest.mark.parametrize("since", [None, 0, 3, 5, 6, 7, 100])
def test_replay_agrees_with_chatcore_on_a_bounded_history(since: int | None) -> None:
    core = ChatCore(history_size=3)
    core.connect("alice")
    core.receive("alice", join_line("lobby", "alice"), NOW)             # seq 1
    for text in ["one", "two", "three", "four", "five"]:                # seq 2 to 6
        core.receive("alice", say_line(text), NOW)
    history = list(core.rooms["lobby"].history)                         # seqs 4, 5, 6
    core.connect("bob")
    outputs = core.receive("bob", join_line("lobby", "bob", since), NOW)
    sent = [o.message for o in outputs if isinstance(o, Reply) and o.to == "bob"
            and not is_gap_notice(o.message)]
    assert target.replay(history, since) == sent


# -- join_room -------------------------------------------------------------------
def counter() -> tuple[list[int], Any]:
    """A ``next_seq`` that records the numbers it hands out."""
    handed: list[int] = []
    numbers = itertools.count(1)

    def next_seq() -> int:
        handed.append(next(numbers))
        return handed[-1]
    return handed, next_seq


def test_a_first_join_announces_itself_to_the_room_and_the_joiner() -> None:
    lobby = Room("lobby", collections.deque(maxlen=20))
    handed, next_seq = counter()
    outputs = target.join_room(1, "alice", None, lobby, None, next_seq, NOW)
    notice = protocol.system("lobby", SystemEvent.JOIN, "alice", "alice joined", 1, NOW)
    assert outputs == [Broadcast((1,), notice, "lobby")]
    assert list(lobby.history) == [notice] and lobby.members == {1: "alice"}
    assert handed == [1]


def test_a_move_leaves_then_replays_then_joins() -> None:
    lobby = Room("lobby", collections.deque(maxlen=20), {1: "alice", 2: "bob"})
    dev = Room("dev", collections.deque([chat(3, "old", "dev")], maxlen=20), {3: "carol"})
    handed, next_seq = counter()
    outputs = target.join_room(2, "bob", lobby, dev, None, next_seq, NOW)
    left = protocol.system("lobby", SystemEvent.LEAVE, "bob", "bob left", 1, NOW)
    joined = protocol.system("dev", SystemEvent.JOIN, "bob", "bob joined", 2, NOW)
    assert outputs == [Broadcast((1, 2), left, "lobby"),
                       Reply(2, {**chat(3, "old", "dev"), "history": True}),
                       Broadcast((3, 2), joined, "dev")]
    assert lobby.members == {1: "alice"} and dev.members == {3: "carol", 2: "bob"}
    assert list(lobby.history) == [left]
    assert list(dev.history) == [chat(3, "old", "dev"), joined]
    assert handed == [1, 2], "one seq per notice, the leave first"


class Mirror:
    """The student's ``join_room`` and a real ``ChatCore``, driven through one script."""

    def __init__(self, history_size: int = 20) -> None:
        self.core = ChatCore(history_size=history_size)
        self.history_size = history_size
        self.rooms: dict[str, Room] = {}       # name_key -> room, as ChatCore keeps them
        self.where: dict[str, Room] = {}       # conn -> its room
        self.seq = 0
        self.inbox: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.steps: list[str] = []             # the script so far, for a failure message

    def story(self) -> str:
        return f"history_size={self.history_size}; the steps so far:\n  " + "\n  ".join(
            f"{number}. {step}" for number, step in enumerate(self.steps, 1))

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def join(self, user: str, room: str, since: int | None = None) -> list[Output]:
        """``user`` (also its connection id) joins ``room``; both must agree."""
        self.steps.append(f"{user} joins {room!r} (since={since})")
        if user not in self.core.members:
            self.core.connect(user)
        expected = [o for o in self.core.receive(user, join_line(room, user, since), NOW)
                    if not is_gap_notice(o.message)]
        new = self.rooms.setdefault(protocol.name_key(room),
                                    Room(room, collections.deque(maxlen=self.history_size)))
        got = target.join_room(user, user, self.where.get(user), new, since, self.next_seq, NOW)
        self.where[user] = new
        assert got == expected, (f"{self.story()}\nyour join_room returned\n  {got}\n"
                                 f"ChatCore sent\n  {expected}")
        self.check()
        return self.deliver(got)

    def say(self, user: str, text: str) -> list[Output]:
        """The harness's own message, the way ``ChatCore._message`` makes one."""
        self.steps.append(f"{user} says {text!r}")
        expected = self.core.receive(user, say_line(text), NOW)
        room = self.where[user]
        message = protocol.chat_message(room.name, user, text, self.next_seq(), NOW)
        room.history.append(message)
        got: list[Output] = [Broadcast(tuple(room.members), message, room.name)]
        assert got == expected
        return self.deliver(got)

    def check(self) -> None:
        assert self.seq == self.core.seq, (
            f"{self.story()}\nnext_seq() called {self.seq} times; ChatCore is at {self.core.seq}")
        assert set(self.rooms) == set(self.core.rooms), self.story()
        for key, room in self.rooms.items():
            theirs = self.core.rooms[key]
            assert {"name": room.name, "members": room.members} == {
                "name": theirs.name, "members": theirs.members}, f"{self.story()}\nroom {key}"
            assert list(room.history) == list(theirs.history), (
                f"{self.story()}\nthe history of {room.name}")

    def deliver(self, outputs: list[Output]) -> list[Output]:
        for output in outputs:
            for conn in (output.to if isinstance(output, Broadcast) else (output.to,)):
                self.inbox[str(conn)].append(output.message)
        return outputs


def last_seq_in(messages: list[dict[str, Any]], room: str) -> int:
    return max(m["seq"] for m in messages if m.get("room") == room)


def scene(history_size: int) -> Mirror:
    """Joins, moves, a rejoin with since, a room named in another case, a bounded history."""
    mirror = Mirror(history_size)
    mirror.join("alice", "lobby")
    mirror.join("bob", "lobby")
    mirror.say("alice", "hello bob")
    mirror.join("bob", "dev")                               # a move: leave, then join
    mirror.say("alice", "bob?")
    mirror.say("alice", "gone to dev, then")
    mirror.join("carol", "Dev")                             # the same room as "dev"
    mirror.say("carol", "hi bob")
    mirror.join("bob", "lobby", since=last_seq_in(mirror.inbox["bob"], "lobby"))
    mirror.join("carol", "lobby", since=0)
    mirror.join("alice", "dev")
    mirror.join("dave", "lobby")
    return mirror


@pytest.mark.parametrize("history_size", [20, 3, 1, 0])
def test_join_room_agrees_with_chatcore_step_by_step(history_size: int) -> None:
    scene(history_size)         # every step is compared inside Mirror.join


def test_bob_comes_back_to_exactly_what_he_missed() -> None:
    mirror = Mirror()
    mirror.join("alice", "lobby")
    mirror.join("bob", "lobby")
    mirror.say("alice", "hello bob")
    since = last_seq_in(mirror.inbox["bob"], "lobby")
    mirror.join("bob", "dev")
    mirror.say("alice", "one")
    mirror.say("alice", "two")
    outputs = mirror.join("bob", "lobby", since=since)
    replayed = [o.message for o in outputs if isinstance(o, Reply)]
    assert [(m.get("event"), m.get("text")) for m in replayed] == [
        ("leave", "bob left"), (None, "one"), (None, "two")]
    # 5 was bob's join notice in dev: one counter for the whole server leaves gaps in a room.
    assert [m["seq"] for m in replayed] == [since + 1, since + 3, since + 4]


def test_every_live_stream_is_strictly_increasing() -> None:
    mirror = scene(history_size=20)
    for user, messages in mirror.inbox.items():
        live = [m["seq"] for m in messages if not m.get("history")]
        assert live == sorted(set(live)), f"{user} saw live seqs {live}"
        for index, message in enumerate(messages):     # a replay comes before the join notice
            if message.get("history"):
                following = messages[index + 1]
                assert following.get("history") or following.get("event") == "join"
