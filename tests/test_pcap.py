"""pcap export: parsed back here with ``struct`` alone, and by tshark when it is installed.

The parser below is deliberately independent of ``chat_sync.pcap``: it reads
the headers field by field and re-checks both checksums, so a bug in the
writer cannot hide behind the same bug in its reader.
"""
from __future__ import annotations

import io
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from chat_sync import pcap, protocol
from chat_sync.recorder import ConnEvent, EventKind, Record, RecordingRelay, Segment
from chat_sync.records import Datagram
from chat_sync.tcp_server import serve

CLIENT = ("127.0.0.1", 40001)
SERVER = ("127.0.0.1", 7420)
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10


def seg(t: float, direction: str, data: bytes, conn: int = 1,
        client: tuple[str, int] = CLIENT) -> Segment:
    return Segment(t, conn, direction, data, client, SERVER)


def event(t: float, kind: EventKind, direction: str | None = None, conn: int = 1,
          reason: str = "") -> ConnEvent:
    return ConnEvent(t, conn, kind, CLIENT, SERVER, direction, reason)


def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


@dataclass
class Parsed:
    t: float
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: int
    payload: bytes


def parse(data: bytes) -> list[Parsed]:
    """Read a pcap written by chat_sync, checking every header field on the way."""
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, zone, sigfigs, linktype) == (0xA1B2C3D4, 2, 4, 0, 0, 1)
    packets = []
    offset = 24
    while offset < len(data):
        seconds, micros, incl, orig = struct.unpack_from("<IIII", data, offset)
        offset += 16
        assert incl == orig <= snaplen and micros < 1_000_000
        frame = data[offset:offset + incl]
        offset += incl
        assert len(frame) == incl
        assert frame[12:14] == b"\x08\x00"                     # IPv4
        ip = frame[14:34]
        version_ihl, _, total, _, frag, ttl, proto, _, src, dst = struct.unpack(
            "!BBHHHBBH4s4s", ip)
        assert version_ihl == 0x45 and proto == 6 and ttl > 0 and frag == 0x4000
        assert total == len(frame) - 14
        assert ones_complement_sum(ip) == 0xFFFF, "bad IP header checksum"
        tcp = frame[34:]
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        assert ones_complement_sum(pseudo + tcp) == 0xFFFF, "bad TCP checksum"
        sport, dport, seq, ack, data_offset, flags = struct.unpack_from("!HHIIBB", tcp)
        packets.append(Parsed(seconds + micros / 1e6,
                              (socket.inet_ntoa(src), sport), (socket.inet_ntoa(dst), dport),
                              seq, ack, flags, tcp[(data_offset >> 4) * 4:]))
    return packets


def stream(packets: list[Parsed], src: tuple[str, int]) -> bytes:
    """Reassemble one direction's payload by sequence number, checking there are no gaps."""
    data = b""
    expected = None
    for packet in packets:
        if packet.src != src:
            continue
        if packet.flags & SYN:
            expected = (packet.seq + 1) & 0xFFFFFFFF
            continue
        assert packet.seq == expected, "gap or overlap in the sequence numbers"
        data += packet.payload
        expected = (expected + len(packet.payload) + (1 if packet.flags & FIN else 0)) & 0xFFFFFFFF
    return data


CONVERSATION: list[Record] = [
    event(100.0, EventKind.OPEN),
    seg(100.001, "<-", b'{"type":"welcome"}\n'),
    seg(100.002, "->", b'{"type":"join","room":"lobby",'),
    seg(100.003, "->", b'"user":"alice"}\n'),
    seg(100.004, "<-", b'{"type":"system","event":"join"}\n'),
    event(100.5, EventKind.FIN, "->"),
    event(100.6, EventKind.FIN, "<-"),
    event(100.6, EventKind.CLOSE, reason="closed by both sides"),
]


# -- Pure -----------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_checksum_matches_rfc_1071_example() -> None:
    assert pcap.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert pcap.checksum(b"\x01") == ~0x0100 & 0xFFFF


