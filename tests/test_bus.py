"""Two real servers on a real Redis are one chat (skipped where redis-server is missing)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LineClient, StreamLines, connect, wait_for

from chat_sync.tcp_server import serve

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (.ci/run installs it)")]
pytest.importorskip("redis")

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class Redis:
    """A redis-server of the test's own, on a free port, with no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        StreamLines(self.process.stdout).wait_for_line(
            lambda line: "Ready to accept connections" in line, timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def chat_events(messages: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(m.get("type"), m.get("event"), m.get("user"), m.get("text"))
            for m in messages if m.get("room")]


def test_two_servers_one_chat_one_seq(redis_server: Redis) -> None:
    with serve(port=0, bus_url=redis_server.url) as one, \
            serve(port=0, bus_url=redis_server.url) as two:
        with connect(HOST, one.port) as alice, connect(HOST, two.port) as bob:
            alice.join("lobby", "alice")
            bob.join("lobby", "bob")
            alice.recv_until(lambda m: m.get("user") == "bob")
            bob.send(type="message", text="hello from two", id=1)
            echo = bob.recv_until(lambda m: m.get("id") == 1)[-1]
            heard = alice.recv_until(lambda m: m.get("type") == "message")[-1]
            alice.send(type="message", text="hello from one")
            back = bob.recv_until(lambda m: m.get("type") == "message")[-1]
            assert heard["text"] == "hello from two" and heard["seq"] == echo["seq"]
            assert back["text"] == "hello from one" and back["seq"] == echo["seq"] + 1


def test_whisper_who_and_names_span_servers(redis_server: Redis) -> None:
    with serve(port=0, bus_url=redis_server.url) as one, \
            serve(port=0, bus_url=redis_server.url) as two:
        with connect(HOST, one.port) as alice, connect(HOST, two.port) as bob, \
                connect(HOST, two.port) as mallory:
            alice.join("lobby", "alice")
            bob.join("lobby", "bob")
            bob.send(type="whisper", to="ALICE", text="psst")
            assert alice.recv_until(lambda m: m["type"] == "whisper")[-1]["text"] == "psst"
            bob.send(type="who", id="w")
            who = bob.recv_until(lambda m: m.get("id") == "w")[-1]
            assert who["users"] == ["alice", "bob"]
            mallory.send(type="join", room="dev", user="Alice", id="j")
            refused = mallory.recv_until(lambda m: m.get("id") == "j")[-1]
            assert refused["code"] == "name_taken"


def test_a_reconnect_to_the_other_server_resumes_with_since(redis_server: Redis) -> None:
    with serve(port=0, bus_url=redis_server.url) as one, \
            serve(port=0, bus_url=redis_server.url) as two:
        with connect(HOST, one.port) as alice, connect(HOST, one.port) as bob:
            alice.join("lobby", "alice")
            joined = bob.join("lobby", "bob")
            last = joined[-1]["seq"]
            bob.close()                        # bob's laptop sleeps...
            alice.recv_until(lambda m: m.get("event") == "leave")
            for text in ("one", "two", "three"):
                alice.send(type="message", text=text)
            alice.recv_until(lambda m: m.get("text") == "three")
            with connect(HOST, two.port) as bob_again:   # ... and wakes on the other server
                replay = bob_again.join("lobby", "bob", since=last)
                texts = [m["text"] for m in replay if m.get("history")]
                assert texts == ["bob left", "one", "two", "three"]
                assert [m["seq"] for m in replay if m.get("history")] == [
                    last + 1, last + 2, last + 3, last + 4]


def _server_process(url: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0",
                                "--bus-url", url], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    line = StreamLines(process.stdout).wait_for_line(lambda l: l.startswith("listening on"),
                                                     timeout=15)
    return process, int(line.rsplit(":", 1)[1])


def test_kill_9_of_one_server_frees_its_users_on_the_others(redis_server: Redis) -> None:
    doomed, port = _server_process(redis_server.url)
    try:
        with serve(port=0, bus_url=redis_server.url) as survivor:
            with connect(HOST, survivor.port) as alice, connect(HOST, port) as bob:
                alice.join("lobby", "alice")
                bob.join("lobby", "bob")
                alice.recv_until(lambda m: m.get("user") == "bob")
                doomed.send_signal(signal.SIGKILL)
                started = time.monotonic()
                leave = alice.recv_until(lambda m: m.get("event") == "leave", timeout=15)[-1]
                assert leave["user"] == "bob"
                assert time.monotonic() - started <= 10
                with connect(HOST, survivor.port) as bob_again:
                    bob_again.join("lobby", "bob")     # the name is free
    finally:
        doomed.kill()
        doomed.wait(10)


