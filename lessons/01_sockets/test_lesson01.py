"""Lesson 01: ``recv_exactly`` and ``read_line`` against a stream split every which way.

A ``ScriptedSocket`` is a fake whose ``recv`` hands out the chunks the test
chose, as TCP may; one test uses a real socketpair and one a real echo
server, to show the fake tells no lies.
"""
from __future__ import annotations

import socket
import threading

import pytest

import lesson01_echo_server
from lesson_target import load

target = load(__file__)


class ScriptedSocket:
    """A fake socket: ``recv(n)`` returns at most n bytes of the next scripted chunk."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = [chunk for chunk in chunks if chunk]
        self.asked: list[int] = []          # every bufsize recv was called with

    def recv(self, bufsize: int) -> bytes:
        self.asked.append(bufsize)
        if not self.chunks:
            return b""                      # the peer has closed
        chunk = self.chunks.pop(0)
        if len(chunk) > bufsize:
            self.chunks.insert(0, chunk[bufsize:])
        return chunk[:bufsize]


class EndlessSocket:
    """A peer that sends ``x`` forever and never a newline."""

    def __init__(self) -> None:
        self.sent = 0

    def recv(self, bufsize: int) -> bytes:
        self.sent += bufsize
        return b"x" * bufsize


def test_recv_exactly_joins_partial_reads() -> None:
    sock = ScriptedSocket(b"ab", b"c", b"def")
    assert target.recv_exactly(sock, 4) == b"abcd"
    assert target.recv_exactly(sock, 2) == b"ef"


def test_recv_exactly_takes_no_more_than_it_needs() -> None:
    sock = ScriptedSocket(b"abcdef")
    assert target.recv_exactly(sock, 2) == b"ab"
    assert all(size <= 2 for size in sock.asked), sock.asked
    assert target.recv_exactly(sock, 4) == b"cdef"


def test_recv_exactly_zero_bytes_is_empty() -> None:
    assert target.recv_exactly(ScriptedSocket(b"abc"), 0) == b""


def test_recv_exactly_raises_eof_when_the_stream_ends_short() -> None:
    with pytest.raises(EOFError):
        target.recv_exactly(ScriptedSocket(b"ab"), 3)


def test_read_line_reassembles_lines_split_anywhere() -> None:
    sock = ScriptedSocket(b"hel", b"lo\nwor", b"ld", b"\n\n")
    assert target.read_line(sock) == b"hello"
    assert target.read_line(sock) == b"world"
    assert target.read_line(sock) == b""
    assert target.read_line(sock) is None


def test_read_line_leaves_the_next_line_in_a_real_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        left.sendall(b"one\ntwo\n")         # two lines, one send
        left.shutdown(socket.SHUT_WR)
        assert target.read_line(right) == b"one"
        assert target.read_line(right) == b"two"
        assert target.read_line(right) is None


def test_read_line_raises_eof_inside_a_line() -> None:
    with pytest.raises(EOFError):
        target.read_line(ScriptedSocket(b"no newline"))


def test_read_line_allows_max_bytes_and_no_more() -> None:
    assert target.read_line(ScriptedSocket(b"x" * 10 + b"\n"), max_bytes=10) == b"x" * 10
    with pytest.raises(ValueError):
        target.read_line(ScriptedSocket(b"x" * 11 + b"\n"), max_bytes=10)


def test_read_line_gives_up_on_an_endless_line_early() -> None:
    sock = EndlessSocket()
    with pytest.raises(ValueError):
        target.read_line(sock, max_bytes=100)
    assert sock.sent <= 101


@pytest.mark.timeout(10)
def test_read_line_against_the_echo_server() -> None:
    with lesson01_echo_server.listen("127.0.0.1", 0) as listener:
        server = threading.Thread(target=lesson01_echo_server.serve_client, args=(listener,),
                                  daemon=True)
        server.start()
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            client.sendall(b"hello\nwor")
            assert target.read_line(client) == b"hello"
            client.sendall(b"ld\n")
            assert target.read_line(client) == b"world"
        server.join(5)
        assert not server.is_alive(), "the echo server did not see the client close"
