"""The UDP server's defences end to end: a flood, garbage and forged addresses on 127.0.0.1.

A well-behaved pair of ``UdpChatClient``s chats while, on the same server:

- a **flooder**, a raw socket that joins properly (it acks what it gets) and
  then sends pings far faster than ``udp_rate_limit_per_s``;
- a **vandal**, a stranger that sends garbage of every kind;
- **200 one-shot sockets**, each sending one join and never acking, which is
  all a forged source address can do.

Every message of the pair must arrive exactly once and in order, and the
server's counts must match what was thrown at it, datagram for datagram.
The attackers send in bursts and wait (with a deadline) until the server has
counted each burst, so the kernel's socket buffer never overflows and the
counts can be exact. ``python -m pytest tests/test_hardening_udp.py -s``
prints the figures.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_for
from test_udp import (  # noqa: F401  (servers, clients: fixtures)
    WAIT,
    Clients,
    Servers,
    address,
    clients,
    collect_messages,
    in_threads,
    message_from,
    send_all,
    servers,
    system,
    until,
)

from chat_sync import protocol as p
from chat_sync.udp_server_core import AMPLIFICATION_FACTOR
from chat_sync.serving import ServerHandle
from chat_sync.udp_client import Received

BURST = 16                 # datagrams an attacker sends before it waits for the server's count
GARBAGE = {                # what the vandal sends, and the reason the server counts it under
    b"\xff\xfe": "bad_utf8",
    b"not json": "bad_json",
    b"{" * 1000: "bad_json",
    b"[1, 2]": "bad_json",
    b'{"type":"join"}': "bad_message",           # no id
    b'{"type":"ping","id":0}': "bad_message",
    b'{"type":"ack","n":1}': "bad_ack",          # an ack from a stranger
    b"x" * 1300: "datagram_too_large",
}


def dropped(server: ServerHandle, reason: str) -> int:
    return server.server.chat.dropped[reason]     # every reason exists from the start


def kernel_drops(port: int) -> str:
    """The kernel's count of datagrams it dropped at a full UDP socket on ``port`` (Linux),
    for a failure message: a count can only be exact if this stays 0."""
    try:
        with open("/proc/net/udp", encoding="ascii") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == port:
                    return fields[-1]
    except OSError:
        pass
    return "unknown"


def counted(server: ServerHandle, predicate: Callable[[], bool], what: str,
            flooder: Flooder | None = None) -> None:
    """Wait until the server has counted what was sent; if it never does, say what the
    server dropped and why, and what the kernel dropped on the way."""
    try:
        wait_for(predicate, WAIT, what)
    except AssertionError as exc:
        reasons = {reason: n for reason, n in server.server.chat.dropped.items() if n}
        seen = "" if flooder is None else f"; {flooder.summary()}"
        raise AssertionError(f"{exc}; the server dropped {reasons}, failed "
                             f"{server.server.send_errors} sends; datagrams the kernel "
                             f"dropped at the server's socket: {kernel_drops(server.port)}"
                             f"{seen}") from None


class Flooder:
    """A raw UDP socket that joins a room, acks what it gets, then floods pings.

    A reader thread acks and counts what comes back: ``acks`` (of our ids),
    ``types`` (of stream datagrams, each ``n`` once), ``errors`` (codes). A
    datagram it cannot make sense of goes to ``unexpected`` rather than ending
    the thread.

    A busy server may resend a datagram whose ack it has not read yet. The
    flooder acks only the first copy: on loopback that ack is not lost, and an
    ack that retires nothing costs a token, so acking every copy would make
    the server count rate-limited acks among the pings it dropped.
    """

    def __init__(self, server: tuple[str, int], user: str, room: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(server)
        self.sock.settimeout(0.05)      # the reader's poll of the stop flag, not a wait
        self.user, self.room = user, room
        self.next_id = 1
        self.acks = 0
        self.types: dict[str, int] = {}
        self.errors: list[str] = []
        self.error_texts: list[str] = []
        self.unexpected: list[bytes] = []
        self.sid: str | None = None
        self.seen: set[int] = set()         # stream numbers received
        self.joined = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"flooder-{user}", daemon=True)
        self._reader.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def send(self, **fields: Any) -> None:
        if self.sid is not None:
            fields["sid"] = self.sid
        self.sock.send(json.dumps({**fields, "id": self.next_id}).encode())
        self.next_id += 1

    def join(self) -> None:
        self.send(type="join", room=self.room, user=self.user)
        assert self.joined.wait(WAIT), "the flooder's join was not answered"

    def count_acks(self) -> int:
        with self._lock:
            return self.acks

    def summary(self) -> str:
        with self._lock:
            return (f"the flooder got {self.acks} acks and the stream {self.types}, could "
                    f"not read {self.unexpected[:3]}; the kernel dropped "
                    f"{kernel_drops(self.address[1])} datagrams at its socket")

    def close(self) -> None:
        self._stop.set()
        self._reader.join(WAIT)
        self.sock.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                continue
            try:
                message = p.decode(data)
                self._take(message)
            except (p.ProtocolError, KeyError, TypeError):
                self.unexpected.append(data)
                continue
            if message.get("event") == "join" and message.get("user") == self.user:
                self.joined.set()

    def _take(self, message: dict[str, Any]) -> None:
        with self._lock:
            if message.get("type") == "ack":
                self.acks += 1
                return
            n, self.sid = message["n"], message["sid"]      # from the welcome on
            if n in self.seen:
                return          # a resent copy: see the class docstring
            self.seen.add(n)
            self.sock.send(json.dumps({"type": "ack", "n": n, "sid": self.sid}).encode())
            kind = str(message.get("type"))
            self.types[kind] = self.types.get(kind, 0) + 1
            if kind == "error":
                self.errors.append(str(message.get("code")))
                self.error_texts.append(str(message.get("text")))


@pytest.mark.timeout(40)
def test_flood_garbage_and_200_one_shot_sockets_do_not_disturb_a_chatting_pair(
        servers: Servers, clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chat_sync.udp_server")
    max_clients = 40
    server = servers.start(max_clients=max_clients, unverified_timeout_s=1.0)
    alice = clients.connect(address(server), "alice")
    bob = clients.connect(address(server), "bob")
    until(alice, system("join", "bob"))
    flooder = Flooder(address(server), "flood", "floodroom")
    vandal = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ghosts = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
    figures: dict[str, Any] = {}
    try:
        flooder.join()
        peers = server.server.chat.peers
        real = {alice.address, bob.address, flooder.address}

        def flood() -> None:
            # Each ping is either acked or dropped as rate_limited; the flooder's
            # are the only datagrams the server rate-limits, as long as it acks
            # nothing twice (see Flooder).
            started = time.monotonic()
            acks_before, pings = flooder.count_acks(), 0
            for _ in range(60):
                for _ in range(BURST):
                    flooder.send(type="ping")
                pings += BURST
                counted(server, lambda: flooder.count_acks() - acks_before
                        + dropped(server, "rate_limited") == pings, "every ping counted",
                        flooder)
            figures["flood"] = (pings, flooder.count_acks() - acks_before,
                                time.monotonic() - started)

        def vandalise() -> None:
            expected = {reason: dropped(server, reason) for reason in GARBAGE.values()}
            for _ in range(30):
                for datagram, reason in GARBAGE.items():
                    for _ in range(BURST // len(GARBAGE)):
                        vandal.sendto(datagram, address(server))
                        expected[reason] += 1
                counted(server, lambda: all(dropped(server, reason) == count
                                            for reason, count in expected.items()),
                        "every piece of garbage counted")
            figures["garbage"] = expected

        def haunt() -> None:
            before, sent = server.server.stats["unverified_bytes_in"], 0
            for i, ghost in enumerate(ghosts):
                join = json.dumps({"type": "join", "room": "lobby", "user": f"ghost{i:03d}",
                                   "id": 1}).encode()
                ghost.sendto(join, address(server))
                sent += len(join)
                assert len(peers) <= max_clients
                if i % BURST == BURST - 1:
                    counted(server, lambda: server.server.stats["unverified_bytes_in"]
                            >= before + sent, "every join read")
            figures["ghosts_sent"] = sent

        texts = {user: [f"{user} {i}" for i in range(40)] for user in ("alice", "bob")}
        in_threads(flood, vandalise, haunt,
                   lambda: send_all(alice, texts["alice"]), lambda: send_all(bob, texts["bob"]))

        # The pair: every message once, in order; no ghost ever reached the room.
        for chatter in (alice, bob):
            messages, events = collect_messages(chatter, 80)
            got = [(m["user"], m["text"]) for m in messages]
            assert len(set(got)) == 80, f"{chatter.user}: a message came twice"
            for user, sent_texts in texts.items():
                assert [text for sender, text in got if sender == user] == sent_texts
            assert not [e for e in events if isinstance(e, Received)
                        and str(e.message.get("user", "")).startswith("ghost")]
            assert chatter.stats["given_up"] == 0 and chatter.stats["lost"] == 0

        # The flood: the burst and 50 a second went through, the rest were dropped, and
        # the flooder was told rate_limited about once a second.
        pings, admitted, elapsed = figures["flood"]
        assert 100 - 1 <= admitted <= 100 + 50 * elapsed + 1       # 1: its join's token
        assert dropped(server, "rate_limited") == pings - admitted
        wait_for(lambda: flooder.types.get("pong") == admitted, WAIT, "a pong per ping applied")
        assert not flooder.unexpected
        wait_for(lambda: flooder.errors, WAIT, "the flooder told")
        assert set(flooder.errors) == {"rate_limited"}
        assert len(flooder.errors) <= elapsed + 1       # at most once a second

        # The garbage: each piece counted under its reason, none answered.
        vandal.settimeout(0.0)
        with pytest.raises(BlockingIOError):
            vandal.recv(65535)

        # The ghosts: the table never grew past max_clients; each ghost got a welcome
        # and nothing more, and every one was forgotten (evicted, or timed out).
        counted(server, lambda: dropped(server, "unverified_evicted")
                + dropped(server, "unverified_timeout") == 200, "every ghost forgotten")
        assert len(peers) == 3 and all(addr in peers for addr in real)
        ghost_bytes = []
        for ghost in ghosts:
            ghost.settimeout(0.0)
            got = []
            try:
                while True:
                    got.append(p.decode(ghost.recv(65535)))
            except BlockingIOError:
                pass
            assert [m["type"] for m in got] == ["welcome"]
            ghost_bytes.append(len(p.encode_datagram(got[0])))
        received = sum(ghost_bytes)
        assert received <= AMPLIFICATION_FACTOR * figures["ghosts_sent"]
        stats = server.server.stats
        assert stats["unverified_skipped"] > 0          # the timer's welcomes, not sent
        figures["evicted"] = dropped(server, "unverified_evicted")

        # Logged, with the peer.
        host, port = flooder.address
        assert any(r.levelno == logging.WARNING and f"[{host}:{port}] rate limited" in r.message
                   for r in caplog.records)
        assert sum("forgotten (unverified_" in r.message for r in caplog.records) == 200
        print(f"\nflooder: {pings} pings in {elapsed:.2f} s, {admitted} applied, "
              f"{pings - admitted} dropped (rate_limited), told {len(flooder.errors)} "
              f"times\n"
              f"vandal: {sum(figures['garbage'].values())} garbage datagrams, all dropped "
              f"unanswered: {figures['garbage']}\n"
              f"200 one-shot sockets: sent {figures['ghosts_sent']} bytes, got {received} "
              f"({received / figures['ghosts_sent']:.2f}x; limit "
              f"{AMPLIFICATION_FACTOR}x), {figures['evicted']} evicted to make room, "
              f"{200 - figures['evicted']} timed out; peers never above {max_clients}\n"
              f"server stats: {stats}")
    finally:
        flooder.close()
        vandal.close()
        for ghost in ghosts:
            ghost.close()


@pytest.mark.timeout(20)
def test_a_forged_join_gets_one_welcome_and_a_real_newcomer_gets_the_whole_history(
        servers: Servers, clients: Clients) -> None:
    server = servers.start(unverified_timeout_s=0.5)
    alice = clients.connect(address(server), "alice")
    bob = clients.connect(address(server), "bob")
    until(alice, system("join", "bob"))
    texts = [f"history {i}" for i in range(20)]
    send_all(alice, texts)
    until(bob, message_from("alice", texts[-1]))
    forged = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        join = json.dumps({"type": "join", "room": "lobby", "user": "mallory",
                           "id": 1}).encode()
        forged.sendto(join, address(server))
        # It never acks; the timer tries the welcome again every 30 ms or so, in vain.
        wait_for(lambda: dropped(server, "unverified_timeout") == 1, WAIT,
                 "the forged address forgotten")
        forged.settimeout(0.0)
        got = [forged.recv(65535)]
        with pytest.raises(BlockingIOError):
            got.append(forged.recv(65535))
        assert p.decode(got[0])["type"] == "welcome"
        assert len(got[0]) <= AMPLIFICATION_FACTOR * len(join)
        skipped = server.server.stats["unverified_skipped"]
        assert skipped >= 1

        # A real newcomer: welcome, then all 20 in n order, then its own join notice.
        carol = clients.connect(address(server), "carol")
        events = until(carol, system("join", "carol"))
        received = [e.message for e in events if isinstance(e, Received)]
        assert received[0]["type"] == "welcome"
        assert [m["text"] for m in received[1:-1]] == texts
        assert all(m["history"] is True for m in received[1:-1])
        until(alice, system("join", "carol"))
        print(f"\nforged join: {len(join)} bytes in, {len(got[0])} out "
              f"({len(got[0]) / len(join):.2f}x), {skipped} retransmissions withheld; "
              f"carol: {len(received) - 2} history messages, "
              f"{carol.stats['retransmitted']} retransmissions of her own")
    finally:
        forged.close()


# -- Issue 8 item 2, issue 11 item 9: bounds that agree, sizes that are real ------------

@pytest.mark.timeout(10)
def test_the_timers_bound_covers_every_client_at_its_own_bound(servers: Servers) -> None:
    from chat_sync.udp_server_core import MAX_UNACKED
    server = servers.start(max_clients=500)
    assert server.server.timer.queue.max_pending >= 500 * MAX_UNACKED


@pytest.mark.timeout(10)
def test_a_full_timer_sheds_the_datagram_and_the_loop_lives_on(servers: Servers) -> None:
    from chat_sync.udp_server_core import Send
    server = servers.start()
    shell = server.server
    shell.timer.queue.max_pending = 1
    key = (("127.0.0.1", 9), 1)
    shell._perform([Send(("127.0.0.1", 9), b"{}", key),
                    Send(("127.0.0.1", 9), b"{}", (key[0], 2))])   # must not raise
    assert shell.shed == 1


@pytest.mark.timeout(10)
def test_an_oversized_datagram_is_reported_with_its_real_size(servers: Servers) -> None:
    server = servers.start()
    flooder = Flooder(address(server), "big", "lobby")
    try:
        flooder.join()
        flooder.sock.send(b"x" * 1340)
        counted(server, lambda: "datagram_too_large" in flooder.errors, "the refusal")
        assert any("datagram of 1340 bytes" in text for text in flooder.error_texts)
    finally:
        flooder.close()