@pytest.mark.timeout(10)
def test_a_conversation_becomes_handshake_data_and_fins() -> None:
    packets = parse(pcap.pcap_bytes(CONVERSATION))
    client_flags = [p.flags for p in packets if p.src == CLIENT]
    server_flags = [p.flags for p in packets if p.src == SERVER]
    assert [p.flags for p in packets[:3]] == [SYN, SYN | ACK, ACK]
    assert client_flags == [SYN, ACK, PSH | ACK, PSH | ACK, FIN | ACK, ACK]
    assert server_flags == [SYN | ACK, PSH | ACK, PSH | ACK, ACK, FIN | ACK]
    assert stream(packets, CLIENT) == b'{"type":"join","room":"lobby","user":"alice"}\n'
    assert stream(packets, SERVER) == b'{"type":"welcome"}\n{"type":"system","event":"join"}\n'
    assert all(p.dst == (SERVER if p.src == CLIENT else CLIENT) for p in packets)
    assert packets[0].t == 100.0 and packets[3].t == pytest.approx(100.001, abs=1e-6)


@pytest.mark.timeout(10)
def test_every_ack_acknowledges_what_the_other_side_sent() -> None:
    packets = parse(pcap.pcap_bytes(CONVERSATION))
    sent = {CLIENT: packets[0].seq + 1, SERVER: packets[1].seq + 1}
    for packet in packets[2:]:
        if packet.flags & ACK:
            assert packet.ack == sent[packet.dst]
        sent[packet.src] = packet.seq + len(packet.payload) + (1 if packet.flags & FIN else 0)


@pytest.mark.timeout(10)
def test_segments_alone_get_a_handshake_and_connections_stay_apart() -> None:
    other = ("127.0.0.1", 40002)
    records: list[Record] = [seg(1.0, "->", b"a\n"), seg(1.1, "->", b"b\n", conn=2, client=other),
                             seg(1.2, "<-", b"c\n")]
    packets = parse(pcap.pcap_bytes(records))
    assert [p.flags for p in packets if other in (p.src, p.dst)][:3] == [SYN, SYN | ACK, ACK]
    assert stream(packets, CLIENT) == b"a\n" and stream(packets, other) == b"b\n"
    assert len({p.seq for p in packets if p.flags == SYN}) == 2    # distinct ISNs


@pytest.mark.timeout(10)
def test_a_segment_longer_than_the_mss_is_split() -> None:
    data = bytes(range(256)) * 1024                  # 256 KiB
    packets = parse(pcap.pcap_bytes([seg(1.0, "->", data)]))
    assert max(len(p.payload) for p in packets) == pcap.MSS
    assert stream(packets, CLIENT) == data


@pytest.mark.timeout(10)
def test_reset_and_refused_connections() -> None:
    reset = parse(pcap.pcap_bytes([event(1.0, EventKind.OPEN), seg(1.1, "->", b"x\n"),
                                   event(1.2, EventKind.RESET, "<-", reason="boom"),
                                   event(1.2, EventKind.CLOSE, reason="boom")]))
    assert [p.flags for p in reset][-1] == RST | ACK and reset[-1].src == SERVER
    refused = parse(pcap.pcap_bytes([event(1.0, EventKind.RESET, "<-"),
                                     event(1.0, EventKind.CLOSE)]))
    assert [(p.src, p.flags) for p in refused] == [(CLIENT, SYN), (SERVER, RST | ACK)]
    assert refused[1].ack == refused[0].seq + 1


@pytest.mark.timeout(10)
def test_close_without_fins_sends_both_and_output_is_deterministic() -> None:
    records = [event(1.0, EventKind.OPEN), event(2.0, EventKind.CLOSE, reason="relay stopped")]
    packets = parse(pcap.pcap_bytes(records))
    assert [p.flags for p in packets][3:] == [FIN | ACK, ACK, FIN | ACK, ACK]
    assert pcap.pcap_bytes(records) == pcap.pcap_bytes(records)
    assert parse(pcap.pcap_bytes([])) == []


