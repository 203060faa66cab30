"""The TCP server end to end: real sockets on 127.0.0.1, port 0, a timeout on every read.

The logic is tested without sockets in test_rooms.py; these tests check
what only the I/O shell can get wrong: framing on a live stream, slow and
hostile peers, bounds, the chat log, shutdown and the command line.
"""
from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import LineClient, StreamLines, connect, wait_for

from chat_sync import protocol as p
from chat_sync.config import TcpServerConfig
from chat_sync.guard import Guard
from chat_sync.tcp_server import TcpServer, serve
from chat_sync.tcp_server_core import (BATCH_BYTES, Batch, Connection, Phase, Replays,
                                      guard_limits)

pytestmark = pytest.mark.timeout(20)

REPO = Path(__file__).resolve().parent.parent
TYPED_ERRORS = {"bad_json", "bad_utf8", "bad_message", "unknown_type"}


def is_event(event: str, user: str | None = None) -> Any:
    def matches(message: dict[str, Any]) -> bool:
        return (message["type"] == "system" and message["event"] == event
                and (user is None or message.get("user") == user))
    return matches


def messages_line(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"type": "message", "text": t}).encode() + b"\n" for t in texts)


# -- chatting --------------------------------------------------------------------

def test_two_clients_chat() -> None:
    with serve(port=0) as server:
        with connect(server.host, server.port) as alice, \
                connect(server.host, server.port) as bob:
            alice.join("lobby", "alice")
            seen = bob.join("lobby", "bob")
            assert [m["user"] for m in seen if m.get("history")] == ["alice"]
            assert alice.recv_message() == seen[-1]           # alice sees bob arrive

            alice.send(type="message", text="hi bob 👋", id="m1")
            own, heard = alice.recv_message(), bob.recv_message()
            assert own == {**heard, "id": "m1"}
            assert (heard["user"], heard["text"], heard["room"]) == ("alice", "hi bob 👋", "lobby")
            assert heard["seq"] > seen[-1]["seq"]

            bob.send(type="whisper", to="alice", text="psst", id=2)
            assert alice.recv_message()["text"] == "psst"
            assert bob.recv_message()["id"] == 2

            bob.send(type="who", id=3)
            assert bob.recv_message() == {"type": "who", "room": "lobby",
                                          "users": ["alice", "bob"], "id": 3}


def test_several_requests_in_one_send_and_one_request_in_many() -> None:
    with serve(port=0) as server, connect(server.host, server.port) as alice:
        alice.send_raw(b'{"type":"join","room":"lobby","user":"alice","id":1}\n'
                       b'{"type":"message","text":"one","id":2}\r\n'
                       b'\n'
                       b'{"type":"ping","id":3}\n'
                       b'{"type":"who","id":4}\n')
        replies = [alice.recv_message() for _ in range(4)]
        assert [r.get("id") for r in replies] == [1, 2, 3, 4]
        assert [r["type"] for r in replies] == ["system", "message", "pong", "who"]

        alice.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in b'{"type":"ping","id":"split"}\n':
            alice.send_raw(bytes([byte]))
        assert alice.recv_message() == {"type": "pong", "id": "split"}


# -- bounds and hostile peers ----------------------------------------------------------

def test_a_client_that_never_reads_is_dropped_and_the_others_keep_up() -> None:
    # The reader sends as fast as it can: no request rate limit here (the flood
    # defence has its own tests in test_hardening_tcp.py).
    with serve(port=0, max_send_buffer_bytes=64 * 1024, rate_limit_per_s=0) as server:
        # The kernel buffers a few MB for a loopback peer; a small receive
        # buffer on the sleeper keeps its share small, so the server's own
        # bound is what trips.
        with LineClient(server.host, server.port, rcvbuf=4096) as sleeper, \
                connect(server.host, server.port) as reader:
            assert sleeper.recv_message()["type"] == "welcome"
            sleeper.join("lobby", "sleeper")            # then it never reads again
            reader.join("lobby", "reader")

            text = "x" * 1000
            sent = 0
            left_after = None
            while left_after is None:
                assert sent < 16_000, "the sleeper was never dropped (16 MB sent)"
                batch = [f"{sent + i} {text}" for i in range(16)]
                reader.send_raw(messages_line(batch))
                for expected in batch:
                    message = reader.recv_message(timeout=2.0)
                    if is_event("leave", "sleeper")(message):
                        left_after = sent
                        message = reader.recv_message(timeout=2.0)
                    assert message["type"] == "message" and message["text"] == expected
                sent += len(batch)

            # Gone: its name is free again and the room has one member.
            reader.send(type="who")
            assert reader.recv_message()["users"] == ["reader"]


