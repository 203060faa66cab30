"""The chat log: escaping, one line per entry, the writer thread, rotation."""
from __future__ import annotations

import logging
import re
import sys
import threading
import unicodedata
from pathlib import Path

import pytest
from helpers import wait_for

from chat_sync.config import TcpServerConfig, UdpServerConfig
from chat_sync.logs import ChatLog, NonBlockingHandler, escape, format_entry
from chat_sync.serving import configure

pytestmark = pytest.mark.timeout(10)

UNSAFE = {
    "newline": ("\n", "\\n"),
    "carriage return": ("\r", "\\r"),
    "tab": ("\t", "\\t"),
    "nul": ("\x00", "\\u0000"),
    "escape": ("\x1b", "\\u001b"),
    "delete": ("\x7f", "\\u007f"),
    "next line (C1)": ("\x85", "\\u0085"),
    "csi (C1)": ("\x9b", "\\u009b"),
    "soft hyphen": ("\u00ad", "\\u00ad"),
    "arabic letter mark": ("\u061c", "\\u061c"),
    "zero width space": ("\u200b", "\\u200b"),
    "right-to-left mark": ("\u200f", "\\u200f"),
    "line separator": ("\u2028", "\\u2028"),
    "paragraph separator": ("\u2029", "\\u2029"),
    "left-to-right embedding": ("\u202a", "\\u202a"),
    "right-to-left override": ("\u202e", "\\u202e"),
    "first strong isolate": ("\u2068", "\\u2068"),
    "pop directional isolate": ("\u2069", "\\u2069"),
    "byte order mark": ("\ufeff", "\\ufeff"),
}


@pytest.mark.parametrize("char, shown", UNSAFE.values(), ids=UNSAFE.keys())
def test_escape_makes_unsafe_characters_visible(char: str, shown: str) -> None:
    assert escape(f"a{char}b") == f"a{shown}b"


def test_escape_covers_every_control_format_and_separator_character() -> None:
    missed = [f"U+{cp:04X}" for cp in range(sys.maxunicode + 1)
              if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Zl", "Zp")
              and escape(chr(cp)) == chr(cp)]
    assert missed == []


def test_escape_of_each_ascii_character_is_the_rule_s() -> None:
    """Printable ASCII skips the search (a fast path): it must agree with it."""
    from chat_sync.logs import _UNSAFE, _escape_char
    ascii_text = "".join(map(chr, range(128)))
    assert escape(ascii_text) == _UNSAFE.sub(_escape_char, ascii_text)
    assert [c for c in map(chr, range(32, 127)) if escape(c) != c] == []


def test_escape_shows_astral_characters_with_eight_digits() -> None:
    assert escape("a\U000e0041b") == "a\\U000e0041b"            # an invisible tag "A"


def test_escape_leaves_ordinary_text_alone() -> None:
    text = "Hello, wörld! 你好 👋 «quotes» \"' \\ ~"
    assert escape(text) == text


def test_escape_result_is_one_printable_line() -> None:
    nasty = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u2028\u2029\u202e\u2066\ufeff"
    escaped = escape(nasty)
    assert escaped.isprintable()
    assert len(escaped.splitlines()) == 1


def test_format_entry_layout() -> None:
    assert format_entry(0.0, "lobby", "alice", "hi") == (
        "1970-01-01T00:00:00.000+00:00 lobby alice: hi")
    assert format_entry(1_700_000_000.123, "dev", None, "bob joined") == (
        "2023-11-14T22:13:20.123+00:00 dev system: bob joined")


def test_format_entry_cannot_be_forged_into_two_lines() -> None:
    forged = "hi\n2026-01-01T00:00:00.000+00:00 lobby system: server owned\r"
    entry = format_entry(0.0, "lobby", "mallory", forged)
    assert entry.splitlines() == [entry]
    assert entry.endswith("hi\\n2026-01-01T00:00:00.000+00:00 lobby system: server owned\\r")


def test_format_entry_escapes_every_field() -> None:
    entry = format_entry(0.0, "lob\x1bby", "al\u202eice", "x\u2028y")
    assert entry == "1970-01-01T00:00:00.000+00:00 lob\\u001bby al\\u202eice: x\\u2028y"


