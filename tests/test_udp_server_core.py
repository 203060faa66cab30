"""Tests of chat_sync.udp_server_core.UdpChat with no sockets: datagrams in, actions out.

Each test plays one or more peers (plain addresses) against one ``UdpChat``
and a fake clock: it feeds datagrams with ``Net.send`` and reads what the
server would put on the wire from the returned actions. ``Net.join`` also
acks the welcome, as a real client does, so that the address is verified;
the defences' own tests, at the end, play forged addresses that never do.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from chat_sync import protocol as p
from chat_sync.udp_server_core import (AMPLIFICATION_FACTOR, MAX_DEFERRED, MAX_UNACKED, Acked,
                                 Action, Address, Cancel, Log, Report, Send, UdpChat)
from chat_sync.guard import TokenBucket
from chat_sync.udp_probes import RESTART_SILENCE_S
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

    def sid(self, addr: Address) -> str | None:
        """The session id of the peer at ``addr``, as its welcome told it."""
        peer = self.chat.peers.get(addr)
        return getattr(peer, "sid", None)        # None also before sessions had ids

    def send(self, addr: Address, **fields: Any) -> list[Action]:
        """A request from ``addr`` with the next id, unless ``fields`` has one, and the
        session id of the peer there (``sid=None``: without it)."""
        if "id" not in fields:
            self._ids[addr] += 1
            fields["id"] = self._ids[addr]
        fields.setdefault("sid", self.sid(addr))
        if fields["sid"] is None:
            del fields["sid"]
        return self.send_raw(addr, json.dumps(fields).encode("utf-8"))

    def join(self, addr: Address, user: str, room: str = "lobby") -> list[Action]:
        """A join, then (from a new address) the ack of its welcome; every action of both."""
        actions = self.send(addr, type="join", room=room, user=user)
        return actions + self.verify(addr, actions)

    def verify(self, addr: Address, actions: list[Action]) -> list[Action]:
        """Ack the welcome among ``actions`` if ``addr`` is not verified yet."""
        peer = self.chat.peers.get(addr)
        if peer is None or peer.verified or (addr, 1) not in keys(addr, actions):
            return []
        return self.ack(addr, 1)

    def ack(self, addr: Address, n: int, sid: str | None = "") -> list[Action]:
        """Ack ``n`` with the session id of the peer at ``addr`` (or ``sid``; None: none)."""
        sid = self.sid(addr) if sid == "" else sid
        if sid is None:
            return self.send_raw(addr, b'{"type":"ack","n":%d}' % n)
        return self.send_raw(addr, b'{"type":"ack","n":%d,"sid":"%s"}' % (n, sid.encode()))

    def ack_all(self, addr: Address, actions: list[Action]) -> list[Action]:
        """Ack every reliable datagram ``actions`` sent to ``addr`` that is still unacked."""
        result: list[Action] = []
        for key in keys(addr, actions):
            peer = self.chat.peers.get(addr)
            if peer is not None and key[1] in peer.unacked:
                result += self.ack(addr, key[1])
        return result


def to(addr: Address, actions: list[Action]) -> list[dict[str, Any]]:
    """The decoded datagrams ``actions`` send to ``addr``, in order, without ``sid``
    (every one but a tombstone's ack carries it; ``with_sid`` keeps it)."""
    return [{k: v for k, v in m.items() if k != "sid"} for m in with_sid(addr, actions)]


def with_sid(addr: Address, actions: list[Action]) -> list[dict[str, Any]]:
    return [p.decode(a.payload) for a in actions if isinstance(a, Send) and a.addr == addr]


def reliable(addr: Address, actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and a.addr == addr and a.key is not None]


def keys(addr: Address, actions: list[Action]) -> list[tuple[Address, int]]:
    return [a.key for a in reliable(addr, actions) if a.key is not None]


def sent_bytes(addr: Address, actions: list[Action]) -> int:
    return sum(len(a.payload) for a in actions if isinstance(a, Send) and a.addr == addr)


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
    net.join(ALICE, "alice")
    actions = net.send(ALICE, type="who", id=2)
    first = actions[0]
    assert isinstance(first, Send) and first.key is None
    assert p.decode(first.payload) == {"type": "ack", "id": 2, "sid": net.sid(ALICE)}
    again = net.send(ALICE, type="join", room="lobby", user="alice", id=1)
    assert to(ALICE, again) == [{"type": "ack", "id": 1}]
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
def test_a_broadcast_is_encoded_once_and_only_sid_and_n_differ() -> None:
    net = joined_pair()
    net.ack_all(CAROL, net.join(CAROL, "carol"))
    actions = net.send(ALICE, type="message", text="same bytes")
    copies = [a.payload for a in actions if isinstance(a, Send) and a.addr in (BOB, CAROL)]
    assert len(copies) == 2
    bodies = {copy[:copy.rindex(b',"sid":')] for copy in copies}
    assert len(bodies) == 1


@pytest.mark.timeout(10)
def test_acks_of_n_cancel_retransmission_once() -> None:
    net = Net()
    actions = net.join(ALICE, "alice")
    assert keys(ALICE, actions) == [(ALICE, 1), (ALICE, 2)]     # welcome, own join notice
    assert Acked((ALICE, 1)) in actions                         # the welcome, acked by join()
    assert net.ack(ALICE, 2) == [Acked((ALICE, 2))]
    assert net.ack(ALICE, 2) == []                              # a duplicate ack
    assert net.ack(ALICE, 99) == [Report(ALICE, 20, "ignored an ack for n=99: never sent "
                                                    "to it (n=1..2 were)")]
    assert net.send_raw(ALICE, b'{"type":"ack","n":"1"}') == []
    assert (net.chat.dropped["bad_ack"], net.chat.dropped["duplicate_ack"],
            net.chat.dropped["unknown_ack"]) == (1, 1, 1)
    assert net.chat.peers[ALICE].unacked == set()


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
    sid = b'"sid":"%s",' % str(net.sid(ALICE)).encode()
    actions = net.send_raw(ALICE, datagram.replace(b'"id":9', sid + b'"id":9'))
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
    net = joined_pair(max_datagram_bytes=600)
    big = json.dumps({"type": "message", "text": "x" * 700, "id": 9}).encode()
    [error] = of_type("error", to(ALICE, net.send_raw(ALICE, big)))
    assert error["code"] == "datagram_too_large"
    assert net.send_raw(STRANGER, big) == []
    assert net.chat.dropped["datagram_too_large"] == 1


@pytest.mark.timeout(10)
def test_a_message_whose_delivery_would_not_fit_is_refused_with_its_id() -> None:
    net = joined_pair(max_datagram_bytes=600)
    seq = net.chat.core.seq
    # The request itself fits; the broadcast adds room, user, seq, ts and n.
    text = "y" * 530
    assert len(json.dumps({"type": "message", "text": text, "id": 5})) < 600
    actions = net.send(ALICE, type="message", text=text, id=5)
    [error] = of_type("error", to(ALICE, actions))
    assert error == {"type": "error", "code": "datagram_too_large", "field": "text", "id": 5,
                     "text": error["text"], "n": error["n"]}
    assert to(BOB, actions) == [] and net.chat.core.seq == seq
    whisper = net.send(ALICE, type="whisper", to="bob", text=text)
    assert of_type("error", to(ALICE, whisper))[0]["code"] == "datagram_too_large"
    fits = net.send(ALICE, type="message", text="y" * 400)
    for action in fits:
        if isinstance(action, Send):
            assert len(action.payload) <= 600
    assert of_type("message", to(BOB, fits))


@pytest.mark.timeout(10)
def test_long_who_and_rooms_lists_are_cut_and_say_how_many_more() -> None:
    users = [(("10.0.0.1", 1000 + i), f"user{i:02d}") for i in range(80)]
    together, apart = Net(max_datagram_bytes=600), Net(max_datagram_bytes=600)
    for addr, user in users:
        together.join(addr, user)
        apart.join(addr, user, room=f"room{user}")       # 40 rooms of one
    addr = users[0][0]
    who_reply = together.send(addr, type="who")
    [who] = of_type("who", to(addr, who_reply))
    assert who["more"] > 0 and len(who["users"]) + who["more"] == 80
    assert who["users"] == [user for _, user in users[:len(who["users"])]]
    rooms_reply = apart.send(addr, type="rooms")
    [rooms] = of_type("rooms", to(addr, rooms_reply))
    assert rooms["more"] > 0 and len(rooms["rooms"]) + rooms["more"] == 80
    for action in who_reply + rooms_reply:
        assert isinstance(action, Send) and len(action.payload) <= 600
    net2 = joined_pair(max_datagram_bytes=600)
    [short] = of_type("who", to(ALICE, net2.send(ALICE, type="who")))
    assert "more" not in short and short["users"] == ["alice", "bob"]


# -- Presence --------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_the_first_datagram_creates_presence_with_a_welcome_n1() -> None:
    net = Net()
    [welcome] = to(ALICE, net.send(ALICE, type="join", room="lobby", user="alice"))
    assert welcome["type"] == "welcome" and welcome["n"] == 1 and "limits" not in welcome
    assert ALICE in net.chat.peers and not net.chat.peers[ALICE].verified
    # A request too small to pay for the welcome (3 x 26 bytes < 103) gets nothing,
    # not even its ack, so the client sends it again, and the copy pays.
    rooms = json.dumps({"type": "rooms", "id": 1}).encode()
    assert net.send_raw(BOB, rooms) == []
    [welcome] = to(BOB, net.send_raw(BOB, rooms))
    assert welcome["type"] == "welcome" and welcome["n"] == 1
    messages = to(BOB, net.ack(BOB, 1))                     # verified: the request is applied
    assert messages[0] == {"type": "ack", "id": 1}
    assert messages[1]["type"] == "rooms" and messages[1]["n"] == 2


@pytest.mark.timeout(10)
def test_with_anti_amplification_off_every_address_is_answered_at_once() -> None:
    net = Net(anti_amplification=False)
    messages = to(ALICE, net.send(ALICE, type="rooms"))
    assert messages[0] == {"type": "ack", "id": 1}
    assert messages[1]["type"] == "welcome" and messages[1]["n"] == 1
    assert messages[2]["type"] == "rooms" and messages[2]["n"] == 2
    assert net.chat.peers[ALICE].verified and not net.chat.unverified


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
    net.ack(ALICE, n)
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
    assert Acked((ALICE, 1)) in back


@pytest.mark.timeout(10)
def test_leave_ends_the_session_and_the_address_is_forgotten() -> None:
    net = joined_pair()
    actions = net.send(ALICE, type="leave")
    assert to(ALICE, actions) == [{"type": "ack", "id": 2}]     # nothing reliable to alice
    assert [(m["event"], m["user"]) for m in to(BOB, actions)] == [("leave", "alice")]
    assert ALICE not in net.chat.peers and len(net.chat.core.members) == 1
    # Its ack was lost: the retransmitted leave is acked from the ended session's
    # tombstone, with no new session for it.
    again = net.send(ALICE, type="leave", id=2)
    assert to(ALICE, again) == [{"type": "ack", "id": 2}]
    assert [a for a in again if isinstance(a, Cancel)] == []
    assert ALICE not in net.chat.peers and to(BOB, again) == []
    assert net.chat.amplification["discarded"] == 0


@pytest.mark.timeout(10)
def test_leave_outside_a_room_also_ends_the_session() -> None:
    net = Net()
    net.ack_all(ALICE, net.join(ALICE, "alice"))
    [ping] = of_type("ping", to(ALICE, net.join(BOB, "ALICE")))   # alice is probed...
    refused = net.ack(ALICE, ping["n"])                 # ... and answers: no room for bob
    assert of_type("error", to(BOB, refused))[0]["code"] == "name_taken"
    actions = net.send(BOB, type="leave")
    assert to(BOB, actions) == [{"type": "ack", "id": 2}]
    assert BOB not in net.chat.peers and to(ALICE, actions) == []
    cancelled = {a.key for a in actions if isinstance(a, Cancel)}
    assert cancelled == {(BOB, 2)}                  # the error; join() acked the welcome


@pytest.mark.timeout(10)
def test_a_peer_that_never_acks_is_dropped_at_max_unacked() -> None:
    net = joined_pair()
    net.ack_all(CAROL, net.join(CAROL, "carol"))
    deaf = len(net.chat.peers[ALICE].unacked)
    left: list[dict[str, Any]] = []
    for i in range(MAX_UNACKED - deaf + 1):
        net.now += 1 / 50                           # the default rate limit, 50 a second
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


# -- Defences: anti-amplification ------------------------------------------------------------

FORGED: Address = ("192.0.2.66", 5353)       # a victim's address, forged by someone else
JOIN = json.dumps({"type": "join", "room": "lobby", "user": "mallory", "id": 1}).encode()


def chatty_pair(messages: int) -> Net:
    """alice and bob in lobby, verified, after ``messages`` chat messages (all acked)."""
    net = joined_pair()
    for i in range(messages):
        net.now += 0.1
        actions = net.send(ALICE, type="message", text=f"history {i}")
        net.ack_all(ALICE, actions)
        net.ack_all(BOB, actions)
    return net


@pytest.mark.timeout(10)
def test_a_forged_join_that_is_never_acked_gets_at_most_three_times_its_bytes() -> None:
    net = chatty_pair(20)
    before = net.chat.amplification.copy()          # alice's and bob's handshakes
    received = sent = 0
    everything: list[Action] = []
    for copy in range(4):           # the forger sends the join again now and then
        received += len(JOIN)
        actions = net.send_raw(FORGED, JOIN)
        for key in keys(FORGED, actions):      # the timer's retransmissions, all refused
            payload = next(a.payload for a in reliable(FORGED, actions) if a.key == key)
            for _ in range(6):
                actions += net.chat.resend(key, payload)
        everything += actions
        sent += sent_bytes(FORGED, actions)
        assert sent <= AMPLIFICATION_FACTOR * received, (copy, sent, received)
        net.now += 0.5
    # What it got: the welcome (n=1) for each copy, nothing else. No ack, no history:
    # the join waits, unapplied, for an ack that never comes.
    assert [m["type"] for m in to(FORGED, everything)] == ["welcome"] * 4
    assert {m["n"] for m in to(FORGED, everything)} == {1}
    welcome = len(reliable(FORGED, everything)[0].payload)
    assert (len(JOIN), welcome) == (61, 129)        # 2.1x, and 3x would be 183
    assert (received, sent) == (4 * len(JOIN), 4 * welcome)
    peer = net.chat.peers[FORGED]
    assert (peer.bytes_in, peer.bytes_out) == (received, sent)
    assert net.chat.amplification - before == {"bytes_in": received, "bytes_out": sent,
                                               "skipped": 6}
    # The room never heard of mallory, and the name is still free.
    assert to(ALICE, everything) == [] and to(BOB, everything) == []
    assert "mallory" not in net.chat.core._names
    # Forgotten unverified_timeout_s (5 s) after its first datagram.
    assert net.chat.next_expiry() == pytest.approx(net.now - 4 * 0.5 + 5.0)
    net.now += 3.0
    [report] = [a for a in net.chat.expire(net.now, WALL) if isinstance(a, Report)]
    assert report == Report(FORGED, 20, "forgotten (unverified_timeout): never acked; "
                                        "received 244 bytes, sent 516, 0 datagrams never sent")
    assert FORGED not in net.chat.peers and net.chat.dropped["unverified_timeout"] == 1


@pytest.mark.timeout(10)
def test_once_the_welcome_is_acked_the_history_flows_in_n_order() -> None:
    net = chatty_pair(20)
    [welcome] = to(CAROL, net.send(CAROL, type="join", room="lobby", user="carol"))
    assert welcome["type"] == "welcome"
    actions = net.ack(CAROL, 1)
    messages = to(CAROL, actions)
    assert messages[0] == {"type": "ack", "id": 1}
    history = [m for m in messages if m.get("history")]
    assert [m["text"] for m in history] == [f"history {i}" for i in range(20)]
    assert [m["n"] for m in messages[1:]] == list(range(2, 23))      # 20 + the join notice
    assert messages[-1]["event"] == "join" and messages[-1]["id"] == 1
    assert sent_bytes(CAROL, actions) > AMPLIFICATION_FACTOR * len(JOIN)   # no limit now
    [notice] = to(ALICE, actions)                       # only now does the room hear of carol
    assert notice["event"] == "join" and notice["user"] == "carol"


@pytest.mark.timeout(10)
def test_held_datagrams_wait_for_the_budget_and_go_in_n_order() -> None:
    net = Net()
    ping = b'{"type":"ping","id":1}'                     # 22 bytes: 66 of budget
    actions = net.send_raw(FORGED, ping)
    assert to(FORGED, actions) == []                     # the ping waits, unacked
    peer = net.chat.peers[FORGED]
    assert [(send.key, len(send.payload)) for send in peer.held] == [
        ((FORGED, 1), 128)]                              # the welcome waits
    assert net.chat.amplification["held"] == 1 and peer.bytes_out == 0
    # An ack of a datagram not sent yet proves nothing; its 20 bytes count, though:
    # 3 x 42 leaves 126, not room for the welcome (128); garbage (30 bytes) makes 216.
    actions = net.ack(FORGED, 1, sid=None)
    assert actions == [Report(FORGED, 20, "ignored an ack for n=1: never sent to it "
                                          "(none was)")]
    assert not peer.verified and net.chat.dropped["unknown_ack"] == 1
    actions = net.send_raw(FORGED, b" " * 30)
    assert [m["type"] for m in to(FORGED, actions)] == ["welcome"]
    assert [send.key for send in peer.held] == [(FORGED, 2)]    # the error about it waits
    blind = net.ack(FORGED, 1, sid=None)                 # no session id: verifies nothing
    assert not peer.verified and net.chat.dropped["bad_sid"] == 1
    assert [(m["type"], m["n"]) for m in to(FORGED, blind)] == [("error", 2)]  # its 60 bytes
    verified = net.ack(FORGED, 1, sid=peer.sid)          # an n it was sent, with its sid
    assert [(m["type"], m.get("n")) for m in to(FORGED, verified)] == [
        ("ack", None), ("pong", 3)]                      # then the ping, applied
    assert peer.verified and not peer.held and FORGED not in net.chat.unverified


@pytest.mark.timeout(10)
def test_a_retransmitted_request_pays_for_a_welcome_too_big_for_the_first() -> None:
    net = Net()
    who = b'{"type":"who","id":5}'                    # 21 bytes: a client the server forgot
    # The welcome is 128 bytes. Copy 1: 63 of budget, nothing, not even the ack.
    # Copy 2: 126, still nothing. Copy 3: 189, the welcome. Copy 4: 252 - 128,
    # too little for a second welcome (the first may have been lost).
    answers = [[m["type"] for m in to(ALICE, net.send_raw(ALICE, who))] for _ in range(4)]
    assert answers == [[], [], ["welcome"], []]
    messages = to(ALICE, net.ack(ALICE, 1))
    assert messages == [{"type": "ack", "id": 5},
                        {"type": "error", "code": "not_joined", "text": messages[1]["text"],
                         "id": 5, "n": 2}]


@pytest.mark.timeout(10)
def test_an_unverified_address_has_at_most_max_deferred_requests_waiting() -> None:
    net = Net()
    for rid in range(1, MAX_DEFERRED + 5):
        net.send_raw(FORGED, json.dumps({"type": "who", "id": rid}).encode())
    peer = net.chat.peers[FORGED]
    assert [rid for rid, _ in peer.deferred] == list(range(1, MAX_DEFERRED + 1))
    assert net.chat.dropped["deferred_full"] == 4
    # A dropped one was not marked seen: once verified, sent again with the session
    # id the welcome gave, it is applied (without it, it might be forged: bad_sid).
    applied = net.ack(FORGED, 1)
    assert [m["id"] for m in of_type("ack", to(FORGED, applied))] == list(
        range(1, MAX_DEFERRED + 1))
    late = net.send_raw(FORGED, json.dumps({"type": "who", "id": MAX_DEFERRED + 1}).encode())
    assert late == [] and net.chat.dropped["bad_sid"] == 1
    late = net.send(FORGED, type="who", id=MAX_DEFERRED + 1)
    assert [m["type"] for m in to(FORGED, late)] == ["ack", "error"]


@pytest.mark.timeout(10)
def test_server_full_is_never_more_than_three_times_the_request() -> None:
    net = Net(max_clients=1)
    net.join(ALICE, "alice")
    assert to(BOB, net.send_raw(BOB, b'{"type":"ping","id":1}')) == []   # 22 x 3 < 73
    [full] = to(BOB, net.join(BOB, "bob"))
    assert full["code"] == "server_full"
    assert net.chat.dropped["server_full"] == 2


# -- Defences: acks that match nothing -----------------------------------------------------

@pytest.mark.timeout(10)
def test_an_ack_for_an_n_never_sent_or_for_another_address_changes_nothing() -> None:
    net = joined_pair()
    for _ in range(3):
        net.send(ALICE, type="who")                   # replies only alice gets, unacked
    alice, bob = net.chat.peers[ALICE], net.chat.peers[BOB]
    before = (set(alice.unacked), set(bob.unacked), alice.last_heard, bob.last_heard)
    assert max(alice.unacked) >= bob.next_n           # an n alice has and bob was never sent
    net.now += 1.0
    reports = []
    for n in (max(alice.unacked), bob.next_n + 5, 0, -1, 2**60):
        reports += net.ack(BOB, n)
    assert reports == [Report(BOB, 20, f"ignored an ack for n={max(alice.unacked)}: never "
                                       f"sent to it (n=1..{bob.next_n - 1} were)")]
    assert (alice.unacked, bob.unacked, alice.last_heard, bob.last_heard) == before
    assert net.chat.dropped["unknown_ack"] == 5
    reports = [a for a in net.ack(BOB, 99) if isinstance(a, Report)]
    assert reports == []                              # reported at most once a second
    net.now += 1.0
    assert [a.addr for a in net.ack(BOB, 99) if isinstance(a, Report)] == [BOB]


# -- Defences: rate limit -------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_over_the_rate_limit_datagrams_are_dropped_and_a_peer_told_once_a_second() -> None:
    net = joined_pair(rate_limit_per_s=50.0, rate_burst=100)

    def pings(count: int) -> tuple[int, list[str], list[str]]:
        """``count`` pings from alice at once: (pongs, error codes, reports)."""
        pongs, errors, reports = 0, [], []
        for _ in range(count):
            actions = net.send(ALICE, type="ping")
            pongs += len(of_type("pong", to(ALICE, actions)))
            errors += [m["code"] for m in of_type("error", to(ALICE, actions))]
            reports += [a.text for a in actions if isinstance(a, Report)]
            acked = net.ack_all(ALICE, actions)     # an ack that retires a datagram is free
            assert len(acked) == len(reliable(ALICE, actions))
        return pongs, errors, reports

    # The bucket holds 100; the join took one. No ack for the dropped ones either.
    assert pings(150) == (99, ["rate_limited"], [
        "rate limited: 1 datagrams dropped (over 50/s, burst 100)"])
    assert net.chat.dropped["rate_limited"] == 51
    net.now += 0.5                                   # 25 tokens back; told 0.5 s ago
    assert pings(30) == (25, [], [])
    net.now += 0.5                                   # a second since alice was told
    assert pings(30) == (25, ["rate_limited"], [
        "rate limited: 56 datagrams dropped (over 50/s, burst 100)"])
    assert net.chat.dropped["rate_limited"] == 61
    assert of_type("pong", to(BOB, net.send(BOB, type="ping")))   # bob has his own bucket


@pytest.mark.timeout(10)
def test_a_flood_from_an_unverified_address_is_dropped_without_a_word() -> None:
    net = Net()
    sent: list[Action] = []
    for rid in range(1, 301):
        sent += net.send_raw(FORGED, json.dumps({"type": "ping", "id": rid}).encode())
    assert of_type("ack", to(FORGED, sent)) == []              # nothing applies unverified
    assert not of_type("error", to(FORGED, sent))              # never told: not verified
    assert net.chat.dropped["rate_limited"] == 200
    assert [a.text for a in sent if isinstance(a, Report)] == [
        f"{MAX_DEFERRED} requests already wait for verification; dropped one",
        "rate limited: 1 datagrams dropped (over 50/s, burst 100)"]
    assert sent_bytes(FORGED, sent) <= AMPLIFICATION_FACTOR * net.chat.peers[FORGED].bytes_in


@pytest.mark.timeout(10)
def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False               # half a token
    assert bucket.take(0.1) is True                 # one
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]   # burst: 3
    assert bucket.take(99.0) is False               # a clock that steps back earns nothing
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=3, now=0.0)


