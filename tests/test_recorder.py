"""The recording relay: pure tests of reading a record, then the relay on 127.0.0.1.

Servers here are real (``serve(port=0)``) or a bare listening socket the test
drives by hand when it needs a server that misbehaves on cue. Every socket has
a timeout; nothing sleeps to synchronise: the tests wait on the relay's record
with ``wait_for`` and a deadline.
"""
from __future__ import annotations

import itertools
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_for

from chat_sync import protocol
from chat_sync.recorder import (
    ConnEvent,
    EventKind,
    Line,
    Record,
    RecordingRelay,
    Segment,
    format_table,
    lines,
    table,
)
from chat_sync.record_log import Followed, RecordLog
from chat_sync.tcp_server import serve

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 7420)


def seg(t: float, conn: int, direction: str, data: bytes) -> Segment:
    return Segment(t, conn, direction, data, CLIENT, SERVER)


def kinds(records: list[Record], conn: int = 1) -> list[tuple[str, str | None]]:
    return [(r.kind.value, r.direction) for r in records
            if isinstance(r, ConnEvent) and r.conn == conn]


def has_event(kind: EventKind, conn: int = 1) -> Callable[[list[Record]], bool]:
    """A predicate for ``RecordingRelay.wait_for``: connection ``conn`` saw ``kind``."""
    def predicate(records: list[Record]) -> bool:
        return any(isinstance(r, ConnEvent) and r.kind is kind and r.conn == conn
                   for r in records)
    return predicate


