"""Pure tests of what the chat clients show and parse: commands, rendering, escaping."""
from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import pytest

from chat_sync import commands as cmd
from chat_sync import protocol as p
from chat_sync import terminal
from chat_sync.line_editor import (Layout, LineEditor, char_width, draw_input, erase_input,
                                  layout)
from chat_sync.terminal import Terminal, colour_wanted, escape, redraw, render

# -- Command parsing -------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("line, expected", [
    ("", None),
    ("   ", None),
    ("hello", cmd.Say("hello")),
    ("  hello  ", cmd.Say("  hello  ")),           # chat text is sent as typed
    ("//shrug", cmd.Say("/shrug")),
    ("/help", cmd.Help()),
    ("/HELP", cmd.Help()),
    ("/quit", cmd.Quit()),
    ("/rooms", cmd.ListRooms()),
    ("/who", cmd.WhoIsHere()),
    ("/join dev", cmd.JoinRoom("dev")),
    ("/join   dev  ", cmd.JoinRoom("dev")),
    ("/msg bob hi there", cmd.Whisper("bob", "hi there")),
    ("/msg bob   hi  ", cmd.Whisper("bob", "hi")),
])
def test_parse_command(line: str, expected: cmd.Command | None) -> None:
    assert cmd.parse_command(line) == expected


@pytest.mark.timeout(20)
@pytest.mark.parametrize("line, hint", [
    ("/join", "usage: /join ROOM"),
    ("/join a b", "usage: /join ROOM"),
    ("/msg", "usage: /msg USER TEXT"),
    ("/msg bob", "usage: /msg USER TEXT"),
    ("/msg bob   ", "usage: /msg USER TEXT"),
    ("/who lobby", "usage: /who"),
    ("/rooms x", "usage: /rooms"),
    ("/jion dev", "unknown command /jion; type /help"),
    ("/", "unknown command /; type /help"),
])
def test_malformed_commands_are_local_usage_hints(line: str, hint: str) -> None:
    parsed = cmd.parse_command(line)
    assert isinstance(parsed, cmd.Usage)
    assert parsed.text.startswith(hint)


@pytest.mark.timeout(20)
def test_help_names_every_command() -> None:
    for word in ("/join", "/rooms", "/who", "/msg", "/quit", "/help", "//"):
        assert word in cmd.HELP


@pytest.mark.timeout(20)
@pytest.mark.parametrize("request_, expected", [
    (cmd.join_request("dev", "alice"), p.Join(room="dev", user="alice")),
    (cmd.join_request("dev", "alice", since=7, rid=3),
     p.Join(room="dev", user="alice", since=7, id=3)),
    (cmd.message_request("hi"), p.Message(text="hi")),
    (cmd.whisper_request("bob", "psst"), p.Whisper(to="bob", text="psst")),
    (cmd.rooms_request(), p.ListRooms()),
    (cmd.who_request(), p.Who()),
    (cmd.leave_request(), p.Leave()),
    (cmd.ping_request(rid="x"), p.Ping(id="x")),
])
def test_request_builders_are_what_the_server_parses(request_: dict[str, Any],
                                                     expected: p.Request) -> None:
    line = p.encode(request_)
    assert line.endswith(b"\n")
    assert p.parse_request(p.decode(line[:-1])) == expected


# -- Rendering -------------------------------------------------------------------------

WELCOME = p.welcome("0.1.0", p.Limits(), 0, "run1")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("message, expected", [
    (WELCOME, "connected to chat_sync 0.1.0 (protocol 1)"),
    (p.chat_message("lobby", "alice", "hi all", 3, 1.0), "[lobby] alice: hi all"),
    ({**p.chat_message("lobby", "alice", "old", 1, 1.0), "history": True},
     "(history) [lobby] alice: old"),
    (p.system("lobby", p.SystemEvent.JOIN, "bob", "bob joined", 4, 1.0), "[lobby] * bob joined"),
    (p.system("dev", p.SystemEvent.LEAVE, "bob", "bob left", 5, 1.0), "[dev] * bob left"),
    (p.system(None, p.SystemEvent.SHUTDOWN, None, "server shutting down", None, 1.0),
     "* server: server shutting down"),
    (p.rooms_reply([("dev", 1), ("lobby", 2)]), "rooms: dev (1), lobby (2)"),
    (p.rooms_reply([]), "rooms: none"),
    (p.who_reply("lobby", ["alice", "bob"]), "in lobby: alice, bob"),
    (p.pong(), "pong"),
    (p.error(p.ErrorCode.NAME_TAKEN, "the name 'alice' is taken", field="user"),
     "error name_taken: the name 'alice' is taken"),
    ({"type": "frobnicate"}, "unknown message type frobnicate"),
    ({}, "unknown message type ?"),
])
def test_render(message: dict[str, Any], expected: str) -> None:
    assert render(message, me="carol") == expected


