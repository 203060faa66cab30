"""The Wireshark dissector: real sessions recorded by ``chat-sync record``, read by tshark.

A Lua error does not make tshark fail: a syntax error only shows on stderr
(and the ``chatsync`` fields are then unknown), a runtime error only as a
``_ws.lua.error`` field of the packet. ``fields`` checks all three on every
run, and ``test_a_broken_dissector_is_caught`` shows that it would notice.
Skipped where tshark is not installed (CI installs it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_record import (UDP_FAST, Recorder, readme_section, record_tcp_session,
                         record_udp_session)
from test_record import recorders  # noqa: F401  (the fixture: recorders stopped after a test)

from chat_sync import dissector, pcap, protocol
from chat_sync.records import Datagram, Record, Segment
from chat_sync.config import UdpClientConfig
from chat_sync.tcp_server import serve as serve_tcp
from chat_sync.udp_client import UdpChatClient
from chat_sync.udp_server import serve as serve_udp

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

CLIENT = ("127.0.0.1", 40000)
TCP_SERVER = ("127.0.0.1", protocol.DEFAULT_TCP_PORT)
UDP_SERVER = ("127.0.0.1", protocol.DEFAULT_UDP_PORT)
SEP = "|"                     # between two messages' values in one packet
# A recorded session's ports are random, and Wireshark gives a port another protocol
# registered (EtherNet/IP's 44818, say) to that protocol first; the README says so.
HEURISTICS_FIRST = ("-o", "udp.try_heuristic_first:TRUE", "-o", "tcp.try_heuristic_first:TRUE")


def run_tshark(args: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None,
               prefs: tuple[str, ...] = HEURISTICS_FIRST) -> subprocess.CompletedProcess[str]:
    assert TSHARK is not None
    if args[:1] == ["-G"]:
        prefs = ()                            # -G must come first, and reads no capture
    return subprocess.run([TSHARK, *prefs, *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)


def lua_trouble(stderr: str) -> list[str]:
    """stderr lines that are not tshark's warning about running as root."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith("Running as user")]


def fields(capture: Path, *names: str, lua: Path | None = None, display: str = "",
           env: dict[str, str] | None = None, installed: bool = False,
           prefs: tuple[str, ...] = ()) -> list[dict[str, list[str]]]:
    """Each packet's values of ``names``, with tshark's Lua error checks asserted.

    The dissector is ``lua`` (the package's by default), or with ``installed``
    whatever Wireshark's plugin folders hold.
    """
    args = [] if installed else ["-X", f"lua_script:{lua or dissector.path()}"]
    for pref in prefs:
        args += ["-o", pref]
    args += ["-r", str(capture), "-T", "fields", "-E", f"aggregator={SEP}", "-E",
             "occurrence=a"]
    if display:
        args += ["-Y", display]
    for name in (*names, "_ws.lua.error"):
        args += ["-e", name]
    result = run_tshark(args, env=env)
    assert result.returncode == 0, result.stderr
    assert not lua_trouble(result.stderr), result.stderr
    rows = []
    for line in result.stdout.splitlines():
        values = line.split("\t")
        assert values[-1] == "", f"a Lua runtime error: {line}"
        rows.append({name: (value.split(SEP) if value else [])
                     for name, value in zip(names, values)})
    return rows


def column(rows: list[dict[str, list[str]]], name: str) -> list[str]:
    return [value for row in rows for value in row[name]]