@pytest.mark.timeout(10)
def test_the_rate_limit_can_be_turned_off() -> None:
    net = joined_pair(rate_limit_per_s=0.0)
    for _ in range(500):
        actions = net.send(ALICE, type="ping")
        assert of_type("pong", to(ALICE, actions))
        net.ack_all(ALICE, actions)
    assert net.chat.dropped["rate_limited"] == 0


# -- Defences: bounded state before verification ---------------------------------------------

@pytest.mark.timeout(10)
def test_unverified_addresses_count_toward_max_clients_and_give_way_to_new_ones() -> None:
    net = Net(max_clients=4)
    net.join(ALICE, "alice")
    net.join(BOB, "bob")
    forged = [("198.51.100.7", port) for port in range(1000, 1100)]
    for addr in forged:                               # 100 forged joins, never acked
        net.send_raw(addr, JOIN)
        assert len(net.chat.peers) <= 4
    assert list(net.chat.unverified) == forged[-2:]   # the newest two hold the free places
    assert net.chat.dropped["unverified_evicted"] == 98
    assert ALICE in net.chat.peers and BOB in net.chat.peers     # never evicted
    net.join(CAROL, "carol")                          # a real client still gets in
    assert net.chat.peers[CAROL].verified and len(net.chat.peers) == 4
    net.join(STRANGER, "dave")
    assert not net.chat.unverified and len(net.chat.peers) == 4
    [full] = to(("203.0.113.1", 1), net.send_raw(("203.0.113.1", 1), JOIN))
    assert full["code"] == "server_full"             # four verified: now it is full


