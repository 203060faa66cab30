"""The TCP client: back-off and the sans-IO core alone, then ChatClient against the real server.

The end-to-end tests run servers on 127.0.0.1 port 0 and always stop them;
every wait is on an event or a queue with a deadline, never a sleep.
"""
from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import StreamLines

from chat_sync import commands as cmd
from chat_sync import protocol as p
from chat_sync import tcp_client
from chat_sync.client_program import run, show_event
from chat_sync.config import TcpClientConfig, TcpServerConfig
from chat_sync.recorder import CLIENT_TO_SERVER, RecordingRelay
from chat_sync.tcp_client import ChatClient, ClientEvent, Closed, JoinError, Notice, Received
from chat_sync.tcp_client_core import (
    Backoff,
    ClientCore,
    ClientState,
    JoinRefused,
    Joined,
    Note,
    Send,
    ServerShutdown,
    Show,
)
from chat_sync.serving import ServerHandle
from chat_sync.tcp_server import serve
from chat_sync.terminal import Terminal, render

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 5.0

# -- Back-off ------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_backoff_doubles_from_base_up_to_max_with_jitter_inside_bounds() -> None:
    backoff = Backoff(base_delay_s=0.5, max_delay_s=10.0, tries=8)
    caps = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    for attempt, cap in enumerate(caps):
        assert backoff.delay(attempt, 0.0) == pytest.approx(cap / 2)
        assert backoff.delay(attempt, 0.5) == pytest.approx(cap * 3 / 4)
        assert cap / 2 <= backoff.delay(attempt, 0.999999) <= cap


@pytest.mark.timeout(20)
def test_backoff_never_overflows_or_exceeds_max() -> None:
    backoff = Backoff(base_delay_s=0.01, max_delay_s=3.0, tries=10_000)
    for attempt in (30, 1023, 1024, 10**6):
        assert 1.5 <= backoff.delay(attempt, 0.999) <= 3.0
    with pytest.raises(ValueError):
        backoff.delay(-1, 0.0)


# -- The core, fed messages by hand ------------------------------------------------------

def _joined_core(user: str = "alice", room: str = "lobby", seq: int = 0) -> ClientCore:
    """A core that has had its welcome and the answer to its join."""
    core = ClientCore(user, room)
    core.connection_made()
    actions = core.receive(p.welcome("0.1.0", p.Limits(), seq, "run1"))
    join = next(a.request for a in actions if isinstance(a, Send))
    notice = p.system(room, p.SystemEvent.JOIN, user, f"{user} joined", seq + 1, 1.0)
    actions = core.receive({**notice, "id": join["id"]})
    assert Joined(room) in actions
    return core


@pytest.mark.timeout(20)
def test_core_joins_after_the_welcome_and_knows_the_answer_by_its_id() -> None:
    core = ClientCore("alice", "lobby")
    core.connection_made()
    assert core.state is ClientState.CONNECTING
    welcome = p.welcome("0.1.0", p.Limits(), 0, "run1")
    actions = core.receive(welcome)
    assert actions[0] == Show(welcome)
    (send,) = [a for a in actions if isinstance(a, Send)]
    assert send.request == {"type": "join", "room": "lobby", "user": "alice",
                            "id": send.request["id"]}
    assert core.state is ClientState.JOINING
    # Someone else's join notice is not the answer to ours.
    other = p.system("lobby", p.SystemEvent.JOIN, "bob", "bob joined", 1, 1.0)
    assert core.receive(other) == [Show(other)]
    assert core.state is ClientState.JOINING
    ours = {**p.system("Lobby", p.SystemEvent.JOIN, "alice", "alice joined", 2, 1.0),
            "id": send.request["id"]}
    assert core.receive(ours) == [Joined("Lobby"), Show(ours)]
    assert core.state is ClientState.JOINED
    assert core.room == "Lobby"            # the server's spelling of the room
    assert core.last_seq == {"lobby": 2}


@pytest.mark.timeout(20)
def test_core_reports_a_refused_first_join() -> None:
    core = ClientCore("alice", "lobby")
    core.connection_made()
    join = [a for a in core.receive(p.welcome("0.1.0", p.Limits(), 0, "run1")) if isinstance(a, Send)]
    refusal = p.error(p.ErrorCode.NAME_TAKEN, "the name 'alice' is taken", field="user",
                      id=join[0].request["id"])
    assert core.receive(refusal) == [JoinRefused("name_taken", "the name 'alice' is taken")]


