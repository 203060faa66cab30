"""ChatCore with no sockets: requests in, Reply/Broadcast out, time passed in."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from chat_sync import __version__
from chat_sync import protocol as p
from chat_sync.rooms import Broadcast, ChatCore, ConnId, Output, Reply, deliveries

from helpers import request_line

pytestmark = pytest.mark.timeout(10)

NOW = 1_700_000_000.25


class Chat:
    """A ChatCore plus the inboxes its outputs would fill: what each connection reads."""

    def __init__(self, **core_args: Any) -> None:
        self.core = ChatCore(**core_args)
        self.now = NOW
        self.outputs: list[Output] = []           # every output, in order

    def connect(self, conn: ConnId) -> dict[str, Any]:
        [welcome] = self._record(self.core.connect(conn))
        assert isinstance(welcome, Reply) and welcome.to == conn
        return welcome.message

    def send(self, conn: ConnId, **fields: Any) -> dict[ConnId, list[dict[str, Any]]]:
        """Feed one request as a line; return what each connection receives."""
        self.now += 1
        return inboxes(self._record(self.core.receive(conn, request_line(**fields), self.now)))

    def join(self, conn: ConnId, room: str, user: str, **extra: Any) -> dict[ConnId, list[dict]]:
        return self.send(conn, type="join", room=room, user=user, **extra)

    def disconnect(self, conn: ConnId) -> dict[ConnId, list[dict[str, Any]]]:
        self.now += 1
        return inboxes(self._record(self.core.disconnect(conn, self.now)))

    def _record(self, outputs: list[Output]) -> list[Output]:
        self.outputs += outputs
        return outputs


def inboxes(outputs: list[Output]) -> dict[ConnId, list[dict[str, Any]]]:
    received: dict[ConnId, list[dict[str, Any]]] = defaultdict(list)
    for output in outputs:
        for conn, message in deliveries(output):
            received[conn].append(message)
    return received


def only(messages: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(messages) == 1, messages
    return messages[0]


def live(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Without the history replayed on a join."""
    return [m for m in messages if not m.get("history")]


def is_error(message: dict[str, Any], code: str, field: str | None = None) -> bool:
    return (message["type"] == "error" and message["code"] == code
            and message.get("field") == field)


def chat_with(*names: str, room: str = "lobby", **core_args: Any) -> Chat:
    """Connections 1, 2, ... joined to ``room`` as ``names``."""
    chat = Chat(**core_args)
    for conn, name in enumerate(names, start=1):
        chat.connect(conn)
        chat.join(conn, room, name)
    return chat


# -- connecting ----------------------------------------------------------------

def test_welcome_tells_version_limits_and_current_seq() -> None:
    chat = chat_with("alice")
    welcome = chat.connect(2)
    assert welcome == {"type": "welcome", "server": "chat_sync", "version": __version__,
                       "protocol": p.PROTOCOL_VERSION, "limits": p.Limits().to_dict(),
                       "seq": 1, "epoch": chat.core.epoch}


def test_each_core_is_a_new_epoch() -> None:
    assert ChatCore().epoch != ChatCore().epoch
    assert ChatCore(epoch="run1").connect(1)[0].message["epoch"] == "run1"


def test_connecting_the_same_id_twice_is_our_bug() -> None:
    chat = Chat()
    chat.connect(1)
    with pytest.raises(ValueError):
        chat.connect(1)


# -- join and move ---------------------------------------------------------------

def test_join_is_announced_to_the_room_including_the_joiner() -> None:
    chat = chat_with("alice")
    chat.connect(2)
    got = chat.join(2, "lobby", "bob")
    notice = {"type": "system", "room": "lobby", "event": "join", "user": "bob",
              "text": "bob joined", "seq": 2, "ts": round(chat.now, 3)}
    assert got[1] == [notice]
    assert live(got[2]) == [notice]
    assert isinstance(chat.outputs[-1], Broadcast) and chat.outputs[-1].room == "lobby"