@pytest.mark.timeout(10)
def test_an_unverified_address_is_forgotten_after_unverified_timeout_s() -> None:
    net = Net(unverified_timeout_s=2.0, client_timeout_s=60.0)
    net.send_raw(FORGED, b'{"type":"ping","id":1}')
    for _ in range(10):                               # talking does not keep it
        net.now += 0.19
        net.send_raw(FORGED, b" ")
    assert net.chat.next_expiry() == pytest.approx(100.0 + 2.0)
    assert net.chat.expire(101.99, WALL) == []
    actions = net.chat.expire(102.0, WALL)
    assert FORGED not in net.chat.peers and not net.chat.unverified
    [report] = [a for a in actions if isinstance(a, Report)]
    assert "never acked" in report.text and report.addr == FORGED
    held = int(report.text.split(", ")[-1].split()[0])
    assert net.chat.amplification["discarded"] == held == 11   # welcome, 10 errors
    assert not [a for a in actions if isinstance(a, Cancel)]   # they never reached the timer


# -- Issue 8: ids outside the window, requests in id order ---------------------------------

@pytest.mark.timeout(10)
def test_an_id_far_beyond_the_window_is_refused_and_moves_nothing() -> None:
    net = joined_pair()
    forged = net.send(ALICE, type="message", text="forged", id=2**53 - 1)
    assert of_type("message", to(BOB, forged)) == []
    [ack, refusal] = to(ALICE, forged)
    assert ack == {"type": "ack", "id": 2**53 - 1}
    assert (refusal["code"], refusal["id"]) == ("id_out_of_window", 2**53 - 1)
    real = net.send(ALICE, type="message", text="real")       # alice's next id: 2
    assert [m["text"] for m in of_type("message", to(BOB, real))] == ["real"]
    assert net.chat.dropped["id_out_of_window"] == 1