def test_redis_restart_is_told_and_chat_resumes_without_duplicates(redis_server: Redis) -> None:
    with serve(port=0, bus_url=redis_server.url) as one, \
            serve(port=0, bus_url=redis_server.url) as two:
        with connect(HOST, one.port) as alice, connect(HOST, two.port) as bob:
            alice.join("lobby", "alice")
            bob.join("lobby", "bob")
            alice.send(type="message", text="before")
            bob.recv_until(lambda m: m.get("text") == "before")
            redis_server.stop()
            down = bob.recv_until(lambda m: m.get("event") == "bus_down", timeout=10)[-1]
            assert down["type"] == "system"
            redis_server.start()                   # empty: no persistence
            bob.recv_until(lambda m: m.get("event") == "bus_up", timeout=15)
            alice.recv_until(lambda m: m.get("event") == "bus_up", timeout=15)

            def says(text: str) -> bool:
                alice.send(type="message", text=text, id=text)
                reply = alice.recv_until(lambda m: m.get("id") == text)[-1]
                return reply.get("type") == "message"
            wait_for(lambda: says("after"), timeout=15, what="a message accepted again")
            got = bob.recv_until(lambda m: m.get("text") == "after")
            before = [m for m in got if m.get("text") == "before"]
            assert before == []                    # nothing delivered twice
            bob.send(type="message", text="and back")
            assert alice.recv_until(lambda m: m.get("text") == "and back")[-1]["seq"] > 1000


def test_an_unreachable_bus_at_start_is_one_line_and_exit_2() -> None:
    url = f"redis://{HOST}:{_free_port()}/0"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0",
                           "--bus-url", url], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 2
    assert url in done.stderr and "Traceback" not in done.stderr


def test_a_server_started_later_catches_up(redis_server: Redis) -> None:
    with serve(port=0, bus_url=redis_server.url) as one:
        with connect(HOST, one.port) as alice:
            alice.join("lobby", "alice")
            alice.send(type="message", text="early")
            alice.recv_until(lambda m: m.get("text") == "early")
            with serve(port=0, bus_url=redis_server.url) as two:
                with LineClient(HOST, two.port) as bob:
                    bob.recv_message()
                    replay = bob.join("lobby", "bob")
                    assert [m["text"] for m in replay if m.get("history")] == [
                        "alice joined", "early"]


def test_workers_share_one_port_and_are_one_chat(redis_server: Redis) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0",
                              "--workers", "3", "--bus-url", redis_server.url,
                              "--log-level", "info"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout is not None and first.stderr is not None
        port = int(StreamLines(first.stdout).wait_for_line(
            lambda l: l.startswith("listening on"), timeout=15).rsplit(":", 1)[1])
        log = StreamLines(first.stderr)
        clients = [connect(HOST, port) for _ in range(12)]
        for number, client in enumerate(clients):
            client.join("lobby", f"user{number}")
        clients[0].send(type="message", text="to every worker")
        for client in clients:
            client.recv_until(lambda m: m.get("text") == "to every worker")
        clients[-1].send(type="who", id="w")
        who = clients[-1].recv_until(lambda m: m.get("id") == "w")[-1]
        assert len(who["users"]) == 12
        for client in clients:
            client.close()
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        text = log.rest()
        servers = {line.split("bus: server ")[1].split()[0]
                   for line in text.splitlines() if "bus: server " in line}
        assert len(servers) == 3                    # three processes, each a server
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=2).close()
    finally:
        first.kill()
        first.wait(10)


def test_workers_without_a_bus_is_a_config_error() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0",
                           "--workers", "2"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 2
    assert "workers is 2 but bus_url is not set" in done.stderr