def test_moving_leaves_the_old_room_then_joins_the_new() -> None:
    chat = chat_with("alice", "bob")                 # lobby
    chat.connect(3)
    chat.join(3, "dev", "carol")
    got = chat.join(1, "dev", "alice")
    leave, join = live(got[1])
    assert (leave["event"], leave["room"], leave["user"]) == ("leave", "lobby", "alice")
    assert (join["event"], join["room"], join["user"]) == ("join", "dev", "alice")
    assert join["seq"] == leave["seq"] + 1
    assert got[2] == [leave]                         # bob, still in the lobby
    assert got[3] == [join]                          # carol, in dev
    who = only(chat.send(2, type="who")[2])
    assert who["users"] == ["bob"]


def test_past_presence_limit_a_join_and_a_leave_reach_their_member_alone() -> None:
    chat = chat_with("alice", "bob", limits=p.Limits(presence_limit=2))
    chat.connect(3)
    got = chat.join(3, "lobby", "carol", id=7)                # a room of 3: quiet
    own = only(live(got[3]))
    assert (own["event"], own["user"], own["id"]) == ("join", "carol", 7)
    assert own["seq"] == 3 and "not announced" in own["text"]
    assert set(got) == {3}                                    # nobody else heard it
    assert not chat.outputs[-1].message.get("history")
    chat.connect(4)
    replay = chat.join(4, "lobby", "dave")[4]
    assert [m["user"] for m in replay if m.get("history")] == ["alice", "bob"]  # not carol
    assert set(chat.disconnect(4)) == set()                   # a hangup in a quiet room
    got = chat.send(3, type="leave")                          # carol leaves a room of 3
    assert set(got) == {3} and only(got[3])["event"] == "leave"
    got = chat.send(2, type="leave")                          # bob leaves a room of 2: heard
    assert set(got) == {1, 2} and got[1] == got[2]


def test_rooms_are_matched_like_names() -> None:
    chat = chat_with("alice")
    chat.connect(2)
    got = chat.join(2, "LOBBY", "bob")
    assert got[1][0]["room"] == "lobby"              # the room keeps its first spelling


def test_joining_the_room_you_are_in_is_refused() -> None:
    chat = chat_with("alice")
    error = only(chat.join(1, "Lobby", "alice", id=4)[1])
    assert is_error(error, "bad_message", "room") and error["id"] == 4


# -- names -----------------------------------------------------------------------

@pytest.mark.parametrize("clash", ["alice", "ALICE", "Alice", "ａｌｉｃｅ"])
def test_names_are_unique_case_insensitively(clash: str) -> None:
    chat = chat_with("alice")
    chat.connect(2)
    error = only(chat.join(2, "dev", clash, id="j")[2])
    assert is_error(error, "name_taken", "user") and error["id"] == "j"


def test_a_name_is_fixed_at_the_first_join() -> None:
    chat = chat_with("alice")
    assert is_error(only(chat.join(1, "dev", "bob")[1]), "bad_message", "user")
    got = chat.join(1, "dev", "ALICE")               # the same name, spelt otherwise
    assert got[1][-1]["user"] == "alice"


def test_a_refused_first_join_claims_no_name() -> None:
    chat = chat_with("alice", room="a", max_rooms=1)
    chat.connect(2)
    assert is_error(only(chat.join(2, "b", "bob")[2]), "server_full", "room")
    chat.connect(3)
    assert chat.join(3, "a", "bob")[3][-1]["user"] == "bob"      # the name was free
    got = chat.join(2, "a", "bert")                              # and 2 may pick another
    assert got[2][-1]["event"] == "join" and got[2][-1]["user"] == "bert"


# -- messages ----------------------------------------------------------------------