def test_a_mebibyte_line_without_newline_is_line_too_long_then_closed() -> None:
    with serve(port=0) as server, connect(server.host, server.port) as bob:
        bob.join("lobby", "bob")
        with connect(server.host, server.port) as flooder:
            flooder.join("lobby", "flooder")
            bob.recv_until(is_event("join", "flooder"))
            try:
                flooder.send_raw(b"a" * (1024 * 1024))
            except (BrokenPipeError, ConnectionResetError):
                pass            # the server may hang up before taking it all
            rest = flooder.recv_until_closed()
            assert rest[0]["type"] == "error" and rest[0]["code"] == "line_too_long"
            assert [m["type"] for m in rest[1:]] == []
        bob.recv_until(is_event("leave", "flooder"))
        bob.send(type="ping", id=1)
        assert bob.recv_message() == {"type": "pong", "id": 1}


def garbage_burst(seed: int) -> bytes:
    rng = random.Random(seed)
    lines = [
        bytes(rng.randrange(256) for _ in range(3000)),           # random bytes
        b"{not json",
        b'{"type":"message","text":"\xff\xfe"}',                  # bad UTF-8
        b'{"type":"message","text":NaN}',
        b'{"type":"message","text":"a","text":"b"}',
        b'{"type":"message","text":"\\ud800"}',
        b"[" * 20000,
        b'{"type":"shout","text":"HI"}',
        b'{"type":"message"}',
        b"\x00\x01\x02",
        bytes(rng.randrange(256) for _ in range(3000)),
    ]
    return b"\n".join(lines) + b"\n"


def expected_line_count(burst: bytes) -> int:
    """How many lines the server sees: the framing rules, restated."""
    count = 0
    for line in burst.split(b"\n")[:-1]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            count += 1
    return count


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_garbage_from_one_client_leaves_the_others_unaffected(seed: int) -> None:
    # Every garbage line is a request; counting their errors needs no rate limit.
    with serve(port=0, rate_limit_per_s=0) as server, connect(server.host, server.port) as alice, \
            connect(server.host, server.port) as bob, \
            connect(server.host, server.port) as mallory:
        alice.join("lobby", "alice")
        bob.join("lobby", "bob")
        mallory.join("lobby", "mallory")        # in the room, so a leak would show
        alice.recv_until(is_event("join", "mallory"))
        bob.recv_until(is_event("join", "mallory"))

        burst = garbage_burst(seed)
        expected_errors = expected_line_count(burst)
        texts = [f"message {i}" for i in range(20)]
        for i, text in enumerate(texts):
            alice.send_raw(messages_line([text]))
            if i % 5 == 0:
                mallory.send_raw(burst)
        bursts = len(range(0, len(texts), 5))

        assert [m["text"] for m in alice.recv_until(lambda m: m.get("text") == texts[-1])] \
            == texts
        heard = bob.recv_until(lambda m: m.get("text") == texts[-1])
        assert [(m["type"], m["user"], m["text"]) for m in heard] == [
            ("message", "alice", t) for t in texts]

        mallory.send(type="ping", id="still here")
        replies = mallory.recv_until(lambda m: m.get("id") == "still here")
        errors = [m for m in replies if m["type"] == "error"]
        assert len(errors) == bursts * expected_errors
        assert {m["code"] for m in errors} <= TYPED_ERRORS
        assert [m for m in replies if m["type"] not in ("error", "message", "pong")] == []


