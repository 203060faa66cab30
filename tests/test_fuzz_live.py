"""Fuzz the live TCP server: hostile connections beside a well-behaved pair.

Six fuzzers send seeded random bytes: random lengths with and without
newlines, bad UTF-8, lines over the limit, cut-off JSON, odd but valid
requests, byte-at-a-time dribbles, resets. Meanwhile two clients in one room
chat, one message at a time (each waits for its own echo before the next, so
the pair stays under any rate limit a real client would), and must each get
every message of the conversation, in order, exactly once.

What must hold:
- the pair: all messages, in order, once each; no error; ``seq`` increasing;
- each fuzzer connection: every line it gets is a JSON object of a known
  ``type``, every error has a known ``code``, and a connection the server
  closes got an ``error`` as its last message (never a silent drop);
- the server: answers a ping from the pair and from a new connection at the
  end, its loop never stopped, and it logged no error (no caught crash).

A second test sets the server's own defences low (rate limit, per-address
connections, timeouts, output buffer) so the fuzzers trip them too: each of
those closes must be typed as well.

One thread drives every client in a fixed order, so a seed replays the same
bytes from the clients' side; only the server's timing varies between runs.
Nothing sleeps: every wait is a read with a deadline.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import socket
import struct
import time
from typing import Any, Callable, Iterator

import pytest
from helpers import LineClient, connect, wait_for

from chat_sync import config as cfg
from chat_sync import protocol as p
from chat_sync.serving import ServerHandle
from chat_sync.tcp_server import serve

pytestmark = pytest.mark.timeout(60)

FUZZERS = 6
PAIR_MESSAGES = 200
PAIR_ROOM = "pair-room"
PAIR_USERS = ("pair_a", "pair_b")
FUZZ_ACTIONS_PER_MESSAGE = 2          # each fuzzer's actions between two pair messages
TIGHT_ROUNDS = 500                    # actions of each fuzzer under tight limits
MAX_CONNECTIONS_PER_FUZZER = 40       # a fuzzer the server closed opens a new connection
FINAL_ID = "final-ping"

KNOWN_TYPES = {t.value for t in p.MessageType}


def known_codes() -> set[str]:
    """Read at run time: others add codes (rate limits, timeouts) as they harden the server."""
    return {c.value for c in p.ErrorCode}


# -- What a fuzzer sends ----------------------------------------------------------------
FUZZ_NAMES = ["mallory", "Mallory", "ｍａｌｌｏｒｙ", "eve", "EVE", "system", "pair_a", "PAIR_B",
              "\u212aelvin", "kelvin", "straße", "x" * 24, "x" * 25, "a b", "\u202eevil", ""]
FUZZ_ROOMS = ["lobby", "fz", "FZ", "ｆｚ", PAIR_ROOM, "PAIR-ROOM", "y" * 32, "y" * 33, "r/1"]


def odd_request(rng: random.Random) -> dict[str, Any]:
    """A request that parses as JSON: valid, or wrong in one field, or strange but fine."""
    kind = rng.choice(["join", "join", "message", "message", "whisper", "leave", "who",
                       "rooms", "ping", "shout", "welcome", "ack"])
    request: dict[str, Any] = {"type": kind}
    if kind == "join":
        request.update(room=rng.choice(FUZZ_ROOMS), user=rng.choice(FUZZ_NAMES))
        if rng.random() < 0.3:
            request["since"] = rng.choice([0, 5, -1, 2**53, 10**30, "3", None, 1.5])
    elif kind in ("message", "whisper"):
        request["text"] = rng.choice(["hi", "é" * 4000, "x" * 4001, "\u2028\u2029", "\x00",
                                      "\\ud800 in words", "", 7, None, ["a"], {"a": 1}])
        if kind == "whisper":
            request["to"] = rng.choice(FUZZ_NAMES + list(PAIR_USERS))
        elif rng.random() < 0.3:
            request["room"] = rng.choice(FUZZ_ROOMS)
    if rng.random() < 0.5:
        request["id"] = rng.choice([1, 0, -1, 2**53 - 1, 2**53, "x" * 64, "x" * 65, True,
                                    1.0, [], "ünï"])
    if rng.random() < 0.1:
        request["user"] = "system"           # a client may not say who it is
    return request


def fuzz_payload(rng: random.Random) -> list[bytes]:
    """The bytes of one fuzz action, as one or more sends."""
    roll = rng.random()
    newline = b"\n" if rng.random() < 0.8 else b""
    if roll < 0.15:                                          # noise, any length
        return [rng.randbytes(rng.randrange(0, 400)) + newline]
    if roll < 0.25:                                          # bad UTF-8 inside JSON
        bad = rng.choice([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                          b"\xe2\x82"])
        return [b'{"type":"message","text":"' + bad + b'"}' + newline]
    if roll < 0.27:                                          # over the 64 KiB line limit
        return [b"A" * (p.MAX_LINE_BYTES + rng.randrange(1, 4096)) + newline]
    if roll < 0.39:                                          # JSON cut off anywhere
        line = json.dumps(odd_request(rng)).encode()
        return [line[:rng.randrange(len(line))] + newline]
    if roll < 0.47:                                          # JSON that Python accepts, JSON not
        return [rng.choice([
            b'{"type":"ping","id":NaN}', b'{"type":"ping","type":"who"}',
            b'{"type":"message","text":"\\ud800"}', b'{"type":"ping","id":1e999}',
            b"[" * 30000, b'{"type":"ping","id":' + b"9" * 5000 + b"}", b"\xef\xbb\xbf{}",
            b'"just a string"', b"null", b"{}", b'{"type":null}', b"\r", b"\r\r\n",
        ]) + newline]
    if roll < 0.51:                                          # many requests in one send
        return [b"".join(json.dumps({"type": "ping", "id": i}).encode() + b"\n"
                         for i in range(rng.randrange(2, 40)))]
    if roll < 0.55:                                          # one request, byte by byte
        line = json.dumps(odd_request(rng)).encode() + b"\r\n"
        return [line[i:i + 1] for i in range(len(line))]
    if roll < 0.56:
        return [b"<shutdown-write>"]                         # sentinel: half-close
    if roll < 0.57:
        return [b"<reset>"]                                  # sentinel: close with RST
    line = json.dumps(odd_request(rng), ensure_ascii=rng.random() < 0.5).encode()
    return [line + rng.choice([b"\n", b"\r\n", b"\n\n"])]


# -- A fuzzer's connection ------------------------------------------------------------------
class Fuzzer:
    """One hostile client: sends what ``fuzz_payload`` makes, checks every line it gets."""

    def __init__(self, host: str, port: int, seed: int) -> None:
        self.address = (host, port)
        self.rng = random.Random(seed)
        self.connections = 0
        self.codes: list[str] = []                 # every error code received, all connections
        self.closed_by_server: list[str] = []      # the last error before each server close
        self.sock: socket.socket | None = None
        self._open()

    def _open(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=5.0)
        # No Nagle: a dribble goes out a byte a segment, and does not wait for acks.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        self.buffer = bytearray()
        self.messages: list[dict[str, Any]] = []   # on this connection
        self.we_closed = False

    def act(self) -> None:
        if self.sock is None:
            if self.connections >= MAX_CONNECTIONS_PER_FUZZER:
                return
            self._open()
        for data in fuzz_payload(self.rng):
            if not self._send(data):
                break
        self.drain()

    def _send(self, data: bytes) -> bool:
        assert self.sock is not None
        if data == b"<shutdown-write>":
            self.sock.shutdown(socket.SHUT_WR)
            self.we_closed = True
            self.read_until(lambda: False, 5.0, "EOF after our half-close")
            return False
        if data == b"<reset>":
            # SO_LINGER on, 0 s: close() sends RST instead of FIN.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
            self.sock = None
            return False
        self.sock.settimeout(5.0)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.read_until(lambda: False, 5.0, "EOF after a failed send")   # read why
            return False
        except socket.timeout:
            raise AssertionError("the server stopped reading a fuzzer for 5 s") from None
        return True

    def drain(self) -> None:
        """Read whatever has arrived, without waiting."""
        while self.sock is not None and self._recv(0.0):
            pass

    def read_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Read until ``done()`` or the server closes; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.sock is not None and not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what} not within {timeout} s; last: {self.messages[-3:]}"
            self._recv(remaining)

    def _recv(self, timeout: float) -> bool:
        """One recv; False if nothing came in ``timeout`` s."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, socket.timeout):
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            self._closed()
        else:
            self.buffer += data
            self._parse_lines()
        return True

    def _parse_lines(self) -> None:
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 1]
            message = p.decode(line)          # strict: UTF-8, a JSON object, no NaN
            assert message.get("type") in KNOWN_TYPES, f"untyped line: {line[:200]!r}"
            if not self.messages:
                assert message["type"] in ("welcome", "error"), message
            if message["type"] == "error":
                assert message.get("code") in known_codes(), f"unknown code: {message}"
                self.codes.append(message["code"])
            self.messages.append(message)

    def _closed(self) -> None:
        assert self.sock is not None
        assert not self.buffer, f"the server closed mid-line: {bytes(self.buffer[:200])!r}"
        if not self.we_closed:
            last = self.messages[-1] if self.messages else None
            assert last is not None and last["type"] == "error", \
                f"the server closed a fuzzer without a typed error; last: {last}"
            self.closed_by_server.append(last["code"])
        self.sock.close()
        self.sock = None

    def finish(self) -> None:
        """Still open: end any partial line, ping, and get the pong (or a typed close)."""
        if self.sock is not None and \
                self._send(b"\n" + json.dumps({"type": "ping", "id": FINAL_ID}).encode() + b"\n"):
            self.read_until(lambda: any(m.get("id") == FINAL_ID for m in self.messages), 5.0,
                            "an answer to the final ping")
            answers = [m for m in self.messages if m.get("id") == FINAL_ID]
            assert not answers or answers[0]["type"] in ("pong", "error"), answers
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# -- The well-behaved pair --------------------------------------------------------------------
class Pair:
    """Two clients in one room, taking turns; each keeps everything it receives."""

    def __init__(self, server: ServerHandle) -> None:
        self.clients = [connect(server.host, server.port) for _ in PAIR_USERS]
        self.received: list[list[dict[str, Any]]] = [[], []]
        for client, user, inbox in zip(self.clients, PAIR_USERS, self.received):
            inbox += client.join(PAIR_ROOM, user)
        self.sent: list[tuple[str, str]] = []

    def say(self, i: int) -> None:
        """Message ``i`` from one of the two; returns once the sender has its echo."""
        who = i % 2
        text = f"message {i} from {PAIR_USERS[who]}"
        self.clients[who].send(type="message", text=text, id=i)
        self.sent.append((PAIR_USERS[who], text))
        self._read(who, lambda m: m.get("type") == "message" and m.get("id") == i)

    def _read(self, who: int, until: Callable[[dict[str, Any]], bool]) -> None:
        got = self.clients[who].recv_until(until, timeout=10.0)
        errors = [m for m in got if m["type"] == "error"]
        assert not errors, f"{PAIR_USERS[who]} got errors: {errors}"
        self.received[who] += got

    def chat_of(self, who: int) -> list[tuple[str, str]]:
        return [(m["user"], m["text"]) for m in self.received[who]
                if m["type"] == "message" and m["room"] == PAIR_ROOM
                and m["user"] in PAIR_USERS and not m.get("history")]

    def finish(self) -> None:
        """Read until each has the whole conversation, then ping through both."""
        last_text = self.sent[-1][1]
        for who in (0, 1):
            if last_text not in [text for _, text in self.chat_of(who)]:
                self._read(who, lambda m: m.get("type") == "message" and m["text"] == last_text)
            self.clients[who].send(type="ping", id=FINAL_ID)
            self._read(who, lambda m: m.get("id") == FINAL_ID)
            assert self.received[who][-1] == {"type": "pong", "id": FINAL_ID}

    def close(self) -> None:
        for client in self.clients:
            client.close()