@pytest.mark.timeout(20)
def test_core_shows_a_refused_room_switch_and_stays() -> None:
    core = _joined_core()
    request = core.join("bad room")
    refusal = p.error(p.ErrorCode.BAD_MESSAGE, "room: ...", field="room", id=request["id"])
    assert core.receive(refusal) == [Show(refusal)]
    assert core.state is ClientState.JOINED and core.room == "lobby"


@pytest.mark.timeout(20)
def test_core_drops_broadcasts_it_has_already_seen_per_room() -> None:
    core = _joined_core(seq=0)               # our join notice was seq 1
    first = p.chat_message("lobby", "bob", "one", 2, 1.0)
    assert core.receive(first) == [Show(first)]
    assert core.receive(first) == []                         # a duplicate
    assert core.receive({**first, "history": True}) == []    # a replay of it
    older = p.chat_message("lobby", "bob", "zero", 1, 1.0)
    assert core.receive(older) == []
    # seq is server-wide: another room's history may hold lower numbers, and is new to us.
    request = core.join("dev")
    assert "since" not in request
    dev_old = {**p.chat_message("dev", "carol", "earlier", 1, 1.0), "history": True}
    assert core.receive(dev_old) == [Show(dev_old)]
    # Replies and whispers carry no seq and are always shown.
    who = p.who_reply("lobby", ["alice"])
    assert core.receive(who) == [Show(who)]
    assert core.receive(who) == [Show(who)]


@pytest.mark.timeout(20)
def test_core_rejoins_with_since_the_last_seq_seen() -> None:
    core = _joined_core(seq=0)
    core.receive(p.chat_message("lobby", "bob", "one", 5, 1.0))
    core.connection_lost()
    assert core.state is ClientState.DISCONNECTED
    core.connection_made()
    actions = core.receive(p.welcome("0.1.0", p.Limits(), 9, "run1"))
    (send,) = [a for a in actions if isinstance(a, Send)]
    assert send.request["since"] == 5 and send.request["room"] == "lobby"
    # Going back to a room visited before also asks only for what was missed.
    core.receive({**p.system("lobby", p.SystemEvent.JOIN, "alice", "", 10, 1.0),
                  "id": send.request["id"]})
    core.join("dev")
    assert core.join("lobby")["since"] == 10


@pytest.mark.timeout(20)
def test_core_forgets_seqs_when_the_server_has_restarted() -> None:
    core = _joined_core(seq=0)
    core.receive(p.chat_message("lobby", "bob", "one", 7, 1.0))
    core.connection_lost()
    core.connection_made()
    actions = core.receive(p.welcome("0.1.0", p.Limits(), 2, "run2"))   # a new run
    assert any(isinstance(a, Note) and "restarted" in a.text for a in actions)
    (send,) = [a for a in actions if isinstance(a, Send)]
    assert "since" not in send.request
    assert core.last_seq == {}
    fresh = p.chat_message("lobby", "bob", "new server", 3, 1.0)
    assert core.receive(fresh) == [Show(fresh)]             # not dropped as "old"


@pytest.mark.timeout(20)
def test_core_turns_a_shutdown_notice_into_server_shutdown() -> None:
    core = _joined_core()
    notice = p.system(None, p.SystemEvent.SHUTDOWN, None, "server shutting down", None, 1.0)
    assert core.receive(notice) == [Show(notice), ServerShutdown("server shutting down")]


# -- End to end, against the real server ----------------------------------------------

@pytest.fixture
def server() -> Iterator[ServerHandle]:
    with serve(TcpServerConfig(port=0)) as handle:
        yield handle


def _config(port: int, user: str, **overrides: Any) -> TcpClientConfig:
    settings: dict[str, Any] = {"port": port, "user": user, "reconnect_tries": 3,
                                "reconnect_base_delay_s": 0.01,
                                "reconnect_max_delay_s": 0.05, "connect_timeout_s": 5.0}
    settings.update(overrides)
    return TcpClientConfig(**settings)


