"""Lesson 02: ``LineBuffer`` fed every way a stream can split, and held to its bound.

The package's own ``chat_sync.framing.LineBuffer`` is the oracle: on any
split of the same stream, yours must return the same lines.
"""
from __future__ import annotations

import random

import pytest

from chat_sync import framing
from chat_sync.framing import LineTooLong
from chat_sync.protocol import MAX_LINE_BYTES, ErrorCode
from lesson_target import load

target = load(__file__)

STREAM = (b'{"type":"join","room":"lobby","user":"alice"}\r\n'
          b"\n"
          b'{"type":"message","text":"caf\xc3\xa9 \xe2\x98\x95"}\n'
          b"\r\n"
          b"a\rb\n"
          b'{"type":"ping"}\n'
          b"tail without newline")


def feed_in_pieces(buffer: framing.LineBuffer, stream: bytes, cuts: list[int]) -> list[bytes]:
    lines: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        lines += buffer.feed(stream[start:cut])
        start = cut
    return lines


def test_complete_lines_come_out_in_order() -> None:
    assert target.LineBuffer().feed(b"one\ntwo\n") == [b"one", b"two"]


def test_a_partial_line_waits_for_the_rest() -> None:
    lines = target.LineBuffer()
    assert lines.feed(b'{"type":"pi') == []
    assert lines.feed(b'ng"}\n{"ty') == [b'{"type":"ping"}']
    assert lines.feed(b'pe":"who"}\n') == [b'{"type":"who"}']


def test_crlf_is_a_line_ending_and_empty_lines_are_skipped() -> None:
    assert target.LineBuffer().feed(b"a\r\n\r\n\nb\n") == [b"a", b"b"]


def test_a_lone_cr_is_part_of_the_line() -> None:
    assert target.LineBuffer().feed(b"a\rb\n\r\rc\n") == [b"a\rb", b"\r\rc"]


def test_lines_are_bytes() -> None:
    assert all(type(line) is bytes for line in target.LineBuffer().feed(b"a\nb\n"))


def test_byte_at_a_time_matches_the_package() -> None:
    expected = framing.LineBuffer().feed(STREAM)
    assert feed_in_pieces(target.LineBuffer(), STREAM, list(range(1, len(STREAM)))) == expected


def test_every_two_way_split_matches_the_package() -> None:
    expected = framing.LineBuffer().feed(STREAM)
    for cut in range(len(STREAM) + 1):
        assert feed_in_pieces(target.LineBuffer(), STREAM, [cut]) == expected, (
            f"fed {pieces(STREAM, [cut])}")


def pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    """The ``recv`` results that ``cuts`` make of ``stream``, for a failure message."""
    bounds = [0, *cuts, len(stream)]
    return [stream[start:end] for start, end in zip(bounds, bounds[1:])]


def test_random_splits_match_the_package() -> None:
    rng = random.Random(2)
    expected = framing.LineBuffer().feed(STREAM)
    for run in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        got = feed_in_pieces(target.LineBuffer(), STREAM, cuts)
        assert got == expected, (f"run {run}: fed {len(cuts) + 1} pieces, in order:\n  "
                                 + "\n  ".join(repr(p) for p in pieces(STREAM, cuts))
                                 + f"\ngot lines {got}\nwanted    {expected}")


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_line_of_exactly_the_limit_is_fine(ending: bytes) -> None:
    line = b"x" * 8 + ending
    assert feed_in_pieces(target.LineBuffer(8), line, list(range(1, len(line)))) == [b"x" * 8]


def test_the_default_limit_is_the_protocols() -> None:
    longest = b"x" * MAX_LINE_BYTES
    assert target.LineBuffer().feed(longest + b"\n") == [longest]
    with pytest.raises(LineTooLong):
        target.LineBuffer().feed(longest + b"x\n")


def test_a_longer_line_is_refused() -> None:
    with pytest.raises(LineTooLong) as caught:
        target.LineBuffer(8).feed(b"x" * 9 + b"\n")
    assert caught.value.code == ErrorCode.LINE_TOO_LONG


def test_too_long_is_refused_before_the_newline_comes() -> None:
    lines = target.LineBuffer(8)
    assert lines.feed(b"ok\n" + b"x" * 8) == [b"ok"]
    with pytest.raises(LineTooLong) as caught:
        lines.feed(b"x")
    assert caught.value.code == ErrorCode.LINE_TOO_LONG


def test_the_lines_before_a_long_one_ride_on_the_error() -> None:
    lines = target.LineBuffer(8)
    assert lines.feed(b"one\ntw") == [b"one"]
    with pytest.raises(LineTooLong) as caught:
        lines.feed(b"o\r\nthree\n" + b"x" * 9)
    assert caught.value.lines == [b"two", b"three"]
    with pytest.raises(LineTooLong) as caught:
        target.LineBuffer(8).feed(b"four\n" + b"x" * 9 + b"\nfive\n")
    assert caught.value.lines == [b"four"]


def test_a_megabyte_without_newline_is_refused_on_the_chunk_that_crosses_the_limit() -> None:
    lines = target.LineBuffer(64 * 1024)
    chunk = b"x" * 4096
    for _ in range(16):
        assert lines.feed(chunk) == []
    with pytest.raises(LineTooLong):
        lines.feed(chunk)


def test_end_of_stream_adds_no_line() -> None:
    lines = target.LineBuffer()
    assert lines.feed(b"half a line") == []
    assert lines.feed(b"") == []