# -- Sessions the program recorded --------------------------------------------------------
@pytest.mark.timeout(90)
def test_a_recorded_tcp_session_decodes_line_by_line(tmp_path: Path,
                                                     recorders: list[Recorder]) -> None:
    path = tmp_path / "session.pcap"
    with serve_tcp(port=0) as server:
        recorder = record_tcp_session(server.port, recorders, "--pcap", str(path))
        assert recorder.stop()[0] == 0
    # The server's port is not 7420: the heuristic finds it.
    rows = fields(path, "frame.number", "chatsync.type", "chatsync.user", "chatsync.text",
                  "chatsync.seq", "chatsync.id", "chatsync.code", "chatsync.resume",
                  "chatsync.epoch", "chatsync.other", display="chatsync")
    assert column(rows, "chatsync.type") == ["welcome", "join", "system", "message", "message",
                                             "error"]
    # The welcome's token, as the server sent it (alice joined without one).
    welcome = next(json.loads(line) for p in pcap.read_pcap(path.read_bytes())
                   for line in p.payload.splitlines() if b'"welcome"' in line)
    assert column(rows, "chatsync.resume") == [welcome["resume"]]
    assert column(rows, "chatsync.epoch") == [welcome["epoch"]]
    # "hi there" came in two reads: reassembled, it is one message with one text.
    assert column(rows, "chatsync.text") == ["alice joined", "hi there", "hi there",
                                             "Expecting value: line 1 column 1 (char 0)"]
    assert column(rows, "chatsync.seq") == ["0", "1", "2"]
    assert column(rows, "chatsync.id") == ["1", "1"]
    assert column(rows, "chatsync.code") == ["bad_json"]
    assert any(value.startswith("ts: ") for value in column(rows, "chatsync.other"))
    bad = fields(path, "chatsync.line", "_ws.expert.message", display="chatsync.bad_json")
    assert [row["chatsync.line"] for row in bad] == [["not json"]]
    assert bad[0]["_ws.expert.message"] == \
        ["Not a valid JSON object: expected a JSON object at byte 1"]


