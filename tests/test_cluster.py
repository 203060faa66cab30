"""ClusterChat with no I/O: two replicas fed one in-memory log behave as one chat."""
from __future__ import annotations

import json
from typing import Any

import pytest

from chat_sync import protocol as p
from chat_sync.cluster import (SEQ_GAP_AFTER_RESET, Applied, BusDown, BusUp, ClusterChat, Entry,
                               Kind, ResetWanted, Unsent)
from chat_sync.rooms import Broadcast, ChatCore, Output, Reply, deliveries

pytestmark = pytest.mark.timeout(10)


class MemoryLog:
    """The bus as a list: every server appends, every server reads it all, in order."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.up = True


class MemoryBus:
    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self.read = 0
        self.offered: list[bytes] = []
        self.saved: list[tuple[bytes, str]] = []

    def publish(self, entry: Entry) -> bool:
        if not self.log.up:
            return False
        self.log.entries.append(entry)
        return True

    def offer_snapshot(self, snapshot: bytes) -> None:
        self.offered.append(snapshot)

    def save_snapshot(self, snapshot: bytes, position: str) -> None:
        self.saved.append((snapshot, position))


class Server:
    """One server of the cluster: its replica and what its local clients received."""

    def __init__(self, name: str, log: MemoryLog, epoch: str = "e1") -> None:
        self.bus = MemoryBus(log)
        self.chat = ClusterChat(ChatCore(epoch=epoch), name, self.bus)
        self.inbox: dict[int, list[dict[str, Any]]] = {}

    def pump(self) -> None:
        """Apply every log entry not yet applied here."""
        while self.bus.read < len(self.bus.log.entries):
            entry = self.bus.log.entries[self.bus.read]
            self.bus.read += 1
            self.deliver(self.chat.apply(Applied(f"{self.bus.read}-0", entry)))

    def deliver(self, outputs: list[Output]) -> None:
        for output in outputs:
            for conn, message in deliveries(output):
                assert isinstance(conn, int)
                self.inbox.setdefault(conn, []).append(message)

    def send(self, conn: int, **request: Any) -> None:
        self.deliver(self.chat.receive(conn, json.dumps(request).encode(), 1795600000.0))

    def connect(self, conn: int) -> None:
        self.deliver(self.chat.connect(conn))

    def types(self, conn: int) -> list[str]:
        return [m.get("event", m["type"]) for m in self.inbox.get(conn, [])]


def pump(*servers: Server) -> None:
    for server in servers:
        server.pump()


@pytest.fixture
def pair() -> tuple[Server, Server]:
    log = MemoryLog()
    return Server("a", log), Server("b", log)


def test_nothing_is_applied_before_it_comes_back_from_the_log(pair: tuple[Server, Server]) -> None:
    a, _ = pair
    a.connect(1)
    a.send(1, type="join", room="lobby", user="alice")
    assert a.inbox == {}                       # not yet: the log decides the order
    a.pump()
    assert a.types(1) == ["welcome", "join"]


def test_two_servers_are_one_room_with_one_seq(pair: tuple[Server, Server]) -> None:
    a, b = pair
    a.connect(1)
    b.connect(1)                               # the same local number on another server
    a.send(1, type="join", room="lobby", user="alice")
    b.send(1, type="join", room="lobby", user="bob")
    b.send(1, type="message", text="hi alice", id=7)
    pump(a, b)
    seen_by_alice = [m for m in a.inbox[1] if "room" in m]
    seen_by_bob = [m for m in b.inbox[1] if "room" in m]
    assert [m["seq"] for m in seen_by_alice] == [1, 2, 3]
    assert seen_by_alice[-1]["text"] == "hi alice" and "id" not in seen_by_alice[-1]
    assert seen_by_bob[-1]["id"] == 7          # the sender's copy carries its id
    assert a.chat.core.seq == b.chat.core.seq == 3


def test_a_name_is_unique_across_servers(pair: tuple[Server, Server]) -> None:
    a, b = pair
    a.connect(1)
    b.connect(1)
    a.send(1, type="join", room="lobby", user="alice")
    b.send(1, type="join", room="lobby", user="ALICE", id="j")
    pump(a, b)
    assert b.inbox[1][-1]["code"] == p.ErrorCode.NAME_TAKEN
    assert b.inbox[1][-1]["id"] == "j"
    assert a.types(1) == ["welcome", "join"]   # alice heard nothing of it


def test_whisper_and_who_see_the_other_server(pair: tuple[Server, Server]) -> None:
    a, b = pair
    a.connect(1)
    b.connect(2)
    a.send(1, type="join", room="lobby", user="alice")
    b.send(2, type="join", room="lobby", user="bob")
    b.send(2, type="whisper", to="alice", text="psst")
    b.send(2, type="who")
    pump(a, b)
    assert a.inbox[1][-1] == {"type": "whisper", "from": "bob", "to": "alice", "text": "psst",
                              "ts": 1795600000.0}
    assert b.inbox[2][-1] == {"type": "who", "room": "lobby", "users": ["alice", "bob"]}


def test_gone_disconnects_every_user_of_that_server_once(pair: tuple[Server, Server]) -> None:
    a, b = pair
    a.connect(1)
    b.connect(1)
    a.send(1, type="join", room="lobby", user="alice")
    b.send(1, type="join", room="lobby", user="bob")
    pump(a, b)
    a.bus.publish(Entry(Kind.GONE, "b", 0, 1795600001.0))
    a.bus.publish(Entry(Kind.GONE, "b", 0, 1795600002.0))   # two servers noticed it
    pump(a, b)
    leaves = [m for m in a.inbox[1] if m.get("event") == "leave"]
    assert [m["user"] for m in leaves] == ["bob"]
    a.connect(2)
    a.send(2, type="join", room="lobby", user="bob")         # the name is free again
    pump(a, b)
    assert a.types(2) == ["welcome", "join", "join", "leave", "join"]


def test_a_new_server_starts_from_a_snapshot(pair: tuple[Server, Server]) -> None:
    a, _ = pair
    a.connect(1)
    a.send(1, type="join", room="lobby", user="alice")
    a.send(1, type="message", text="one")
    a.pump()
    late = Server("c", a.bus.log)
    late.chat.restore(a.chat.snapshot())
    late.bus.read = len(a.bus.log.entries)     # the log after the snapshot's position
    late.connect(5)
    late.send(5, type="join", room="lobby", user="carol", since=1)
    late.send(5, type="join", room="dev", user="carol")
    pump(a, late)
    assert [m["text"] for m in late.inbox[5] if m.get("history")] == ["one"]
    assert late.chat.core.seq == a.chat.core.seq == 5
    assert late.chat.snapshot() == a.chat.snapshot().replace(b'"position":"3-0"',
                                                             b'"position":"6-0"')


def test_a_refused_publish_is_an_unavailable_error_with_the_id(pair: tuple[Server, Server]
                                                               ) -> None:
    a, _ = pair
    a.connect(1)
    a.pump()
    a.bus.log.up = False
    a.send(1, type="message", text="lost?", id=41)
    assert a.inbox[1][-1]["code"] == p.ErrorCode.UNAVAILABLE
    assert a.inbox[1][-1]["id"] == 41
    a.deliver(a.chat.apply(Unsent((Entry(Kind.LINE, "a", 1, 0.0, b'{"type":"ping","id":9}'),))))
    assert a.inbox[1][-1]["id"] == 9


def test_bus_down_and_up_are_told_and_a_lost_connect_is_sent_again(
        pair: tuple[Server, Server]) -> None:
    a, _ = pair
    a.bus.log.up = False
    a.connect(1)                               # the bus cannot take it
    a.deliver(a.chat.apply(BusDown("connection refused", 1700000000.5)))
    a.bus.log.up = True
    a.deliver(a.chat.apply(BusUp(1700000002.25)))
    a.pump()
    assert a.types(1)[:3] == ["error", "bus_down", "bus_up"]
    assert [m["ts"] for m in a.inbox[1][1:3]] == [1700000000.5, 1700000002.25]   # not 0.0
    assert a.types(1)[3] == "welcome"          # reconciled: its connect went again


def test_a_reset_starts_everyone_from_one_snapshot_with_a_seq_gap(
        pair: tuple[Server, Server]) -> None:
    a, b = pair
    a.connect(1)
    a.send(1, type="join", room="lobby", user="alice")
    pump(a, b)
    a.deliver(a.chat.apply(ResetWanted()))
    (offer,) = a.bus.offered
    a.bus.log.entries.clear()                  # Redis came back empty
    a.bus.read = b.bus.read = 0
    for server in (a, b):
        server.deliver(server.chat.apply(BusUp(1700000000.0, offer)))
    a.send(1, type="message", text="after")
    pump(a, b)
    assert a.inbox[1][-1]["seq"] == 1 + SEQ_GAP_AFTER_RESET + 1


def test_malformed_log_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        Entry.from_fields({b"k": b"x", b"s": b"a", b"c": b"1", b"t": b"0"})
    with pytest.raises(ValueError, match="malformed"):
        Entry.from_fields({b"k": b"l", b"s": b"a", b"c": b"one", b"t": b"0"})
    entry = Entry(Kind.LINE, "a", 3, 1.5, b"\xff not utf-8")
    assert Entry.from_fields({k.encode(): v for k, v in entry.fields().items()}) == entry


def test_shutdown_notice_goes_to_local_connections_only(pair: tuple[Server, Server]) -> None:
    a, b = pair
    a.connect(1)
    b.connect(1)
    pump(a, b)
    notice = a.chat.shutdown_notice(0.0)
    assert isinstance(notice, Broadcast) and notice.to == (1,)


def test_a_snapshot_holds_the_whole_core() -> None:
    """Every attribute of ChatCore survives snapshot and restore: a new one must be added."""
    core = ChatCore(history_size=3, max_rooms=2, epoch="e", resume=True)
    for number, (user, room) in enumerate([("alice", "lobby"), ("bob", "dev"),
                                           ("carol", "ops"), ("dave", "lobby")]):
        conn = ("a", number)
        core.connect(conn)
        core.receive(conn, json.dumps({"type": "join", "room": room, "user": user}).encode(),
                     1795600000.0)
    core.disconnect(("a", 1), 1795600001.0)             # dev empties, then is evicted
    copy = ChatCore(history_size=3, max_rooms=2, epoch="other", resume=True)
    copy.restore(json.loads(json.dumps(core.snapshot())), lambda c: (c[0], c[1]))
    assert vars(copy) == vars(core)


def test_a_resume_token_is_the_same_on_every_replica() -> None:
    """A client that vanished from server a reclaims its name on server b."""
    log = MemoryLog()
    a, b = Server("a", log), Server("b", log)
    for server in (a, b):
        server.chat.core.resume = True
    a.connect(1)
    a.send(1, type="join", room="lobby", user="alice")
    pump(a, b)
    token = a.inbox[1][0]["resume"]
    b.connect(1)
    b.send(1, type="join", room="lobby", user="alice", resume=token, id="r")
    pump(a, b)
    assert b.inbox[1][-1]["event"] == "join" and b.inbox[1][-1]["id"] == "r"
    assert a.chat.take_ghosts() == [1] and b.chat.take_ghosts() == []
    assert a.chat.core.snapshot() == b.chat.core.snapshot()
