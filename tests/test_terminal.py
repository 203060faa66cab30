"""Pure tests of what the chat clients show and parse: commands, rendering, escaping."""
from __future__ import annotations

import builtins
import io
import re
from typing import Any

import pytest

from chat_sync import commands as cmd
from chat_sync import protocol as p
from chat_sync import terminal
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


@pytest.mark.timeout(20)
def test_tty_terminal_redraws_the_line_being_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = io.StringIO()
    term = Terminal(io.StringIO(), stdout, plain=False, prompt="> ",
                    line_buffer=lambda: "half typed")

    def fake_input(prompt: str) -> str:
        # A message arrives while the user is typing: input() has printed the prompt.
        stdout.write(prompt + "half typed")
        term.show("[lobby] bob: hi")
        return "half typed, done"

    monkeypatch.setattr(builtins, "input", fake_input)
    term.show("before")                      # nobody typing: no redraw, no prompt
    assert term.read_line() == "half typed, done"
    assert stdout.getvalue() == (
        "before\n> half typed" + "\r\x1b[K[lobby] bob: hi\n> half typed")


@pytest.mark.timeout(20)
def test_tty_terminal_treats_ctrl_d_as_end_of_input(monkeypatch: pytest.MonkeyPatch) -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(builtins, "input", eof)
    term = Terminal(io.StringIO(), io.StringIO(), plain=False)
    assert term.read_line() is None


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