def test_a_message_is_stamped_by_the_server() -> None:
    chat = chat_with("alice", "bob")
    got = chat.send(1, type="message", text="hi", user="mallory", seq=99, ts=0, room="lobby")
    expected = {"type": "message", "room": "lobby", "user": "alice", "text": "hi",
                "seq": 3, "ts": round(chat.now, 3)}
    assert got == {1: [expected], 2: [expected]}


def test_a_message_naming_another_room_is_refused() -> None:
    chat = chat_with("alice", "bob")
    got = chat.send(1, type="message", text="hi", room="dev", id=1)
    assert list(got) == [1] and is_error(only(got[1]), "bad_message", "room")
    assert only(chat.send(1, type="message", text="hi", room="LOBBY")[2])["text"] == "hi"


@pytest.mark.parametrize("request_fields", [
    {"type": "message", "text": "hi"},
    {"type": "who"},
    {"type": "leave"},
    {"type": "whisper", "to": "alice", "text": "hi"},
])
def test_room_requests_before_joining_are_not_joined(request_fields: dict[str, Any]) -> None:
    chat = chat_with("alice")
    chat.connect(2)
    got = chat.send(2, id=8, **request_fields)
    error = only(got[2])
    assert error["code"] == "not_joined" and error["id"] == 8
    assert list(got) == [2]


def test_ping_and_rooms_need_no_join() -> None:
    chat = Chat()
    chat.connect(1)
    assert chat.send(1, type="ping", id=1) == {1: [{"type": "pong", "id": 1}]}
    assert chat.send(1, type="rooms") == {1: [{"type": "rooms", "rooms": []}]}


# -- leave ---------------------------------------------------------------------------

def test_leave_and_stay_connected() -> None:
    chat = chat_with("alice", "bob")
    got = chat.send(1, type="leave", id="bye")
    own, seen_by_bob = only(got[1]), only(got[2])
    assert (seen_by_bob["event"], seen_by_bob["user"]) == ("leave", "alice")
    assert own == {**seen_by_bob, "id": "bye"}
    assert only(chat.send(1, type="message", text="x")[1])["code"] == "not_joined"
    assert chat.send(1, type="ping") == {1: [{"type": "pong"}]}
    assert only(chat.send(2, type="who")[2])["users"] == ["bob"]
    chat.connect(3)
    assert only(chat.join(3, "dev", "alice")[3])["code"] == "name_taken"   # still hers
    assert chat.join(1, "lobby", "alice")[2][-1]["event"] == "join"


# -- rooms and who -----------------------------------------------------------------------

def test_rooms_lists_occupied_rooms_sorted_with_counts() -> None:
    chat = chat_with("alice", "bob", room="Zoo")
    chat.connect(3)
    chat.join(3, "attic", "carol")
    chat.connect(4)
    chat.join(4, "empty", "dave")
    chat.send(4, type="leave")
    reply = only(chat.send(4, type="rooms", id=2)[4])
    assert reply == {"type": "rooms", "rooms": [{"name": "attic", "members": 1},
                                                {"name": "Zoo", "members": 2}], "id": 2}


def test_who_lists_the_room_sorted() -> None:
    chat = chat_with("carol", "Alice", "bob")
    assert only(chat.send(1, type="who", id="w")[1]) == {
        "type": "who", "room": "lobby", "users": ["Alice", "bob", "carol"], "id": "w"}


# -- whispers ------------------------------------------------------------------------------

def test_a_whisper_reaches_only_its_target_and_echoes_to_the_sender() -> None:
    chat = chat_with("alice", "bob", "carol")
    chat.connect(4)
    chat.join(4, "dev", "dave")
    got = chat.send(1, type="whisper", to="DAVE", text="psst", id=5)
    ts = round(chat.now, 3)
    assert got == {
        4: [{"type": "whisper", "from": "alice", "to": "dave", "text": "psst", "ts": ts}],
        1: [{"type": "whisper", "from": "alice", "to": "dave", "text": "psst", "ts": ts,
             "id": 5}],
    }