@pytest.mark.timeout(10)
def test_read_pcap_and_write_pcap(tmp_path: Path) -> None:
    data = pcap.pcap_bytes(CONVERSATION)
    assert pcap.read_pcap(data) == pcap.packets(CONVERSATION)
    buffer = io.BytesIO()
    assert pcap.write_pcap(CONVERSATION, buffer) == len(data)
    assert buffer.getvalue() == data
    assert pcap.write_pcap(CONVERSATION, tmp_path / "chat.pcap") == len(data)
    assert (tmp_path / "chat.pcap").read_bytes() == data
    line = pcap.read_pcap(data)[0].summary(t0=100.0)
    assert line.startswith("  0.000000 127.0.0.1:40001 > 127.0.0.1:7420 [S] seq ")
    with pytest.raises(ValueError):
        pcap.read_pcap(b"\xd4\xc3\xb2\xa1" + bytes(20))


@pytest.mark.timeout(10)
def test_ipv6_is_refused_with_a_clear_error() -> None:
    records = [Segment(1.0, 1, "->", b"x", ("::1", 40000), ("::1", 7420))]
    with pytest.raises(ValueError, match="IPv4"):
        pcap.pcap_bytes(records)


# -- Real traffic, and tshark's opinion of it -------------------------------------------
def record_a_chat() -> list[Record]:
    """Two clients through a recording relay in front of a real server."""
    with serve(port=0) as server, RecordingRelay((server.host, server.port)) as relay:
        socks = [socket.create_connection(relay.address, timeout=5) for _ in range(2)]
        readers = [sock.makefile("rb") for sock in socks]
        try:
            for sock, reader, name in zip(socks, readers, ("alice", "bob")):
                reader.readline()
                sock.sendall(protocol.encode({"type": "join", "room": "lobby", "user": name}))
                while protocol.decode(reader.readline().rstrip(b"\n")).get("user") != name:
                    pass
            socks[1].sendall(protocol.encode({"type": "message", "text": "hi alice"}))
            for reader in readers:
                while protocol.decode(reader.readline().rstrip(b"\n")).get("text") != "hi alice":
                    pass
            socks[0].sendall(b"not json\n")
            assert b"bad_json" in readers[0].readline()
            for reader, sock in zip(readers, socks):
                # A polite close: say we are done, read what is left to the server's EOF.
                # Closing with unread bytes (the other's leave notice) would send a reset.
                sock.shutdown(socket.SHUT_WR)
                while reader.readline():
                    pass
        finally:
            for reader, sock in zip(readers, socks):
                reader.close()
                sock.close()
        assert relay.wait_for(lambda rs: sum(isinstance(r, ConnEvent) and r.kind is EventKind.CLOSE
                                             for r in rs) == 2)
        return relay.records


def server_of(records: list[Record]) -> tuple[str, int]:
    return records[0].server


@pytest.mark.timeout(30)
def test_real_traffic_round_trips_through_struct() -> None:
    records = record_a_chat()
    packets = parse(pcap.pcap_bytes(records))
    for conn in (1, 2):
        client = next(r.client for r in records if r.conn == conn)
        for direction, src in (("->", client), ("<-", server_of(records))):
            sent = b"".join(r.data for r in records if isinstance(r, Segment)
                            and r.conn == conn and r.direction == direction)
            ours = [p for p in packets if client in (p.src, p.dst)]
            assert stream(ours, src) == sent
    assert sum(p.flags == SYN for p in packets) == 2
    assert sum(bool(p.flags & FIN) for p in packets) == 4