@pytest.mark.timeout(90)
def test_a_lossy_udp_session_decodes_with_its_retransmissions(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    path = tmp_path / "udp.pcap"
    texts = [f"hello {k}" for k in range(8)]
    server_port, _ = record_udp_session(recorders, texts, "--loss", "0.3", "--seed", "11",
                                        "--pcap", str(path), signum=signal.SIGINT)
    rows = fields(path, "udp.dstport", "udp.checksum.status", "chatsync.type", "chatsync.id",
                  "chatsync.n", "chatsync.text", "chatsync.sid", "chatsync.ack.id",
                  "chatsync.ack.n", "_ws.col.Info", display="udp",
                  prefs=("udp.check_checksum:TRUE", "ip.check_checksum:TRUE"))
    assert rows and all(row["chatsync.type"] for row in rows), "a datagram was not decoded"
    assert all(row["udp.checksum.status"] == ["1"] for row in rows), "a bad UDP checksum"
    to_server = [row for row in rows if row["udp.dstport"] == [str(server_port)]]
    said = [row["chatsync.text"][0] for row in to_server if row["chatsync.type"] == ["message"]]
    assert set(said) == set(texts)
    # The senders' view: a datagram lost, or whose ack was lost, is in the capture twice.
    # (Odds of no loss at all in 8 exchanges of four datagrams at 30%: about 1e-5.)
    keys = [(row["udp.dstport"][0], row["chatsync.type"][0], tuple(row["chatsync.id"]),
             tuple(row["chatsync.n"])) for row in rows if row["chatsync.type"] != ["ack"]]
    assert any(keys.count(key) > 1 for key in keys), "no retransmission in the capture"
    from_server = [row for row in rows if row not in to_server]
    numbered = [int(row["chatsync.n"][0]) for row in from_server if row["chatsync.n"]
                and row["chatsync.type"] != ["ack"]]
    assert numbered and set(numbered) == set(range(1, max(numbered) + 1)), numbered


@pytest.mark.timeout(90)
def test_every_datagram_of_a_udp_session_shows_its_session_id(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    path = tmp_path / "udp.pcap"
    record_udp_session(recorders, ["one", "two", "three"], "--loss", "0.2", "--seed", "4",
                       "--pcap", str(path))
    rows = fields(path, "udp.srcport", "chatsync.type", "chatsync.sid", "chatsync.n",
                  "chatsync.id", "chatsync.ack.id", "chatsync.ack.n", "_ws.col.Info",
                  display="chatsync")
    server_port = next(row["udp.srcport"] for row in rows if row["chatsync.type"] == ["welcome"])
    from_server = [row for row in rows if row["udp.srcport"] == server_port]
    welcome = next(row for row in from_server if row["chatsync.type"] == ["welcome"])
    sid = welcome["chatsync.sid"]
    assert len(sid) == 1 and re.fullmatch(r"[0-9a-f]{16}", sid[0]), sid
    assert welcome["chatsync.n"] == ["1"]
    assert all(row["chatsync.sid"] == sid for row in from_server), \
        [row for row in from_server if row["chatsync.sid"] != sid]
    assert all(row["_ws.col.Info"][0].endswith(f" sid={sid[0]}") for row in from_server)
    # The client: its first requests went before the welcome came, and their copies
    # keep their bytes; every ack, and every request after the first join, has the sid.
    to_server = [row for row in rows if row not in from_server]
    assert to_server[0]["chatsync.type"] == ["join"] and not to_server[0]["chatsync.sid"]
    assert all(row["chatsync.sid"] == sid for row in to_server
               if row["chatsync.type"] == ["ack"] or row["chatsync.type"] == ["message"])
    # An ack's generated field says what it acknowledges, and nothing else has one.
    acks = [row for row in rows if row["chatsync.type"] == ["ack"]]
    assert all(row["chatsync.ack.n"] == row["chatsync.n"] for row in acks)
    assert all(row["chatsync.ack.id"] == row["chatsync.id"] for row in acks)
    assert {row["udp.srcport"] == server_port for row in acks if row["chatsync.ack.id"]} \
        == {True}
    assert not any(row["chatsync.ack.n"] or row["chatsync.ack.id"] for row in rows
                   if row not in acks)


@pytest.mark.timeout(90)
def test_a_restarted_server_forgets_the_session_and_its_welcome_says_which(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    """A server that restarts on the same port meets the old sid: its welcome carries forgot."""
    path = tmp_path / "restart.pcap"
    first = serve_udp(port=0, shutdown_grace_s=0.3)
    port = first.port
    recorder = Recorder("--udp", "--upstream", f"127.0.0.1:{port}", "--pcap", str(path))
    recorders.append(recorder)
    client = UdpChatClient(UdpClientConfig(host="127.0.0.1", port=recorder.port, user="alice",
                                           **UDP_FAST))
    try:
        client.connect(10)
        client.say("before")
        assert client.wait_sent(timeout=10)
        first.stop()                         # alice is told shutdown, and rejoins by herself
        with serve_udp(port=port, shutdown_grace_s=0.3):
            client.say("after")              # held until she is back, then sent
            assert client.wait_sent(timeout=20), "alice never got back in"
            client.close()
    finally:
        client.close()
        first.stop()
    assert recorder.stop()[0] == 0
    rows = fields(path, "udp.srcport", "chatsync.type", "chatsync.sid", "chatsync.forgot",
                  "chatsync.text", display="chatsync")
    welcomes = [row for row in rows if row["chatsync.type"] == ["welcome"]
                and row["udp.srcport"] == [str(port)]]
    old, new = welcomes[0]["chatsync.sid"], welcomes[-1]["chatsync.sid"]
    assert old != new and not welcomes[0]["chatsync.forgot"]
    assert welcomes[-1]["chatsync.forgot"] == old
    said = {row["chatsync.text"][0]: row["chatsync.sid"] for row in rows
            if row["chatsync.type"] == ["message"] and row["udp.srcport"] != [str(port)]}
    assert said == {"before": old, "after": new}


TSHARK_LINE = re.compile(r" *\d+ +\d+\.\d{6} +127\.0\.0\.1 → 127\.0\.0\.1 +CHATSYNC \d+ (.*)")


def info_part(line: str) -> str:
    """What a line of tshark's summary says after its size, with the sid as SID."""
    match = TSHARK_LINE.fullmatch(line)
    assert match, line
    return re.sub(r"sid=[0-9a-f]{16}", "sid=SID", match.group(1))


@pytest.mark.timeout(90)
def test_the_readmes_udp_summary_is_what_tshark_shows(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    path = tmp_path / "udp.pcap"
    record_udp_session(recorders, ["hello 0"], "--pcap", str(path))
    result = run_tshark(["-X", f"lua_script:{dissector.path()}", "-r", str(path)])
    assert result.returncode == 0 and not lua_trouble(result.stderr), result.stderr
    shown = [info_part(line) for line in result.stdout.splitlines()]
    sample = re.findall(r"```text\n(.*?)```", readme_section("Watching the wire"), re.S)[-1]
    lines = sample.splitlines()
    assert lines and len({sid for line in lines for sid in re.findall(r"sid=(\w+)", line)}) == 1
    missing = [line for line in lines if info_part(line) not in shown]
    assert not missing, f"README lines tshark did not show: {missing}\nit showed {shown}"


@pytest.mark.timeout(60)
def test_on_a_port_another_protocol_owns_the_heuristic_must_go_first(tmp_path: Path) -> None:
    """As the README says: EtherNet/IP's 44818 is a port the system may hand out."""
    enip = ("127.0.0.1", 44818)
    path = tmp_path / "enip.pcap"
    pcap.write_pcap([Datagram(1.0, "->", b'{"type":"join","room":"lobby","user":"al","id":1}',
                              enip, ("127.0.0.1", 40001))], path)
    args = ["-X", f"lua_script:{dissector.path()}", "-r", str(path)]
    by_port, heuristic_first = run_tshark(args, prefs=()), run_tshark(args)
    assert "ENIP" in by_port.stdout and "CHATSYNC" not in by_port.stdout, by_port.stdout
    assert "CHATSYNC" in heuristic_first.stdout and "join [lobby] al" in heuristic_first.stdout
    assert "udp.try_heuristic_first:TRUE" in readme_section("Watching the wire")


# -- Framing and fields, on hand-made captures on the default ports --------------------------
def write(tmp_path: Path, records: list[Record | Datagram]) -> Path:
    path = tmp_path / "made.pcap"
    pcap.write_pcap(records, path)
    return path


def up(t: float, data: bytes) -> Segment:
    return Segment(t, 1, "->", data, CLIENT, TCP_SERVER)


@pytest.mark.timeout(60)
def test_lines_are_reassembled_and_split_whatever_the_segments(tmp_path: Path) -> None:
    """Port 7420 is chatsync even for lines the heuristic would not take (no "type" first)."""
    path = write(tmp_path, [
        up(1.0, b'{"room":"lobby","type":"join","user":"bob"}\n{"type":"who"}\r\n{"type":"mess'),
        up(1.1, b'age","te'),
        up(1.2, b'xt":"x"}\n\n{"type":"ping"}\n'),
    ])
    rows = fields(path, "tcp.len", "chatsync.type", "chatsync.room", "chatsync.text",
                  display="tcp.len > 0")
    assert [row["chatsync.type"] for row in rows] == [["join", "who"], [], ["message", "ping"]]
    assert column(rows, "chatsync.room") == ["lobby"]
    assert column(rows, "chatsync.text") == ["x"]


@pytest.mark.timeout(60)
def test_without_tcp_reassembly_part_of_a_line_is_said_to_be_so(tmp_path: Path) -> None:
    path = write(tmp_path, [up(1.0, b'{"type":"who"}\n{"type":"mess'), up(1.1, b'age"}\n')])
    rows = fields(path, "chatsync.type", "chatsync.unfinished", "chatsync.bad_json",
                  display="tcp.len > 0", prefs=("tcp.desegment_tcp_streams:FALSE",))
    assert rows[0]["chatsync.type"] == ["who"] and rows[0]["chatsync.unfinished"]
    assert rows[1]["chatsync.bad_json"], "the tail alone is not a message"


@pytest.mark.timeout(60)
def test_the_protocols_keys_are_fields_and_others_still_show_up(tmp_path: Path) -> None:
    sid, old = "3e9f4efc0792c075", "00112233aabbccdd"
    welcome = {"type": "welcome", "epoch": "7e0b5468", "sid": sid, "forgot": old, "n": 1,
               "limits": {"max_datagram_bytes": 1200, "nested": [1, {"a": []}]}, "ts": 1.5e9,
               "cookie": "a key the protocol may gain"}
    odd = {"type": "message", "seq": "seven", "n": 10**20, "text": 3, "id": "r-1",
           "history": "yes"}
    replayed = {"type": "system", "event": "join", "room": "lobby", "user": "bob",
                "text": "bob joined", "seq": 4, "history": True, "sid": sid, "n": 2}
    who = {"type": "who", "room": "lobby", "users": ["a"], "more": 7, "sid": sid, "n": 3}
    path = write(tmp_path, [
        Datagram(1.0, "<-", json.dumps(welcome).encode(), CLIENT, UDP_SERVER),
        Datagram(1.1, "<-", json.dumps(odd).encode(), CLIENT, UDP_SERVER),
        Datagram(1.2, "->", b"garbage", CLIENT, UDP_SERVER),
        Datagram(1.3, "<-", json.dumps(replayed).encode(), CLIENT, UDP_SERVER),
        Datagram(1.4, "<-", json.dumps(who).encode(), CLIENT, UDP_SERVER),
        up(2.0, b'{"type":"join","room":"lobby","user":"bob","since":3,"resume":"Xq3v"}\n'
                b'{"type":"whisper","to":"alice","text":"psst"}\n'),
        Segment(2.1, 1, "<-", b'{"type":"system","event":"bus_down","text":"down"}\n'
                              b'{"type":"error","code":"unavailable","text":"t","id":2}\n'
                              b'{"type":"whisper","from":"bob","to":"alice","text":"psst"}\n'
                              b'{"type":"error","code":"bad_message","text":"t","field":"user"}\n',
                CLIENT, TCP_SERVER),
    ])
    names = ("chatsync.type", "chatsync.sid", "chatsync.forgot", "chatsync.epoch",
             "chatsync.n", "chatsync.seq", "chatsync.id", "chatsync.history", "chatsync.more",
             "chatsync.since", "chatsync.resume", "chatsync.event", "chatsync.code",
             "chatsync.field", "chatsync.from", "chatsync.to", "chatsync.other",
             "chatsync.bad_json", "_ws.col.Info")
    rows = fields(path, *names, display="chatsync")
    assert rows[0]["chatsync.sid"] == [sid] and rows[0]["chatsync.forgot"] == [old]
    assert rows[0]["chatsync.epoch"] == ["7e0b5468"] and rows[0]["chatsync.n"] == ["1"]
    assert rows[0]["chatsync.other"] == [
        'limits: {"max_datagram_bytes": 1200, "nested": [1, {"a": []}]}', "ts: 1500000000.0",
        'cookie: "a key the protocol may gain"']
    assert rows[0]["_ws.col.Info"] == [f"welcome n=1 forgot={old} sid={sid}"]
    # A known key with a type it should not have is shown as sent, not dropped.
    assert rows[1]["chatsync.seq"] == [] and rows[1]["chatsync.id"] == ["r-1"]
    assert rows[1]["chatsync.other"] == ['seq: "seven"', "n: 100000000000000000000",
                                         "text: 3", 'history: "yes"']
    assert rows[2]["chatsync.bad_json"] and rows[2]["chatsync.type"] == []
    assert rows[3]["chatsync.history"] == ["1"] and rows[3]["chatsync.event"] == ["join"]
    assert rows[3]["_ws.col.Info"] == \
        [f'system join (history) [lobby] bob: "bob joined" n=2 seq=4 sid={sid}']
    assert rows[4]["chatsync.more"] == ["7"]
    assert rows[5]["chatsync.since"] == ["3"] and rows[5]["chatsync.resume"] == ["Xq3v"]
    assert rows[5]["chatsync.to"] == ["alice"]
    assert rows[6]["chatsync.event"] == ["bus_down"]
    assert rows[6]["chatsync.code"] == ["unavailable", "bad_message"]
    assert rows[6]["chatsync.from"] == ["bob"] and rows[6]["chatsync.field"] == ["user"]
    assert rows[6]["_ws.col.Info"][0].startswith('system bus_down "down", error "t" unavailable')
    # Nothing on the wire is called session or token: no such fields any more.
    result = run_tshark(["-G", "fields", "-X", f"lua_script:{dissector.path()}"])
    names_known = {line.split("\t")[2] for line in result.stdout.splitlines()
                   if line.startswith("F\t") and "\tchatsync" in line}
    assert set(names[:-1]) - {"chatsync.bad_json"} <= names_known
    assert not {"chatsync.session", "chatsync.token"} & names_known


JSON_CASES = [
    b'{"type":"message","text":"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 \\"quoted\\" back\\\\slash"}',
    b'  {"type" : "message" , "text" : "a\\/b"}  ',
    b'{"type":"x","n":-0,"seq":12,"f":1.5e-3,"g":[],"h":{},"i":[true,false,null]}',
    b'{"type":"x","deep":' + b"[" * 150 + b"]" * 150 + b"}",
    b'{"type":"x","text":"lone \\udc00 surrogate"}',
    b'{}',
    b'{"type":"x",}',
    b'{"type":"x" "y":1}',
    b'{"type":"x","n":01}',
    b'{"type":"x","n":1.}',
    b'{"type":"x","n":NaN}',
    b'{"type":"x","n":Infinity}',
    b'{"type":"x","a":1,"a":2}',
    b'{"type":"x","o":{"a":1,"a":2}}',
    b'{"type":"x","text":"tab\there"}',
    b'{"type":"x","text":"bad \\q escape"}',
    b'{"type":"x","text":"\\u12"}',
    b'{"type":"x","text":"unterminated}',
    b'{"type":"x"} trailing',
    b'{"type":"x","text":"\xff"}',
    b'{"type":"x","text":"\xc0\xaf"}',
    b'{"type":"x","text":"\xed\xa0\x80"}',
    b'{"type":"x","text":"\xf4\x90\x80\x80"}',
    b'["type"]',
    b'"type"',
    b'{"type":"x","deep":' + b"[" * 1200 + b"]" * 1200 + b"}",
    b'{"type":"x","a":[1,2,]}',
    b'{"type":tru}',
]


@pytest.mark.timeout(60)
def test_the_json_scanner_agrees_with_the_server(tmp_path: Path) -> None:
    """Each line is valid for the dissector exactly when ``protocol.decode`` takes it."""
    path = write(tmp_path, [up(1.0 + k / 100, line + b"\n") for k, line in enumerate(JSON_CASES)])
    rows = fields(path, "chatsync.bad_json", "chatsync.text", display="tcp.len > 0")
    assert len(rows) == len(JSON_CASES)
    for line, row in zip(JSON_CASES, rows):
        try:
            message = protocol.decode(line)
        except protocol.ProtocolError:
            assert row["chatsync.bad_json"], f"taken, but the server refuses it: {line!r}"
            continue
        assert not row["chatsync.bad_json"], f"refused, but the server takes it: {line!r}"
        text = message.get("text")
        if isinstance(text, str) and "\udc00" not in text:
            assert row["chatsync.text"] == [text]


@pytest.mark.timeout(60)
def test_a_line_past_the_limit_is_shown_not_waited_for(tmp_path: Path) -> None:
    path = write(tmp_path, [up(1.0, b'{"type":"message","text":"' + b"x" * 70_000),
                            up(1.1, b'"}\n{"type":"ping"}\n')])
    rows = fields(path, "chatsync.line_too_long", "chatsync.type", display="chatsync")
    assert column(rows, "chatsync.line_too_long") and "ping" in column(rows, "chatsync.type")


@pytest.mark.timeout(60)
def test_the_heuristic_finds_chat_sync_on_any_port_whatever_the_key_order(
        tmp_path: Path) -> None:
    server = ("127.0.0.1", 9100)
    path = write(tmp_path, [
        Segment(1.0, 1, "->", b'{"room":"r","type":"join","user":"u"}\n{"type":"wh', CLIENT,
                server),
        Segment(1.1, 1, "->", b'o"}\n', CLIENT, server),
        Segment(1.2, 2, "->", b'{"type":"message","text":"a long li', ("127.0.0.1", 40002),
                server),
        Segment(1.3, 2, "->", b'ne"}\n', ("127.0.0.1", 40002), server),
        Datagram(2.0, "<-", b'{"sid":"5f1c00aa5f1c00aa","type":"welcome","n":1}', CLIENT,
                 ("127.0.0.1", 9101)),
    ])
    rows = fields(path, "chatsync.type", "chatsync.sid", display="chatsync")
    assert column(rows, "chatsync.type") == ["join", "who", "message", "welcome"]
    assert column(rows, "chatsync.sid") == ["5f1c00aa5f1c00aa"]


@pytest.mark.timeout(60)
def test_other_protocols_are_left_alone(tmp_path: Path) -> None:
    """The heuristic takes only what starts like chat_sync: HTTP on port 8080 stays HTTP."""
    web = ("127.0.0.1", 8080)
    path = write(tmp_path, [Segment(1.0, 1, "->", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                    CLIENT, web),
                            Segment(1.1, 1, "<-", b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}',
                                    CLIENT, web),
                            Datagram(2.0, "->", b'{"hello": "not chat_sync"}', CLIENT,
                                     ("127.0.0.1", 9999))])
    rows = fields(path, "chatsync.type", "frame.protocols")
    assert not column(rows, "chatsync.type")
    assert not any("chatsync" in value for value in column(rows, "frame.protocols"))


# -- The checks themselves, and the README --------------------------------------------------
@pytest.mark.timeout(60)
def test_a_broken_dissector_is_caught(tmp_path: Path) -> None:
    """Both kinds of Lua error fail ``fields``: so a passing run means a working dissector."""
    path = write(tmp_path, [up(1.0, b'{"type":"ping"}\n')])
    source = dissector.path().read_text(encoding="utf-8")
    syntax = tmp_path / "syntax.lua"
    syntax.write_text(source.replace("local function parse(s)", "local function parse(s) = ="),
                      encoding="utf-8")
    with pytest.raises(AssertionError, match="Lua"):
        fields(path, "frame.number", lua=syntax)
    runtime = tmp_path / "runtime.lua"
    runtime.write_text(source.replace("    local s = range:raw()\n",
                                      "    local s = range:raw() .. nil\n"), encoding="utf-8")
    assert runtime.read_text(encoding="utf-8") != source
    with pytest.raises(AssertionError, match="Lua runtime error"):
        fields(path, "frame.number", lua=runtime)


@pytest.mark.timeout(120)
def test_the_readme_commands_decode_and_install_the_dissector(
        tmp_path: Path, recorders: list[Recorder]) -> None:
    """Runs the README's tshark and install lines as written, with HOME in a scratch folder."""
    with serve_tcp(port=0) as server:
        recorder = record_tcp_session(server.port, recorders, "--pcap",
                                      str(tmp_path / "session.pcap"))
        assert recorder.stop()[0] == 0
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "chat-sync").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m chat_sync "$@"\n')
    (shim / "chat-sync").chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    section = readme_section("Watching the wire")
    commands = [line for block in re.findall(r"```shell\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.strip()]
    assert any(c.startswith("tshark") for c in commands) and any(c.startswith("cp") for c in commands)
    outputs = []
    for command in commands:
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                timeout=60, env=env, cwd=tmp_path)
        assert result.returncode == 0 and not lua_trouble(result.stderr), (command, result.stderr)
        outputs.append(result.stdout)
    assert "CHATSYNC" in outputs[0] and "join [lobby] alice id=1" in outputs[0]
    assert "message\talice\thi there" in outputs[1]
    # Installed in the personal plugins folder, it works with no -X at all.
    rows = fields(tmp_path / "session.pcap", "chatsync.type", env=env, display="chatsync",
                  installed=True)
    assert column(rows, "chatsync.type")[:2] == ["welcome", "join"]
