"""LineBuffer, fed bytes directly: no sockets, every read size, bounded memory."""
from __future__ import annotations

import pytest

from chat_sync.framing import LineBuffer
from chat_sync.protocol import MAX_LINE_BYTES, ErrorCode, ProtocolError

pytestmark = pytest.mark.timeout(10)

CONVERSATION = (b'{"type":"join","room":"lobby","user":"alice"}\n'
                b'{"type":"message","text":"h\xc3\xa9llo \xf0\x9f\x91\x8b"}\r\n'
                b"\n"
                b"\r\n"
                b'{"type":"ping","id":7}\n'
                b'{"type":"who"}\n')
EXPECTED = [b'{"type":"join","room":"lobby","user":"alice"}',
            b'{"type":"message","text":"h\xc3\xa9llo \xf0\x9f\x91\x8b"}',
            b'{"type":"ping","id":7}',
            b'{"type":"who"}']


def feed_in_chunks(buffer: LineBuffer, data: bytes, size: int) -> list[bytes]:
    lines: list[bytes] = []
    for start in range(0, len(data), size):
        lines += buffer.feed(data[start:start + size])
    return lines


def test_a_line_split_across_reads_comes_out_whole() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b'{"type":') == []
    assert buffer.pending == 8
    assert buffer.feed(b'"ping"') == []
    assert buffer.feed(b"}\n") == [b'{"type":"ping"}']
    assert buffer.pending == 0


def test_many_lines_in_one_read_and_the_tail_waits() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"a\nb\nc\nstart of d") == [b"a", b"b", b"c"]
    assert buffer.pending == len(b"start of d")
    assert buffer.feed(b" end\n") == [b"start of d end"]


@pytest.mark.parametrize("size", range(1, len(CONVERSATION) + 1))
def test_every_read_size_yields_the_same_lines(size: int) -> None:
    buffer = LineBuffer()
    assert feed_in_chunks(buffer, CONVERSATION, size) == EXPECTED
    assert buffer.pending == 0


def test_crlf_loses_only_the_cr_before_the_newline() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"one\r\ntwo\r") == [b"one"]
    assert buffer.feed(b"\n") == [b"two"]            # the CR waited for its LF
    assert buffer.feed(b"a\rb\n") == [b"a\rb"]       # a CR inside a line is data


def test_empty_lines_are_skipped() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"\n\r\n\n\nx\n\n") == [b"x"]
    assert buffer.pending == 0


def test_end_of_stream_returns_nothing_and_reports_the_unterminated_tail() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"done\nhalf") == [b"done"]
    assert buffer.feed(b"") == []
    assert buffer.pending == 4


def test_a_line_exactly_at_the_limit_is_accepted() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    assert buffer.feed(b"x" * 10) == []              # at the limit, not over it
    assert buffer.feed(b"\r") == []                  # the CR may still end the line
    assert buffer.feed(b"\n") == [b"x" * 10]
    assert buffer.feed(b"y" * 10 + b"\n") == [b"y" * 10]


def test_default_limit_is_the_protocol_limit() -> None:
    buffer = LineBuffer()
    assert buffer.max_line_bytes == MAX_LINE_BYTES
    assert buffer.feed(b"z" * MAX_LINE_BYTES + b"\n") == [b"z" * MAX_LINE_BYTES]


def test_a_complete_line_over_the_limit_raises() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    with pytest.raises(ProtocolError) as caught:
        buffer.feed(b"x" * 11 + b"\n")
    assert caught.value.code is ErrorCode.LINE_TOO_LONG


def test_one_byte_over_the_limit_raises_before_the_newline() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    buffer.feed(b"x" * 10)
    with pytest.raises(ProtocolError) as caught:
        buffer.feed(b"x")
    assert caught.value.code is ErrorCode.LINE_TOO_LONG


@pytest.mark.parametrize("chunk", [1000, 4096, 65536])
def test_a_mebibyte_without_newline_raises_once_past_the_limit(chunk: int) -> None:
    limit = 64 * 1024
    buffer = LineBuffer(max_line_bytes=limit)
    fed = 0
    with pytest.raises(ProtocolError) as caught:
        while fed < 1024 * 1024:
            buffer.feed(b"a" * chunk)
            fed += chunk
            assert buffer.pending <= limit      # never holding more than a line's worth
    assert caught.value.code is ErrorCode.LINE_TOO_LONG
    fed += chunk                                 # the chunk that raised
    assert limit < fed <= limit + chunk          # raised as soon as the limit was passed
    assert buffer.pending <= limit + chunk


@pytest.mark.timeout(5)
def test_a_long_line_fed_a_byte_at_a_time_is_linear_not_quadratic() -> None:
    # About 0.5 s when each byte is scanned once; rescanning the buffer on
    # every feed takes ten times that here, so the timeout is the assertion.
    buffer = LineBuffer(max_line_bytes=2 * 1024 * 1024)
    for _ in range(1_000_000):
        buffer.feed(b"q")
    assert buffer.feed(b"\n") == [b"q" * 1_000_000]


def test_lines_after_a_long_but_legal_line_still_split() -> None:
    buffer = LineBuffer(max_line_bytes=100)
    data = b"a" * 100 + b"\nb\n" + b"c" * 100 + b"\r\n"
    assert feed_in_chunks(buffer, data, 7) == [b"a" * 100, b"b", b"c" * 100]


@pytest.mark.timeout(10)
def test_complete_lines_before_an_overlong_one_ride_on_the_error() -> None:
    """How TCP split the bytes must not decide which requests get answered."""
    from chat_sync.framing import LineTooLong
    buffer = LineBuffer(max_line_bytes=8)
    with pytest.raises(LineTooLong) as caught:
        buffer.feed(b"one\ntwo\n" + b"x" * 9)
    assert caught.value.lines == [b"one", b"two"]
    assert caught.value.code is ErrorCode.LINE_TOO_LONG
