"""Tests of chat_sync.datagrams.UdpChat with no sockets: datagrams in, actions out.

Each test plays one or more peers (plain addresses) against one ``UdpChat``
and a fake clock: it feeds datagrams with ``Net.send`` and reads what the
server would put on the wire from the returned actions.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from chat_sync import protocol as p
from chat_sync.datagrams import (MAX_UNACKED, Acked, Action, Address, Cancel, Log, Send,
                                 UdpChat)
from chat_sync.rooms import ChatCore

ALICE: Address = ("127.0.0.1", 40001)
BOB: Address = ("127.0.0.1", 40002)
CAROL: Address = ("127.0.0.1", 40003)
STRANGER: Address = ("127.0.0.1", 40099)
WALL = 1_700_000_000.0


class Net:
    """One UdpChat, a fake clock, and a per-peer id counter."""

    def __init__(self, **options: Any) -> None:
        core = ChatCore(p.Limits(), history_size=options.pop("history_size", 20))
        self.chat = UdpChat(core, **options)
        self.now = 100.0
        self._ids: Counter[Address] = Counter()

    def send_raw(self, addr: Address, data: bytes) -> list[Action]:
        return self.chat.receive(addr, data, self.now, WALL + self.now)

    def send(self, addr: Address, **fields: Any) -> list[Action]:
        """A request from ``addr`` with the next id, unless ``fields`` has one."""
        if "id" not in fields:
            self._ids[addr] += 1
            fields["id"] = self._ids[addr]
        return self.send_raw(addr, json.dumps(fields).encode("utf-8"))

    def join(self, addr: Address, user: str, room: str = "lobby") -> list[Action]:
        return self.send(addr, type="join", room=room, user=user)

    def ack_all(self, addr: Address, actions: list[Action]) -> list[Action]:
        """Ack every reliable datagram ``actions`` sent to ``addr``; returns what that did."""
        result: list[Action] = []
        for action in actions:
            if isinstance(action, Send) and action.addr == addr and action.key is not None:
                result += self.send_raw(addr, b'{"type":"ack","n":%d}' % action.key[1])
        return result


def to(addr: Address, actions: list[Action]) -> list[dict[str, Any]]:
    """The decoded datagrams ``actions`` send to ``addr``, in order."""
    return [p.decode(a.payload) for a in actions if isinstance(a, Send) and a.addr == addr]


def reliable(addr: Address, actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and a.addr == addr and a.key is not None]


def of_type(kind: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == kind]


def joined_pair(**options: Any) -> Net:
    net = Net(**options)
    net.ack_all(ALICE, net.join(ALICE, "alice"))
    net.ack_all(BOB, net.join(BOB, "bob"))
    return net


# -- Acks and duplicates ----------------------------------------------------------------

@pytest.mark.timeout(10)
def test_every_datagram_with_an_id_is_acked_first_and_a_duplicate_again() -> None:
    net = Net()
    actions = net.join(ALICE, "alice")
    first = actions[0]
    assert isinstance(first, Send) and first.key is None
    assert p.decode(first.payload) == {"type": "ack", "id": 1}
    again = net.send(ALICE, type="join", room="lobby", user="alice", id=1)
    assert [p.decode(a.payload) for a in again if isinstance(a, Send)] == [
        {"type": "ack", "id": 1}]
    ping = net.send(ALICE, type="ping", id=7)
    assert to(ALICE, ping)[0] == {"type": "ack", "id": 7}
    assert of_type("pong", to(ALICE, ping))[0]["id"] == 7


@pytest.mark.timeout(10)
def test_a_duplicate_message_is_acked_but_broadcast_once() -> None:
    net = joined_pair()
    seq_before = net.chat.core.seq
    first = net.send(BOB, type="message", text="only once", id=50)
    duplicate = net.send(BOB, type="message", text="only once", id=50)
    assert [m["text"] for m in of_type("message", to(ALICE, first))] == ["only once"]
    assert to(ALICE, duplicate) == []
    assert to(BOB, duplicate) == [{"type": "ack", "id": 50}]
    assert net.chat.core.seq == seq_before + 1
    assert [a for a in first + duplicate if isinstance(a, Log)] == [
        Log("lobby", "bob", "only once", pytest.approx(WALL + net.now))]
    assert net.chat.stats.duplicates_dropped == 1


@pytest.mark.timeout(10)
def test_ids_may_arrive_out_of_order_and_each_is_applied_once() -> None:
    net = joined_pair()
    texts = []
    for rid in (5, 3, 4, 3, 5, 2):
        texts += [m["text"] for m in of_type("message", to(ALICE, net.send(
            BOB, type="message", text=f"m{rid}", id=rid)))]
    assert texts == ["m5", "m3", "m4", "m2"]     # the late id 2 is new: applied once


# -- Stream numbers --------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_each_peer_gets_its_own_stream_numbers_without_holes() -> None:
    net = Net()
    stamped: dict[Address, list[int]] = {ALICE: [], BOB: [], CAROL: []}

    def record(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send) and action.key is not None:
                message = p.decode(action.payload)
                assert action.key == (action.addr, message["n"])
                stamped[action.addr].append(message["n"])

    record(net.join(ALICE, "alice"))
    record(net.join(BOB, "bob", room="other"))
    record(net.join(CAROL, "carol"))
    for i in range(5):
        record(net.send(ALICE, type="message", text=f"a{i}"))
        record(net.send(BOB, type="message", text=f"b{i}"))
    record(net.send(CAROL, type="who"))
    record(net.send(CAROL, type="message", text="x" * 5000))      # an error is stamped too
    for addr, numbers in stamped.items():
        assert numbers == list(range(1, len(numbers) + 1)), addr
    assert len(stamped[ALICE]) > len(stamped[BOB])   # bob's room is quieter


@pytest.mark.timeout(10)
def test_a_broadcast_is_encoded_once_and_only_n_differs() -> None:
    net = joined_pair()
    net.ack_all(CAROL, net.join(CAROL, "carol"))
    actions = net.send(ALICE, type="message", text="same bytes")
    copies = [a.payload for a in actions if isinstance(a, Send) and a.addr in (BOB, CAROL)]
    assert len(copies) == 2
    bodies = {copy[:copy.rindex(b',"n":')] for copy in copies}
    assert len(bodies) == 1


@pytest.mark.timeout(10)
def test_acks_of_n_cancel_retransmission_once() -> None:
    net = Net()
    actions = net.join(ALICE, "alice")
    keys = [a.key for a in reliable(ALICE, actions)]
    assert keys == [(ALICE, 1), (ALICE, 2)]          # welcome, own join notice
    assert net.send_raw(ALICE, b'{"type":"ack","n":2}') == [Acked((ALICE, 2))]
    assert net.send_raw(ALICE, b'{"type":"ack","n":2}') == []      # a duplicate ack
    assert net.send_raw(ALICE, b'{"type":"ack","n":99}') == []     # never sent
    assert net.send_raw(ALICE, b'{"type":"ack","n":"1"}') == []
    assert net.chat.dropped["bad_ack"] == 1
    assert net.chat.peers[ALICE].unacked == {1}


# -- Bad datagrams ------------------------------------------------------------------------

GARBAGE = [b"\xff\xfe", b"not json", b"[1, 2]", b'{"type":"join"}', b'{"type":"ping","id":0}',
           b'{"type":"ping","id":true}', b'{"type":"ping","id":"7"}', b'{"a":NaN,"id":1}',
           b'{"id":1,"id":2,"type":"ping"}', b"", b"{" * 5000]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("datagram", GARBAGE)
def test_garbage_from_an_unknown_address_is_dropped_and_counted(datagram: bytes) -> None:
    net = Net()
    assert net.send_raw(STRANGER, datagram) == []
    assert STRANGER not in net.chat.peers
    assert sum(net.chat.dropped.values()) == 1


@pytest.mark.timeout(10)
def test_an_ack_from_an_unknown_address_is_dropped() -> None:
    net = Net()
    assert net.send_raw(STRANGER, b'{"type":"ack","n":1}') == []
    assert net.send_raw(STRANGER, b'{"type":"ack","id":1}') == []
    assert net.chat.dropped["bad_ack"] == 2 and not net.chat.peers


@pytest.mark.timeout(10)
@pytest.mark.parametrize("datagram, code", [
    (b"\xff\xfe", "bad_utf8"),
    (b"not json", "bad_json"),
    (b"[1]", "bad_json"),
    (b'{"a":NaN}', "bad_json"),
    (b'{"type":"ping","id":1,"id":2}', "bad_json"),
    (b'{"type":"dance","id":9}', "unknown_type"),
    (b'{"type":"message","id":9}', "bad_message"),
])
def test_garbage_from_a_known_peer_gets_a_typed_error(datagram: bytes, code: str) -> None:
    net = joined_pair()
    actions = net.send_raw(ALICE, datagram)
    errors = of_type("error", to(ALICE, actions))
    assert [e["code"] for e in errors] == [code]
    assert reliable(ALICE, actions), "an error is reliable, like every server datagram"
    assert ALICE in net.chat.peers


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fields", [{}, {"id": 0}, {"id": -3}, {"id": "x"}, {"id": True},
                                    {"id": 1.5}, {"id": 2**53}])
def test_a_missing_or_bad_id_is_bad_message(fields: dict[str, Any]) -> None:
    net = joined_pair()
    actions = net.send_raw(ALICE, json.dumps({"type": "ping", **fields}).encode())
    [error] = of_type("error", to(ALICE, actions))
    assert error["code"] == "bad_message" and error["field"] == "id"
    assert of_type("ack", to(ALICE, actions)) == [] and of_type("pong", to(ALICE, actions)) == []


@pytest.mark.timeout(10)
def test_a_datagram_over_the_limit_is_refused() -> None:
    net = joined_pair(max_datagram_bytes=300)
    big = json.dumps({"type": "message", "text": "x" * 400, "id": 9}).encode()
    [error] = of_type("error", to(ALICE, net.send_raw(ALICE, big)))
    assert error["code"] == "datagram_too_large"
    assert net.send_raw(STRANGER, big) == []
    assert net.chat.dropped["datagram_too_large"] == 1


@pytest.mark.timeout(10)
def test_a_message_whose_delivery_would_not_fit_is_refused_with_its_id() -> None:
    net = joined_pair(max_datagram_bytes=400)
    seq = net.chat.core.seq
    # The request itself fits; the broadcast adds room, user, seq, ts and n.
    text = "y" * 330
    assert len(json.dumps({"type": "message", "text": text, "id": 5})) < 400
    actions = net.send(ALICE, type="message", text=text, id=5)
    [error] = of_type("error", to(ALICE, actions))
    assert error == {"type": "error", "code": "datagram_too_large", "field": "text", "id": 5,
                     "text": error["text"], "n": error["n"]}
    assert to(BOB, actions) == [] and net.chat.core.seq == seq
    whisper = net.send(ALICE, type="whisper", to="bob", text=text)
    assert of_type("error", to(ALICE, whisper))[0]["code"] == "datagram_too_large"
    fits = net.send(ALICE, type="message", text="y" * 200)
    for action in fits:
        if isinstance(action, Send):
            assert len(action.payload) <= 400
    assert of_type("message", to(BOB, fits))


@pytest.mark.timeout(10)
def test_long_who_and_rooms_lists_are_cut_and_say_how_many_more() -> None:
    users = [(("10.0.0.1", 1000 + i), f"user{i:02d}") for i in range(40)]
    together, apart = Net(max_datagram_bytes=300), Net(max_datagram_bytes=300)
    for addr, user in users:
        together.join(addr, user)
        apart.join(addr, user, room=f"room{user}")       # 40 rooms of one
    addr = users[0][0]
    who_reply = together.send(addr, type="who")
    [who] = of_type("who", to(addr, who_reply))
    assert who["more"] > 0 and len(who["users"]) + who["more"] == 40
    assert who["users"] == [user for _, user in users[:len(who["users"])]]
    rooms_reply = apart.send(addr, type="rooms")
    [rooms] = of_type("rooms", to(addr, rooms_reply))
    assert rooms["more"] > 0 and len(rooms["rooms"]) + rooms["more"] == 40
    for action in who_reply + rooms_reply:
        assert isinstance(action, Send) and len(action.payload) <= 300
    net2 = joined_pair(max_datagram_bytes=300)
    [short] = of_type("who", to(ALICE, net2.send(ALICE, type="who")))
    assert "more" not in short and short["users"] == ["alice", "bob"]


# -- Presence --------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_the_first_datagram_creates_presence_with_a_welcome_n1() -> None:
    net = Net()
    messages = to(ALICE, net.send(ALICE, type="rooms"))
    assert messages[0] == {"type": "ack", "id": 1}
    assert messages[1]["type"] == "welcome" and messages[1]["n"] == 1
    assert messages[2]["type"] == "rooms" and messages[2]["n"] == 2
    assert ALICE in net.chat.peers


@pytest.mark.timeout(10)
def test_max_clients_refuses_a_new_address_with_server_full() -> None:
    net = Net(max_clients=2)
    net.join(ALICE, "alice")
    net.join(BOB, "bob")
    actions = net.join(CAROL, "carol")
    assert [p.decode(a.payload) for a in actions if isinstance(a, Send)] == [
        {"type": "error", "code": "server_full", "text": "server full: 2 clients", "id": 1}]
    assert all(isinstance(a, Send) and a.key is None for a in actions)   # not retransmitted
    assert CAROL not in net.chat.peers and net.chat.dropped["server_full"] == 1
    net.send(ALICE, type="leave")
    assert of_type("welcome", to(CAROL, net.join(CAROL, "carol")))


@pytest.mark.timeout(10)
def test_a_silent_peer_expires_and_its_room_hears_it_left() -> None:
    net = joined_pair(client_timeout_s=10.0)
    assert net.chat.next_expiry() == pytest.approx(net.now + 10.0)
    net.now += 6.0
    net.ack_all(BOB, net.send(BOB, type="ping"))
    assert net.chat.expire(net.now + 3.9, WALL) == []
    net.now += 4.0                                   # alice silent for 10 s, bob for 4
    assert net.chat.next_expiry() == pytest.approx(net.now)
    actions = net.chat.expire(net.now, WALL)
    [notice] = to(BOB, actions)
    assert notice["type"] == "system" and notice["event"] == "leave"
    assert notice["user"] == "alice"
    assert ALICE not in net.chat.peers and BOB in net.chat.peers
    assert net.chat.next_expiry() == pytest.approx(net.now - 4.0 + 10.0)
    assert to(ALICE, actions) == []


@pytest.mark.timeout(10)
def test_any_datagram_even_an_ack_keeps_a_peer_alive() -> None:
    net = joined_pair(client_timeout_s=10.0)
    net.send(BOB, type="message", text="for alice to ack")
    net.now += 9.0
    n = max(net.chat.peers[ALICE].unacked)
    net.send_raw(ALICE, b'{"type":"ack","n":%d}' % n)
    net.now += 5.0                      # bob silent for 14 s, alice for 5
    net.chat.expire(net.now, WALL)
    assert ALICE in net.chat.peers and BOB not in net.chat.peers


@pytest.mark.timeout(10)
def test_give_up_drops_the_peer_and_its_room_hears_it() -> None:
    net = joined_pair()
    actions = net.send(BOB, type="message", text="never acked by alice")
    [key] = [a.key for a in reliable(ALICE, actions)]
    assert key is not None
    dropped = net.chat.give_up(key, WALL)
    assert ALICE not in net.chat.peers
    assert [m["event"] for m in to(BOB, dropped)] == ["leave"]
    assert net.chat.give_up(key, WALL) == []                # already gone
    assert net.chat.give_up((BOB, 999), WALL) == []         # never sent


@pytest.mark.timeout(10)
def test_a_dropped_peers_retransmissions_are_cancelled() -> None:
    net = joined_pair(client_timeout_s=10.0)
    net.send(BOB, type="message", text="one")
    net.send(BOB, type="message", text="two")
    unacked = sorted(net.chat.peers[ALICE].unacked)
    assert len(unacked) == 3                        # bob's join notice and two messages
    net.now += 10.0
    net.ack_all(BOB, net.send(BOB, type="ping"))
    actions = net.chat.expire(net.now, WALL)
    cancelled = [a.key for a in actions if isinstance(a, Cancel)]
    assert cancelled == [(ALICE, n) for n in unacked]
    # The address comes back: a new stream from n=1, untouched by old acks.
    back = net.join(ALICE, "alice")
    assert of_type("welcome", to(ALICE, back))[0]["n"] == 1
    assert net.send_raw(ALICE, b'{"type":"ack","n":1}') == [Acked((ALICE, 1))]


@pytest.mark.timeout(10)
def test_leave_ends_the_session_and_the_address_is_forgotten() -> None:
    net = joined_pair()
    actions = net.send(ALICE, type="leave")
    assert to(ALICE, actions) == [{"type": "ack", "id": 2}]     # nothing reliable to alice
    assert [(m["event"], m["user"]) for m in to(BOB, actions)] == [("leave", "alice")]
    assert ALICE not in net.chat.peers and ALICE not in net.chat.core.members
    # Its ack was lost: the retransmitted leave opens a new session and ends it at once.
    again = net.send(ALICE, type="leave", id=2)
    assert [m["type"] for m in to(ALICE, again)] == ["ack", "welcome"]
    assert [a.key for a in again if isinstance(a, Cancel)] == [(ALICE, 1)]
    assert ALICE not in net.chat.peers and to(BOB, again) == []


@pytest.mark.timeout(10)
def test_leave_outside_a_room_also_ends_the_session() -> None:
    net = Net()
    net.ack_all(ALICE, net.join(ALICE, "alice"))
    refused = net.join(BOB, "ALICE")                           # name taken: no room
    assert of_type("error", to(BOB, refused))[0]["code"] == "name_taken"
    actions = net.send(BOB, type="leave")
    assert to(BOB, actions) == [{"type": "ack", "id": 2}]
    assert BOB not in net.chat.peers and to(ALICE, actions) == []
    cancelled = {a.key for a in actions if isinstance(a, Cancel)}
    assert cancelled == {(BOB, 1), (BOB, 2)}                   # welcome and the error


@pytest.mark.timeout(10)
def test_a_peer_that_never_acks_is_dropped_at_max_unacked() -> None:
    net = joined_pair()
    net.ack_all(CAROL, net.join(CAROL, "carol"))
    deaf = len(net.chat.peers[ALICE].unacked)
    left: list[dict[str, Any]] = []
    for i in range(MAX_UNACKED - deaf + 1):
        actions = net.send(BOB, type="message", text=f"m{i}")
        net.ack_all(BOB, actions)
        net.ack_all(CAROL, actions)
        left += [m for m in to(CAROL, actions) if m.get("event") == "leave"]
        if ALICE not in net.chat.peers:
            break
    assert ALICE not in net.chat.peers
    assert [m["user"] for m in left] == ["alice"]
    assert net.chat.dropped["not_acking"] == 1
    assert BOB in net.chat.peers and CAROL in net.chat.peers


@pytest.mark.timeout(10)
def test_shutdown_tells_every_peer_reliably() -> None:
    net = joined_pair()
    actions = net.chat.shutdown(WALL)
    for addr in (ALICE, BOB):
        [notice] = to(addr, actions)
        assert notice["event"] == "shutdown"
        assert reliable(addr, actions)