def check_seq(messages: list[dict[str, Any]]) -> None:
    """Live room broadcasts come in strictly increasing ``seq``: none late, none twice."""
    live = [m["seq"] for m in messages if "seq" in m and m["type"] in ("message", "system")
            and not m.get("history")]
    assert live == sorted(set(live)), "live broadcasts out of seq order, or repeated"


def existing(**settings: Any) -> dict[str, Any]:
    """The settings the server's config has (the hardening adds them as it goes)."""
    names = {f.name for f in dataclasses.fields(cfg.TcpServerConfig)}
    return {name: value for name, value in settings.items() if name in names}


@contextlib.contextmanager
def connect_or_refused(host: str, port: int) -> Iterator[LineClient | None]:
    """A client that has read its welcome, or None if refused with a typed error."""
    with LineClient(host, port) as client:
        first = client.recv_message()
        if first["type"] == "welcome":
            yield client
            return
        assert first["type"] == "error" and first["code"] in known_codes(), first
        yield None


def answers_ping(host: str, port: int) -> bool:
    """A new connection gets its welcome and a pong; False if refused with a typed error
    (a per-address limit may still count the fuzzers' last connections)."""
    with connect_or_refused(host, port) as client:
        if client is None:
            return False
        client.send(type="ping", id="late")
        return client.recv_message() == {"type": "pong", "id": "late"}