def test_a_whisper_is_not_broadcast_so_not_logged() -> None:
    chat = chat_with("alice", "bob")
    chat.outputs.clear()
    chat.send(1, type="whisper", to="bob", text="secret")
    assert chat.outputs and all(isinstance(o, Reply) for o in chat.outputs)
    assert chat.core.seq == 2                     # no seq taken either


def test_a_whisper_to_nobody_is_no_such_user() -> None:
    chat = chat_with("alice")
    error = only(chat.send(1, type="whisper", to="ghost", text="boo", id=1)[1])
    assert is_error(error, "no_such_user", "to") and error["id"] == 1


def test_a_whisper_to_yourself_arrives_once() -> None:
    chat = chat_with("alice")
    assert only(chat.send(1, type="whisper", to="alice", text="note")[1])["from"] == "alice"


def test_a_whisper_reaches_a_user_who_left_their_room() -> None:
    chat = chat_with("alice", "bob")
    chat.send(2, type="leave")
    assert only(chat.send(1, type="whisper", to="bob", text="x")[2])["text"] == "x"


# -- ids -----------------------------------------------------------------------------------

def test_the_id_rides_only_on_the_senders_copy() -> None:
    chat = chat_with("alice", "bob")
    got = chat.send(1, type="message", text="hi", id="m-1")
    assert only(got[1])["id"] == "m-1"
    assert "id" not in only(got[2])
    assert {k: v for k, v in only(got[1]).items() if k != "id"} == only(got[2])
    chat.connect(3)
    got = chat.join(3, "lobby", "carol", id=0)
    assert got[3][-1]["id"] == 0 and "id" not in got[1][-1]


@pytest.mark.parametrize("rid", [7, "seven"])
def test_errors_carry_the_id(rid: int | str) -> None:
    chat = chat_with("alice")
    assert only(chat.send(1, type="message", id=rid)[1])["id"] == rid           # validation
    assert only(chat.send(1, type="nope", id=rid)[1])["id"] == rid              # unknown type
    assert only(chat.send(1, type="whisper", to="x", text="y", id=rid)[1])["id"] == rid


# -- seq -------------------------------------------------------------------------------------

def test_seq_is_one_counter_for_the_whole_server() -> None:
    chat = chat_with("alice", "bob")
    chat.connect(3)
    chat.join(3, "dev", "carol")
    for i in range(5):
        chat.send(1, type="message", text=f"lobby {i}")
        chat.send(3, type="message", text=f"dev {i}")
        chat.send(2, type="message", text=f"lobby again {i}", id=i)
    chat.join(2, "dev", "bob")
    chat.send(1, type="leave")
    chat.disconnect(3)
    seqs = [o.message["seq"] for o in chat.outputs if isinstance(o, Broadcast)]
    assert seqs == list(range(1, len(seqs) + 1))             # strictly increasing, no gaps


# -- history ---------------------------------------------------------------------------------

def test_a_joiner_gets_the_last_history_size_broadcasts_before_its_join_notice() -> None:
    chat = chat_with("alice", history_size=3)        # join notice: seq 1
    for i in range(5):
        chat.send(1, type="message", text=f"m{i}")   # seq 2..6
    chat.connect(2)
    got = chat.join(2, "lobby", "bob")
    *replayed, notice = got[2]
    assert [m["seq"] for m in replayed] == [4, 5, 6]
    assert [m["text"] for m in replayed] == ["m2", "m3", "m4"]
    assert all(m["history"] is True and m["type"] == "message" for m in replayed)
    assert notice["event"] == "join" and "history" not in notice and notice["seq"] == 7
    assert got[1] == [notice]                         # the others get no replay