def test_the_readme_cluster_commands_run(redis_server: Redis, tmp_path: Path) -> None:
    """The README's three commands, on this test's ports: two servers and one chat."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Several servers, one chat", 1)[1].split("\n## ", 1)[0]
    commands = [body.strip() for body in
                re.findall(r"```sh\n(.*?)```", section, re.S)]
    assert commands[0].startswith("redis-server --port 6379")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    servers, ports = [], []
    try:
        for command in commands[1:]:
            words = command.replace("redis://127.0.0.1:6379/0", redis_server.url).split()
            assert words[:2] == ["chat-sync", "tcp-server"]
            words[words.index("--port") + 1] = "0"
            process = subprocess.Popen([sys.executable, "-m", "chat_sync", *words[1:]],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True, env=env)
            servers.append(process)
            assert process.stdout is not None
            ports.append(int(StreamLines(process.stdout).wait_for_line(
                lambda l: l.startswith("listening on"), timeout=15).rsplit(":", 1)[1]))
        with connect(HOST, ports[0]) as alice, connect(HOST, ports[1]) as bob:
            alice.join("lobby", "alice")
            bob.join("lobby", "bob")
            bob.send(type="message", text="hi")
            assert alice.recv_until(lambda m: m.get("type") == "message")[-1]["user"] == "bob"
    finally:
        for process in servers:
            process.terminate()
            process.wait(10)


def test_a_full_inbox_makes_the_reader_wait_and_loses_nothing(
        redis_server: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that missed an entry would no longer be a copy: the reader waits."""
    from chat_sync import bus as bus_module
    from chat_sync.cluster import Applied, Entry, Kind
    monkeypatch.setattr(bus_module, "MAX_INBOX", 3)
    monkeypatch.setattr(bus_module, "READ_COUNT", 2)
    reader = bus_module.RedisBus(redis_server.url, "r", "e", lambda: None)
    writer = bus_module.RedisBus(redis_server.url, "w", "e", lambda: None)
    try:
        reader.start("0-0", ())
        writer.start("0-0", ())
        for number in range(10):
            assert writer.publish(Entry(Kind.LINE, "w", number, 0.0, b"x"))
        got: list[int] = []
        wait_for(lambda: got.extend(e.entry.conn for e in reader.take()
                                    if isinstance(e, Applied)) or len(got) >= 10,
                 timeout=10, what="all ten entries")
        assert got == list(range(10))
    finally:
        reader.stop()
        writer.stop()


def test_a_snapshot_of_an_old_log_does_not_overwrite_the_new_logs(redis_server: Redis) -> None:
    """After a reset, a server still applying the old log must not store its replica
    as the new log's snapshot: a server starting from it would be no copy."""
    import redis

    from chat_sync import bus as bus_module
    from chat_sync.cluster import Entry, Kind
    store = redis.Redis.from_url(redis_server.url)
    bus = bus_module.RedisBus(redis_server.url, "a", "e", lambda: None)

    def save_and_flush(state: bytes, number: int) -> None:
        bus.save_snapshot(state, "0-0")
        assert bus.publish(Entry(Kind.LINE, "a", number, 0.0, b"x"))
        wait_for(lambda: store.xlen(bus_module.LOG_KEY) >= number, timeout=10,
                 what=f"entry {number} in the log")

    try:
        bus.start("0-0", ())
        save_and_flush(b"ours", 1)
        assert store.get(bus_module.SNAPSHOT_KEY) == b"ours"       # our log: stored
        store.set(bus_module.GENERATION_KEY, "newer")               # another server reset it
        store.set(bus_module.SNAPSHOT_KEY, b"theirs")
        save_and_flush(b"stale", 2)
        assert store.get(bus_module.SNAPSHOT_KEY) == b"theirs"
    finally:
        bus.stop()
        store.close()


def test_a_snapshot_trims_only_what_every_live_server_has_read(redis_server: Redis) -> None:
    """A server whose reader lags (its CPU busy) must still find every entry it has
    not read: another server's snapshot trims the log behind the slowest reader."""
    import redis

    from chat_sync import bus as bus_module
    from chat_sync.cluster import Entry, Kind
    store = redis.Redis.from_url(redis_server.url)
    bus = bus_module.RedisBus(redis_server.url, "a", "e", lambda: None)
    try:
        bus.start("0-0", ())
        for number in range(5):
            assert bus.publish(Entry(Kind.LINE, "a", number, 0.0, b"x"))
        wait_for(lambda: store.xlen(bus_module.LOG_KEY) == 5, timeout=10, what="five entries")
        ids = [entry_id.decode() for entry_id, _ in store.xrange(bus_module.LOG_KEY)]
        wait_for(lambda: store.get(bus_module.ALIVE_KEY + "a") == ids[4].encode(),
                 timeout=10, what="a's heartbeat with its reader's position")
        store.set(bus_module.ALIVE_KEY + "slow", ids[1], px=60_000)   # has read two

        def first_after_snapshot(state: bytes) -> str:
            bus.save_snapshot(state, ids[4])
            wait_for(lambda: store.get(bus_module.SNAPSHOT_KEY) == state, timeout=10,
                     what="the snapshot stored")
            return str(store.xrange(bus_module.LOG_KEY)[0][0].decode())

        assert first_after_snapshot(b"one") == ids[1]      # slow's next entries are kept
        store.delete(bus_module.ALIVE_KEY + "slow")          # it is gone (or caught up)
        assert first_after_snapshot(b"two") == ids[4]
    finally:
        bus.stop()
        store.close()