def test_beyond_max_clients_a_client_gets_server_full_then_close() -> None:
    with serve(port=0, max_clients=2) as server:
        with connect(server.host, server.port) as first, connect(server.host, server.port):
            with LineClient(server.host, server.port) as third:
                refused = third.recv_until_closed()
                assert [(m["type"], m["code"]) for m in refused] == [("error", "server_full")]
            first.close()
            wait_for(lambda: len(server.server.conns) == 1, what="the server to see both go")
            with connect(server.host, server.port) as fourth:   # room again
                fourth.send(type="ping")
                assert fourth.recv_message() == {"type": "pong"}


# -- the chat log ------------------------------------------------------------------------

def test_the_chat_log_gets_one_escaped_line_per_broadcast(tmp_path: Path) -> None:
    log_file = tmp_path / "chat.log"
    with serve(port=0, log_file=str(log_file)) as server:
        with connect(server.host, server.port) as alice:
            alice.join("lobby", "alice")
            with connect(server.host, server.port) as bob:
                bob.join("lobby", "bob")
                alice.send(type="message", text="hi\nthere \x1b[2J\u202eevil")
                alice.send(type="whisper", to="bob", text="not for the log")
                bob.recv_until(lambda m: m["type"] == "whisper")
            alice.recv_until(is_event("leave", "bob"))
            alice.send(type="leave", id=1)
            alice.recv_until(lambda m: m.get("id") == 1)
    # Leaving the with block stopped the server, which closes the log: all on disk.
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"
    lines = log_file.read_text(encoding="utf-8").splitlines()
    expected = [
        "lobby system: alice joined",
        "lobby system: bob joined",
        "lobby alice: hi\\nthere \\u001b[2J\\u202eevil",
        "lobby system: bob left",
        "lobby system: alice left",
    ]
    assert len(lines) == len(expected), lines
    for line, tail in zip(lines, expected):
        assert re.fullmatch(f"{stamp} {re.escape(tail)}", line), line


def test_a_client_that_resets_is_gone_and_the_server_carries_on() -> None:
    with serve(port=0) as server, connect(server.host, server.port) as alice:
        alice.join("lobby", "alice")
        rude = connect(server.host, server.port)
        rude.join("lobby", "rude")
        rude.send_raw(b'{"type":"message","text":"half a')
        rude.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()                                     # RST, not FIN
        alice.recv_until(is_event("leave", "rude"))
        alice.send(type="ping", id=1)
        assert alice.recv_message() == {"type": "pong", "id": 1}


# -- stopping -------------------------------------------------------------------------------

def test_graceful_stop_tells_every_client_then_closes() -> None:
    server = serve(port=0)
    try:
        joined = connect(server.host, server.port)
        joined.join("lobby", "alice")
        lurker = connect(server.host, server.port)            # connected, never joined
        server.stop()
        for client in (joined, lurker):
            rest = client.recv_until_closed()
            assert [(m["type"], m["event"]) for m in rest] == [("system", "shutdown")]
            client.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, server.port), timeout=2).close()
    finally:
        server.stop()


# -- the command line ---------------------------------------------------------------------------

