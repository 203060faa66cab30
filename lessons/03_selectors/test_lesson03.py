"""Lesson 03: ``flush`` on a real socketpair, then inside the broadcast server.

The server runs in the test's own thread, one ``turn`` at a time: a test
does something as a client, then turns the loop until what it expects has
happened or a deadline passes. No second thread, no race, no sleep.
"""
from __future__ import annotations

import selectors
import socket
import time
from typing import Callable, Iterator

import pytest

import lesson03_broadcast_server as broadcast
from chat_sync.framing import LineBuffer
from lesson_target import load

target = load(__file__)
pytestmark = pytest.mark.timeout(10)     # a flush that blocks hangs: fail fast

BIG = bytes(range(256)) * (16 * 1024)       # 4 MiB: more than any kernel buffer here


class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
    """A real selector that counts its ``modify`` calls."""

    modified = 0

    def modify(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        self.modified += 1
        return super().modify(fileobj, events, data)


@pytest.fixture
def pair() -> Iterator[tuple[CountingSelector, broadcast.Peer, socket.socket]]:
    """A selector, a Peer on one end of a socketpair, and the other end to read from."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    selector = CountingSelector()
    peer = broadcast.Peer(ours)
    selector.register(ours, selectors.EVENT_READ, peer)
    yield selector, peer, theirs
    selector.close()
    ours.close()
    theirs.close()


def drain(sock: socket.socket) -> bytes:
    """Everything ``sock`` holds right now, without waiting."""
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    return bytes(data)


def test_small_output_goes_at_once_and_the_socket_stays_read_only(pair) -> None:  # type: ignore[no-untyped-def]
    selector, peer, theirs = pair
    peer.out += b"hello\n"
    target.flush(selector, peer)
    assert drain(theirs) == b"hello\n"
    assert peer.out == b"" and not peer.writing
    assert selector.get_key(peer.sock).events == selectors.EVENT_READ
    assert selector.modified == 0


def test_what_the_kernel_refuses_waits_for_event_write(pair) -> None:  # type: ignore[no-untyped-def]
    selector, peer, theirs = pair
    peer.out += BIG
    target.flush(selector, peer)
    assert 0 < len(peer.out) < len(BIG), "one send: some taken, some left"
    assert peer.writing
    assert selector.get_key(peer.sock).events == selectors.EVENT_READ | selectors.EVENT_WRITE
    target.flush(selector, peer)                # the kernel is still full: no error, no change
    assert peer.writing and selector.modified == 1


def test_every_byte_arrives_in_order_and_event_write_is_dropped_after(pair) -> None:  # type: ignore[no-untyped-def]
    selector, peer, theirs = pair
    peer.out += BIG
    target.flush(selector, peer)
    received = bytearray()
    deadline = time.monotonic() + 10
    while True:
        received += drain(theirs)
        if not peer.out and len(received) == len(BIG):
            break
        assert time.monotonic() < deadline, f"stuck with {len(peer.out)} bytes unsent"
        for key, events in selector.select(timeout=1.0):
            if events & selectors.EVENT_WRITE:
                target.flush(selector, key.data)
    assert bytes(received) == BIG
    assert not peer.writing
    assert selector.get_key(peer.sock).events == selectors.EVENT_READ
    assert selector.select(timeout=0) == [], "registered for writing with nothing to write"
    assert selector.modified == 2


class CountingSocket:
    """A real socket that counts its ``send`` calls (a socket's own methods are read-only)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes | bytearray) -> int:
        self.sends += 1
        return self.sock.send(data)

    def fileno(self) -> int:
        return self.sock.fileno()


def test_one_send_per_flush_and_none_with_nothing_to_send(pair) -> None:  # type: ignore[no-untyped-def]
    selector, peer, theirs = pair
    counting = CountingSocket(peer.sock)
    peer.sock = counting
    target.flush(selector, peer)
    assert counting.sends == 0, "nothing to send: no send() call at all"
    assert not peer.writing and selector.modified == 0
    peer.out += BIG
    target.flush(selector, peer)
    assert counting.sends == 1, f"{counting.sends} send() calls in one flush, not one"
    assert 0 < len(peer.out) < len(BIG)


def test_a_broken_connection_raises(pair) -> None:  # type: ignore[no-untyped-def]
    selector, peer, theirs = pair
    theirs.close()
    peer.out += b"anyone there?\n"
    with pytest.raises(OSError):
        target.flush(selector, peer)


# -- the broadcast server, run on this flush -------------------------------------
class Client:
    """A test client whose reads never block, so one thread drives it and the server."""

    def __init__(self, address: tuple[str, int], rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:      # before connect, so the advertised window is small too
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(address)
        self.sock.setblocking(False)
        self.buffer = LineBuffer()
        self.lines: list[bytes] = []
        self.closed = False

    def poll(self) -> list[bytes]:
        """Read what has arrived, without waiting; returns every line received so far."""
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            self.closed = not data
            self.lines += self.buffer.feed(data)
        return self.lines

    def at_eof(self) -> bool:
        self.poll()
        return self.closed


@pytest.fixture
def server() -> Iterator[broadcast.BroadcastServer]:
    server = broadcast.BroadcastServer("127.0.0.1", 0)
    yield server
    server.close()


def run_until(server: broadcast.BroadcastServer, done: Callable[[], object],
              timeout: float = 5.0) -> None:
    """Turn the server's loop until ``done()``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the server did not get there in time"
        server.turn(remaining)


def connect(server: broadcast.BroadcastServer, rcvbuf: int | None = None) -> Client:
    client = Client(server.address, rcvbuf)
    run_until(server, client.poll)              # greeted
    return client


def test_lines_go_to_every_other_client(server: broadcast.BroadcastServer) -> None:
    alice = connect(server)
    bob = connect(server)
    carol = connect(server)
    assert (alice.lines, bob.lines, carol.lines) == (
        [b"welcome: 1 connected"], [b"welcome: 2 connected"], [b"welcome: 3 connected"])
    alice.sock.sendall(b"hello\nwor")
    alice.sock.sendall(b"ld\n")
    run_until(server, lambda: len(bob.poll()) == 3 and len(carol.poll()) == 3)
    assert bob.lines[1:] == carol.lines[1:] == [b"hello", b"world"]
    assert alice.poll() == [b"welcome: 1 connected"], "a sender does not hear itself"


def test_a_slow_reader_gets_everything_once_it_reads(server: broadcast.BroadcastServer) -> None:
    bob = connect(server, rcvbuf=4096)
    (peer,) = server.peers
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    lines = [b"%04d " % i + b"x" * 995 for i in range(200)]    # 200 kB, bob not reading
    for line in lines:
        server.send(peer, line + b"\n")
    assert peer.writing, "the kernel's buffers are full: the rest waits for EVENT_WRITE"
    run_until(server, lambda: len(bob.poll()) == 1 + len(lines))
    assert bob.lines[1:] == lines
    assert not peer.writing and peer.out == b""


def test_a_client_that_stops_reading_is_dropped(server: broadcast.BroadcastServer) -> None:
    alice = connect(server)
    bob = connect(server, rcvbuf=4096)
    bob_peer = next(p for p in server.peers if p.sock.getpeername() == bob.sock.getsockname())
    bob_peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = 0
    while bob_peer in server.peers:
        server.send(bob_peer, b"x" * 999 + b"\n")
        sent += 1000
        assert sent < 2 * broadcast.MAX_OUT_BYTES, "never dropped"
    run_until(server, bob.at_eof)
    carol = connect(server)
    assert carol.lines == [b"welcome: 2 connected"]
    alice.sock.sendall(b"still here\n")
    run_until(server, lambda: carol.poll()[-1] == b"still here")
