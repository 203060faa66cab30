"""Recorded TCP and UDP traffic as a classic libpcap file that Wireshark and tshark open.

Theory of operation
-------------------
The recording relays (``recorder``, ``datagram_recorder``) keep what each
``recv`` returned, with the real client and server addresses. This module turns that record back
into the packets a capture on the loopback interface would have shown, with
no I/O of its own: ``packets(records)`` builds the TCP conversation,
``pcap_bytes(records)`` encodes it, ``write_pcap(records, file)`` writes it.

Rules:

- The file is classic libpcap (magic ``0xa1b2c3d4``, version 2.4,
  microsecond timestamps) with ``LINKTYPE_ETHERNET``: every tool reads it.
  Ethernet addresses are all zero, as on Linux's loopback device.
- Each packet is Ethernet + IPv4 + TCP (no options) with correct IP and TCP
  checksums, so Wireshark validates them instead of flagging them.
- Each connection gets a fixed initial sequence number per side (derived
  from its id, so the same record always gives the same file). An ``open``
  event becomes SYN, SYN-ACK, ACK; a segment becomes PSH-ACK packets (split
  at ``MSS``) whose sequence numbers advance by the payload, acknowledging
  everything the other side sent; a ``fin`` becomes FIN-ACK and the peer's
  ACK; a ``reset`` becomes RST-ACK; a ``close`` sends the FINs not yet sent.
- A record that starts mid-connection (a hand-made list of segments, or
  one whose oldest records were dropped) gets a handshake at its first
  segment, so the stream still decodes.
- A UDP ``Datagram`` becomes one Ethernet + IPv4 + UDP packet, checksummed.
  A fault relay records each datagram twice over: as its sender sent it
  (arrived at the relay, lost ones included) and as its receiver got it
  (each copy sent on: duplicates, reordering and delays included, losses
  missing). ``udp="sent"``, the default, writes the first, the view of a
  capture on the sender's side, where a retransmission is a datagram
  sent again; ``udp="received"`` the second. Packets are written in time
  order, TCP and UDP alike.

Trade-offs, honestly: timestamps are the relay's reads, not the wire's;
window sizes are a constant; pure ACKs are synthesised only for the
handshake and FINs; a segment longer than ``MSS`` is split evenly by
size, not as the kernel split it. The payload bytes and their order per
direction are exact. IPv4 only: the relay listens on 127.0.0.1.
"""
from __future__ import annotations

import enum
import ipaddress
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, Union

from .records import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    Address,
    ConnEvent,
    Datagram,
    EventKind,
    Record,
    Segment,
)

PCAP_MAGIC = 0xA1B2C3D4
PCAP_VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
ETHERTYPE_IPV4 = 0x0800
IPPROTO_TCP = 6
IPPROTO_UDP = 17
MSS = 65535 - 20 - 20      # the largest payload one IPv4 packet without options can hold
WINDOW = 65535
TTL = 64

GLOBAL_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
ETHERNET = struct.Struct("!6s6sH")
IPV4 = struct.Struct("!BBHHHBBH4s4s")
TCP = struct.Struct("!HHIIBBHHH")
UDP = struct.Struct("!HHHH")


