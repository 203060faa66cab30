"""Lesson 10: the output queue, against the package's ``Connection``, and ``flush`` on sockets.

The package is the oracle: ``chat_sync.tcp_server_core.Connection`` keeps
the same queue (``out``, ``out_bytes``, ``started``), and after every step
yours must hold the same chunks. ``flush`` is tried on a fake socket that
counts its system calls and on a real socketpair filled until the kernel
says no.
"""
from __future__ import annotations

import random
import socket
from typing import Any

import pytest

from chat_sync.guard import Guard, GuardLimits
from chat_sync.tcp_server_core import TLS_SEND_BYTES, Connection, Phase
from lesson_target import load

target = load(__file__)


def package_connection() -> Connection:
    """A connection with no socket: only its output queue is used."""
    sock: Any = None
    return Connection(1, sock, "127.0.0.1", "test", 1024, Guard(GuardLimits(), 0.0), Phase.OPEN)


def queue_of(*chunks: bytes) -> Any:
    queue = target.OutQueue()
    for chunk in chunks:
        queue.append(chunk)
    return queue


class FakeSocket:
    """Takes at most ``room`` bytes in all; counts the sendmsg calls and what they offered."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.calls: list[int] = []          # how many chunks each sendmsg was given
        self.received = b""

    def sendmsg(self, buffers: list[bytes]) -> int:
        self.calls.append(len(buffers))
        if self.room == 0:
            raise BlockingIOError("the kernel's buffer is full")
        data = b"".join(buffers)[:self.room]
        self.room -= len(data)
        self.received += data
        return len(data)


# -- the queue ------------------------------------------------------------------------

def test_a_new_queue_is_empty() -> None:
    queue = target.OutQueue()
    assert (queue.chunks, queue.size, queue.started) == ([], 0, False)


def test_append_queues_the_same_object_and_counts_its_bytes() -> None:
    message = b'{"type":"message","text":"hello"}\n'
    queues = [queue_of(message) for _ in range(3)]
    assert all(queue.chunks[0] is message for queue in queues), "a reference, not a copy"
    assert queues[0].size == len(message)


def test_offer_gives_at_most_limit_chunks_unjoined() -> None:
    chunks = [b"a\n", b"bb\n", b"ccc\n"]
    queue = queue_of(*chunks)
    offered = queue.offer(2)
    assert offered == chunks[:2] and all(a is b for a, b in zip(offered, chunks))
    assert queue.offer() == chunks and queue.chunks == chunks, "offering takes nothing away"


def test_chunks_sent_whole_leave_the_queue() -> None:
    queue = queue_of(b"a\n", b"bb\n", b"ccc\n")
    assert queue.consume(9, 3) is True
    assert (queue.chunks, queue.size, queue.started) == ([], 0, False)


def test_a_chunk_cut_short_keeps_its_rest_and_is_started() -> None:
    queue = queue_of(b"a\n", b"bb\n", b"ccc\n")
    assert queue.consume(3, 3) is False              # a\n and b of bb\n
    assert (queue.chunks, queue.size, queue.started) == ([b"b\n", b"ccc\n"], 6, True)
    assert queue.consume(2, 2) is False              # b\n whole: the chunk after it waits
    assert (queue.chunks, queue.size, queue.started) == ([b"ccc\n"], 4, False)


def test_some_of_the_offer_sent_whole_is_not_all_of_it() -> None:
    queue = queue_of(b"a\n", b"bb\n", b"ccc\n")
    assert queue.consume(5, 3) is False              # two whole of three offered
    assert queue.consume(4, 1) is True


def test_nothing_taken_changes_nothing() -> None:
    queue = queue_of(b"a\n", b"bb\n")
    assert queue.consume(0, 2) is False
    assert (queue.chunks, queue.size, queue.started) == ([b"a\n", b"bb\n"], 5, False)


def test_tls_head_joins_what_fits_and_then_keeps_the_same_buffer() -> None:
    queue = queue_of(b"aaaa", b"bbbb", b"cccc", b"dd")
    head = queue.tls_head(10)
    assert head == b"aaaabbbb" and queue.chunks == [b"aaaabbbb", b"cccc", b"dd"]
    assert queue.started and queue.size == 14
    queue.append(b"e")                               # SSLWantWriteError: offer it again
    assert queue.tls_head(100) is head, "after a want-write, the very same buffer"
    assert queue.consume(8, 1) is True
    assert queue.tls_head(100) == b"ccccdde"


def test_tls_head_takes_a_long_first_chunk_alone_and_does_not_copy_one_chunk() -> None:
    long = b"x" * 50
    queue = queue_of(long, b"y")
    assert queue.tls_head(10) is long and queue.chunks == [long, b"y"]


@pytest.mark.parametrize("seed", range(10))
def test_the_queue_agrees_with_the_package_step_by_step(seed: int) -> None:
    """Random appends, sendmsg offers and TLS heads, with the kernel taking a random share."""
    rng = random.Random(seed)
    mine, package = target.OutQueue(), package_connection()
    steps: list[str] = []
    for _ in range(300):
        roll = rng.random()
        if roll < 0.45 or not package.out:
            size = rng.randint(1, 40) if rng.random() < 0.8 else rng.randint(8_000, 40_000)
            data = bytes([97 + len(steps) % 26]) * size
            steps.append(f"append({len(data)} bytes)")
            mine.append(data)
            package.append(data)
        elif roll < 0.75 and not package.started:
            limit = rng.randint(1, 4)
            offered = package.out[:limit]
            sent = rng.randint(0, sum(len(chunk) for chunk in offered))
            steps.append(f"offer({limit}) then consume(sent={sent}, offered={len(offered)})")
            assert mine.offer(limit) == offered, "\n".join(steps)
            assert mine.consume(sent, len(offered)) == package.consume(sent, len(offered)), (
                "\n".join(steps))
        else:
            head = package.tls_head()
            sent = rng.randint(0, len(head))
            steps.append(f"tls_head({TLS_SEND_BYTES}) then consume(sent={sent}, offered=1)")
            assert mine.tls_head(TLS_SEND_BYTES) == head, "\n".join(steps)
            assert mine.consume(sent, 1) == package.consume(sent, 1), "\n".join(steps)
        state = (mine.chunks, mine.size, mine.started)
        assert state == (package.out, package.out_bytes, package.started), (
            "after these steps (chunks, size, started) differ:\n" + "\n".join(steps))


# -- flush ----------------------------------------------------------------------------

def test_flush_sends_ten_chunks_in_one_system_call() -> None:
    chunks = [b"line %d\n" % i for i in range(10)]
    queue, sock = queue_of(*chunks), FakeSocket(room=10_000)
    assert target.flush(sock, queue) == sum(map(len, chunks))
    assert sock.calls == [10] and sock.received == b"".join(chunks)
    assert (queue.chunks, queue.size) == ([], 0)


def test_flush_offers_at_most_limit_chunks_a_call() -> None:
    queue, sock = queue_of(*[b"%d\n" % i for i in range(7)]), FakeSocket(room=10_000)
    target.flush(sock, queue, limit=3)
    assert sock.calls == [3, 3, 1] and not queue.chunks


def test_flush_stops_when_the_kernel_stops_short() -> None:
    queue, sock = queue_of(b"aaaa", b"bbbb", b"cccc"), FakeSocket(room=6)
    assert target.flush(sock, queue) == 6
    assert sock.calls == [3], "a short send means the buffer is full: no second call"
    assert (queue.chunks, queue.started) == ([b"bb", b"cccc"], True)


def test_flush_on_a_full_socket_sends_nothing_and_keeps_everything() -> None:
    queue, sock = queue_of(b"a\n", b"b\n"), FakeSocket(room=0)
    assert target.flush(sock, queue) == 0
    assert (queue.chunks, queue.size, queue.started) == ([b"a\n", b"b\n"], 4, False)


def test_flush_an_empty_queue_makes_no_system_call() -> None:
    sock = FakeSocket(room=100)
    assert target.flush(sock, target.OutQueue()) == 0 and sock.calls == []


@pytest.mark.timeout(20)
def test_flush_through_a_real_socket_delivers_every_byte_in_order() -> None:
    """Fill a socketpair past the kernel's buffers, read a little, flush again, to the end."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.settimeout(5)
        queue = target.OutQueue()
        expected = b"".join(b"%06d " % i + b"x" * 200 + b"\n" for i in range(20_000))
        for start in range(0, len(expected), 208):
            queue.append(expected[start:start + 208])
        got = bytearray()
        sent = target.flush(ours, queue)
        assert 0 < sent < len(expected), "the kernel should not take 4 MB at once"
        assert queue.size == len(expected) - sent
        while queue.chunks or len(got) < len(expected):
            got += theirs.recv(1 << 16)
            sent += target.flush(ours, queue)
        assert sent == len(expected) and bytes(got) == expected