def check_server_fine(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    """Still serving: a new connection is answered, the loop runs, no error was logged."""
    wait_for(lambda: answers_ping(server.host, server.port), 5.0,
             "a new connection answered with a pong")
    assert not server.server.stopped.is_set(), "the server loop ended"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def close_all(fuzzers: list[Fuzzer]) -> None:
    for fuzzer in fuzzers:
        if fuzzer.sock is not None:
            fuzzer.sock.close()
            fuzzer.sock = None


# -- The tests ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_fuzzers_do_not_disturb_a_chatting_pair(seed: int,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="chat_sync")
    # The pair sends as fast as its echoes come back (hundreds a second on loopback):
    # lift the per-connection rate limit, where there is one, above that.
    with serve(port=0, **existing(rate_limit_per_s=100_000)) as server:
        pair = Pair(server)
        fuzzers = [Fuzzer(server.host, server.port, seed * 1000 + i) for i in range(FUZZERS)]
        try:
            for i in range(PAIR_MESSAGES):
                pair.say(i)
                for _ in range(FUZZ_ACTIONS_PER_MESSAGE):
                    for fuzzer in fuzzers:
                        fuzzer.act()
            for fuzzer in fuzzers:
                fuzzer.finish()
            pair.finish()
        finally:
            pair.close()
            close_all(fuzzers)

        for who in (0, 1):
            assert pair.chat_of(who) == pair.sent, f"{PAIR_USERS[who]} missed or repeated some"
            check_seq(pair.received[who])
        check_server_fine(server, caplog)

    # The fuzzers fuzzed: these errors can only come from what they sent.
    codes = {code for fuzzer in fuzzers for code in fuzzer.codes}
    assert {"bad_json", "bad_utf8", "bad_message", "unknown_type"} <= codes, codes
    assert any(fuzzer.closed_by_server for fuzzer in fuzzers), "no fuzzer was ever closed"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [11, 12])
def test_fuzzers_under_tight_limits_are_closed_only_with_typed_errors(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """The hardening's own limits, set low so the fuzzers trip them: each close is typed."""
    caplog.set_level(logging.ERROR, logger="chat_sync")
    tight = existing(rate_limit_per_s=200.0, rate_burst=8, rate_abuse_limit=4,
                     max_clients_per_ip=5, join_timeout_s=0.3, partial_line_timeout_s=0.2,
                     max_send_buffer_bytes=64 * 1024, send_buffer_soft_bytes=16 * 1024,
                     slow_reader_grace_s=0.1, max_line_bytes=4096)
    with serve(port=0, **tight) as server:
        fuzzers = [Fuzzer(server.host, server.port, seed * 1000 + i) for i in range(FUZZERS)]
        try:
            for _ in range(TIGHT_ROUNDS):
                for fuzzer in fuzzers:
                    fuzzer.act()
            for fuzzer in fuzzers:
                fuzzer.finish()
        finally:
            close_all(fuzzers)
        check_server_fine(server, caplog)
    closes = [code for fuzzer in fuzzers for code in fuzzer.closed_by_server]
    assert closes, "no fuzzer was ever closed"