@pytest.mark.timeout(10)
def test_pipelined_requests_from_a_new_address_apply_in_id_order_ping_and_leave_too() -> None:
    net = Net()
    net.join(BOB, "bob")
    sent: list[Action] = []
    for fields in ({"type": "join", "room": "lobby", "user": "alice"},
                   {"type": "message", "text": "hi"}, {"type": "ping"},
                   {"type": "rooms"}, {"type": "who"}, {"type": "leave"}):
        sent += net.send(ALICE, **fields)
    assert of_type("pong", to(ALICE, sent)) == []          # nothing applied before verified
    after = net.ack(ALICE, 1)
    assert [m["id"] for m in of_type("ack", to(ALICE, after))] == [1, 2, 3, 4, 5, 6]
    heard = [(m.get("event"), m.get("text")) for m in to(BOB, sent + after)
             if m["type"] in ("system", "message")]
    assert heard == [("join", "alice joined"), (None, "hi"), ("leave", "alice left")]
    assert ALICE not in net.chat.peers
    again = net.send(ALICE, type="message", text="hi", id=2)   # a late retransmission
    assert to(ALICE, again) == [{"type": "ack", "id": 2}] and to(BOB, again) == []
    assert ALICE not in net.chat.peers                          # acked without a session


@pytest.mark.timeout(10)
def test_a_blind_ack_without_the_session_id_verifies_nothing() -> None:
    net = chatty_pair(20)
    sent: list[Action] = []
    for _ in range(3):                        # a forged join, and blind acks of n=1
        sent += net.send_raw(FORGED, b'{"type":"join","room":"lobby","user":"mallory","id":1}')
        sent += net.send_raw(FORGED, b'{"type":"ack","n":1}')
    assert not net.chat.peers[FORGED].verified
    assert of_type("message", to(FORGED, sent)) == []           # no history for the victim
    assert to(ALICE, sent) == [] and "mallory" not in net.chat.core._names
    assert net.chat.dropped["bad_sid"] >= 1