class Clients:
    """Makes ChatClients and closes them all at the end of a test."""

    def __init__(self) -> None:
        self.made: list[ChatClient] = []

    def connect(self, port: int, user: str, **overrides: Any) -> ChatClient:
        client = self.make(port, user, **overrides)
        client.connect()
        return client

    def make(self, port: int, user: str, **overrides: Any) -> ChatClient:
        client = ChatClient(_config(port, user, **overrides), random=lambda: 0.5)
        self.made.append(client)
        return client

    def close_all(self) -> None:
        for client in self.made:
            client.close()


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    try:
        yield made
    finally:
        made.close_all()


def until(client: ChatClient, predicate: Callable[[ClientEvent], bool],
          timeout: float = TIMEOUT_S) -> list[ClientEvent]:
    """Events up to and including the first that satisfies ``predicate``."""
    seen: list[ClientEvent] = []
    while True:
        try:
            event = client.next_event(timeout)
        except TimeoutError:
            raise AssertionError(f"event not seen within {timeout} s; saw {seen}") from None
        seen.append(event)
        if predicate(event):
            return seen
        assert not isinstance(event, Closed), f"client closed early; saw {seen}"


def message_from(user: str, text: str) -> Callable[[ClientEvent], bool]:
    def matches(event: ClientEvent) -> bool:
        return (isinstance(event, Received) and event.message.get("type") == "message"
                and event.message.get("user") == user and event.message.get("text") == text)
    return matches


def joined(user: str) -> Callable[[ClientEvent], bool]:
    def matches(event: ClientEvent) -> bool:
        return (isinstance(event, Received) and event.message.get("type") == "system"
                and event.message.get("event") == "join" and event.message.get("user") == user)
    return matches


def of_type(kind: str) -> Callable[[ClientEvent], bool]:
    return lambda event: isinstance(event, Received) and event.message.get("type") == kind


def chat_texts(events: list[ClientEvent]) -> list[str]:
    return [e.message["text"] for e in events
            if isinstance(e, Received) and e.message.get("type") == "message"]


@pytest.mark.timeout(20)
def test_two_clients_chat(server: ServerHandle, clients: Clients) -> None:
    alice = clients.connect(server.port, "alice")
    until(alice, of_type("welcome"))
    until(alice, joined("alice"))
    bob = clients.connect(server.port, "bob")
    until(alice, joined("bob"))
    assert alice.send_line("hello bob")
    until(bob, message_from("alice", "hello bob"))
    assert bob.send_line("//slash is text")
    until(alice, message_from("bob", "/slash is text"))
    bob.close()
    until(alice, lambda e: isinstance(e, Received) and e.message.get("event") == "leave")
    assert bob.wait(0) == 0


@pytest.mark.timeout(20)
def test_whisper_rooms_who_and_room_switch(server: ServerHandle, clients: Clients) -> None:
    alice = clients.connect(server.port, "alice")
    bob = clients.connect(server.port, "bob")
    until(alice, joined("bob"))
    alice.send_line("/msg bob psst")
    (whisper,) = [e for e in until(bob, of_type("whisper")) if isinstance(e, Received)
                  and e.message["type"] == "whisper"]
    assert render(whisper.message, me="bob") == "*from alice*: psst"
    sent = until(alice, of_type("whisper"))[-1]
    assert isinstance(sent, Received)
    assert render(sent.message, me="alice") == "*to bob*: psst"

    alice.send_line("/who")
    who = until(alice, of_type("who"))[-1]
    assert isinstance(who, Received) and who.message["users"] == ["alice", "bob"]
    alice.send_line("/join dev")
    until(alice, joined("alice"))
    assert alice.room == "dev"
    alice.send_line("/rooms")
    rooms = until(alice, of_type("rooms"))[-1]
    assert isinstance(rooms, Received)
    assert rooms.message["rooms"] == [{"name": "dev", "members": 1},
                                      {"name": "lobby", "members": 1}]


@pytest.mark.timeout(20)
def test_unknown_command_is_a_local_hint_and_nothing_is_sent(server: ServerHandle,
                                                            clients: Clients) -> None:
    alice = clients.connect(server.port, "alice")
    until(alice, joined("alice"))
    alice.send_line("/jion dev")
    hint = alice.next_event(TIMEOUT_S)
    assert isinstance(hint, Notice) and "/help" in hint.text
    alice.send_line("/help")
    help_event = alice.next_event(TIMEOUT_S)
    assert isinstance(help_event, Notice) and "/msg USER TEXT" in help_event.text
    # Had "/jion dev" reached the server, its reply (or echo) would come before this pong.
    alice.request(cmd.ping_request())
    assert alice.next_event(TIMEOUT_S) == Received({"type": "pong"})