class TcpFlags(enum.IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10


@dataclass(frozen=True)
class Packet:
    """One TCP packet of the conversation: what the pcap file holds, decoded."""

    t: float
    src: Address
    dst: Address
    seq: int
    ack: int
    flags: TcpFlags
    payload: bytes = b""

    def summary(self, t0: float = 0.0) -> str:
        """A tcpdump-like line: time, endpoints, flags, seq, ack, length."""
        names = "".join(letter for flag, letter in ((TcpFlags.SYN, "S"), (TcpFlags.FIN, "F"),
                                                     (TcpFlags.RST, "R"), (TcpFlags.PSH, "P"),
                                                     (TcpFlags.ACK, "."))
                         if self.flags & flag)
        return (f"{self.t - t0:10.6f} {self.src[0]}:{self.src[1]} > {self.dst[0]}:{self.dst[1]}"
                f" [{names}] seq {self.seq} ack {self.ack} len {len(self.payload)}")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(host: str) -> bytes:
    try:
        return ipaddress.IPv4Address(host).packed
    except ValueError:
        raise ValueError(f"pcap export handles IPv4 addresses only, not {host!r}") from None


def frame(packet: Packet, ip_id: int = 0) -> bytes:
    """One Ethernet frame holding ``packet`` as IPv4 + TCP, checksums filled in."""
    src_ip, dst_ip = _ipv4(packet.src[0]), _ipv4(packet.dst[0])
    tcp_length = TCP.size + len(packet.payload)
    header = TCP.pack(packet.src[1], packet.dst[1], packet.seq, packet.ack,
                      (TCP.size // 4) << 4, int(packet.flags), WINDOW, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src_ip, dst_ip, 0, IPPROTO_TCP, tcp_length)
    tcp_sum = checksum(pseudo + header + packet.payload)
    header = header[:16] + struct.pack("!H", tcp_sum) + header[18:]
    ip = IPV4.pack(0x45, 0, IPV4.size + tcp_length, ip_id & 0xFFFF, 0x4000, TTL,
                   IPPROTO_TCP, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ETHERNET.pack(b"\0" * 6, b"\0" * 6, ETHERTYPE_IPV4) + ip + header + packet.payload


def udp_frame(datagram: Datagram, ip_id: int = 0) -> bytes:
    """One Ethernet frame holding ``datagram`` as IPv4 + UDP, from its sender to its receiver."""
    src, dst = ((datagram.client, datagram.server) if datagram.direction == CLIENT_TO_SERVER
                else (datagram.server, datagram.client))
    src_ip, dst_ip = _ipv4(src[0]), _ipv4(dst[0])
    length = UDP.size + len(datagram.data)
    pseudo = struct.pack("!4s4sBBH", src_ip, dst_ip, 0, IPPROTO_UDP, length)
    udp_sum = checksum(pseudo + UDP.pack(src[1], dst[1], length, 0) + datagram.data) or 0xFFFF
    ip = IPV4.pack(0x45, 0, IPV4.size + length, ip_id & 0xFFFF, 0x4000, TTL,
                   IPPROTO_UDP, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return (ETHERNET.pack(b"\0" * 6, b"\0" * 6, ETHERTYPE_IPV4) + ip
            + UDP.pack(src[1], dst[1], length, udp_sum) + datagram.data)


# -- The conversation a record implies ----------------------------------------------
class _Flow:
    """Sequence numbers of one connection, both sides."""

    def __init__(self, conn: int, client: Address, server: Address) -> None:
        self.client = client
        self.server = server
        # Fixed per connection, so one record always gives the same file.
        self.next_seq = {CLIENT_TO_SERVER: (conn * 0x9E3779B1) & 0xFFFFFFFF,
                         SERVER_TO_CLIENT: (conn * 0x85EBCA77 + 0x1000) & 0xFFFFFFFF}
        self.open = False
        self.finished: set[str] = set()
        self.reset = False

    def ends(self, direction: str) -> tuple[Address, Address]:
        return (self.client, self.server) if direction == CLIENT_TO_SERVER else (self.server,
                                                                                 self.client)

    def other(self, direction: str) -> str:
        return SERVER_TO_CLIENT if direction == CLIENT_TO_SERVER else CLIENT_TO_SERVER

    def packet(self, t: float, direction: str, flags: TcpFlags, payload: bytes = b"") -> Packet:
        """A packet from ``direction``'s sender; advances its sequence number."""
        src, dst = self.ends(direction)
        seq = self.next_seq[direction]
        ack = self.next_seq[self.other(direction)] if flags & TcpFlags.ACK else 0
        used = len(payload) + (1 if flags & (TcpFlags.SYN | TcpFlags.FIN) else 0)
        self.next_seq[direction] = (seq + used) & 0xFFFFFFFF
        return Packet(t, src, dst, seq, ack, flags, payload)

    def handshake(self, t: float) -> list[Packet]:
        self.open = True
        return [self.packet(t, CLIENT_TO_SERVER, TcpFlags.SYN),
                self.packet(t, SERVER_TO_CLIENT, TcpFlags.SYN | TcpFlags.ACK),
                self.packet(t, CLIENT_TO_SERVER, TcpFlags.ACK)]

    def fin(self, t: float, direction: str) -> list[Packet]:
        if direction in self.finished or self.reset:
            return []
        self.finished.add(direction)
        return [self.packet(t, direction, TcpFlags.FIN | TcpFlags.ACK),
                self.packet(t, self.other(direction), TcpFlags.ACK)]


def packets(records: Iterable[Record]) -> list[Packet]:
    """The TCP packets a capture would show for ``records``, in order.

    Raises ValueError for an address that is not IPv4.
    """
    flows: dict[int, _Flow] = {}
    out: list[Packet] = []
    for record in records:
        _ipv4(record.client[0])
        _ipv4(record.server[0])
        flow = flows.get(record.conn)
        if flow is None:
            flow = flows[record.conn] = _Flow(record.conn, record.client, record.server)
        if isinstance(record, Segment):
            if not flow.open:
                out += flow.handshake(record.t)
            for start in range(0, len(record.data), MSS):
                out.append(flow.packet(record.t, record.direction, TcpFlags.PSH | TcpFlags.ACK,
                                       record.data[start:start + MSS]))
            continue
        out += _event_packets(flow, record)
    return out


def _event_packets(flow: _Flow, event: ConnEvent) -> list[Packet]:
    if event.kind is EventKind.OPEN:
        return [] if flow.open else flow.handshake(event.t)
    if event.kind is EventKind.FIN:
        if not flow.open:
            return flow.handshake(event.t) + flow.fin(event.t, event.direction or CLIENT_TO_SERVER)
        return flow.fin(event.t, event.direction or CLIENT_TO_SERVER)
    if event.kind is EventKind.RESET:
        if flow.reset:
            return []
        direction = event.direction or CLIENT_TO_SERVER
        out: list[Packet] = []
        if not flow.open:
            # A connection that never opened: the client's SYN, refused.
            flow.open = True
            out.append(flow.packet(event.t, CLIENT_TO_SERVER, TcpFlags.SYN))
            direction = SERVER_TO_CLIENT
        flow.reset = True
        out.append(flow.packet(event.t, direction, TcpFlags.RST | TcpFlags.ACK))
        return out
    # CLOSE: whatever was not ended yet is ended now (the relay closed both sockets).
    if not flow.open:
        return []
    out = []
    for direction in (CLIENT_TO_SERVER, SERVER_TO_CLIENT):
        out += flow.fin(event.t, direction)
    return out


# -- The file ----------------------------------------------------------------------
def _timestamp(t: float) -> tuple[int, int]:
    micros = round(t * 1_000_000)
    return micros // 1_000_000, micros % 1_000_000


UDP_VIEWS = ("sent", "received")


def pcap_bytes(records: Iterable[Record | Datagram], udp: str = "sent") -> bytes:
    """The whole pcap file for ``records``; ``udp`` picks a view (see the module comment).

    Raises ValueError for a non-IPv4 address or another ``udp``.
    """
    if udp not in UDP_VIEWS:
        raise ValueError(f"udp must be 'sent' or 'received', not {udp!r}")
    tcp: list[Record] = []
    datagrams: list[Datagram] = []
    for record in records:
        if isinstance(record, Datagram):
            if record.sent == (udp == "received"):
                datagrams.append(record)
        else:
            tcp.append(record)
    timeline: list[tuple[float, Packet | Datagram]] = [(p.t, p) for p in packets(tcp)]
    timeline += [(d.t, d) for d in datagrams]
    timeline.sort(key=lambda item: item[0])       # stable: equal times keep their order
    chunks = [GLOBAL_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)]
    for ip_id, (t, item) in enumerate(timeline, start=1):
        data = udp_frame(item, ip_id) if isinstance(item, Datagram) else frame(item, ip_id)
        seconds, micros = _timestamp(t)
        chunks.append(RECORD_HEADER.pack(seconds, micros, len(data), len(data)))
        chunks.append(data)
    return b"".join(chunks)


def write_pcap(records: Iterable[Record | Datagram],
               file: Union[BinaryIO, str, "os.PathLike[str]"], udp: str = "sent") -> int:
    """Write the pcap to a binary file object or a path; returns the bytes written."""
    data = pcap_bytes(records, udp)
    if isinstance(file, (str, os.PathLike)):
        with open(file, "wb") as out:
            out.write(data)
    else:
        file.write(data)
    return len(data)


def read_pcap(data: bytes) -> list[Packet]:
    """Decode a file that ``pcap_bytes`` wrote (Ethernet, IPv4, TCP) back into packets.

    Raises ValueError on anything else: another magic, link type or protocol.
    """
    if len(data) < GLOBAL_HEADER.size:
        raise ValueError("too short for a pcap header")
    magic, major, minor, _, _, _, linktype = GLOBAL_HEADER.unpack_from(data)
    if magic != PCAP_MAGIC or (major, minor) != PCAP_VERSION or linktype != LINKTYPE_ETHERNET:
        raise ValueError("not a little-endian pcap 2.4 Ethernet capture")
    out: list[Packet] = []
    offset = GLOBAL_HEADER.size
    while offset < len(data):
        seconds, micros, length, _ = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        frame_bytes = data[offset:offset + length]
        offset += length
        if len(frame_bytes) != length:
            raise ValueError("truncated packet record")
        _, _, ethertype = ETHERNET.unpack_from(frame_bytes)
        ip = frame_bytes[ETHERNET.size:]
        version_ihl, _, total, _, _, _, proto, _, src, dst = IPV4.unpack_from(ip)
        if ethertype != ETHERTYPE_IPV4 or proto != IPPROTO_TCP:
            raise ValueError("not an IPv4 TCP packet")
        tcp = ip[(version_ihl & 0x0F) * 4:total]
        sport, dport, seq, ack, offset_byte, flags, _, _, _ = TCP.unpack_from(tcp)
        out.append(Packet(seconds + micros / 1_000_000,
                          (str(ipaddress.IPv4Address(src)), sport),
                          (str(ipaddress.IPv4Address(dst)), dport),
                          seq, ack, TcpFlags(flags), tcp[(offset_byte >> 4) * 4:]))
    return out