@pytest.mark.timeout(10)
def test_a_session_follows_its_id_to_a_new_address() -> None:
    net = joined_pair()
    net.send(BOB, type="message", text="for alice, unacked")
    moved: Address = ("127.0.0.1", 41001)                  # alice's NAT mapping changed
    actions = net.send_raw(moved, json.dumps({"type": "message", "text": "still me",
                                              "id": 2, "sid": net.sid(ALICE)}).encode())
    assert [m["text"] for m in of_type("message", to(BOB, actions))] == ["still me"]
    assert moved in net.chat.peers and ALICE not in net.chat.peers
    resent = [m.get("text") for m in to(moved, actions) if "n" in m]
    assert resent[-2:] == ["for alice, unacked", "still me"]    # in flight: sent again there
    cancelled = {a.key for a in actions if isinstance(a, Cancel)}
    assert (ALICE, 3) in cancelled and all(key[0] == ALICE for key in cancelled)
    forged = net.send_raw(ALICE, b'{"type":"message","text":"forged","id":3}')
    assert to(BOB, forged) == []                             # the old address is nobody now


# == Issue 8 item 6: a restarted client gets its name back; a live one keeps it ==========

RESTARTED: Address = ("127.0.0.1", 41002)      # alice's client again: new process, new port


def probed(net: Net) -> tuple[list[Action], dict[str, Any]]:
    """Alice's client restarts: a new address joins as alice. Its actions, and the ping
    the server sends the old session to ask whether it is still there."""
    actions = net.join(RESTARTED, "alice")
    [ping] = with_sid(ALICE, actions)
    return actions, ping