@pytest.mark.timeout(20)
def test_server_errors_come_back_as_messages(server: ServerHandle, clients: Clients) -> None:
    alice = clients.connect(server.port, "alice")
    until(alice, joined("alice"))
    alice.send_line("/msg nobody hi")
    error = until(alice, of_type("error"))[-1]
    assert isinstance(error, Received)
    assert render(error.message).startswith("error no_such_user: ")
    alice.send_line("/join bad/room")
    error = until(alice, of_type("error"))[-1]
    assert isinstance(error, Received) and error.message["code"] == "bad_message"
    assert alice.room == "lobby"


@pytest.mark.timeout(20)
def test_a_taken_name_is_refused_at_once(server: ServerHandle, clients: Clients) -> None:
    clients.connect(server.port, "alice")
    imposter = clients.make(server.port, "ALICE")
    with pytest.raises(JoinError) as info:
        imposter.connect()
    assert info.value.code == "name_taken"
    code = tcp_client.main(["--plain", "--user", "Alice", "--port", str(server.port)])
    assert code == 2


@pytest.mark.timeout(20)
def test_no_server_means_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:      # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert tcp_client.main(["--plain", "--user", "x", "--port", str(port)]) == 2
    assert "cannot connect" in capsys.readouterr().err
    assert tcp_client.main(["--plain", "--port", str(port)]) == 2
    assert "user name is required" in capsys.readouterr().err


@pytest.mark.timeout(20)
def test_reconnect_rejoins_with_since_and_misses_nothing(server: ServerHandle,
                                                         clients: Clients) -> None:
    # The package's recording relay stands in for the network: cut() is the outage.
    with RecordingRelay((server.host, server.port)) as relay:
        alice = clients.connect(relay.address[1], "alice", reconnect_tries=1000,
                                reconnect_base_delay_s=0.005, reconnect_max_delay_s=0.02)
        bob = clients.connect(server.port, "bob")
        bob.send_line("before")
        until(alice, message_from("bob", "before"))
        last_seen = alice.core.last_seq["lobby"]

        relay.cut()
        until(alice, lambda e: isinstance(e, Notice) and "lost" in e.text)
        until(bob, lambda e: isinstance(e, Received) and e.message.get("event") == "leave")
        bob.send_line("while you were out 1")
        bob.send_line("while you were out 2")
        until(bob, message_from("bob", "while you were out 2"))
        relay.resume()

        events = until(alice, joined("alice"))
        assert chat_texts(events) == ["while you were out 1", "while you were out 2"]
        replayed = [e.message for e in events if isinstance(e, Received)
                    and e.message.get("type") == "message"]
        assert all(m.get("history") is True for m in replayed)
        joins = [line.message for line in relay.lines() if line.direction == CLIENT_TO_SERVER
                 and isinstance(line.message, dict) and line.message.get("type") == "join"]
        assert len(joins) == 2
        assert "since" not in joins[0]
        assert joins[1]["since"] == last_seen

        bob.send_line("after")
        events = until(alice, message_from("bob", "after"))
        assert chat_texts(events) == ["after"]


@pytest.mark.timeout(20)
def test_reconnect_to_a_new_server_on_the_same_port(clients: Clients) -> None:
    first = serve(TcpServerConfig(port=0))
    port = first.port
    second: ServerHandle | None = None
    try:
        alice = clients.connect(port, "alice", reconnect_tries=1000,
                                reconnect_base_delay_s=0.005, reconnect_max_delay_s=0.02)
        bob = clients.connect(port, "bob", reconnect_tries=1000,
                              reconnect_base_delay_s=0.005, reconnect_max_delay_s=0.02)
        bob.send_line("old news")
        until(alice, message_from("bob", "old news"))
        first.stop()
        until(alice, lambda e: isinstance(e, Received) and e.message.get("event") == "shutdown")
        until(alice, lambda e: isinstance(e, Notice) and "lost" in e.text)

        second = serve(TcpServerConfig(port=port))
        events = until(alice, lambda e: isinstance(e, Notice) and "reconnected" in e.text)
        until(bob, lambda e: isinstance(e, Notice) and "reconnected" in e.text)
        bob.send_line("new news")
        events += until(alice, message_from("bob", "new news"))
        assert chat_texts(events) == ["new news"]       # nothing old shown twice
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.timeout(20)
def test_gives_up_after_bounded_tries_with_exit_code_2(clients: Clients) -> None:
    handle = serve(TcpServerConfig(port=0))
    try:
        alice = clients.connect(handle.port, "alice", reconnect_tries=3)
        until(alice, joined("alice"))
    finally:
        handle.stop()
    events = until(alice, lambda e: isinstance(e, Closed))
    tries = [e for e in events if isinstance(e, Notice) and e.text.startswith("reconnecting")]
    assert len(tries) == 3
    closed = events[-1]
    assert isinstance(closed, Closed) and closed.exit_code == 2
    assert "gave up" in closed.reason
    assert alice.wait(TIMEOUT_S) == 2
    assert alice.close() == 2               # closing afterwards keeps the verdict