class Peer:
    """A raw client socket with a line reader; every read has a timeout."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.reader = self.sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(protocol.encode(message))

    def receive(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line, "connection closed"
        return protocol.decode(line.rstrip(b"\n"))

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A bare server socket the test accepts on and drives by hand."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


# -- Reading a record, no sockets ----------------------------------------------------
@pytest.mark.timeout(10)
def test_lines_reframes_a_line_split_across_segments() -> None:
    data = protocol.encode({"type": "join", "room": "lobby", "user": "alice"})
    records = [seg(float(i), 1, "->", data[i:i + 1]) for i in range(len(data))]
    assert list(lines(records)) == [
        Line(float(len(data) - 1), 1, "->", {"type": "join", "room": "lobby", "user": "alice"})]


@pytest.mark.timeout(10)
def test_lines_keeps_connections_and_directions_apart() -> None:
    records: list[Record] = [
        seg(1.0, 1, "->", b'{"type":"pi'),
        seg(2.0, 2, "->", b'{"type":"who"}\n{"type":'),
        seg(3.0, 1, "<-", b'{"type":"pong"}\r\n\n'),
        ConnEvent(3.5, 1, EventKind.FIN, CLIENT, SERVER, "<-"),
        seg(4.0, 1, "->", b'ng"}\n'),
        seg(5.0, 2, "->", b'"rooms"}\n{"type":"unfinished'),
    ]
    assert list(lines(records)) == [
        Line(2.0, 2, "->", {"type": "who"}),
        Line(3.0, 1, "<-", {"type": "pong"}),
        Line(4.0, 1, "->", {"type": "ping"}),
        Line(5.0, 2, "->", {"type": "rooms"}),
    ]


@pytest.mark.timeout(10)
def test_lines_yields_a_bad_line_as_its_bytes() -> None:
    records = [seg(1.0, 1, "->", b'not json\n{"type":"ping","x":NaN}\n\xff\n[1]\n')]
    assert [line.message for line in lines(records)] == [
        b"not json", b'{"type":"ping","x":NaN}', b"\xff", b"[1]"]


@pytest.mark.timeout(10)
def test_table_rows_and_text() -> None:
    chat = b'{"type":"message","text":"caf\xc3\xa9"}\n{"ty'
    records: list[Record] = [
        ConnEvent(10.0, 1, EventKind.OPEN, CLIENT, SERVER),
        seg(10.25, 1, "->", chat),
        seg(10.5, 1, "<-", b"\xff\r\n"),
        ConnEvent(11.0, 1, EventKind.CLOSE, CLIENT, SERVER, reason="closed by both sides"),
    ]
    rows = table(records)
    assert [(r.t, r.conn, r.direction, r.nbytes) for r in rows] == [
        (0.0, 1, "", 0), (0.25, 1, "->", len(chat)), (0.5, 1, "<-", 3),
        (1.0, 1, "", 0)]
    assert rows[0].text == "[open 127.0.0.1:40000 -> 127.0.0.1:7420]"
    assert rows[1].text == '{"type":"message","text":"café"}\\n{"ty'
    assert rows[2].text == "\\xff\\r\\n"
    assert rows[3].text == "[close: closed by both sides]"
    text = format_table(rows, width=20)
    assert text.splitlines()[0].split() == ["t", "(ms)", "conn", "dir", "bytes", "data"]
    assert "  250.000     1  ->       38  " in text
    assert '{"type":"message","…' in text
    assert len(text.splitlines()) == 5


@pytest.mark.timeout(10)
def test_records_are_validated() -> None:
    with pytest.raises(ValueError):
        seg(0.0, 1, ">", b"")
    with pytest.raises(ValueError):
        ConnEvent(0.0, 1, EventKind.FIN, CLIENT, SERVER, "<>")
    with pytest.raises(ValueError):
        RecordingRelay(SERVER, max_buffer_bytes=0)


# -- The relay in front of a real server -----------------------------------------------
@pytest.mark.timeout(20)
def test_relay_records_a_chat_both_ways_with_the_injected_clock() -> None:
    ticks = itertools.count(1000)
    with serve(port=0) as server, \
            RecordingRelay((server.host, server.port), clock=lambda: float(next(ticks))) as relay:
        alice = Peer(relay.address)
        try:
            assert alice.receive()["type"] == "welcome"
            alice.send({"type": "join", "room": "lobby", "user": "alice"})
            assert alice.receive()["event"] == "join"
            alice.send({"type": "message", "text": "hello", "id": 1})
            echo = alice.receive()
            assert echo["text"] == "hello"
            client_port = alice.sock.getsockname()[1]
        finally:
            alice.close()
        assert relay.wait_for(has_event(EventKind.CLOSE), timeout=5)
        records = relay.records

    times = [r.t for r in records]
    assert times == sorted(times) and times[0] >= 1000 and all(t == int(t) for t in times)
    assert kinds(records) == [("open", None), ("fin", "->"), ("fin", "<-"), ("close", None)]
    assert records[0].client == ("127.0.0.1", client_port)
    assert records[0].server == (server.host, server.port)
    got = [(line.direction, line.message["type"]) for line in lines(records)
           if isinstance(line.message, dict)]
    assert got == [("<-", "welcome"), ("->", "join"), ("<-", "system"),
                   ("->", "message"), ("<-", "message")]
    assert [line.message for line in lines(records)][-1] == echo
    up = b"".join(s.data for s in relay.segments if s.direction == "->")
    assert up == (protocol.encode({"type": "join", "room": "lobby", "user": "alice"})
                  + protocol.encode({"type": "message", "text": "hello", "id": 1}))
    assert relay.dropped == 0


@pytest.mark.timeout(20)
def test_a_partial_line_is_two_segments_and_one_line() -> None:
    with serve(port=0) as server, RecordingRelay((server.host, server.port)) as relay:
        peer = Peer(relay.address)
        try:
            peer.receive()
            peer.sock.sendall(b'{"type":"pi')
            assert relay.wait_for(lambda rs: any(isinstance(r, Segment) and r.data == b'{"type":"pi'
                                                 for r in rs))
            peer.sock.sendall(b'ng","id":7}\n')
            assert peer.receive() == {"type": "pong", "id": 7}
        finally:
            peer.close()
        up = [s.data for s in relay.segments if s.direction == "->"]
        assert up == [b'{"type":"pi', b'ng","id":7}\n']
        assert [line.message for line in relay.lines() if line.direction == "->"] == [
            {"type": "ping", "id": 7}]


@pytest.mark.timeout(20)
def test_two_clients_get_their_own_connections() -> None:
    with serve(port=0) as server, RecordingRelay((server.host, server.port)) as relay:
        alice, bob = Peer(relay.address), Peer(relay.address)
        client_ports = {1: alice.sock.getsockname()[1], 2: bob.sock.getsockname()[1]}
        try:
            for peer, name in ((alice, "alice"), (bob, "bob")):
                peer.receive()
                peer.send({"type": "join", "room": "lobby", "user": name})
                while peer.receive().get("user") != name:     # history first
                    pass
            assert alice.receive()["text"] == "bob joined"
            bob.send({"type": "whisper", "to": "alice", "text": "psst"})
            assert alice.receive()["text"] == "psst"
            assert bob.receive()["text"] == "psst"
        finally:
            alice.close()
            bob.close()
        assert relay.wait_for(lambda rs: has_event(EventKind.CLOSE, 1)(rs)
                              and has_event(EventKind.CLOSE, 2)(rs))
        whispers = [(line.conn, line.direction) for line in relay.lines()
                    if isinstance(line.message, dict) and line.message["type"] == "whisper"]
        assert whispers[0] == (2, "->")       # the two deliveries may be read in either order
        assert sorted(whispers[1:]) == [(1, "<-"), (2, "<-")]
        ports = {s.conn: s.client[1] for s in relay.segments}
        assert ports == client_ports


# -- The relay against a server the test drives ----------------------------------------
@pytest.mark.timeout(30)
def test_back_pressure_keeps_buffers_bounded_and_bytes_intact(listener: socket.socket) -> None:
    payload = bytes(range(256)) * 4096          # 1 MiB
    limit = 4096
    with RecordingRelay(listener.getsockname()[:2], max_buffer_bytes=limit) as relay:
        client = socket.create_connection(relay.address, timeout=5)
        upstream, _ = listener.accept()
        upstream.settimeout(5)
        sender = threading.Thread(target=upstream.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        try:
            while len(received) < len(payload):
                chunk = client.recv(1000)
                assert chunk
                received += chunk
        finally:
            sender.join(10)
            client.close()
            upstream.close()
        assert bytes(received) == payload
        down = [s for s in relay.segments if s.direction == "<-"]
        assert b"".join(s.data for s in down) == payload
        assert max(len(s.data) for s in down) <= limit


@pytest.mark.timeout(20)
def test_half_close_passes_through(listener: socket.socket) -> None:
    with RecordingRelay(listener.getsockname()[:2]) as relay:
        client = socket.create_connection(relay.address, timeout=5)
        upstream, _ = listener.accept()
        upstream.settimeout(5)
        try:
            client.sendall(b"last words\n")
            client.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := upstream.recv(100):
                got += chunk
            assert got == b"last words\n"             # ... and then EOF
            upstream.sendall(b"still talking\n")      # the other way is still open
            assert client.recv(100) == b"still talking\n"
            upstream.close()
            assert client.recv(100) == b""
        finally:
            client.close()
            upstream.close()
        assert relay.wait_for(has_event(EventKind.CLOSE))
        assert kinds(relay.records) == [("open", None), ("fin", "->"), ("fin", "<-"),
                                        ("close", None)]


@pytest.mark.timeout(20)
def test_a_server_reset_reaches_the_client(listener: socket.socket) -> None:
    with RecordingRelay(listener.getsockname()[:2]) as relay:
        client = socket.create_connection(relay.address, timeout=5)
        upstream, _ = listener.accept()
        try:
            upstream.sendall(b"bye\n")
            assert client.recv(100) == b"bye\n"
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            upstream.close()
            with pytest.raises(ConnectionResetError):
                client.recv(100)
        finally:
            client.close()
        assert relay.wait_for(has_event(EventKind.CLOSE))
        assert kinds(relay.records) == [("open", None), ("reset", "<-"), ("close", None)]


@pytest.mark.timeout(20)
def test_a_refused_server_resets_the_client() -> None:
    spare = socket.create_server(("127.0.0.1", 0))
    address = spare.getsockname()[:2]
    spare.close()                                  # nobody listens there now
    with RecordingRelay(address) as relay:
        client = socket.socket()
        client.settimeout(5)
        try:
            with pytest.raises(ConnectionResetError):
                # The reset may beat connect() back to this thread, or come after it.
                client.connect(relay.address)
                client.recv(100)
        finally:
            client.close()
        assert relay.wait_for(has_event(EventKind.CLOSE))
        events = relay.events
        assert [(e.kind.value, e.direction) for e in events] == [("reset", "<-"),
                                                                 ("close", None)]
        assert "connect to server failed" in events[0].reason


@pytest.mark.timeout(20)
def test_connections_beyond_the_limit_are_reset(listener: socket.socket) -> None:
    with RecordingRelay(listener.getsockname()[:2], max_connections=1) as relay:
        first = socket.create_connection(relay.address, timeout=5)
        upstream, _ = listener.accept()
        second = socket.socket()
        second.settimeout(5)
        try:
            with pytest.raises(ConnectionResetError):
                # The reset may beat connect() back to this thread, or come after it.
                second.connect(relay.address)
                second.recv(100)
            first.sendall(b"still here\n")
            assert upstream.recv(100) == b"still here\n"
        finally:
            for sock in (first, second, upstream):
                sock.close()
        assert relay.wait_for(has_event(EventKind.CLOSE, 2))
        assert [e.reason for e in relay.events if e.conn == 2][0].startswith("relay full")


@pytest.mark.timeout(20)
def test_stop_closes_open_connections_and_is_idempotent(listener: socket.socket) -> None:
    relay = RecordingRelay(listener.getsockname()[:2]).start()
    client = socket.create_connection(relay.address, timeout=5)
    upstream, _ = listener.accept()
    try:
        upstream.settimeout(5)
        assert relay.wait_for(has_event(EventKind.OPEN))
        relay.stop()
        assert client.recv(100) == b""
        assert upstream.recv(100) == b""
        relay.stop()
    finally:
        client.close()
        upstream.close()
    assert relay.events[-1].kind is EventKind.CLOSE
    assert relay.events[-1].reason == "relay stopped"
    with pytest.raises(RuntimeError):
        relay.start()
    RecordingRelay(listener.getsockname()[:2]).stop()     # never started: just closes


@pytest.mark.timeout(20)
def test_the_record_is_bounded_and_wait_for_can_time_out(listener: socket.socket) -> None:
    with RecordingRelay(listener.getsockname()[:2], max_records=3) as relay:
        client = socket.create_connection(relay.address, timeout=5)
        upstream, _ = listener.accept()
        upstream.settimeout(5)
        try:
            for i in range(5):
                line = f"line {i}\n".encode()
                client.sendall(line)
                got = b""
                while len(got) < len(line):
                    got += upstream.recv(100)
        finally:
            client.close()
            upstream.close()
        assert relay.wait_for(has_event(EventKind.CLOSE))
        assert len(relay.records) == 3
        assert relay.dropped >= 4
        assert relay.wait_for(lambda records: False, timeout=0.01) is False


# -- cut and resume: an outage on demand ----------------------------------------------------
@pytest.mark.timeout(20)
def test_cut_ends_every_connection_with_a_fin_and_holds_new_ones_until_resume(
        listener: socket.socket) -> None:
    with RecordingRelay(listener.getsockname()) as relay:
        before = socket.create_connection(relay.address, timeout=5)
        upstream, _ = listener.accept()
        upstream.settimeout(5)
        try:
            before.sendall(b"one\n")
            assert upstream.recv(100) == b"one\n"
            relay.cut()
            assert before.recv(100) == b"", "the client reads end of stream"
            assert upstream.recv(100) == b"", "so does the server"
            assert kinds(relay.records)[-1] == ("close", None)
            assert relay.events[-1].reason == "cut"

            held = socket.create_connection(relay.address, timeout=5)
            held.sendall(b"two\n")
            listener.settimeout(0.2)
            with pytest.raises(TimeoutError):
                listener.accept()                 # nothing reaches the server while cut
            relay.resume()
            listener.settimeout(5)
            later, _ = listener.accept()
            later.settimeout(5)
            assert later.recv(100) == b"two\n"    # held, not lost
            later.sendall(b"back\n")
            assert held.recv(100) == b"back\n"
            assert relay.wait_for(has_event(EventKind.OPEN, conn=2))
            held.close()
            later.close()
        finally:
            before.close()
            upstream.close()


@pytest.mark.timeout(20)
def test_clients_held_when_the_relay_stops_are_closed(listener: socket.socket) -> None:
    relay = RecordingRelay(listener.getsockname()).start()
    relay.cut()
    held = socket.create_connection(relay.address, timeout=5)
    try:
        wait_for(lambda: relay.held == 1, what="the relay holding the client")
        relay.stop()
        assert held.recv(100) == b""
        assert relay.held == 0 and relay.records == []
    finally:
        held.close()


@pytest.mark.timeout(20)
def test_cut_and_resume_before_start_or_after_stop_are_harmless(listener: socket.socket) -> None:
    relay = RecordingRelay(listener.getsockname())
    relay.cut()                      # not started: only the flag
    relay.resume()
    relay.start()
    relay.stop()
    relay.cut()                      # stopped: nothing to do, nothing raised
    assert relay.records == []


@pytest.mark.timeout(20)
def test_follow_tails_the_record_and_ends_when_the_relay_stops(listener: socket.socket) -> None:
    relay = RecordingRelay(listener.getsockname()).start()
    try:
        assert relay.follow(0, timeout=0.05).records == []
        client = socket.create_connection(relay.address, timeout=5)
        upstream, _ = listener.accept()
        first = relay.follow(0, timeout=5)
        assert [type(r) for r in first.records] == [ConnEvent] and first.next == 1
        client.sendall(b"hi\n")
        second = relay.follow(first.next, timeout=5)
        assert [r.data for r in second.records if isinstance(r, Segment)] == [b"hi\n"]
        client.close()
        upstream.close()
    finally:
        relay.stop()
    assert relay.log.closed
    rest = relay.follow(0, timeout=None)          # closed: returns at once
    assert rest.next == len(relay.records) and rest.dropped == 0


# -- The log itself -----------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_the_log_is_bounded_and_a_reader_left_behind_sees_the_gap() -> None:
    log: RecordLog[int] = RecordLog(max_records=3)
    for k in range(5):
        log.append(k)
    assert log.records == [2, 3, 4] and log.dropped == 2
    assert log.follow(0) == Followed([2, 3, 4], 5, 2)
    assert log.follow(3) == Followed([3, 4], 5, 0)
    assert log.follow(5, timeout=0.01) == Followed([], 5, 0)
    log.close()
    assert log.follow(5) == Followed([], 5, 0)       # closed: no wait
    with pytest.raises(ValueError):
        RecordLog(max_records=0)


@pytest.mark.timeout(10)
def test_the_log_is_bounded_in_bytes_too_and_keeps_the_newest_whatever_its_size() -> None:
    log: RecordLog[bytes] = RecordLog(max_records=100, max_bytes=10, size=len)
    for chunk in (b"aaaa", b"bbbb", b"cc", b"dddd"):
        log.append(chunk)
    assert log.records == [b"bbbb", b"cc", b"dddd"] and log.dropped == 1    # 10 bytes
    log.append(b"e" * 50)                 # bigger than the bound: kept alone
    assert log.records == [b"e" * 50]