@pytest.mark.timeout(10)
def test_a_join_for_a_held_name_probes_the_holder_and_waits_unacked() -> None:
    net = joined_pair()
    actions, ping = probed(net)
    assert ping == {"type": "ping", "sid": net.sid(ALICE), "n": ping["n"]}
    assert (ALICE, ping["n"]) in keys(ALICE, actions)              # reliable: retransmitted
    assert of_type("ack", to(RESTARTED, actions)) == []            # the join waits, unacked
    assert to(BOB, actions) == []
    again = net.send(RESTARTED, type="join", room="lobby", user="alice", id=1)
    assert again == []                                             # still waiting
    assert net.chat.next_expiry() == pytest.approx(net.now + 2.0)  # the probe's budget


@pytest.mark.timeout(10)
def test_a_silent_holder_is_dropped_after_the_probe_and_the_join_applies() -> None:
    net = joined_pair()
    actions, ping = probed(net)
    net.now += 1.9
    assert net.chat.expire(net.now, WALL) == []
    net.now += 0.1
    settled = net.chat.expire(net.now, WALL)
    room = [(m["event"], m["user"]) for m in of_type("system", to(BOB, settled))]
    assert room == [("leave", "alice"), ("join", "alice")]        # one leave, one join
    back = to(RESTARTED, settled)
    assert back[0] == {"type": "ack", "id": 1}
    assert (back[-1]["event"], back[-1]["user"], back[-1]["id"]) == ("join", "alice", 1)
    assert [m.get("history") for m in back[1:-1]] == [True] * 3    # the room's history
    assert ALICE not in net.chat.peers and RESTARTED in net.chat.peers
    assert Cancel((ALICE, ping["n"])) in settled                  # no more pings to it
    assert net.chat.dropped["probe_unanswered"] == 1


