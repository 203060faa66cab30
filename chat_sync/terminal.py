"""Showing server messages to a person: pure rendering, and a thin terminal shell.

Theory of operation
-------------------
``render(message)`` turns one decoded server message into one line of text.
It is a pure function of the message (and of who "me" is, for whispers), so
the tests check every message type without a terminal; both chat clients
use it.

Everything that came from the network is escaped before it is shown:
control characters (ESC above all), line separators and bidi overrides
become visible ``\\x1b``-style text, so a peer can neither move our cursor,
recolour our screen, forge a second line, nor reverse the text after it.
Escaping is done per field, before our own colours are added, so our escape
sequences are the only ones that ever reach the terminal.

``Terminal`` is the I/O shell, in one of two modes:

- **plain** (``--plain``, or stdin/stdout not a TTY): one line per event,
  no prompt, no escape sequences, no colour. Right for pipes and scripts.
- **TTY**: a prompt, colour unless ``NO_COLOR`` is set (https://no-color.org),
  and a line editor of our own. A message arriving while the user is
  half-way through typing a line would otherwise be printed in the middle of
  it. So the input area (the prompt and the line being typed, which may wrap
  over several rows) is ours alone: the terminal is in cbreak mode (keys
  arrive one by one, unechoed), ``LineEditor`` applies them, and every write
  to the screen, a key's echo or a message, happens under one lock. ``show``
  erases the input area by the rows it takes at the terminal's width, prints
  the message, and draws the area again, the cursor where it was.

Why not readline: Python's ``readline`` echoes keys and draws its prompt in
C, in the stdin thread, without the GIL and without any lock of ours; a
message printed at the wrong moment drew the prompt twice, and a redraw from
outside cannot know how many rows readline's line takes or where its cursor
is. The editor here has readline's everyday keys (arrows, Home/End, Ctrl-U/K/W,
history) and no more. Trade-off: a resize while a wrapped line is shown
may leave a stale row, since the terminal rewraps what is already there.
"""
from __future__ import annotations

import codecs
import collections
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from .line_editor import ONE_ROW, Layout, LineEditor, draw_input, erase_input, layout
from .line_editor import CLEAR_LINE as CLEAR_LINE
from .logs import escape as _escape_line
from .protocol import MessageType, SystemEvent, name_key


# SGR colour codes; used only when colour is on.
_RESET = "\x1b[0m"
_BOLD = "1"
_DIM = "2"
_RED = "31"
_YELLOW = "33"
_MAGENTA = "35"
_CYAN = "36"



def escape(text: str) -> str:
    """``text`` made safe to print: control, format and separator characters escaped.

    The chat log's escaping: one rule for everything a peer sends us.
    """
    return _escape_line(text)


def colour_wanted(stream: TextIO, environ: Mapping[str, str], plain: bool = False) -> bool:
    """True when colour should be used on ``stream``.

    Only on a TTY, never in plain mode, and never when ``NO_COLOR`` is set
    to a non-empty value (the no-color.org convention).
    """
    if plain or environ.get("NO_COLOR", ""):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _paint(text: str, sgr: str, colour: bool) -> str:
    return f"\x1b[{sgr}m{text}{_RESET}" if colour else text


def _field(message: dict[str, Any], key: str) -> str:
    """One field of a server message as safe text; '?' if it is missing."""
    value = message.get(key)
    if value is None:
        return "?"
    return escape(value if isinstance(value, str) else str(value))


