"""The TCP server's defences against peers that misbehave, and what the others see meanwhile.

Each rule is tested twice: on ``guard`` alone with a fake clock (no socket,
microseconds), and end to end against a real server on 127.0.0.1 port 0,
with a pair of well-behaved clients chatting through it. Every end-to-end
test ends by checking that the pair lost nothing: each of alice's messages
reached bob, once, in order. Timeout rules are configured in tenths of a
second and the test waits for the close with a deadline, never a sleep.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import LineClient, StreamLines, connect, request_line, wait_for

from chat_sync import protocol as p
from chat_sync.guard import Guard, GuardLimits, TokenBucket
from chat_sync.rooms import ChatCore, Reply, deliveries
from chat_sync.config import TcpServerConfig
from chat_sync.serving import ServerHandle
from chat_sync.tcp_server import TcpServer, serve
from chat_sync.tcp_server_core import Connection

pytestmark = pytest.mark.timeout(20)

TEXT = "x" * 3990                 # with a 6-character counter: under max_text_chars


def is_event(event: str, user: str) -> Any:
    def matches(message: dict[str, Any]) -> bool:
        return (message["type"] == "system" and message.get("event") == event
                and message.get("user") == user)
    return matches


def server_side(server: ServerHandle, client: LineClient) -> Connection:
    """The server's ``Connection`` for ``client``."""
    peer = "%s:%d" % client.sock.getsockname()[:2]
    return next(c for c in list(server.server.conns.values()) if c.peer == peer)