@pytest.mark.timeout(10)
def test_a_holder_that_acks_the_probe_keeps_its_name() -> None:
    net = joined_pair()
    _, ping = probed(net)
    answered = net.ack(ALICE, ping["n"])
    assert to(RESTARTED, answered)[0] == {"type": "ack", "id": 1}
    assert of_type("error", to(RESTARTED, answered))[0]["code"] == "name_taken"
    assert to(BOB, answered) == [] and ALICE in net.chat.peers
    net.now += 5.0
    assert to(BOB, net.chat.expire(net.now, WALL)) == []           # the probe is over
    assert net.chat.dropped["probe_unanswered"] == 0


@pytest.mark.timeout(10)
def test_any_datagram_of_the_holder_with_its_session_id_answers_the_probe() -> None:
    net = joined_pair()
    probed(net)
    answered = net.send(ALICE, type="ping")                        # its keepalive, say
    assert of_type("error", to(RESTARTED, answered))[0]["code"] == "name_taken"
    forged = joined_pair()
    probed(forged)
    assert forged.send(ALICE, type="ping", sid=None) == []         # no sid: proves nothing
    forged.now += 2.0
    room = of_type("system", to(BOB, forged.chat.expire(forged.now, WALL)))
    assert [(m["event"], m["user"]) for m in room] == [("leave", "alice"), ("join", "alice")]


