"""``chat-sync record``: pure tests of what it prints, then the program as a subprocess.

The end-to-end tests run ``python -m chat_sync record`` (what the ``chat-sync``
script runs) between a real server on 127.0.0.1 port 0 and real clients, and
read its output on a thread with a deadline per line: nothing sleeps. A TCP
client waits for the relay to print one chunk before it sends the next, so
which bytes arrive in which read is decided by the test, not by luck.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import StreamLines, connect

from chat_sync import dissector, pcap, record
from chat_sync.config import UdpClientConfig
from chat_sync.faultrelay import Action, Decision, Direction, FaultDecider, FaultPlan
from chat_sync.datagram_recorder import RecordingFaultRelay, fate
from chat_sync.records import ConnEvent, Datagram, EventKind, Segment
from chat_sync.tcp_server import serve as serve_tcp
from chat_sync.udp_client import UdpChatClient
from chat_sync.udp_server import serve as serve_udp

README = Path(__file__).resolve().parent.parent / "README.md"
CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 7420)
T = 1_800_000_000.25
UDP_FAST = {"base_delay": 0.05, "max_delay": 0.4, "min_rto": 0.05, "max_retries": 12,
            "keepalive_s": 30.0}


def seg(direction: str, data: bytes, conn: int = 1) -> Segment:
    return Segment(T, conn, direction, data, CLIENT, SERVER)


def shown(line: str) -> str:
    """What a printed line says after its time, connection, address, direction and size."""
    return line.split(" B  ", 1)[1]


# -- What it prints, no I/O -------------------------------------------------------------
@pytest.mark.timeout(10)
def test_a_read_of_two_lines_shows_both_and_half_a_line_shows_its_bytes() -> None:
    wire = record.WireLog()
    both = wire.line(seg("->", b'{"type":"join","room":"lobby"}\n{"type":"who"}\n'))
    assert shown(both) == '{"type":"join","room":"lobby"} | {"type":"who"}'
    assert " #1 127.0.0.1:40000 -> " in both and "   46 B  " in both
    first = wire.line(seg("->", b'{"type":"message","te'))
    assert shown(first) == """b'{"type":"message","te'…"""
    rest = wire.line(seg("->", b'xt":"hi"}\n{"ty'))
    assert shown(rest) == """…{"type":"message","text":"hi"} | b'{"ty'…"""
    assert shown(wire.line(seg("->", b'pe":"ping"}\r\n'))) == '…{"type":"ping"}'
    wire.line(seg("->", b'{"type":"message","text":"'))
    assert shown(wire.line(seg("->", b"long"))) == "…b'long'…"


@pytest.mark.timeout(10)
def test_directions_and_connections_are_framed_apart() -> None:
    wire = record.WireLog()
    wire.line(seg("->", b'{"type":'))
    assert shown(wire.line(seg("<-", b'{"type":"pong"}\n'))) == '{"type":"pong"}'
    assert shown(wire.line(seg("->", b'{"a":1}\n', conn=2))) == '{"a":1}'
    assert shown(wire.line(seg("->", b'"ping"}\n'))) == '…{"type":"ping"}'


@pytest.mark.timeout(10)
def test_what_is_not_a_json_object_is_shown_as_bytes() -> None:
    wire = record.WireLog()
    assert shown(wire.line(seg("->", b"not json\n"))) == "b'not json'"
    assert shown(wire.line(seg("->", b"[1, 2]\n\xff\xfe\n"))) == "b'[1, 2]' | b'\\xff\\xfe'"
    assert shown(wire.line(seg("->", b'{"a":1,"a":2}\n'))) == """b'{"a":1,"a":2}'"""
    assert shown(wire.line(seg("->", b"\n"))) == "b'\\n'"


@pytest.mark.timeout(10)
def test_peer_text_cannot_reach_the_terminal_raw() -> None:
    wire = record.WireLog()
    hostile = json.dumps({"type": "message", "text": "\x1b[2J\u0085\u202e"}).encode() + b"\n"
    text = shown(wire.line(seg("<-", hostile)))
    assert "\x1b" not in text and "\u0085" not in text and "\u202e" not in text
    assert "\\u001b" in text and "\\u0085" in text and "\\u202e" in text
    long_text = shown(wire.line(seg("<-", json.dumps({"text": "x" * 5000}).encode() + b"\n")))
    assert len(long_text) == record.SHOWN_CHARS and long_text.endswith("…")


@pytest.mark.timeout(10)
def test_an_endless_line_keeps_only_a_bounded_start() -> None:
    wire = record.WireLog(max_line_bytes=100)
    for _ in range(50):
        wire.line(seg("->", b"x" * 1000))
    assert shown(wire.line(seg("->", b"\n"))) == "…b'" + "x" * 100 + "'"


@pytest.mark.timeout(10)
def test_any_json_object_is_shown_whatever_its_fields() -> None:
    """The datagram format may gain fields (as it gained sid and forgot): they print as they come."""
    data = (b'{"type":"welcome","sid":"3e9f4efc0792c075","forgot":"00112233aabbccdd",'
            b'"new":[1],"n":1}')
    datagram = Datagram(T, "<-", data, CLIENT, ("127.0.0.1", 7421))
    assert shown(record.WireLog().line(datagram)) == data.decode()


@pytest.mark.timeout(10)
def test_a_datagram_says_what_the_faults_did_to_it() -> None:
    wire = record.WireLog()
    base = Datagram(T, "->", b'{"type":"ack","n":3}', CLIENT, ("127.0.0.1", 7421))
    assert shown(wire.line(base)) == '{"type":"ack","n":3}'
    dropped = Datagram(T, "->", base.data, CLIENT, base.server, fate=("drop",))
    assert shown(wire.line(dropped)) == '[drop] {"type":"ack","n":3}'
    late = Datagram(T, "->", base.data, CLIENT, base.server, fate=("duplicate", "delay"),
                    delay=0.0204)
    assert shown(wire.line(late)) == '[duplicate, delay 20 ms] {"type":"ack","n":3}'
    sent = Datagram(T, "->", base.data, CLIENT, base.server, sent=True)
    assert record.printable([base, sent, dropped]) == [base, dropped]
    assert fate(Decision(duplicate=True, reorder=True, delay=0.1)) == ("duplicate", "delay",
                                                                        "reorder")


@pytest.mark.timeout(10)
def test_connection_events_are_lines_too() -> None:
    wire = record.WireLog()
    opened = wire.line(ConnEvent(T, 3, EventKind.OPEN, CLIENT, SERVER))
    assert opened.endswith("#3 127.0.0.1:40000 --  [open 127.0.0.1:40000 -> 127.0.0.1:7420]")
    reset = wire.line(ConnEvent(T, 3, EventKind.RESET, CLIENT, SERVER, "<-", "server: gone\n"))
    assert reset.endswith("[reset <-: server: gone\\n]")
    wire.line(seg("->", b'{"type', conn=3))
    wire.line(ConnEvent(T, 3, EventKind.CLOSE, CLIENT, SERVER, reason="cut"))
    assert shown(wire.line(seg("->", b'{"type":"who"}\n', conn=3))) == '{"type":"who"}'


# -- The recording fault relay, in-process ----------------------------------------------
@pytest.mark.timeout(20)
def test_the_fault_relay_records_each_datagram_in_with_its_fate_and_each_copy_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        server.settimeout(5)
        plan = FaultPlan(loss=0.5)
        relay = RecordingFaultRelay(server.getsockname(), upstream=plan, seed=4).start()
        try:
            decider = FaultDecider(plan, seed=4)      # the same fates, worked out here
            fates = [decider.decide(Direction.UPSTREAM).drop for _ in range(20)]
            for k in range(20):
                client.sendto(b'{"k":%d}' % k, relay.address)
            kept = [k for k in range(20) if not fates[k]]
            got = [server.recv(100) for _ in kept]
            assert got == [b'{"k":%d}' % k for k in kept]
            assert relay.log.wait_for(lambda rs: sum(r.sent for r in rs) == len(kept)
                                      and sum(not r.sent for r in rs) == 20, 5)
        finally:
            relay.stop()
        arrived = [r for r in relay.records if not r.sent]
        assert [r.fate == ("drop",) for r in arrived] == fates
        assert relay.count(Direction.UPSTREAM, Action.DROP) == sum(fates)
        assert all(r.client == client.getsockname() and r.server == server.getsockname()
                   for r in relay.records)
        assert relay.log.closed


# -- The program ----------------------------------------------------------------------------
class Recorder:
    """``chat-sync record`` as a subprocess; ``port`` is where it listens."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "chat_sync", "record",
                                      "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.out = StreamLines(self.proc.stdout)
        ready = self.out.readline()
        assert ready is not None and ready.startswith("listening on 127.0.0.1:"), \
            (ready, self.stderr())
        self.port = int(ready.rsplit(":", 1)[1])

    def wait_for(self, text: str) -> str:
        """The next line that holds ``text``."""
        return self.out.wait_for_line(lambda line: text in line)

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, list[str]]:
        """Signal it; returns its exit code and every line it printed after ``listening``."""
        self.proc.send_signal(signum)
        code = self.proc.wait(10)
        self.out.rest()
        return code, [line.rstrip("\n") for line in self.out.seen[1:]]

    def stderr(self) -> str:
        return "" if self.proc.stderr is None or self.proc.poll() is None \
            else self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for recorder in made:
        recorder.close()