def test_history_replays_notices_too_and_is_per_room() -> None:
    chat = chat_with("alice", "bob")
    chat.connect(3)
    chat.join(3, "dev", "carol")
    chat.send(1, type="message", text="in lobby")
    chat.send(2, type="leave")
    chat.connect(4)
    replayed = chat.join(4, "lobby", "dave")[4][:-1]
    assert [(m["type"], m.get("event"), m["user"]) for m in replayed] == [
        ("system", "join", "alice"), ("system", "join", "bob"),
        ("message", None, "alice"), ("system", "leave", "bob")]


def test_since_replays_only_what_came_after_it() -> None:
    chat = chat_with("alice", "bob")                  # seq 1, 2
    for i in range(4):
        chat.send(1, type="message", text=f"m{i}")   # seq 3..6
    chat.disconnect(2)                                # seq 7
    chat.connect(3)
    got = chat.join(3, "lobby", "bob", since=5)
    assert [m["seq"] for m in got[3]] == [6, 7, 8]
    assert [m.get("history") for m in got[3]] == [True, True, None]


def test_since_at_the_latest_seq_replays_nothing() -> None:
    chat = chat_with("alice")
    chat.send(1, type="message", text="m")
    chat.connect(2)
    assert [m["event"] for m in chat.join(2, "lobby", "bob", since=2)[2]] == ["join"]


def test_replay_does_not_alter_the_stored_history() -> None:
    chat = chat_with("alice")
    chat.connect(2)
    chat.join(2, "lobby", "bob")
    assert all("history" not in m for m in chat.core.rooms["lobby"].history)


def test_history_size_zero_replays_nothing() -> None:
    chat = chat_with("alice", history_size=0)
    chat.send(1, type="message", text="m")
    chat.connect(2)
    assert [m["type"] for m in chat.join(2, "lobby", "bob")[2]] == ["system"]


# -- the room limit ------------------------------------------------------------------------------

def test_at_max_rooms_the_oldest_empty_room_is_dropped() -> None:
    chat = chat_with("alice", room="old", max_rooms=3)
    chat.send(1, type="message", text="remember me")
    chat.join(1, "middle", "alice")                       # "old" is empty now
    chat.connect(2)
    chat.join(2, "young", "bob")
    chat.send(2, type="leave")                            # "young" is empty too
    chat.connect(3)
    chat.join(3, "new", "carol")                          # evicts "old", the oldest empty
    assert list(chat.core.rooms) == ["middle", "young", "new"]
    chat.connect(4)
    got = chat.join(4, "old", "dave")                     # a new "old", without history
    assert [m["type"] for m in got[4]] == ["system"]
    assert list(chat.core.rooms) == ["middle", "new", "old"]


def test_at_max_rooms_a_lone_member_moving_out_makes_way() -> None:
    chat = chat_with("alice", room="a", max_rooms=2)
    chat.connect(2)
    chat.join(2, "b", "bob")
    got = chat.join(1, "c", "alice")                      # "a" empties as she moves
    assert [(m["event"], m["room"]) for m in got[1]] == [("leave", "a"), ("join", "c")]
    assert list(chat.core.rooms) == ["b", "c"]


def test_at_max_rooms_with_none_empty_a_new_room_is_server_full() -> None:
    chat = chat_with("alice", room="a", max_rooms=1)
    chat.connect(2)
    got = chat.join(2, "b", "bob", id=3)
    error = only(got[2])
    assert is_error(error, "server_full", "room") and error["id"] == 3
    assert list(got) == [2] and list(chat.core.rooms) == ["a"]
    assert chat.join(2, "A", "bob")[2][-1]["event"] == "join"       # existing rooms still open


# -- disconnect ------------------------------------------------------------------------------------

def test_disconnect_leaves_the_room_and_frees_the_name() -> None:
    chat = chat_with("alice", "bob")
    got = chat.disconnect(1)
    notice = only(got[2])
    assert (notice["event"], notice["user"], notice["seq"]) == ("leave", "alice", 3)
    assert 1 not in got
    assert only(chat.send(2, type="who")[2])["users"] == ["bob"]
    chat.connect(1)                                       # an id may be reused afterwards
    chat.connect(3)
    assert chat.join(3, "lobby", "ALICE")[2][-1]["user"] == "ALICE"