def render(message: dict[str, Any], *, me: str | None = None, colour: bool = False) -> str:
    """One server message as one line of text, safe to print.

    ``me`` is our user name; it decides whether a whisper is shown as sent
    (``*to bob*: hi``) or received (``*from alice*: hi``). Never raises,
    whatever the message holds: an unknown type is shown as such.
    """
    kind = message.get("type")
    if kind == MessageType.MESSAGE:
        line = (_paint(f"[{_field(message, 'room')}]", _CYAN, colour) + " "
                + _paint(_field(message, "user"), _BOLD, colour) + ": "
                + _field(message, "text"))
    elif kind == MessageType.SYSTEM:
        line = _render_system(message, colour)
    elif kind == MessageType.WHISPER:
        sender = message.get("from")
        if me is not None and isinstance(sender, str) and name_key(sender) == name_key(me):
            label = f"*to {_field(message, 'to')}*"
        else:
            label = f"*from {_field(message, 'from')}*"
        line = _paint(label, _MAGENTA, colour) + ": " + _field(message, "text")
    elif kind == MessageType.WELCOME:
        line = _paint(f"connected to {_field(message, 'server')} {_field(message, 'version')}"
                      f" (protocol {_field(message, 'protocol')})", _DIM, colour)
    elif kind == MessageType.ROOMS:
        line = "rooms: " + _render_rooms(message.get("rooms"))
    elif kind == MessageType.WHO:
        users = message.get("users")
        names = [escape(str(user)) for user in users] if isinstance(users, list) else []
        line = f"in {_field(message, 'room')}: " + (", ".join(names) or "nobody")
    elif kind == MessageType.PONG:
        line = "pong"
    elif kind == MessageType.ERROR:
        line = _paint(f"error {_field(message, 'code')}: {_field(message, 'text')}", _RED, colour)
    else:
        line = _paint(f"unknown message type {_field(message, 'type')}", _RED, colour)
    if message.get("history") is True:
        line = _paint("(history)", _DIM, colour) + " " + line
    return line


def _render_system(message: dict[str, Any], colour: bool) -> str:
    event = message.get("event")
    if event == SystemEvent.JOIN:
        text = f"* {_field(message, 'user')} joined"
    elif event == SystemEvent.LEAVE:
        text = f"* {_field(message, 'user')} left"
    elif event == SystemEvent.SHUTDOWN:
        return _paint(f"* server: {_field(message, 'text')}", _YELLOW, colour)
    else:
        text = f"* {_field(message, 'text')}"
    if "room" in message:
        return _paint(f"[{_field(message, 'room')}]", _CYAN, colour) + " " + _paint(
            text, _YELLOW, colour)
    return _paint(text, _YELLOW, colour)


def _render_rooms(rooms: object) -> str:
    if not isinstance(rooms, list) or not rooms:
        return "none"
    parts = []
    for room in rooms:
        if isinstance(room, dict):
            parts.append(f"{_field(room, 'name')} ({_field(room, 'members')})")
    return ", ".join(parts) or "none"


def redraw(text: str, prompt: str, buffer: str, *, cursor: int | None = None,
           width: int | None = None, shown: Layout = ONE_ROW) -> str:
    """What to write so ``text`` appears above the line being typed.

    Erase the input area (drawn as ``shown``), write ``text`` and a newline,
    then draw the prompt and what the user had typed so far (``buffer``)
    again, the cursor where it was.
    """
    return erase_input(shown) + text + "\n" + draw_input(prompt, buffer, cursor, width)