def record_tcp_session(upstream_port: int, recorders: list[Recorder], *extra: str) -> Recorder:
    """Alice joins through the recorder, says one line in two reads, then sends garbage.

    Returns the recorder, still running; the client has closed politely.
    """
    recorder = Recorder("--upstream", f"127.0.0.1:{upstream_port}", *extra)
    recorders.append(recorder)
    with connect("127.0.0.1", recorder.port) as alice:
        recorder.wait_for('"type":"welcome"')
        alice.send_raw(b'{"type":"join","room":"lobby","user":"alice","id":1}\n'
                       b'{"type":"message","text":"hi')
        recorder.wait_for(""" | b'{"type":"message","text":"hi'…""")
        alice.recv_until(lambda m: m.get("event") == "join")   # so the join notice comes next
        alice.send_raw(b' there"}\n')
        alice.recv_until(lambda m: m.get("text") == "hi there")
        alice.send_raw(b"not json\n")
        assert alice.recv_message()["code"] == "bad_json"
        alice.sock.shutdown(socket.SHUT_WR)
        alice.recv_until_closed()
    recorder.wait_for("[close")
    return recorder


@pytest.mark.timeout(60)
def test_tcp_session_is_printed_chunk_by_chunk_and_written_as_a_pcap(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    path = tmp_path / "session.pcap"
    with serve_tcp(port=0) as server:
        recorder = record_tcp_session(server.port, recorders, "--pcap", str(path))
        code, lines = recorder.stop()
    assert code == 0, recorder.stderr()
    said = [shown(line) for line in lines if " B  " in line]
    assert '{"type":"join","room":"lobby","user":"alice","id":1}' \
        """ | b'{"type":"message","text":"hi'…""" in said
    assert '…{"type":"message","text":"hi there"}' in said
    assert "b'not json'" in said
    assert any(line.endswith("[fin ->]") for line in lines)
    assert lines[-1] == f"wrote {path}"
    packets = pcap.read_pcap(path.read_bytes())
    upstream = b"".join(p.payload for p in packets if p.dst[1] == server.port)
    assert upstream == (b'{"type":"join","room":"lobby","user":"alice","id":1}\n'
                        b'{"type":"message","text":"hi there"}\nnot json\n')


@pytest.mark.timeout(60)
def test_sigint_stops_it_too_and_no_pcap_is_written_unless_asked(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    with serve_tcp(port=0) as server:
        recorder = Recorder("--upstream", f"127.0.0.1:{server.port}")
        recorders.append(recorder)
        with connect("127.0.0.1", recorder.port):
            recorder.wait_for('"type":"welcome"')
        code, lines = recorder.stop(signal.SIGINT)
    assert code == 0
    assert not any(line.startswith("wrote") for line in lines)


def record_udp_session(recorders: list[Recorder], texts: list[str], *faults: str,
                       signum: int = signal.SIGTERM) -> tuple[int, list[str]]:
    """Alice says each text through ``chat-sync record --udp`` once the last is acked.

    Returns the server's port and what the recorder printed; it has stopped.
    """
    with serve_udp(port=0, shutdown_grace_s=0.3) as server:
        recorder = Recorder("--udp", "--upstream", f"127.0.0.1:{server.port}", *faults)
        recorders.append(recorder)
        client = UdpChatClient(UdpClientConfig(host="127.0.0.1", port=recorder.port,
                                               user="alice", **UDP_FAST))
        try:
            client.connect(10)
            for text in texts:
                client.say(text)
                assert client.wait_sent(timeout=10), f"{text!r} was never acked"
        finally:
            client.close()
        code, lines = recorder.stop(signum)
    assert code == 0, recorder.stderr()
    return server.port, lines


def retransmit_key(line: str) -> tuple[str, str, object, object] | None:
    """What names a reliable datagram (direction, type, id, n); None for an ack."""
    message = json.loads(re.sub(r"^\[[a-z, 0-9]+\] ", "", shown(line)))
    if message.get("type") == "ack":
        return None
    direction = " -> " if " -> " in line else " <- "
    return direction, message.get("type"), message.get("id"), message.get("n")


@pytest.mark.timeout(60)
def test_udp_through_a_lossy_relay_shows_drops_and_retransmissions(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    path = tmp_path / "udp.pcap"
    texts = [f"hello {k}" for k in range(8)]
    _, lines = record_udp_session(recorders, texts, "--loss-up", "0.3", "--loss-down", "0.2",
                                  "--seed", "5", "--pcap", str(path))
    said = [json.loads(shown(line).removeprefix("[drop] ")) for line in lines
            if " -> " in line and '"type":"message"' in line]
    assert {m["text"] for m in said} == set(texts)
    assert any("[drop] " in line for line in lines), "a 30% loss dropped nothing"
    # Each exchange is four datagrams, and losing any one of them makes a message or
    # a broadcast go again: with 8 exchanges, no retransmission has odds of about 1e-4.
    keys = [retransmit_key(line) for line in lines if " B  " in line]
    repeated = {key for key in keys if key is not None and keys.count(key) > 1}
    assert repeated, "nothing was sent twice: no retransmission seen"
    assert lines[-1] == f"wrote {path}"
    frames = path.read_bytes()
    assert frames.count(b'"type":"message"') >= len(texts)


# -- Errors: one line, exit 2 ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:       # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("args", "says"), [
    (["--listen", "127.0.0.1", "--upstream", "127.0.0.1:7420"], "--listen: expected HOST:PORT"),
    (["--listen", "127.0.0.1:70000", "--upstream", "127.0.0.1:7420"], "port must be 0 to 65535"),
    (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:0"], "--upstream: port must be 1"),
    (["--listen", "127.0.0.1:0", "--upstream", "no such host!:7420"], "cannot resolve"),
    (["--listen", "127.0.0.1:0"], "--upstream"),
    (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:7420", "--loss", "0.2"],
     "need --udp"),
    (["--udp", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:7421", "--loss", "1.5"],
     "--loss: must be between 0 and 1"),
    (["--udp", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:7421", "--delay", "0.2:0.1"],
     "--delay: expected 0 <= LOW <= HIGH"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], says: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        record.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("chat-sync record: ") and says in err, err


@pytest.mark.timeout(30)
def test_an_unreachable_upstream_is_one_line_and_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "chat_sync.record", "--listen",
                             "127.0.0.1:0", "--upstream", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("chat-sync record: cannot reach upstream 127.0.0.1:")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.timeout(30)
def test_a_port_in_use_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with serve_tcp(port=0) as server, socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            record.main(["--listen", f"127.0.0.1:{busy}", "--upstream",
                         f"127.0.0.1:{server.port}"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"chat-sync record: cannot listen on 127.0.0.1:{busy}:"), err


# -- chat-sync dissector ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_chat_sync_dissector_prints_the_shipped_file() -> None:
    result = subprocess.run([sys.executable, "-m", "chat_sync", "dissector"],
                            capture_output=True, text=True, timeout=20, check=True)
    printed = Path(result.stdout.strip())
    assert printed == dissector.path() and printed.is_file()
    assert printed.read_text(encoding="utf-8").startswith("-- chatsync.lua")


@pytest.mark.timeout(120)
def test_an_installed_package_ships_the_dissector(tmp_path: Path) -> None:
    """``setup.py build`` (what ``pip install .`` runs) copies chatsync.lua with the code."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path)],
                   cwd=root, capture_output=True, text=True, timeout=100, check=True)
    built = tmp_path / "lib" / "chat_sync" / "dissector" / "chatsync.lua"
    assert built.read_bytes() == dissector.path().read_bytes()


# -- The README's section ---------------------------------------------------------------------
def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def fenced(section: str, kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section, re.S)


VARIES = [(re.compile(r"\d\d:\d\d:\d\d\.\d{6}"), "TIME"),
          (re.compile(r"127\.0\.0\.1:\d+"), "ADDR"),
          (re.compile(r'"(epoch|version)":"[^"]*"'), r'"\1":"X"'),
          (re.compile(r'"ts":[\d.]+'), '"ts":0'),
          (re.compile(r" +\d+ B  "), " N B  ")]       # a server line's size varies with ts


def normal(line: str) -> str:
    for pattern, stands_for in VARIES:
        line = pattern.sub(stands_for, line)
    return line.rstrip("\n")


@pytest.mark.timeout(60)
def test_readme_commands_and_tcp_sample_are_what_the_program_does(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    """The README's record commands parse, and its TCP sample is a real session's output."""
    section = readme_section("Watching the wire")
    commands = [line for block in fenced(section, "sh") for line in block.splitlines()
                if line.startswith("chat-sync record ")]
    assert len(commands) >= 2
    for command in commands:
        words = command.split()[2:]
        args = record.parser().parse_args(words)
        assert args.listen and args.upstream
    samples = fenced(section, "text")
    tcp_sample = [normal(line) for line in samples[0].splitlines()]
    with serve_tcp(port=0) as server:
        recorder = record_tcp_session(server.port, recorders)
        _, lines = recorder.stop()
    produced = [normal(line) for line in lines]
    missing = [line for line in tcp_sample if line not in produced]
    assert not missing, f"README lines the program did not print: {missing}\nit printed {produced}"
    udp_sample = samples[1].splitlines()
    assert any("[drop] " in line for line in udp_sample)
    for line in udp_sample:
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6}  127\.0\.0\.1:\d+ (->|<-) +\d+ B  "
                            r"(\[[a-z, 0-9]+\] )?\{.*\}", line), line
    # After the welcome, every datagram carries the session's id, both ways.
    sids = {json.loads(re.sub(r"^\[[a-z, 0-9]+\] ", "", shown(line)))["sid"]
            for line in udp_sample}
    assert len(sids) == 1


@pytest.mark.timeout(10)
def test_help_names_every_fault_flag() -> None:
    text = record.parser().format_help()
    for name, _, _ in record.FAULTS:
        for flag in (f"--{name}", f"--{name}-up", f"--{name}-down"):
            assert flag in text
    assert "--seed" in text