def test_disconnect_before_joining_says_nothing() -> None:
    chat = Chat()
    chat.connect(1)
    assert chat.disconnect(1) == {}
    assert chat.core.members == {}


def test_shutdown_notice_goes_to_every_connection() -> None:
    chat = chat_with("alice")
    chat.connect(2)
    notice = chat.core.shutdown_notice(NOW)
    assert set(notice.to) == {1, 2} and notice.room is None
    assert notice.message == {"type": "system", "event": "shutdown",
                              "text": "server shutting down", "ts": round(NOW, 3)}


# -- every bad line is one error reply, never a broadcast ------------------------------------------

TRAPS = {
    "deep nesting": (b"[" * 50000, "bad_json"),
    "NaN": (b'{"type":"message","text":"x","n":NaN}', "bad_json"),
    "Infinity": (b'{"type":"message","text":Infinity}', "bad_json"),
    "-Infinity": (b'{"type":"message","text":-Infinity}', "bad_json"),
    "duplicate keys": (b'{"type":"message","text":"a","text":"b"}', "bad_json"),
    "not an object": (b'["message","hi"]', "bad_json"),
    "syntax": (b'{"type":"message","text":"hi"', "bad_json"),
    "bad utf-8": (b'{"type":"message","text":"\xff\xfe"}', "bad_utf8"),
    "lone surrogate": (b'{"type":"message","text":"\\ud800"}', "bad_message"),
    "unknown type": (b'{"type":"shout","text":"hi"}', "unknown_type"),
    "huge number": (b'{"type":"message","text":"hi","id":' + b"1" * 5000 + b"}", "bad_json"),
}


@pytest.mark.parametrize("line, code", TRAPS.values(), ids=TRAPS.keys())
def test_every_json_trap_is_one_typed_error_and_no_broadcast(line: bytes, code: str) -> None:
    chat = chat_with("alice", "bob")
    seq = chat.core.seq
    outputs = chat.core.receive(1, line, NOW)
    assert len(outputs) == 1 and isinstance(outputs[0], Reply) and outputs[0].to == 1
    assert outputs[0].message["code"] == code
    p.encode(outputs[0].message)
    assert chat.core.seq == seq
    assert len(chat.core.rooms["lobby"].history) == 2     # the two join notices only
    assert only(chat.send(1, type="ping")[1])["type"] == "pong"     # still usable


@pytest.mark.parametrize("name", ["system", "SYSTEM", "ｓｙｓｔｅｍ", "systern"])
def test_nobody_may_be_called_system_which_marks_notices_in_the_log(name: str) -> None:
    chat = Chat()
    chat.connect(1)
    assert is_error(only(chat.join(1, "lobby", name)[1]), "name_taken", "user")


@pytest.mark.parametrize("history_size", [0, 2])
def test_a_rejoin_older_than_history_says_so_before_the_replay(history_size: int) -> None:
    chat = chat_with("alice", history_size=history_size)     # seq 1: alice joined
    for text in ("one", "two", "three"):                     # seq 2, 3, 4
        chat.send(1, type="message", text=text)
    chat.connect(2)
    got = chat.join(2, "lobby", "bob", since=1)[2]
    assert got[0]["type"] == "system" and got[0]["event"] == "history_gap"
    assert got[0]["room"] == "lobby" and "seq" not in got[0]
    forgotten = 2 if history_size == 2 else 4
    assert f"up to seq {forgotten}" in got[0]["text"]
    assert [m["text"] for m in got[1:-1]] == ["two", "three"][2 - history_size:] and \
        all(m["history"] for m in got[1:-1])
    assert got[-1]["event"] == "join"