@pytest.mark.timeout(20)
def test_render_whisper_depends_on_who_i_am() -> None:
    message = p.whisper("alice", "bob", "psst", 1.0)
    assert render(message, me="bob") == "*from alice*: psst"
    assert render(message, me="alice") == "*to bob*: psst"
    assert render(message, me="ALICE") == "*to bob*: psst"     # names compare case-folded
    assert render(message) == "*from alice*: psst"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("message", [
    {"type": "message", "room": 3, "user": None, "text": ["x"]},
    {"type": "rooms", "rooms": "lobby"},
    {"type": "rooms", "rooms": [1, None]},
    {"type": "who", "users": None},
    {"type": "system"},
    {"type": "whisper", "from": 5},
    {"type": None, "history": "yes"},
])
def test_render_never_raises_on_odd_messages(message: dict[str, Any]) -> None:
    assert isinstance(render(message, me="me"), str)


HOSTILE = [
    "\x1b[2J\x1b[H",            # clear the screen, cursor home
    "\x1b]0;pwned\x07",         # set the window title
    "\x9b31m",                  # C1 CSI: an escape sequence without ESC
    "one\ntwo",                 # a forged second line
    "line\rover",               # carriage return: overwrite the line
    "\u202egnp.exe",            # right-to-left override
    "\u2028forged",             # line separator
    "\x7f\x00\x08",
    "\ud800",                   # a lone surrogate, which JSON can carry
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("evil", HOSTILE)
def test_escape_leaves_nothing_a_terminal_would_act_on(evil: str) -> None:
    safe = escape(evil)
    assert all(char.isprintable() for char in safe), repr(safe)
    safe.encode("utf-8")        # printable, and encodable too


@pytest.mark.timeout(20)
def test_escape_shows_what_was_sent() -> None:
    assert escape("a\x1bb") == "a\\u001bb"
    assert escape("one\ntwo") == "one\\ntwo"
    assert escape("\u202e") == "\\u202e"
    assert escape("\ud800") == "\\ud800"
    assert escape("héllo wörld ✓ 日本") == "héllo wörld ✓ 日本"


_OUR_SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("evil", HOSTILE)
def test_peers_cannot_send_escape_sequences_in_any_field(evil: str, colour: bool) -> None:
    messages = [
        p.chat_message(evil, evil, evil, 1, 1.0),
        p.system(evil, p.SystemEvent.JOIN, evil, evil, 1, 1.0),
        p.system(None, p.SystemEvent.SHUTDOWN, None, evil, None, 1.0),
        {"type": "system", "event": evil, "text": evil},
        p.whisper(evil, evil, evil, 1.0),
        p.rooms_reply([(evil, 1)]),
        p.who_reply(evil, [evil, evil]),
        {"type": "error", "code": evil, "text": evil},
        {"type": "welcome", "server": evil, "version": evil, "protocol": evil},
        {"type": evil},
    ]
    for message in messages:
        line = render(message, me="me", colour=colour)
        if colour:
            line = _OUR_SGR.sub("", line)      # our own colours are the only escapes
        assert all(char.isprintable() for char in line), repr(line)


@pytest.mark.timeout(20)
def test_colour_wraps_parts_in_sgr_and_plain_has_none() -> None:
    message = p.chat_message("lobby", "alice", "hi", 1, 1.0)
    coloured = render(message, colour=True)
    assert "\x1b[" in coloured
    assert _OUR_SGR.sub("", coloured) == "[lobby] alice: hi"
    assert "\x1b" not in render(message, colour=False)


class _FakeTty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.timeout(20)
@pytest.mark.parametrize("tty, environ, plain, expected", [
    (True, {}, False, True),
    (True, {"NO_COLOR": "1"}, False, False),
    (True, {"NO_COLOR": ""}, False, True),      # no-color.org: set *and non-empty*
    (True, {}, True, False),
    (False, {}, False, False),
])
def test_colour_wanted(tty: bool, environ: dict[str, str], plain: bool, expected: bool) -> None:
    assert colour_wanted(_FakeTty(tty), environ, plain) is expected


# -- The terminal shell ----------------------------------------------------------------


@pytest.mark.timeout(20)
def test_redraw_clears_the_line_then_restores_prompt_and_typing() -> None:
    assert redraw("[lobby] bob: hi", "> ", "half a li") == (
        "\r\x1b[K[lobby] bob: hi\n> half a li")


@pytest.mark.timeout(20)
def test_plain_terminal_prints_one_line_per_event_and_reads_lines() -> None:
    stdin = io.StringIO("hello\r\n/quit\nlast")
    stdout = io.StringIO()
    term = Terminal(stdin, stdout, plain=True, colour=True)
    assert term.colour is False and term.prompt == ""
    term.show("[lobby] bob: hi")
    assert stdout.getvalue() == "[lobby] bob: hi\n"
    assert [term.read_line(), term.read_line(), term.read_line(), term.read_line()] == [
        "hello", "/quit", "last", None]
    term.close()
    assert stdout.getvalue() == "[lobby] bob: hi\n"


@pytest.mark.timeout(20)
def test_open_falls_back_to_plain_without_a_tty() -> None:
    term = Terminal.open(_FakeTty(False), _FakeTty(True), plain=False, environ={})
    assert term.plain
    term = Terminal.open(_FakeTty(True), _FakeTty(True), plain=True, environ={})
    assert term.plain


class Screen:
    """Just enough of a terminal to check what the Terminal draws: wrap, CR, LF, CUU/CUD/CUF, EL.

    A wide character takes two cells (the second empty) and wraps whole.

    Like xterm, writing the last column leaves the cursor there, "about to
    wrap": the next character goes to the next row, a CR stays on this one.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0
        self.pending_wrap = False

    def write(self, text: str) -> None:
        for match in re.finditer(r"\x1b\[(\d*)([A-Za-z])|(.)", text, re.S):
            count, final, char = match.groups()
            if char is None:
                self._control(int(count or 1), final)
            elif char == "\r":
                self.col, self.pending_wrap = 0, False
            elif char == "\n":
                self._down()
                self.col, self.pending_wrap = 0, False     # the TTY's ONLCR: \n is \r\n
            else:
                self._put(char)

    def _put(self, char: str) -> None:
        columns = char_width(char)
        if self.pending_wrap or self.col + columns > self.width:
            self._down()
            self.col, self.pending_wrap = 0, False
        row = self.rows[self.row]
        row.extend(" " * (self.col + columns - len(row)))
        row[self.col:self.col + columns] = [char] + [""] * (columns - 1)
        if self.col + columns == self.width:
            self.col, self.pending_wrap = self.width - 1, True
        else:
            self.col += columns

    def _down(self) -> None:
        self.row += 1
        if self.row == len(self.rows):
            self.rows.append([])

    def _control(self, count: int, final: str) -> None:
        self.pending_wrap = False
        if final == "A":
            self.row = max(0, self.row - count)
        elif final == "B":
            self.row = min(len(self.rows) - 1, self.row + count)
        elif final == "C":
            self.col = min(self.width - 1, self.col + count)
        elif final == "K":
            del self.rows[self.row][self.col:]
        else:
            raise AssertionError(f"unexpected escape sequence ESC [ {count} {final}")

    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.rows]

    def flush(self) -> None:
        pass


class Keys:
    """Typed keys for a Terminal: each ``read`` returns the next chunk, then b"" (end of input).

    ``between`` runs before every read but the first: after a chunk has been echoed.
    """

    def __init__(self, *chunks: str, between: Callable[[], None] = lambda: None) -> None:
        self.chunks = [chunk.encode() for chunk in chunks]
        self.between = between
        self.reads = 0

    def read(self) -> bytes:
        if self.reads:
            self.between()
        self.reads += 1
        return self.chunks.pop(0) if self.chunks else b""


def tty_terminal(screen: Screen, keys: Keys) -> Terminal:
    return Terminal(io.StringIO(), screen, plain=False, prompt="> ",   # type: ignore[arg-type]
                    keys=keys.read, width=lambda: screen.width)


@pytest.mark.timeout(20)
def test_a_line_longer_than_the_terminal_is_redrawn_whole_and_once() -> None:
    screen = Screen(width=20)
    typed = "0123456789abcdefghijklmnopqrstuvwxyz"               # 38 columns with the prompt

    def messages_arrive() -> None:
        for i in range(3):
            term.show(f"[lobby] bob: m{i}")

    term = tty_terminal(screen, Keys(typed, "\r", between=messages_arrive))
    term.show("before")                                      # nobody typing yet: no prompt
    assert term.read_line() == typed
    assert screen.lines() == ["before", "[lobby] bob: m0", "[lobby] bob: m1", "[lobby] bob: m2",
                              "> 0123456789abcdefgh", "ijklmnopqrstuvwxyz", ">"]


@pytest.mark.timeout(20)
def test_messages_arriving_mid_line_leave_one_input_area_with_the_cursor_in_place() -> None:
    screen = Screen(width=20)
    seen: list[tuple[list[str], int, int]] = []

    def message_arrives() -> None:
        term.show("[lobby] bob: hi")
        seen.append((screen.lines(), screen.row, screen.col))

    # A wrapped line, the cursor moved back 3 (one sequence split over reads), a Y typed.
    keys = Keys("x" * 25, "\x1b[D\x1b[D\x1b", "[D", "Y", between=message_arrives)
    term = tty_terminal(screen, keys)
    assert term.read_line() is None
    lines, row, col = seen[-1]
    assert lines == ["[lobby] bob: hi"] * 4 + ["> " + "x" * 18, "x" * 4 + "Y" + "xxx"], lines
    assert (row, col) == (5, 5)                                 # just after the Y


@pytest.mark.timeout(20)
def test_ctrl_d_erases_the_prompt_so_what_follows_starts_a_clean_line() -> None:
    screen = Screen(width=40)
    term = tty_terminal(screen, Keys("\x04"))
    assert term.read_line() is None
    term.show("[lobby] * alice left")
    term.close()
    assert screen.lines() == ["[lobby] * alice left", ""]


@pytest.mark.timeout(20)
def test_lines_typed_ahead_are_read_one_by_one_each_under_one_prompt() -> None:
    screen = Screen(width=40)
    term = tty_terminal(screen, Keys("v1\rv2\r", "v3\r"))
    assert [term.read_line(), term.read_line()] == ["v1", "v2"]
    term.show("[lobby] alice: v1")
    assert term.read_line() == "v3"
    assert term.read_line() is None                          # b"": the TTY went away
    assert screen.lines() == ["> v1", "> v2", "[lobby] alice: v1", "> v3", ""]


# -- The line editor and its layout --------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("keys, lines, buffer, cursor", [
    ("hello\x7f\x7fp!\r", ["help!"], "", 0),                 # Backspace
    ("ac\x1b[Db\r", ["abc"], "", 0),                          # Left, then insert
    ("abc\x01X\x05Y", [], "XabcY", 5),                        # Ctrl-A, Ctrl-E
    ("abc\x1b[H\x1b[3~", [], "bc", 0),                        # Home, Delete
    ("one two\x17", [], "one ", 4),                           # Ctrl-W
    ("one two\x1b[D\x1b[D\x0b", [], "one t", 5),              # Ctrl-K
    ("one two\x1b[D\x1b[D\x15", [], "wo", 0),                 # Ctrl-U
    ("a\rb\r\x1b[A\x1b[A\x1b[B", ["a", "b"], "b", 1),         # Up, Up, Down: the history
    ("x\x1b[1;5Cy", [], "xy", 2),                             # Ctrl-Right: a modifier, ignored
    ("tab\there\u202e!\x07", [], "tabhere!", 8),              # controls, bidi overrides dropped
    ("\u5b57\u0301", [], "\u5b57\u0301", 2),                  # wide and combining are text
])
def test_line_editor_keys(keys: str, lines: list[str], buffer: str, cursor: int) -> None:
    editor = LineEditor()
    assert editor.feed(keys) == lines
    assert (editor.buffer, editor.cursor) == (buffer, cursor)


@pytest.mark.timeout(20)
def test_line_editor_ctrl_d_ends_input_only_on_an_empty_line() -> None:
    editor = LineEditor()
    assert editor.feed("ab\x01\x04") == [] and editor.buffer == "b"   # deletes in a line
    assert editor.feed("\x04") == [] and editor.buffer == ""
    assert editor.feed("x\x04\r") == ["x"]                          # at the end: nothing
    assert editor.feed("\x04more\r") == [None] and editor.ended      # nothing after the end


@pytest.mark.timeout(20)
@pytest.mark.parametrize("prompt, buffer, cursor, shown", [
    ("> ", "", None, Layout(1, 0)),
    ("> ", "x" * 17, None, Layout(1, 0)),
    ("> ", "x" * 18, None, Layout(2, 1)),           # exactly full: the cursor gets the next row
    ("> ", "x" * 40, None, Layout(3, 2)),
    ("> ", "x" * 40, 3, Layout(3, 0)),
    ("> ", "x" * 17 + "\u5b57", None, Layout(2, 1)),  # a wide character that does not fit wraps
])
def test_layout_counts_the_rows_a_terminal_shows(prompt: str, buffer: str, cursor: int | None,
                                                 shown: Layout) -> None:
    assert layout(prompt, buffer, cursor, width=20) == shown
    screen = Screen(width=20)
    screen.write(draw_input(prompt, buffer, cursor, width=20))
    assert (len(screen.rows), screen.row) == (shown.rows, shown.cursor_row)
    screen.write(erase_input(shown))
    assert screen.lines() == [""] * shown.rows and (screen.row, screen.col) == (0, 0)


@pytest.mark.timeout(20)
def test_main_streams_make_stdout_unable_to_crash_on_odd_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr("sys.stdout", ascii_out)
    _stdin, stdout = terminal.main_streams()
    stdout.write("caf\u00e9\n")
    stdout.flush()
    assert raw.getvalue() == b"caf\\xe9\n"