@pytest.mark.timeout(10)
def test_requests_behind_a_waiting_join_wait_too_and_apply_in_id_order() -> None:
    net = joined_pair()
    probed(net)
    assert net.send(RESTARTED, type="message", text="back") == []  # id 2: waits, unacked
    net.now += 2.0
    settled = net.chat.expire(net.now, WALL)
    assert [m["id"] for m in of_type("ack", to(RESTARTED, settled))] == [1, 2]
    broadcast = [m.get("text") for m in to(BOB, settled)]
    assert broadcast == ["alice left", "alice joined", "back"]


@pytest.mark.timeout(10)
def test_a_holder_that_leaves_during_the_probe_frees_the_name_at_once() -> None:
    net = joined_pair()
    probed(net)
    actions = net.send(ALICE, type="leave")
    assert of_type("ack", to(RESTARTED, actions)) == [{"type": "ack", "id": 1}]
    assert net.chat.core.user_named("alice") == "alice" and not net.chat.probes.out


# A client restarted on the same address and port: its first join has no session id.

def first_join_again(net: Net, addr: Address = ALICE) -> list[Action]:
    return net.send(addr, type="join", room="lobby", user="alice", id=1, sid=None)


@pytest.mark.timeout(10)
def test_a_first_join_without_a_session_id_soon_after_the_session_spoke_is_acked_again() -> None:
    net = joined_pair()
    net.now += RESTART_SILENCE_S - 0.1
    again = first_join_again(net)
    assert with_sid(ALICE, again) == [{"type": "ack", "id": 1, "sid": net.sid(ALICE)}]
    assert not net.chat.probes.out                             # a late copy, most likely


@pytest.mark.timeout(10)
def test_a_restart_on_the_same_address_probes_the_silent_session_then_opens_a_new_one() -> None:
    net = joined_pair()
    old = net.sid(ALICE)
    net.now += RESTART_SILENCE_S
    actions = first_join_again(net)
    [ping] = with_sid(ALICE, actions)                          # to the old session, unacked
    assert ping == {"type": "ping", "sid": old, "n": ping["n"]}
    assert first_join_again(net) == []                         # one probe out at a time
    assert net.chat.dropped["bad_sid"] == 2                    # both copies: not applied
    net.now += 2.0
    settled = net.chat.expire(net.now, WALL)
    assert [(m["event"], m["user"]) for m in of_type("system", to(BOB, settled))] == [
        ("leave", "alice")]
    assert ALICE not in net.chat.peers and net.chat.dropped["probe_unanswered"] == 1
    fresh = net.join(ALICE, "alice")                           # its next copy: a new session
    welcome = of_type("welcome", with_sid(ALICE, fresh))[0]
    assert welcome["sid"] not in (None, old) and "forgot" not in welcome
    heard = [(m["event"], m["user"]) for m in of_type("system", to(BOB, fresh))]
    assert ("join", "alice") in heard


@pytest.mark.timeout(10)
def test_a_silent_session_that_answers_the_probe_stays_and_its_late_first_join_is_acked() -> None:
    net = joined_pair()
    net.now += RESTART_SILENCE_S
    [ping] = with_sid(ALICE, first_join_again(net))
    answered = net.ack(ALICE, ping["n"])
    assert with_sid(ALICE, answered) == [{"type": "ack", "id": 1, "sid": net.sid(ALICE)}]
    assert to(BOB, answered) == [] and net.chat.core.user_named("alice") == "alice"
    assert not net.chat.probes.out and net.chat.dropped["probe_unanswered"] == 0
    net.now += 1.0                                             # the answer ended the silence
    assert with_sid(ALICE, first_join_again(net)) == [
        {"type": "ack", "id": 1, "sid": net.sid(ALICE)}]


@pytest.mark.timeout(10)
def test_only_a_first_join_without_any_session_id_probes_a_silent_session() -> None:
    net = joined_pair()
    net.now += RESTART_SILENCE_S
    for fields in ({"type": "join", "room": "lobby", "user": "alice", "id": 2},
                   {"type": "ping", "id": 1},
                   {"type": "join", "room": "lobby", "user": "alice", "id": 1, "sid": "0" * 16}):
        assert not of_type("ping", to(ALICE, net.send(ALICE, **{"sid": None, **fields})))
    assert not net.chat.probes.out


@pytest.mark.timeout(10)
def test_a_request_without_the_session_id_from_a_verified_address_is_dropped() -> None:
    net = joined_pair()
    forged = net.send(ALICE, type="message", text="forged", sid=None)
    assert forged == [] and net.chat.dropped["bad_sid"] == 1