def test_a_rejoin_that_history_still_covers_gets_no_gap_notice() -> None:
    chat = chat_with("alice", history_size=2)
    for text in ("one", "two", "three"):                     # seq 2, 3, 4; seq 2 falls out
        chat.send(1, type="message", text=text)
    chat.connect(2)
    got = chat.join(2, "lobby", "bob", since=2)[2]
    assert [m.get("event", m["type"]) for m in got] == ["message", "message", "join"]
    chat.connect(3)
    fresh = chat.join(3, "lobby", "carol")[3]                # no since: a first visit
    assert all(m.get("event") != "history_gap" for m in fresh)


def test_a_rejoin_into_a_room_evicted_at_max_rooms_says_history_gap() -> None:
    # Issue 9, item 6: the recreated room must not pretend nothing happened.
    chat = chat_with("alice", room="old", max_rooms=2)      # seq 1
    chat.send(1, type="message", text="one")                # seq 2
    chat.send(1, type="message", text="missed")             # seq 3
    chat.join(1, "middle", "alice")                         # "old" is empty now
    chat.connect(2)
    chat.join(2, "new", "bob")                              # evicts "old"
    chat.send(2, type="leave")                              # "new" is empty: may make way
    chat.connect(3)
    got = chat.join(3, "old", "carol", since=2)[3]          # a new "old"
    assert got[0]["event"] == "history_gap" and "up to seq 4" in got[0]["text"], got
    assert got[-1]["event"] == "join"


def test_the_memory_of_evicted_rooms_is_bounded() -> None:
    chat = chat_with("alice", room="r0", max_rooms=2)
    for n in range(1, 50):
        chat.join(1, f"r{n}", "alice")                      # each move evicts the last room
    assert len(chat.core.rooms) <= 2
    assert len(chat.core._evicted) <= 2


# -- resuming a name from a ghost (issue 9, item 3) -----------------------------------------

def test_a_reconnect_with_its_resume_token_reclaims_the_name_from_its_ghost() -> None:
    chat = Chat(resume=True)
    token = chat.connect(1)["resume"]
    assert isinstance(token, str) and len(token) >= 16
    chat.join(1, "lobby", "alice")
    chat.connect(3)
    chat.join(3, "lobby", "carol")
    chat.connect(2)                                   # alice again; 1 is a half-open ghost
    got = chat.join(2, "lobby", "alice", resume=token, id=7)
    assert [(m["event"], m["user"]) for m in got[3]] == [("leave", "alice"), ("join", "alice")]
    assert got[2][-1]["event"] == "join" and got[2][-1]["id"] == 7
    assert 1 not in chat.core.members
    assert chat.core.take_ghosts() == [1] and chat.core.take_ghosts() == []
    assert chat.core.user_named("alice") == "alice"


@pytest.mark.parametrize("which", ["wrong", "someone else's"])
def test_a_resume_token_that_is_not_the_name_holders_is_name_taken(which: str) -> None:
    chat = Chat(resume=True)
    chat.connect(1)
    chat.join(1, "lobby", "alice")
    carol_token = chat.connect(3)["resume"]
    chat.join(3, "lobby", "carol")
    chat.connect(2)
    token = "x" * 22 if which == "wrong" else carol_token
    assert is_error(only(chat.join(2, "lobby", "alice", resume=token)[2]), "name_taken", "user")
    assert chat.core.take_ghosts() == [] and 1 in chat.core.members


def test_without_resume_the_welcome_has_no_token() -> None:
    assert "resume" not in Chat().connect(1)


def test_a_whole_script_look_alike_of_a_connected_name_is_refused() -> None:
    # Issue 9, item 5: all-Cyrillic "јое" beside Latin "joe".
    chat = chat_with("joe")
    chat.connect(2)
    error = only(chat.join(2, "lobby", "јое")[2])
    assert is_error(error, "name_taken", "user") and "looks like" in error["text"]
    chat.disconnect(1)
    assert chat.join(2, "lobby", "јое")[2][-1]["event"] == "join"    # free once joe is gone
