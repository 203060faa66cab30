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
  and readline-aware redraw. A message arriving while the user is half-way
  through typing a line would otherwise be printed in the middle of it. So
  ``show`` saves readline's line buffer, clears the line (``\\r\\x1b[K``),
  prints the message, and re-prints the prompt and the saved buffer.
  Trade-off: Python's ``readline`` cannot ask for a forced redisplay, so
  the cursor ends up at the end of the re-printed text even if the user had
  moved it left; the next keystroke puts it right again.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from .logs import escape as _escape_line
from .protocol import MessageType, SystemEvent, name_key

CLEAR_LINE = "\r\x1b[K"      # carriage return, then erase to the end of the line

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


def redraw(text: str, prompt: str, buffer: str) -> str:
    """What to write so ``text`` appears above the line being typed.

    Clear the current line, write ``text`` and a newline, then re-print the
    prompt and what the user had typed so far (``buffer``).
    """
    return CLEAR_LINE + text + "\n" + prompt + buffer


class Terminal:
    """Where the clients print events and read typed lines.

    ``plain`` selects plain mode (see the module comment). ``line_buffer``
    returns what the user has typed so far (``readline.get_line_buffer``);
    it is used only in TTY mode. ``show`` may be called from any thread.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO, *, plain: bool, colour: bool = False,
                 prompt: str = "> ", line_buffer: Callable[[], str] | None = None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.plain = plain
        self.colour = colour and not plain
        self.prompt = "" if plain else prompt
        self._line_buffer = line_buffer
        self._lock = threading.Lock()
        self._prompt_shown = False    # a read_line is waiting for the user
        self._saved_tty: list[Any] | None = None   # termios settings to restore

    @classmethod
    def open(cls, stdin: TextIO, stdout: TextIO, *, plain: bool,
             environ: Mapping[str, str]) -> Terminal:
        """A terminal for the real streams: TTY mode only if both are TTYs and not ``plain``.

        Importing ``readline`` is what makes ``input()`` editable, with
        history; it is done only in TTY mode because it also changes how
        ``input()`` treats its streams.
        """
        interactive = not plain and stdin.isatty() and stdout.isatty()
        if not interactive:
            return cls(stdin, stdout, plain=True)
        line_buffer: Callable[[], str] | None = None
        try:
            import readline
            line_buffer = readline.get_line_buffer
        except ImportError:           # Windows, or Python built without it
            pass
        terminal = cls(stdin, stdout, plain=False, colour=colour_wanted(stdout, environ),
                       line_buffer=line_buffer)
        terminal._saved_tty = _tty_settings(stdin)
        return terminal

    def close(self) -> None:
        """Leave the terminal as we found it.

        The program may end while the stdin thread is still inside readline,
        which had switched the TTY to raw, no-echo mode; the saved settings
        are put back so the user's shell is usable again.
        """
        if self.plain:
            return
        with self._lock:
            self.stdout.write("\n")
            self.stdout.flush()
        if self._saved_tty is not None:
            _restore_tty(self.stdin, self._saved_tty)

    def show(self, text: str) -> None:
        """Print one line (already rendered and escaped) without garbling the input line."""
        with self._lock:
            if self.plain or not self._prompt_shown:
                self.stdout.write(text + "\n")
            else:
                buffer = self._line_buffer() if self._line_buffer is not None else ""
                self.stdout.write(redraw(text, self.prompt, buffer))
            self.stdout.flush()

    def read_line(self) -> str | None:
        """The next typed line without its line ending, or None at end of input.

        In TTY mode this is ``input()`` (so readline edits the line); in plain
        mode a bare ``readline()`` of the stream, with no prompt.
        """
        if self.plain:
            line = self.stdin.readline()
            if not line:
                return None
            return line.rstrip("\r\n")
        with self._lock:
            self._prompt_shown = True
        try:
            return input(self.prompt)
        except EOFError:
            return None
        finally:
            with self._lock:
                self._prompt_shown = False


def _tty_settings(stream: TextIO) -> list[Any] | None:
    """The TTY settings of ``stream``, or None where there are none (not a TTY, no termios)."""
    try:
        import termios
    except ImportError:
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