@pytest.mark.timeout(60)
def test_tshark_decodes_the_chat_lines(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    records = record_a_chat()
    path = tmp_path / "chat.pcap"
    pcap.write_pcap(records, path)
    result = subprocess.run(
        [tshark, "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-T", "fields", "-E", "separator=,", "-e", "tcp.stream", "-e", "tcp.srcport",
         "-e", "ip.checksum.status", "-e", "tcp.checksum.status", "-e", "tcp.payload"],
        capture_output=True, text=True, timeout=30, check=True)
    rows = [line.split(",") for line in result.stdout.splitlines()]
    assert rows and all(row[2] == "1" and row[3] == "1" for row in rows), "checksums not good"
    server_port = server_of(records)[1]
    by_stream: dict[tuple[str, str], bytes] = {}
    for stream_id, src_port, _, _, payload in rows:
        direction = "<-" if int(src_port) == server_port else "->"
        by_stream[stream_id, direction] = (by_stream.get((stream_id, direction), b"")
                                           + bytes.fromhex(payload))
    for conn, stream_id in ((1, "0"), (2, "1")):
        for direction in ("->", "<-"):
            sent = b"".join(r.data for r in records if isinstance(r, Segment)
                            and r.conn == conn and r.direction == direction)
            assert by_stream[stream_id, direction] == sent
    problems = subprocess.run([tshark, "-r", str(path), "-Y", "_ws.expert.severity >= warning"],
                              capture_output=True, text=True, timeout=30, check=True)
    assert problems.stdout == "", problems.stdout


# -- UDP datagrams ---------------------------------------------------------------------
UDP_SERVER = ("127.0.0.1", 7421)


def parse_udp(data: bytes) -> list[tuple[float, tuple[str, int], tuple[str, int], bytes]]:
    """Read a pcap of IPv4 UDP packets, re-checking both checksums."""
    out = []
    offset = 24
    while offset < len(data):
        seconds, micros, length, _ = struct.unpack_from("<IIII", data, offset)
        offset += 16
        frame = data[offset:offset + length]
        offset += length
        ip = frame[14:34]
        assert ones_complement_sum(ip) == 0xFFFF, "IPv4 checksum"
        assert ip[9] == 17
        src_ip, dst_ip = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        udp = frame[34:]
        sport, dport, udp_length, _ = struct.unpack_from("!HHHH", udp)
        assert udp_length == len(udp)
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, udp_length)
        assert ones_complement_sum(pseudo + udp) == 0xFFFF, "UDP checksum"
        out.append((seconds + micros / 1e6, (src_ip, sport), (dst_ip, dport), udp[8:]))
    return out


@pytest.mark.timeout(10)
def test_datagrams_are_udp_packets_in_time_order_from_the_view_asked_for() -> None:
    records: list[Record | Datagram] = [
        Datagram(2.0, "->", b'{"type":"join"}', CLIENT, UDP_SERVER),
        Datagram(2.1, "->", b'{"type":"join"}', CLIENT, UDP_SERVER, sent=True),
        Datagram(2.2, "<-", b'{"type":"ack","id":1}', CLIENT, UDP_SERVER, fate=("drop",)),
        Datagram(2.3, "<-", b'{"type":"welcome","n":1}', CLIENT, UDP_SERVER),
        Datagram(2.4, "<-", b'{"type":"welcome","n":1}', CLIENT, UDP_SERVER, sent=True),
        seg(1.0, "->", b"tcp\n"),
    ]
    senders = parse_udp(pcap.pcap_bytes(records[:5]))
    assert [(t, src, payload) for t, src, _, payload in senders] == [
        (2.0, CLIENT, b'{"type":"join"}'), (2.2, UDP_SERVER, b'{"type":"ack","id":1}'),
        (2.3, UDP_SERVER, b'{"type":"welcome","n":1}')]
    receivers = parse_udp(pcap.pcap_bytes(records[:5], udp="received"))
    assert [t for t, _, _, _ in receivers] == [2.1, 2.4]
    assert receivers[1][2] == CLIENT
    mixed = pcap.read_pcap(pcap.pcap_bytes([records[-1]]))     # TCP alone still reads back
    assert mixed[-1].payload == b"tcp\n"
    with pytest.raises(ValueError, match="'sent' or 'received'"):
        pcap.pcap_bytes(records, udp="both")


@pytest.mark.timeout(10)
def test_a_udp_checksum_of_zero_is_sent_as_all_ones() -> None:
    """RFC 768: 0 means "no checksum", so a sum that comes to 0 is written 0xFFFF."""
    for n in range(65536):              # one payload in 65536 sums to zero
        datagram = Datagram(1.0, "->", struct.pack("!H", n), CLIENT, UDP_SERVER)
        frame = pcap.udp_frame(datagram)
        if struct.unpack_from("!H", frame, 40)[0] == 0xFFFF:
            return
    pytest.fail("no two-byte payload gave a zero sum")