def shrink_send_buffer(server: ServerHandle, client: LineClient) -> None:
    """Shrink the kernel's send buffer on the server's side of ``client``.

    For a loopback peer Linux lets it grow to megabytes, which would take
    everything a test sends; shrunk (as a slow remote client's small window
    would), the server's own queue is what fills, after a few kilobytes.
    """
    server_side(server, client).sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def reset(client: LineClient) -> None:
    """Close with RST instead of FIN: SO_LINGER on, with a zero timeout."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


class Pair:
    """alice and bob in one room; alice talks, and bob must hear every word."""

    def __init__(self, server: ServerHandle, room: str = "lobby") -> None:
        self.alice = connect(server.host, server.port)
        self.bob = connect(server.host, server.port)
        self.alice.join(room, "alice")
        self.bob.join(room, "bob")
        self.alice.recv_until(is_event("join", "bob"))
        self.said: list[str] = []         # alice's messages, in the order she sent them
        self.heard: list[str] = []        # alice's messages as bob received them

    def say(self, text: str, *, wait: bool = True) -> None:
        """alice says ``text``; with ``wait``, until her own copy is back."""
        self.alice.send(type="message", text=text)
        self.said.append(text)
        if wait:
            self.alice.recv_until(lambda m: m.get("user") == "alice" and m.get("text") == text)

    def bob_until(self, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
        """bob's messages up to the first matching ``predicate``; alice's are recorded."""
        seen = self.bob.recv_until(predicate, timeout)
        self.heard += [m["text"] for m in seen
                       if m["type"] == "message" and m.get("user") == "alice"]
        return seen

    def check(self) -> None:
        """Nothing lost, nothing twice, nothing out of order; and both are still served."""
        last = self.said[-1]
        if self.heard[-1:] != [last]:
            self.bob_until(lambda m: m.get("user") == "alice" and m.get("text") == last)
        assert self.heard == self.said, "bob missed some of alice's messages"
        for client in (self.alice, self.bob):
            client.send(type="ping", id="alive")
            client.recv_until(lambda m: m.get("id") == "alive")

    def close(self) -> None:
        self.alice.close()
        self.bob.close()


@contextmanager
def pair_on(server: ServerHandle) -> Iterator[Pair]:
    pair = Pair(server)
    try:
        yield pair
    finally:
        pair.close()


# == 1. Floods: a token bucket per connection ==================================

def test_bucket_allows_a_burst_then_the_rate_and_saves_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.25) is False             # half a token earned
    assert bucket.take(100.5) is True               # one whole token
    assert bucket.take(100.5) is False
    assert bucket.refill(1000.0) == 3.0             # an hour idle saves only a burst
    assert bucket.refill(999.0) == 3.0              # a clock stepping back earns nothing


def test_bucket_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=3, now=0.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=0, now=0.0)


def flood_guard(now: float = 0.0) -> Guard:
    return Guard(GuardLimits(rate_per_s=10.0, burst=5, abuse_limit=3), now)


def test_over_the_rate_a_request_is_refused_and_past_the_abuse_limit_cut() -> None:
    guard = flood_guard()
    assert [guard.request(0.0) for _ in range(5)] == [None] * 5
    refusals = [guard.request(0.0) for _ in range(4)]
    assert [(b.code, b.close) for b in refusals if b is not None] == [
        (p.ErrorCode.RATE_LIMITED, False)] * 3 + [(p.ErrorCode.RATE_LIMITED, True)]
    assert "excess flood" in refusals[-1].text   # type: ignore[union-attr]


def test_refusals_are_forgiven_once_the_bucket_is_full_again() -> None:
    guard = flood_guard()
    for burst_at in (0.0, 1.0, 2.0, 3.0):           # 0.5 s refills all 5 tokens
        results = [guard.request(burst_at) for _ in range(8)]
        assert results[:5] == [None] * 5
        assert all(b is not None and not b.close for b in results[5:])   # 3: at the limit
    assert guard.strikes == 3


def test_a_peer_a_little_over_the_rate_for_long_is_cut_off_too() -> None:
    """The documented trade-off: 11 requests a second against 10 never refills the bucket."""
    guard = flood_guard()
    now, breach = 0.0, None
    while breach is None or not breach.close:
        breach = guard.request(now)
        now += 1 / 11
        assert now < 60, "never cut off"
    assert 3 < now < 10                              # after 4 refusals, one every ~1.1 s


def test_a_rate_of_zero_is_no_limit() -> None:
    guard = Guard(GuardLimits(rate_per_s=0.0), 0.0)
    assert all(guard.request(0.0) is None for _ in range(10_000))


def test_flooder_is_refused_with_its_ids_then_cut_off_and_the_pair_loses_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chat_sync.tcp_server")
    # 0.1 token a second: nothing refills during the test; the burst is 10.
    with serve(port=0, rate_limit_per_s=0.1, rate_burst=10, rate_abuse_limit=30) as server, \
            pair_on(server) as pair, connect(server.host, server.port) as flooder:
        flooder.join("lobby", "flooder")             # takes one token: 9 left
        pair.say("before")
        flooder.send_raw(b"".join(request_line(type="ping", id=i) + b"\n" for i in range(1, 26)))
        answers = flooder.recv_until(lambda m: m.get("id") == 25)
        assert [m["id"] for m in answers if m["type"] == "pong"] == list(range(1, 10))
        refused = [m for m in answers if m["type"] == "error"]
        assert [m["id"] for m in refused] == list(range(10, 26))
        assert {m["code"] for m in refused} == {"rate_limited"}
        pair.say("during")                           # the pair has its own buckets

        # 16 refusals so far; 14 more reach the limit of 30, the 31st cuts it off.
        flooder.send_raw(b"".join(request_line(type="message", text=f"spam {i}") + b"\n"
                                  for i in range(100)))
        rest = flooder.recv_until_closed()
        assert [m["code"] for m in rest if m["type"] == "error"] == ["rate_limited"] * 15
        assert "excess flood" in rest[-1]["text"]
        assert not any(m.get("user") == "flooder" for m in rest)    # no spam was applied
        pair.alice.recv_until(is_event("leave", "flooder"))
        pair.say("after")
        pair.check()                                 # 3 of 3, and no spam among them
    assert any("cut off: excess flood" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert sum("rate limited" in r.getMessage() for r in caplog.records) == 1   # once, not 46


# == 2. Slow readers: a soft limit with a grace period, and a hard limit ==========

def slow_guard() -> Guard:
    return Guard(GuardLimits(soft_bytes=100, grace_s=10.0, hard_bytes=1000,
                             join_timeout_s=0.0), 0.0)


def test_over_the_soft_limit_for_the_grace_period_trips() -> None:
    guard = slow_guard()
    assert guard.output(150, now=1.0) is None
    assert guard.deadline() == 11.0
    assert guard.expired(10.9) is None
    breach = guard.expired(11.0)
    assert breach is not None and breach.code is p.ErrorCode.SLOW_READER and breach.close


def test_a_burst_that_drains_in_time_starts_the_grace_afresh() -> None:
    guard = slow_guard()
    guard.output(150, now=1.0)
    assert guard.output(90, now=9.0) is None         # caught up: forgotten
    assert guard.deadline() is None
    guard.output(500, now=10.0)
    assert guard.expired(19.9) is None and guard.deadline() == 20.0


def test_over_the_hard_limit_trips_at_once() -> None:
    breach = slow_guard().output(1001, now=0.0)
    assert breach is not None and breach.code is p.ErrorCode.SLOW_READER and breach.close


def test_a_soft_limit_above_the_hard_one_does_nothing() -> None:
    guard = Guard(GuardLimits(soft_bytes=2000, grace_s=0.0, hard_bytes=1000), 0.0)
    assert guard.output(1000, now=0.0) is None and guard.deadline() is not None  # join clock
    assert guard.over_since is None


def fill(pair: Pair, count: int) -> None:
    """alice sends ``count`` more messages of about 4 KB, reading her own copies."""
    for _ in range(count):
        pair.say(f"{len(pair.said):5d} {TEXT}")


def test_a_burst_over_the_soft_limit_that_drains_does_not_evict(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chat_sync.tcp_server")
    with serve(port=0, send_buffer_soft_bytes=16 * 1024, slow_reader_grace_s=5.0,
               max_send_buffer_bytes=4 * 1024 * 1024) as server, pair_on(server) as pair, \
            LineClient(server.host, server.port, rcvbuf=4096) as behind:
        behind.recv_message()
        behind.join("lobby", "behind")
        shrink_send_buffer(server, behind)
        peer = "%s:%d" % behind.sock.getsockname()[:2]
        fill(pair, 35)                                # ~140 KB while it does not read
        wait_for(lambda: any(f"[{peer}] over the soft limit" in r.getMessage()
                             for r in caplog.records), what="the soft limit crossed")
        heard = [m["text"] for m in behind.recv_until(lambda m: m.get("text") == pair.said[-1])
                 if m["type"] == "message"]
        assert heard == pair.said                     # 35 of 35: it caught up
        behind.send(type="ping", id="still here")
        behind.recv_until(lambda m: m.get("id") == "still here")
        pair.check()
    assert not any("slow reader" in r.getMessage() for r in caplog.records)


def test_over_the_soft_limit_past_the_grace_a_reader_is_evicted_by_the_timer() -> None:
    grace = 0.3
    with serve(port=0, send_buffer_soft_bytes=16 * 1024, slow_reader_grace_s=grace,
               max_send_buffer_bytes=4 * 1024 * 1024) as server, pair_on(server) as pair, \
            LineClient(server.host, server.port, rcvbuf=4096) as sleeper:
        sleeper.recv_message()
        sleeper.join("lobby", "sleeper")
        shrink_send_buffer(server, sleeper)
        started = time.monotonic()
        fill(pair, 35)
        # No more traffic: only the timer can evict it now.
        pair.bob_until(is_event("leave", "sleeper"))
        assert time.monotonic() - started >= grace
        # It reads at last: a prefix of what was said, in order, then the error.
        rest = sleeper.recv_until_closed()
        assert rest[-1]["type"] == "error" and rest[-1]["code"] == "slow_reader"
        texts = [m["text"] for m in rest[:-1] if m["type"] == "message"]
        assert texts == pair.said[:len(texts)] and len(texts) < len(pair.said)
        pair.check()                                  # 35 of 35 for bob


def test_over_the_hard_limit_a_reader_is_evicted_at_once_with_an_error() -> None:
    # The soft limit stays at its default, 256 KiB: above the hard one, it does nothing.
    with serve(port=0, max_send_buffer_bytes=64 * 1024) as server, pair_on(server) as pair, \
            LineClient(server.host, server.port, rcvbuf=4096) as sleeper:
        sleeper.recv_message()
        sleeper.join("lobby", "sleeper")
        shrink_send_buffer(server, sleeper)
        fill(pair, 39)
        pair.bob_until(is_event("leave", "sleeper"))     # long before the 10 s grace
        rest = sleeper.recv_until_closed()
        assert rest[-1]["code"] == "slow_reader" and "65536" in rest[-1]["text"]
        texts = [m["text"] for m in rest[:-1] if m["type"] == "message"]
        assert texts == pair.said[:len(texts)]
        pair.check()                                  # 39 of 39 for bob


# == 3. Silent and slow peers: join and unfinished-line timeouts ====================

def test_guard_join_clock_starts_when_open_and_stops_at_the_join() -> None:
    guard = Guard(GuardLimits(join_timeout_s=30.0, handshake_timeout_s=5.0), 0.0, tls=True)
    assert guard.deadline() == 5.0
    breach = guard.expired(5.0)
    assert breach is not None and "TLS handshake" in breach.text
    guard.opened(3.0)
    assert guard.deadline() == 33.0 and guard.expired(32.9) is None
    assert guard.expired(33.0) is not None
    guard.joined()
    assert guard.deadline() is None and guard.expired(1e9) is None


def test_guard_partial_line_clock_restarts_with_each_new_line() -> None:
    guard = Guard(GuardLimits(join_timeout_s=0.0, partial_line_timeout_s=30.0), 0.0)
    assert guard.deadline() is None                     # 0 = no join timeout
    guard.input(pending=5, completed=False, now=1.0)
    guard.input(pending=9, completed=False, now=20.0)   # the same line, still unfinished
    assert guard.deadline() == 31.0
    guard.input(pending=3, completed=True, now=25.0)    # a line ended; the next began
    assert guard.deadline() == 55.0
    breach = guard.expired(55.0)
    assert breach is not None and breach.code is p.ErrorCode.TIMEOUT
    guard.input(pending=0, completed=True, now=56.0)
    assert guard.deadline() is None


def wait_closed(client: LineClient, timeout: float = 5.0) -> tuple[list[dict[str, Any]], float]:
    """Everything until EOF, and when EOF came (monotonic)."""
    rest = client.recv_until_closed(timeout)
    return rest, time.monotonic()


def test_a_connection_that_never_joins_is_timed_out_and_idle_joined_ones_kept() -> None:
    with serve(port=0, join_timeout_s=0.2) as server, pair_on(server) as pair:
        pair.say("before")
        started = time.monotonic()
        with connect(server.host, server.port) as lurker:
            rest, closed_at = wait_closed(lurker)
        assert [(m["type"], m["code"]) for m in rest] == [("error", "timeout")]
        assert "no join within 0.2 s" in rest[0]["text"]
        assert closed_at - started >= 0.2
        # alice and bob have been idle longer than the join timeout: kept.
        pair.say("after")
        pair.check()
        assert len(server.server.conns) == 2


def test_a_line_left_unfinished_is_timed_out_and_the_room_hears_it_leave() -> None:
    with serve(port=0, partial_line_timeout_s=0.2) as server, pair_on(server) as pair, \
            connect(server.host, server.port) as slowpoke:
        slowpoke.join("lobby", "slowpoke")
        started = time.monotonic()
        slowpoke.send_raw(b'{"type":"message","text":"I will fin')     # ... never
        rest, closed_at = wait_closed(slowpoke)
        assert [(m["type"], m["code"]) for m in rest] == [("error", "timeout")]
        assert closed_at - started >= 0.2
        pair.alice.recv_until(is_event("leave", "slowpoke"))
        pair.say("still here")
        pair.check()


def test_the_loop_sleeps_until_the_earliest_deadline() -> None:
    """The select() timeout comes from the heap: none at all with no deadline."""
    with serve(port=0, join_timeout_s=30.0) as server:
        loop = server.server
        assert loop._timer_timeout() is None
        with connect(server.host, server.port) as client:
            wait_for(lambda: loop._timers, what="a join deadline in the heap")
            timeout = loop._timer_timeout()
            assert timeout is not None and 29.0 < timeout <= 30.0
            client.join("lobby", "alice")            # the deadline is gone (lazily)
            client.send(type="ping", id=1)
            client.recv_message()


# == 4. Connection limits, and a storm of connections ================================

def test_max_clients_per_ip_refuses_the_next_one_from_that_address_only() -> None:
    with serve(port=0, max_clients_per_ip=3) as server, pair_on(server) as pair:
        with connect(server.host, server.port) as third:
            with LineClient(server.host, server.port) as fourth:
                rest = fourth.recv_until_closed()
            assert [(m["type"], m["code"]) for m in rest] == [("error",
                                                               "too_many_connections")]
            assert "127.0.0.1" in rest[0]["text"]
            # Another address is another count (all of 127/8 is this machine on Linux).
            other = socket.socket()
            try:
                other.bind(("127.0.0.2", 0))
            except OSError:
                other.close()
                pytest.skip("cannot bind 127.0.0.2 here")
            other.settimeout(5)
            other.connect((server.host, server.port))
            with other, other.makefile("rb") as reader:
                assert json.loads(reader.readline())["type"] == "welcome"
            third.send(type="ping", id=3)
            third.recv_until(lambda m: m.get("id") == 3)
        wait_for(lambda: len(server.server.conns) == 2, what="third and the others gone")
        with connect(server.host, server.port) as again:      # room again from 127.0.0.1
            again.send(type="ping", id=1)
            assert again.recv_message() == {"type": "pong", "id": 1}
        pair.say("done")
        pair.check()


@pytest.mark.timeout(40)
def test_a_storm_of_connects_and_resets_leaves_the_pair_chatting() -> None:
    storm, every = 2000, 100
    with serve(port=0) as server, pair_on(server) as pair:
        started = time.monotonic()
        for n in range(storm):
            sock = socket.socket()
            sock.settimeout(5)
            if n % 2 == 0:                  # half reset (RST), half close (FIN)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                sock.connect((server.host, server.port))
            except OSError:
                pass                        # a full backlog may refuse some: that is fine
            sock.close()
            if n % every == 0:
                pair.say(f"storm {n}", wait=False)
        storm_s = time.monotonic() - started
        pair.check()                        # 20 of 20, in order, during the storm
        wait_for(lambda: len(server.server.conns) == 2, timeout=10,
                 what="every stormer cleaned up")
        loop = server.server
        assert loop._per_ip == {"127.0.0.1": 2}
        assert len(loop._timers) <= 2 * len(loop.conns) + 64 + 1    # the heap stays bounded
        with connect(server.host, server.port) as newcomer:         # still accepting
            newcomer.send(type="ping", id=1)
            assert newcomer.recv_message() == {"type": "pong", "id": 1}
    assert storm_s < 30


# == 5. Resets, half-closes and failing sends mid-broadcast ============================

def test_a_half_closed_client_gets_every_reply_then_is_closed(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chat_sync.tcp_server")
    with serve(port=0) as server, pair_on(server) as pair, \
            LineClient(server.host, server.port, rcvbuf=4096) as halfway:
        halfway.recv_message()
        halfway.join("lobby", "halfway")
        shrink_send_buffer(server, halfway)
        requests = b"".join(request_line(type="message", text=f"{i:5d} {TEXT}", id=i) + b"\n"
                            for i in range(1, 31))
        halfway.send_raw(requests)
        halfway.sock.shutdown(socket.SHUT_WR)      # "that is all I will say"; still reading
        # It has not read a byte yet, so most of ~120 KB of replies wait in the server.
        rest = halfway.recv_until_closed(timeout=10)
        assert [m.get("id") for m in rest] == list(range(1, 31))    # 30 of 30, then EOF
        pair.alice.recv_until(is_event("leave", "halfway"))
        heard = pair.bob_until(is_event("leave", "halfway"))
        assert [m["text"][:5] for m in heard
                if m["type"] == "message" and m["user"] == "halfway"] == [
            f"{i:5d}" for i in range(1, 31)]
        pair.say("after")
        pair.check()
    assert any("half-closed" in r.getMessage() for r in caplog.records)


class BrokenSocket:
    """A server-side socket whose peer has vanished: every send fails with ``error``.

    Stands in for the real one (it delegates everything else), so the
    failure hits exactly in the middle of a broadcast's flush.
    """

    def __init__(self, sock: socket.socket, error: type[OSError]) -> None:
        self._sock = sock
        self._error = error

    def sendmsg(self, *args: Any) -> int:
        raise self._error("the peer is gone (test)")

    def send(self, *args: Any) -> int:         # a queue of one chunk goes with send
        raise self._error("the peer is gone (test)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_sends_failing_mid_broadcast_drop_only_those_members(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chat_sync.tcp_server")
    with serve(port=0) as server, pair_on(server) as pair:
        victims = {}
        for name in ("epipe", "econnreset", "rst"):
            victims[name] = connect(server.host, server.port)
            victims[name].join("lobby", name)
            pair.bob_until(is_event("join", name))
        pair.alice.recv_until(is_event("join", "rst"))
        conns = {c.peer: c for c in server.server.conns.values()}
        for name, error in (("epipe", BrokenPipeError), ("econnreset", ConnectionResetError)):
            conn = conns["%s:%d" % victims[name].sock.getsockname()[:2]]
            conn.sock = BrokenSocket(conn.sock, error)   # type: ignore[assignment]
        reset(victims["rst"])
        for n in range(20):
            pair.say(f"broadcast {n}", wait=False)
        left: set[str] = set()
        got_last = False

        def everything_in(message: dict[str, Any]) -> bool:
            nonlocal got_last
            if message["type"] == "system" and message["event"] == "leave":
                left.add(message["user"])
            got_last = got_last or message.get("text") == "broadcast 19"
            return got_last and len(left) == 3

        pair.bob_until(everything_in)
        assert left == {"epipe", "econnreset", "rst"}
        pair.check()                        # 20 of 20
        for client in victims.values():
            client.close()
        assert len(server.server.conns) == 2
    failed = [r.getMessage() for r in caplog.records if "send failed" in r.getMessage()]
    assert len([m for m in failed if "the peer is gone (test)" in m]) == 2


def test_a_member_that_resets_while_output_is_queued_for_it_costs_nobody() -> None:
    with serve(port=0, send_buffer_soft_bytes=4 * 1024 * 1024,
               max_send_buffer_bytes=8 * 1024 * 1024) as server, pair_on(server) as pair, \
            LineClient(server.host, server.port, rcvbuf=4096) as leaver:
        leaver.recv_message()
        leaver.join("lobby", "leaver")
        shrink_send_buffer(server, leaver)
        pair.bob_until(is_event("join", "leaver"))
        fill(pair, 15)                     # ~60 KB queued for a reader that does not read
        reset(leaver)
        fill(pair, 15)
        pair.bob_until(is_event("leave", "leaver"))
        pair.check()                       # 30 of 30


# == 6. Names: look-alikes cannot impersonate, invisible characters are refused ==========

def join(core: ChatCore, conn: int, user: str, room: str = "lobby") -> dict[str, Any]:
    """The answer (to ``conn``) of a join with an id."""
    outputs = core.receive(conn, request_line(type="join", room=room, user=user, id="j"), 1.0)
    return next(message for output in outputs for to, message in deliveries(output)
                if to == conn and message.get("id") == "j")


@pytest.mark.parametrize("original, look_alike", [
    ("alice", "ALICE"),
    ("alice", "ａｌｉｃｅ"),             # full-width
    ("alice", "𝐚𝐥𝐢𝐜𝐞"),                # mathematical bold
    ("Alice", "Ⓐlice"),                 # circled letter
    ("fish", "ﬁsh"),                    # the 'fi' ligature
    ("IX", "Ⅸ"),                        # Roman numeral nine, one character
    ("ix", "ⅸ"),                        # ... small
    ("strasse", "STRAßE"),              # sharp s folds to ss
    ("Hans", "ℌans"),                   # black-letter H
    ("sam", "ſam"),                     # long s
])
def test_a_look_alike_name_is_the_same_name(original: str, look_alike: str) -> None:
    core = ChatCore()
    core.connect(1)
    core.connect(2)
    assert join(core, 1, original)["type"] == "system"
    answer = join(core, 2, look_alike)
    assert answer["code"] == "name_taken", answer
    # And the other way round: a look-alike that came first shows as its plain form.
    core = ChatCore()
    core.connect(1)
    shown = join(core, 1, look_alike)["user"]
    assert shown == unicodedata.normalize("NFKC", look_alike)
    assert p.name_key(shown) == p.name_key(original)


def test_look_alike_room_names_are_the_same_room() -> None:
    core = ChatCore()
    for conn, room in ((1, "lobby"), (2, "ｌｏｂｂｙ"), (3, "LOBBY")):
        core.connect(conn)
        assert join(core, conn, f"user{conn}", room)["room"] == "lobby"
    assert len(core.rooms) == 1 and len(core.rooms["lobby"].members) == 3


INVISIBLE = {
    "RIGHT-TO-LEFT OVERRIDE": "\u202e",
    "LEFT-TO-RIGHT OVERRIDE": "\u202d",
    "RIGHT-TO-LEFT ISOLATE": "\u2067",
    "POP DIRECTIONAL ISOLATE": "\u2069",
    "ARABIC LETTER MARK": "\u061c",
    "ZERO WIDTH SPACE": "\u200b",
    "ZERO WIDTH NON-JOINER": "\u200c",
    "ZERO WIDTH JOINER": "\u200d",
    "WORD JOINER": "\u2060",
    "ZERO WIDTH NO-BREAK SPACE": "\ufeff",
    "SOFT HYPHEN": "\u00ad",
    "MONGOLIAN VOWEL SEPARATOR": "\u180e",
    "TAG LATIN CAPITAL LETTER A": "\U000e0041",
    "VARIATION SELECTOR-16": "\ufe0f",
    "NUL": "\x00",
    "ESCAPE": "\x1b",
    "LINE FEED": "\n",
}


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
@pytest.mark.parametrize("field", ["user", "room"])
def test_invisible_and_direction_characters_are_refused_in_names(char: str, field: str) -> None:
    core = ChatCore()
    core.connect(1)
    fields = {"user": "alice", "room": "lobby"}
    fields[field] = fields[field][:2] + char + fields[field][2:]
    answer = join(core, 1, fields["user"], fields["room"])
    assert (answer["type"], answer["code"], answer["field"]) == ("error", "bad_message", field)
    assert core.members[1].user is None                 # a refused join fixes no name


def test_bidi_override_is_refused_as_a_whisper_target_and_a_message_room() -> None:
    for obj, field in (({"type": "whisper", "to": "ecila\u202e", "text": "hi"}, "to"),
                       ({"type": "message", "text": "hi", "room": "lob\u202eby"}, "room")):
        with pytest.raises(p.ProtocolError) as caught:
            p.parse_request(obj)
        assert caught.value.code is p.ErrorCode.BAD_MESSAGE and caught.value.field == field


def test_a_full_width_look_alike_cannot_join_the_server_as_alice() -> None:
    with serve(port=0) as server, pair_on(server) as pair, \
            connect(server.host, server.port) as mallory:
        mallory.send(type="join", room="lobby", user="ａｌｉｃｅ", id=1)
        assert mallory.recv_message()["code"] == "name_taken"
        mallory.send(type="join", room="lobby", user="ali\u202ece", id=2)
        answer = mallory.recv_message()
        assert (answer["code"], answer["field"]) == ("bad_message", "user")
        pair.say("it was me all along")
        pair.check()


# Known gaps, kept as strict expected failures so that fixing one is noticed.

def test_cyrillic_look_alike_cannot_impersonate() -> None:
    core = ChatCore()
    core.connect(1)
    core.connect(2)
    join(core, 1, "alice")
    assert join(core, 2, "\u0430lice")["type"] == "error"


def test_an_invisible_letter_cannot_pad_a_name() -> None:
    core = ChatCore()
    core.connect(1)
    assert join(core, 1, "alice\u3164")["type"] == "error"


def test_a_devanagari_name_is_a_name() -> None:
    core = ChatCore()
    core.connect(1)
    assert join(core, 1, "हिन्दी")["type"] == "system"


# == Out of file descriptors (issue 9, item 2) =====================================

class NoDescriptors:
    """The server's listener while the process is out of file descriptors:
    ``accept`` fails with EMFILE (the pending connection stays in the backlog,
    so the real listener stays readable); everything else is the real one's."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_out_of_descriptors_pauses_accepting_logs_once_and_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chat_sync.tcp_server")
    server = TcpServer(TcpServerConfig(port=0))
    real = server.listener
    fake = NoDescriptors(real)
    server.listener = fake                          # type: ignore[assignment]
    waiting = socket.create_connection(server.address, timeout=5)   # the listener is readable
    try:
        for _ in range(20):                         # 20 turns: 1 accept, not 20
            server._turn(0)
        assert fake.calls == 1
        said = [r.getMessage() for r in caplog.records if "accept" in r.getMessage()]
        assert len(said) == 1 and "Too many open files" in said[0], said
        server.listener = real                      # descriptors are back
        deadline = time.monotonic() + 5
        while not server.conns and time.monotonic() < deadline:
            server._turn(server._timer_timeout())   # sleeps until the pause ends
        assert len(server.conns) == 1
        assert any("accepting again" in r.getMessage() for r in caplog.records)
    finally:
        waiting.close()
        server.listener = real
        server._close_all()


def run_with_descriptor_limit(soft: int, hard: int, *args: str) -> tuple[str, str]:
    """Start the server with RLIMIT_NOFILE (soft, hard); return its limits line and stderr."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0", *args],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = StreamLines(proc.stdout), StreamLines(proc.stderr)
        assert out.readline(timeout=10) is not None                 # listening on ...
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        return line, err.rest()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc")
def test_the_server_raises_its_descriptor_limit_to_hold_max_clients() -> None:
    line, err = run_with_descriptor_limit(64, 4096, "--max-clients", "1000")
    assert line.split()[3:5] != ["64", "4096"], line          # the soft limit went up
    assert int(line.split()[3]) >= 1000
    assert "open-file limit" not in err


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc")
def test_a_descriptor_limit_too_low_for_max_clients_is_a_warning_naming_both() -> None:
    _line, err = run_with_descriptor_limit(64, 128, "--max-clients", "1000")
    assert "open-file limit 128" in err and "max_clients 1000" in err, err