# -- The terminal shell ------------------------------------------------------------------
class Terminal:
    """Where the clients print events and read typed lines.

    ``plain`` selects plain mode (see the module comment). In TTY mode
    ``keys`` reads what the user typed, as bytes (b"" at end of input), and
    ``width`` gives the terminal's width; both default to the real ones, and
    tests pass fakes. ``show`` may be called from any thread.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO, *, plain: bool, colour: bool = False,
                 prompt: str = "> ", keys: Callable[[], bytes] | None = None,
                 width: Callable[[], int] | None = None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.plain = plain
        self.colour = colour and not plain
        self.prompt = "" if plain else prompt
        self._keys = keys if keys is not None else self._read_keys
        self._width = width if width is not None else self._terminal_width
        self._lock = threading.Lock()    # one writer at a time: the stdin thread or a reader
        self._editor = LineEditor()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._typed: collections.deque[str | None] = collections.deque()   # lines finished
        self._editing = False            # the input area is on screen
        self._shown = ONE_ROW            # ... laid out like this
        self._closed = False
        self._saved_tty: list[Any] | None = None   # termios settings to restore

    @classmethod
    def open(cls, stdin: TextIO, stdout: TextIO, *, plain: bool,
             environ: Mapping[str, str]) -> Terminal:
        """A terminal for the real streams: TTY mode only if both are TTYs and not ``plain``."""
        interactive = not plain and stdin.isatty() and stdout.isatty()
        saved = _tty_settings(stdin) if interactive else None
        if saved is None:
            return cls(stdin, stdout, plain=True)
        terminal = cls(stdin, stdout, plain=False, colour=colour_wanted(stdout, environ))
        terminal._saved_tty = saved
        return terminal

    def close(self) -> None:
        """Erase the input area and leave the terminal as we found it.

        The program may end while the stdin thread still waits for keys,
        with the TTY in cbreak (no echo) mode; the saved settings are put
        back so the user's shell is usable again.
        """
        if self.plain:
            return
        with self._lock:
            self._closed = True
            if self._editing:
                self._editing = False
                self.stdout.write(erase_input(self._shown))
                self.stdout.flush()
        if self._saved_tty is not None:
            _restore_tty(self.stdin, self._saved_tty)

    def show(self, text: str) -> None:
        """Print one line (already rendered and escaped) above the line being typed."""
        with self._lock:
            if self.plain or not self._editing:
                self.stdout.write(text + "\n")
            else:
                width = self._width()
                self.stdout.write(redraw(text, self.prompt, self._editor.buffer,
                                         cursor=self._editor.cursor, width=width,
                                         shown=self._shown))
                self._shown = layout(self.prompt, self._editor.buffer, self._editor.cursor, width)
            self.stdout.flush()

    def read_line(self) -> str | None:
        """The next typed line without its line ending, or None at end of input.

        In TTY mode the line editor's (the stdin thread's): keys are read
        outside the lock and applied, and echoed, under it; in plain mode a
        bare ``readline()`` of the stream, with no prompt.
        """
        if self.plain:
            line = self.stdin.readline()
            if not line:
                return None
            return line.rstrip("\r\n")
        with self._lock:
            if not self._editing and not self._editor.ended and not self._closed:
                self._start_editing()
        while True:
            with self._lock:
                if self._typed:
                    return self._typed.popleft()
                if self._editor.ended or self._closed:
                    return None
            data = self._keys()
            with self._lock:
                if self._closed:
                    return None
                finished: list[str | None] = [None]           # b"": the TTY is gone
                if data:
                    finished = self._editor.feed(self._decoder.decode(data))
                self._echo(finished)
                self._typed.extend(finished)

    def _start_editing(self) -> None:
        """Cbreak mode (keys one by one, no echo: we echo), and the prompt. Under the lock."""
        if self._saved_tty is not None:
            _cbreak(self.stdin)
        width = self._width()
        self.stdout.write(draw_input(self.prompt, self._editor.buffer, self._editor.cursor, width))
        self._shown = layout(self.prompt, self._editor.buffer, self._editor.cursor, width)
        self._editing = True
        self.stdout.flush()

    def _echo(self, finished: list[str | None]) -> None:
        """Show the keys just applied: each finished line stays; the input area follows."""
        out = erase_input(self._shown)
        for line in finished:
            if line is None:                   # end of input: no prompt left behind
                self._editing = False
                self.stdout.write(out)
                self.stdout.flush()
                return
            out += self.prompt + line + "\n"
        width = self._width()
        out += draw_input(self.prompt, self._editor.buffer, self._editor.cursor, width)
        self._shown = layout(self.prompt, self._editor.buffer, self._editor.cursor, width)
        self.stdout.write(out)
        self.stdout.flush()

    def _read_keys(self) -> bytes:
        return os.read(self.stdin.fileno(), 4096)

    def _terminal_width(self) -> int:
        try:
            return os.get_terminal_size(self.stdout.fileno()).columns or 80
        except (OSError, ValueError):
            return 80


def _cbreak(stream: TextIO) -> None:
    import termios
    import tty
    try:
        tty.setcbreak(stream.fileno(), termios.TCSANOW)
    except (termios.error, OSError, ValueError):
        pass                          # not a TTY after all: keys arrive as lines, still read


def _tty_settings(stream: TextIO) -> list[Any] | None:
    """The TTY settings of ``stream``, or None where there are none (not a TTY, no termios)."""
    try:
        import termios
    except ImportError:               # Windows: no TTY modes, so plain mode
        return None
    try:
        return termios.tcgetattr(stream.fileno())
    except (termios.error, OSError, ValueError):
        return None


def _restore_tty(stream: TextIO, settings: list[Any]) -> None:
    import termios
    try:
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, settings)
    except (termios.error, OSError, ValueError):
        pass                          # the stream is gone: nothing left to restore


def main_streams() -> tuple[TextIO, TextIO]:
    """sys.stdin and sys.stdout, with stdout unable to crash on an unprintable character."""
    stdout = sys.stdout
    reconfigure = getattr(stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    return sys.stdin, stdout