@pytest.mark.timeout(20)
def test_close_during_back_off_ends_at_once_with_0(clients: Clients) -> None:
    handle = serve(TcpServerConfig(port=0))
    try:
        alice = clients.connect(handle.port, "alice", reconnect_tries=5,
                                reconnect_base_delay_s=30.0, reconnect_max_delay_s=60.0)
    finally:
        handle.stop()
    until(alice, lambda e: isinstance(e, Notice) and e.text.startswith("reconnecting"))
    assert alice.close() == 0
    assert isinstance(until(alice, lambda e: isinstance(e, Closed))[-1], Closed)


@pytest.mark.timeout(20)
def test_terminal_shell_sends_typed_lines_and_exits_0_at_eof(server: ServerHandle,
                                                              clients: Clients) -> None:
    bob = clients.connect(server.port, "bob")
    stdout = io.StringIO()
    term = Terminal(io.StringIO("hi bob\n/nope\n"), stdout, plain=True)
    client = ChatClient(_config(server.port, "x"),
                        on_event=lambda event: show_event(term, "x", event))
    client.connect()
    assert run(client, term) == 0
    until(bob, message_from("x", "hi bob"))
    until(bob, lambda e: isinstance(e, Received) and e.message.get("event") == "leave")
    lines = stdout.getvalue().splitlines()
    assert lines[0] == "connected to chat_sync 0.1.0 (protocol 1)"
    assert "[lobby] * x joined" in lines
    assert "-- unknown command /nope; type /help for the list of commands" in lines