def run_server(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "chat_sync.tcp_server", *args],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listening_port(out: StreamLines) -> int:
    line = out.readline(timeout=10)
    assert line is not None
    found = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    assert found, line
    return int(found.group(1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_main_serves_and_exits_0_on_a_signal(signum: signal.Signals) -> None:
    proc = run_server("--port", "0")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = StreamLines(proc.stdout), StreamLines(proc.stderr)
        port = listening_port(out)
        with connect("127.0.0.1", port) as alice:
            alice.join("lobby", "alice")
            alice.send(type="ping", id=1)
            assert alice.recv_message() == {"type": "pong", "id": 1}
            proc.send_signal(signum)
            assert alice.recv_until_closed()[-1]["event"] == "shutdown"
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in err.rest()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("args, says", [
    (["--port", "-1"], "--port"),
    (["--max-clients", "0"], "--max-clients"),
    (["--log-level", "loud"], "--log-level"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_a_bad_flag_exits_2_with_a_message(args: list[str], says: str) -> None:
    done = run_to_exit(*args)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stdout


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "chat_sync.tcp_server", *args],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=15)


def test_a_port_in_use_exits_1_saying_so() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_to_exit("--port", str(port))
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unopenable_chat_log_exits_1_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no such dir" / "chat.log"
    done = run_to_exit("--port", "0", "--log-file", str(missing))
    assert done.returncode == 1
    assert f"cannot open chat log {missing}" in done.stderr
    assert "listen" not in done.stderr and "Traceback" not in done.stderr


def test_debug_log_shows_raw_bytes_per_peer() -> None:
    proc = run_server("--port", "0", "--log-level", "debug")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = StreamLines(proc.stdout), StreamLines(proc.stderr)
        port = listening_port(out)
        with connect("127.0.0.1", port) as client:
            peer = "%s:%d" % client.sock.getsockname()[:2]
            client.send_raw(b'{"type":"ping","id":1}\n')
            assert client.recv_message() == {"type": "pong", "id": 1}
            err.wait_for_line(lambda line: f"[{peer}] -> b'{{\"type\":\"ping\",\"id\":1}}\\n'"
                              in line)
            err.wait_for_line(lambda line: f"[{peer}] <- b'{{\"type\":\"pong\",\"id\":1}}\\n'"
                              in line)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(10)
def test_requests_before_an_overlong_line_in_the_same_read_are_answered() -> None:
    with serve(port=0, max_line_bytes=100) as server, \
            connect(server.host, server.port) as client:
        client.send_raw(b'{"type":"ping","id":1}\n{"type":"ping","id":2}\n' + b"x" * 200)
        rest = client.recv_until_closed()
        assert rest[0] == {"type": "pong", "id": 1} and rest[1] == {"type": "pong", "id": 2}
        assert rest[2]["code"] == "line_too_long"


def test_a_stderr_nobody_reads_does_not_freeze_the_server() -> None:
    # Issue 9, item 1: the debug log of every line fills the 64 KiB pipe in a moment;
    # the loop must go on serving (the log drops what it cannot write, and says so).
    proc = run_server("--port", "0", "--log-level", "debug", "--rate-limit-per-s", "0")
    try:
        assert proc.stdout is not None
        port = listening_port(StreamLines(proc.stdout))      # stderr: never read
        with connect("127.0.0.1", port) as alice:
            alice.join("lobby", "alice")
            for batch in range(20):
                alice.send_raw(b"".join(b'{"type":"ping","id":%d,"pad":"%s"}\n'
                                        % (batch * 20 + i, b"x" * 1000) for i in range(20)))
                alice.recv_until(lambda m: m.get("id") == batch * 20 + 19, timeout=5)
            with connect("127.0.0.1", port, timeout=5) as bob:   # its welcome arrives
                bob.join("lobby", "bob")
    finally:
        proc.kill()
        proc.wait()


# -- a vanished client's name (issue 9, item 3) --------------------------------------------------

def test_a_reconnect_with_the_resume_token_takes_the_name_from_its_ghost() -> None:
    with serve(port=0) as server:
        ghost = LineClient(server.host, server.port)       # will go silent, never closed
        token = ghost.recv_message()["resume"]
        ghost.join("lobby", "alice")
        with connect(server.host, server.port) as bob:
            bob.join("lobby", "bob")
            with connect(server.host, server.port) as again:
                again.send(type="join", room="lobby", user="alice")
                assert again.recv_message()["code"] == "name_taken"    # no token: refused
                got = again.join("lobby", "alice", resume=token)
                assert got[-1]["user"] == "alice"
                left = bob.recv_until(is_event("join", "alice"))
                assert [m["event"] for m in left] == ["leave", "join"]
                assert ghost.recv_until_closed()[-1]["event"] == "join"   # then closed
        ghost.close()


def test_accepted_connections_have_tcp_keepalive_with_the_configured_timings() -> None:
    with serve(port=0, keepalive_idle_s=7, keepalive_interval_s=3, keepalive_probes=4) as server, \
            connect(server.host, server.port):
        [conn] = server.server.conns.values()
        sock = conn.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4


def test_listening_is_said_once_on_stdout_and_once_in_the_log() -> None:
    # Issue 11, item 9: stdout is for a parent process, stderr is the operational log.
    proc = run_server("--port", "0")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = StreamLines(proc.stdout), StreamLines(proc.stderr)
        port = listening_port(out)
        err.wait_for_line(lambda line: f"listening on 127.0.0.1:{port}" in line)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert out.rest().count("listening on") == 1
        assert sum("listening on" in line for line in err.rest().splitlines()) == 1
    finally:
        proc.kill()
        proc.wait()


def test_server_full_says_how_many_in_good_grammar() -> None:
    with serve(port=0, max_clients=1) as server, connect(server.host, server.port):
        with LineClient(server.host, server.port) as second:
            [error] = second.recv_until_closed()
        assert error["code"] == "server_full" and error["text"] == "server full: 1 client"


@pytest.mark.timeout(10)
def test_accepting_follows_the_phase_and_the_doom() -> None:
    """``accepting`` is an attribute, not a property: open, doom and start_closing keep it."""
    def connection(phase: Phase) -> Connection:
        guard = Guard(guard_limits(TcpServerConfig()), 0.0)
        return Connection(1, socket.socket(), "127.0.0.1", "127.0.0.1:1", 1024, guard, phase)

    hello = connection(Phase.HELLO)
    assert not hello.accepting                  # TLS: not before its handshake is done
    hello.open()
    assert hello.accepting and hello.phase is Phase.OPEN
    hello.doom()
    assert not hello.accepting
    closing = connection(Phase.OPEN)
    closing.open()
    closing.start_closing("bye", 5.0)
    assert not closing.accepting and closing.phase is Phase.CLOSING
    for conn in (hello, closing):
        conn.sock.close()


@pytest.mark.timeout(10)
def test_a_run_of_broadcasts_is_one_shared_chunk_and_a_chunk_of_its_own_for_each_sender(
        ) -> None:
    batch, room = Batch(), (1, 2, 3)
    first, second = b'{"n":1}\n', b'{"n":2}\n'
    batch.add(first, room, (1, p.with_id(first, "a")))
    assert batch.joins(room) and not batch.joins((1, 2))      # another audience: take first
    batch.add(second, room, None)
    taken = batch.take()
    assert taken == [(first + second, (2, 3)), (b'{"n":1,"id":"a"}\n' + second, (1,))]
    assert batch.take() == [] and batch.joins((1, 2))         # empty again: anything joins


def test_a_run_ends_at_its_size_so_a_queue_grows_by_no_more_at_a_time() -> None:
    batch, line = Batch(), b"x" * 1000 + b"\n"
    while batch.joins((1,)):
        batch.add(line, (1,), None)
    assert BATCH_BYTES <= batch.size < BATCH_BYTES + len(line)


def test_a_turns_broadcasts_and_replies_reach_each_member_in_the_order_made() -> None:
    with serve(port=0) as server:
        with connect(server.host, server.port) as alice, \
                connect(server.host, server.port) as bob:
            alice.join("lobby", "alice")
            bob.join("lobby", "bob")
            alice.recv_message()                                 # bob joined
            alice.send_raw(b'{"type":"message","text":"one","id":1}\n'
                           b'{"type":"ping","id":2}\n'
                           b'{"type":"message","text":"two"}\n'
                           b'{"type":"who","id":4}\n'
                           b'{"type":"message","text":"three","id":5}\n')
            mine = [alice.recv_message() for _ in range(5)]
            assert [(m["type"], m.get("text"), m.get("id")) for m in mine] == [
                ("message", "one", 1), ("pong", None, 2), ("message", "two", None),
                ("who", None, 4), ("message", "three", 5)]
            heard = [bob.recv_message() for _ in range(3)]
            assert [m["text"] for m in heard] == ["one", "two", "three"]
            assert all("id" not in m for m in heard)
            assert [m["seq"] for m in heard] == [m["seq"] for m in mine if "seq" in m]


def read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def plain_connection(server: TcpServer, sock: Any, n: int) -> Connection:
    """``sock`` as the server's connection from port ``n``, watched for reading; the
    caller opens it (``open``, or ``_open`` for its welcome too)."""
    sock.setblocking(False)
    conn = server._table.add(sock, ("127.0.0.1", n), Guard(guard_limits(server.config), 0.0),
                             Phase.OPEN)
    server.selector.register(sock, selectors.EVENT_READ, conn)
    return conn


def test_a_run_is_sent_at_once_where_nothing_waits_and_queued_behind_what_does() -> None:
    """``_write``: an empty queue is sent to now; a queue keeps its order; what the
    kernel does not take is queued, marked begun, and the flush finishes it."""
    server = TcpServer(TcpServerConfig(port=0))
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        conns = [plain_connection(server, ours, n + 1) for n, (ours, _) in enumerate(pairs)]
        for conn in conns:
            conn.open()
        idle, behind, full = conns
        pairs[2][0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server._queue(b"waiting\n", (behind.id,))
        server._dirty.clear()                   # as after a flush the kernel refused
        data = b"".join(b"%05d %s\n" % (i, b"x" * 90) for i in range(2000))    # 194 KB
        server._write(data, (idle.id, behind.id, full.id))

        assert idle.out == [] and idle not in server._dirty      # sent, no flush needed
        assert read_exactly(pairs[0][1], len(data)) == data
        assert behind.out == [b"waiting\n", data]               # behind what waits
        assert not behind.started and behind in server._dirty
        assert full.started and full in server._dirty and len(full.out) == 1
        taken = len(data) - full.out_bytes
        assert 0 < taken < len(data) and full.out[0] == data[taken:]
        assert full.events & selectors.EVENT_WRITE == 0     # until a flush says it must
        received, theirs = b"", pairs[2][1]
        theirs.settimeout(5)
        while len(received) < len(data):        # the flushes send the rest, in order
            server._dirty.add(full)             # as the loop does when it is writable
            server._flush_dirty()
            received += theirs.recv(65536)
        assert received == data and full.out == [] and not full.started
        assert full.events == selectors.EVENT_READ                 # nothing left to write
        server._flush_dirty()
        assert read_exactly(pairs[1][1], 8 + len(data)) == b"waiting\n" + data
    finally:
        server._close_all()
        for _, theirs in pairs:
            theirs.close()


class CountingSocket:
    """A socket that counts the sends made on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def sendmsg(self, chunks: list[bytes]) -> int:
        self.sends += 1
        return self.sock.sendmsg(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_a_reply_between_runs_still_leaves_each_member_one_send_a_turn() -> None:
    """A run a reply ends mid-turn is queued, not sent: one send per member a turn."""
    server = TcpServer(TcpServerConfig(port=0))
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        members = []
        for n, ((ours, theirs), name) in enumerate(zip(pairs, ("alice", "bob"))):
            conn = plain_connection(server, CountingSocket(ours), n + 1)
            server._open(conn)
            theirs.sendall(p.encode({"type": "join", "room": "lobby", "user": name}))
            server._read(conn)
            server._flush_dirty()
            members.append((conn, StreamLines(theirs.makefile("r", encoding="utf-8"))))
        (alice, alice_in), (bob, bob_in) = members
        for conn, _ in members:
            conn.sock.sends = 0
        pairs[0][1].sendall(b'{"type":"message","text":"one","id":1}\n'
                            b'{"type":"ping","id":2}\n'
                            b'{"type":"message","text":"two"}\n')
        server._read(alice)
        server._flush_dirty()
        assert (alice.sock.sends, bob.sock.sends) == (1, 1)
        heard = []
        while len(heard) < 2:
            line = bob_in.readline()
            assert line is not None, "bob heard nothing more"
            message = json.loads(line)
            if message["type"] == "message":
                heard.append(message["text"])
        assert heard == ["one", "two"]
    finally:
        server._close_all()
        for _, theirs in pairs:
            theirs.close()


def test_a_history_line_is_encoded_once_for_every_joiner_and_the_cache_is_bounded() -> None:
    replays = Replays(max_bytes=1000)
    line = {"type": "message", "room": "r", "user": "u", "text": "hi", "seq": 7, "ts": 1.0,
            "history": True}
    first = replays.encode(line)
    assert first == p.encode(line)
    assert replays.encode(dict(line)) is first              # an equal copy: the same bytes
    other = {**line, "text": "another run's seq 7"}           # a seq counted again
    assert replays.encode(other) == p.encode(other) and replays.encode(other) is not first
    for seq in range(100, 200):                              # far more than 1,000 bytes
        replays.encode({**line, "seq": seq})
    assert replays._bytes <= 1000 and len(replays._lines) < 20
    assert replays.encode(line) == first                     # dropped: encoded again