def test_chat_log_writes_one_line_per_entry(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    log = ChatLog(str(path), max_bytes=1_000_000, backups=1)
    log.write(0.0, "lobby", None, "alice joined")
    log.write(1.5, "lobby", "alice", "hi\nthere 👋")
    log.write(2.0, "lobby", "alice", "100% sure %s %(x)s")      # no %-formatting
    log.close()                     # returns once everything queued is on disk
    assert path.read_text(encoding="utf-8").splitlines() == [
        "1970-01-01T00:00:00.000+00:00 lobby system: alice joined",
        "1970-01-01T00:00:01.500+00:00 lobby alice: hi\\nthere 👋",
        "1970-01-01T00:00:02.000+00:00 lobby alice: 100% sure %s %(x)s",
    ]


def test_chat_log_rotates_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    log = ChatLog(str(path), max_bytes=120, backups=2)
    entries = [format_entry(float(i), "lobby", "alice", f"message {i:02d}") for i in range(12)]
    for i in range(12):
        log.write(float(i), "lobby", "alice", f"message {i:02d}")
    log.close()
    files = [path, tmp_path / "chat.log.1", tmp_path / "chat.log.2"]
    assert not (tmp_path / "chat.log.3").exists()
    kept: list[str] = []
    for file in reversed(files):                      # oldest backup first
        lines = file.read_text(encoding="utf-8").splitlines()
        assert lines and len(file.read_bytes()) <= 120
        kept += lines
    assert kept == entries[-len(kept):]               # the newest, in order, whole lines
    assert len(kept) >= 3


def test_chat_log_close_with_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    log = ChatLog(str(path), max_bytes=100, backups=0)
    log.close()
    assert path.read_text() == ""


def test_a_typed_backslash_n_cannot_pass_for_an_escaped_newline() -> None:
    typed = format_entry(0.0, "lobby", "mallory", "a\\nb")
    real = format_entry(0.0, "lobby", "mallory", "a\nb")
    assert typed != real
    assert typed.endswith("mallory: a\\\\nb") and real.endswith("mallory: a\\nb")


def test_chat_log_batches_fit_the_size_limit(tmp_path: Path) -> None:
    log = ChatLog(str(tmp_path / "chat.log"), max_bytes=25, backups=1)
    try:
        chunks = log._chunks(["a" * 10, "b" * 10, "c" * 10, "d" * 40, "e"])
    finally:
        log.close()
    assert chunks == [["a" * 10, "b" * 10], ["c" * 10], ["d" * 40], ["e"]]
    unlimited = ChatLog(str(tmp_path / "other.log"), max_bytes=0, backups=0)
    try:
        assert unlimited._chunks(["x"] * 300) == [["x"] * 300]
    finally:
        unlimited.close()


@pytest.mark.timeout(10)
def test_the_operational_log_never_blocks_and_counts_what_it_dropped() -> None:
    # Issue 9, item 1: a handler whose stream blocks (a full pipe) stalls only its writer.
    released = threading.Event()
    written: list[str] = []

    class Blocked(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            released.wait(10)
            written.append(record.getMessage())

    handler = NonBlockingHandler(Blocked(), capacity=10)
    logger = logging.getLogger("test.nonblocking")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        done = threading.Event()

        def log_lots() -> None:
            for n in range(100):
                logger.warning("record %d", n)
            done.set()
        threading.Thread(target=log_lots, daemon=True).start()
        assert done.wait(5), "logging blocked on the stalled stream"
        released.set()
        wait_for(handler.queue.empty, what="the writer catching up")
        logger.warning("after")
        handler.close()
    finally:
        logger.removeHandler(handler)
    assert handler.dropped > 0
    assert len(written) <= 13
    # Each drop is told once, in the next record that gets through: the writer may
    # take one mid-burst, so the drops can come in more than one notice.
    told = [int(m.group(1)) for text in written
            if (m := re.match(r"dropped (\d+) log records", text))]
    assert told and sum(told) == handler.dropped, written
    assert written[-1] == "after"


def test_chat_log_rotates_on_bytes_not_characters(tmp_path: Path) -> None:
    # Issue 9, item 8: "é" is one character and two bytes.
    path = tmp_path / "chat.log"
    chat_log = ChatLog(str(path), max_bytes=2000, backups=10)
    def lines_written() -> int:
        try:
            return sum(len(f.read_bytes().splitlines()) for f in tmp_path.iterdir())
        except FileNotFoundError:       # rotated while we looked
            return 0
    for n in range(8):             # one at a time: each entry is its own record
        chat_log.write(1_700_000_000.0 + n, "lobby", "zoë", "é" * 500)
        wait_for(lambda: lines_written() > n, what=f"entry {n}")
    chat_log.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) > 1
    for file in files:
        assert file.stat().st_size <= 2000, (file.name, file.stat().st_size)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_chat_log_write_error_is_said_once_and_loses_only_the_log(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    # Issue 9, item 8: on a full disk every record used to print a traceback holding
    # the chat line; now one warning per episode names the file and the reason.
    chat_log = ChatLog("/dev/full", max_bytes=0, backups=0)
    with caplog.at_level(logging.WARNING, logger="chat_sync.logs"):
        for n in range(200):
            chat_log.write(1_700_000_000.0 + n, "lobby", "alice", f"secret {n}")
            if n % 50 == 0:
                wait_for(chat_log.idle, what="the writer catching up")
        chat_log.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "secret" not in err
    warnings = [r.getMessage() for r in caplog.records if "chat log" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "/dev/full" in warnings[0] and "No space left on device" in warnings[0]


@pytest.mark.parametrize("char", ["\U000e0100", "\u17b4", "\u180b", "\u115f", "\u3164",
                                  "\ufe0f", "\U000e0041"])
def test_escape_shows_default_ignorable_characters(char: str) -> None:
    # Issue 9, item 5: "alice\U000e0100: I am the real alice" must not read as alice.
    shown = escape("alice" + char)
    assert shown != "alice" + char and shown.startswith("alice\\")


@pytest.mark.parametrize("cls", [TcpServerConfig, UdpServerConfig])
def test_both_server_programs_log_through_the_non_blocking_handler(cls: type) -> None:
    # Issue 9, item 1, "same for the UDP server": serving.configure is their shared start.
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        assert configure(cls, ["--log-level", "warning"], prog="test", description="") is not None
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and isinstance(added[0], NonBlockingHandler)
        assert root.level == logging.WARNING
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


@pytest.mark.timeout(10)
def test_added_entries_reach_the_file_at_flush_in_the_order_added(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    chat_log = ChatLog(str(path), max_bytes=0, backups=0)
    try:
        for n in range(3):
            chat_log.add(1_700_000_000.0 + n, "lobby", "alice", f"turn one {n}")
        assert chat_log.idle()                  # added only: nothing handed over yet
        chat_log.flush()
        chat_log.add(1_700_000_010.0, "lobby", None, "bob joined")
        chat_log.flush()
        wait_for(chat_log.idle, what="the writer catching up")
        chat_log.add(1_700_000_020.0, "lobby", "alice", "left unflushed")
    finally:
        chat_log.close()                        # flushes what is left
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "turn one 0", "turn one 1", "turn one 2", "bob joined", "left unflushed"]
    assert " lobby system: " in lines[3]