def _client_process(port: int, *flags: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    return subprocess.Popen(
        [sys.executable, "-m", "chat_sync.tcp_client", "--plain", "--user", "x",
         "--port", str(port), *flags],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, encoding="utf-8", env=env, cwd=REPO)


def _reap(proc: subprocess.Popen[str]) -> None:
    """Make sure the child is gone and its pipes are closed."""
    proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.timeout(20)
def test_subprocess_client_chats_and_exits_0_on_eof(server: ServerHandle,
                                                    clients: Clients) -> None:
    bob = clients.connect(server.port, "bob")
    proc = _client_process(server.port)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        out = StreamLines(proc.stdout)
        out.wait_for_line(lambda line: line == "[lobby] * x joined\n")
        proc.stdin.write("hello from x\n")
        proc.stdin.flush()
        until(bob, message_from("x", "hello from x"))
        bob.send_line("hi x \x1b[2J")
        out.wait_for_line(lambda line: line == "[lobby] bob: hi x \\u001b[2J\n")
        proc.stdin.close()
        assert proc.wait(TIMEOUT_S) == 0
        until(bob, lambda e: isinstance(e, Received) and e.message.get("event") == "leave")
        assert "\x1b" not in out.rest()
    finally:
        _reap(proc)


@pytest.mark.timeout(20)
def test_subprocess_client_gives_up_with_exit_code_2() -> None:
    handle = serve(TcpServerConfig(port=0))
    proc = _client_process(handle.port, "--reconnect-tries", "2",
                           "--reconnect-base-delay-s", "0.01",
                           "--reconnect-max-delay-s", "0.02")
    try:
        assert proc.stdout is not None
        out = StreamLines(proc.stdout)
        out.wait_for_line(lambda line: line == "[lobby] * x joined\n")
        handle.stop()
        assert proc.wait(TIMEOUT_S) == 2          # stdin still open: it gave up by itself
        assert "-- gave up reconnecting" in out.rest()
    finally:
        handle.stop()
        _reap(proc)


@pytest.mark.timeout(20)
def test_config_file_settings_reach_the_client(server: ServerHandle, clients: Clients,
                                               tmp_path: Path) -> None:
    bob = clients.connect(server.port, "bob")
    config_file = tmp_path / "client.yaml"
    config_file.write_text(f"user: filed\nport: {server.port}\nplain: true\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chat_sync.tcp_client", "--config", str(config_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        stdout, _stderr = proc.communicate("from a file\n/quit\n", timeout=TIMEOUT_S)
        assert proc.returncode == 0, _stderr
        until(bob, message_from("filed", "from a file"))
        assert "[lobby] * filed joined" in stdout
    finally:
        _reap(proc)


@pytest.mark.timeout(20)
def test_config_fields_used_by_the_client_exist() -> None:
    names = {f.name for f in dataclasses.fields(TcpClientConfig)}
    assert {"host", "port", "user", "room", "plain", "reconnect_tries",
            "reconnect_base_delay_s", "reconnect_max_delay_s", "connect_timeout_s"} <= names


# -- resume and unconfirmed lines (issue 9, items 3 and 7) -----------------------------------

def _welcome_with(token: str) -> dict[str, Any]:
    return p.welcome("0.1.0", p.Limits(), 0, "run1", token)


@pytest.mark.timeout(20)
def test_core_rejoins_with_the_resume_token_of_the_connection_that_held_the_name() -> None:
    core = ClientCore("alice", "lobby")
    core.connection_made()
    [first] = [a.request for a in core.receive(_welcome_with("tok1")) if isinstance(a, Send)]
    assert "resume" not in first                   # nothing to take over yet
    core.receive({**p.system("lobby", p.SystemEvent.JOIN, "alice", "alice joined", 1, 1.0),
                  "id": first["id"]})
    core.connection_lost()
    core.connection_made()
    [again] = [a.request for a in core.receive(_welcome_with("tok2")) if isinstance(a, Send)]
    assert again["resume"] == "tok1"


@pytest.mark.timeout(20)
def test_core_knows_which_lines_were_not_echoed_when_the_connection_is_lost() -> None:
    core = _joined_core()
    sent = [core.track(cmd.message_request(text)) for text in ("one", "two", "three")]
    assert len({request["id"] for request in sent}) == 3
    echo = {**p.chat_message("lobby", "alice", "one", 5, 1.0), "id": sent[0]["id"]}
    assert core.receive(echo) == [Show(echo)]
    refused = p.error(p.ErrorCode.RATE_LIMITED, "slow down", id=sent[1]["id"])
    core.receive(refused)                          # answered too: it did arrive
    assert core.connection_lost() == ["three"]
    assert core.connection_lost() == []            # said once; never resent


@pytest.mark.timeout(20)
def test_a_line_in_flight_when_the_connection_dies_is_reported_not_resent(
        clients: Clients) -> None:
    # A server that takes the line and dies before echoing it.
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[dict[str, Any]] = []

    def fake_server() -> None:
        for _ in range(2):                         # the first connection, then the reconnect
            sock, _ = listener.accept()
            with sock, sock.makefile("rb") as reader:
                sock.sendall(p.encode(p.welcome("0.1.0", p.Limits(), 0, "run1", "t")))
                join = p.decode(reader.readline().rstrip(b"\n"))
                received.append(join)
                sock.sendall(p.encode({**p.system("lobby", p.SystemEvent.JOIN, "alice",
                                                  "alice joined", 1, 1.0), "id": join["id"]}))
                if len(received) == 1:
                    received.append(p.decode(reader.readline().rstrip(b"\n")))
                else:
                    reader.readline()              # until the client leaves

    thread = threading.Thread(target=fake_server, daemon=True)
    thread.start()
    try:
        alice = clients.connect(listener.getsockname()[1], "alice", reconnect_tries=3,
                                reconnect_base_delay_s=0.01, reconnect_max_delay_s=0.02)
        alice.send_line("did this arrive?")
        until(alice, lambda e: isinstance(e, Notice) and "may not have arrived" in e.text
              and "did this arrive?" in e.text)
        until(alice, joined("alice"))
        assert [m["type"] for m in received] == ["join", "message", "join"]   # not resent
    finally:
        alice.close()
        listener.close()
        thread.join(TIMEOUT_S)
