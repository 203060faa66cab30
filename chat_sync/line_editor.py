"""The line being typed: a small line editor and the layout of its rows, with no I/O.

Theory of operation
-------------------
The terminal client shows one input area at the bottom of the screen: the
prompt and the line being typed, which wraps over several rows when it is
longer than the terminal is wide. Messages are printed above it. To print
one, the program must erase the area, print, and draw the area again, and
for that it must know how many rows the area takes and which of them the
cursor is on. Readline knows, but does not say, and draws in C with no lock
of ours; so the clients edit the line themselves:

- ``LineEditor`` holds the line and the cursor and applies typed keys
  (``feed``), returning the lines finished with Enter. It knows readline's
  everyday keys and no more.
- ``layout`` says how the area sits at a given width (``Layout``: rows, and
  the cursor's row); ``draw_input`` writes it, ``erase_input`` erases it.
  Columns are counted as a terminal counts them: a wide (CJK) character
  takes two and wraps whole, a combining mark none.

``terminal.Terminal`` is the shell around them: cbreak mode, the lock, the
writes. Everything here is pure, so the tests check it at any width.
"""
from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

CLEAR_LINE = "\r\x1b[K"      # carriage return, then erase to the end of the line

ESC = "\x1b"


@dataclass(frozen=True)
class Layout:
    """Where the input area (the prompt and the line being typed) sits on screen."""

    rows: int          # rows it takes, from the row the prompt starts on
    cursor_row: int    # the row of them (from 0) the cursor was left on


ONE_ROW = Layout(1, 0)


def char_width(char: str) -> int:
    """Columns ``char`` takes on a terminal: 0 for a combining mark, 2 for a wide (CJK) one."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _advance(text: str, width: int) -> tuple[int, int]:
    """Row and column after writing ``text`` from the start of a row ``width`` columns wide.

    A character that does not fit goes to the next row, as the terminal wraps
    it. The column may end equal to ``width``: the cursor waits at the margin.
    """
    row = col = 0
    for char in text:
        char_columns = char_width(char)
        if col + char_columns > width:
            row, col = row + 1, 0
        col += char_columns
    return row, col


def _cursor_at(prompt: str, buffer: str, cursor: int, width: int) -> tuple[int, int]:
    """Row and column of the cursor when it stands before ``buffer[cursor]``."""
    row, col = _advance(prompt + buffer[:cursor], width)
    next_columns = char_width(buffer[cursor]) if cursor < len(buffer) else 1
    if col + next_columns > width:            # what comes next starts the next row
        return row + 1, 0
    return row, col


def layout(prompt: str, buffer: str, cursor: int | None = None,
           width: int | None = None) -> Layout:
    """The Layout ``draw_input`` leaves on screen for these arguments."""
    columns = width or sys.maxsize
    end_row, end_col = _advance(prompt + buffer, columns)
    if end_col >= columns:
        end_row += 1
    row, _col = _cursor_at(prompt, buffer, len(buffer) if cursor is None else cursor, columns)
    return Layout(end_row + 1, row)


def _csi(count: int, final: str) -> str:
    return f"\x1b[{count}{final}" if count else ""


def draw_input(prompt: str, buffer: str, cursor: int | None = None,
               width: int | None = None) -> str:
    """What to write, from the start of an empty row, to show the input area.

    ``cursor`` is where in ``buffer`` the cursor stands (default: its end);
    ``width`` is the terminal's, None for a line that never wraps. A line that
    ends exactly at the margin gets a row of its own for the cursor, so the
    cursor is never left in the terminal's "about to wrap" state, where its
    row is ambiguous.
    """
    columns = width or sys.maxsize
    cursor = len(buffer) if cursor is None else cursor
    text = prompt + buffer
    end_row, end_col = _advance(text, columns)
    if end_col >= columns:
        text += "\r\n"
        end_row, end_col = end_row + 1, 0
    row, col = _cursor_at(prompt, buffer, cursor, columns)
    if (row, col) != (end_row, end_col):
        text += _csi(end_row - row, "A") + "\r" + _csi(col, "C")
    return text


def erase_input(shown: Layout) -> str:
    """What to write to erase the input area drawn as ``shown``, leaving the cursor at its start.

    Down to its last row, then erase each row on the way up: the area may
    span several rows when the line is longer than the terminal is wide.
    """
    down = shown.rows - 1 - shown.cursor_row
    return _csi(down, "B") + (CLEAR_LINE + "\x1b[A") * (shown.rows - 1) + CLEAR_LINE


def _printable(char: str) -> bool:
    """Typed text we keep: no control, format or separator characters (as ``escape`` drops)."""
    return not unicodedata.category(char).startswith(("C", "Zl", "Zp"))


class LineEditor:
    """The line being typed and the keys that edit it, as readline's basic keys do. No I/O.

    ``feed(keys)`` applies typed characters and returns the lines they
    finished (Enter), with None for end of input (Ctrl-D on an empty line),
    after which it takes no more keys. ``buffer`` and ``cursor`` are the line
    still being typed. Keys: Left/Right (Ctrl-B/F), Home/End (Ctrl-A/E),
    Backspace, Delete (Ctrl-D in a line), Ctrl-U and Ctrl-K (erase to the
    start, to the end), Ctrl-W (the word before), Up/Down (Ctrl-P/N: the
    lines typed before). Escape sequences may be split across ``feed`` calls.
    """

    def __init__(self, history_size: int = 500) -> None:
        self.buffer = ""
        self.cursor = 0
        self.ended = False
        self._history: list[str] = []
        self._history_size = history_size
        self._recall = 0         # the history line shown; len(history): the line being typed
        self._draft = ""         # the line being typed, kept while browsing the history
        self._escape = ""        # an escape sequence begun, not finished

    def feed(self, keys: str) -> list[str | None]:
        finished: list[str | None] = []
        for key in keys:
            if self.ended:
                break
            if self._escape or key == ESC:
                self._escape += key
                if _sequence_complete(self._escape):
                    self._sequence(self._escape)
                    self._escape = ""
            elif key in "\r\n":
                finished.append(self._accept())
            elif key == "\x04" and not self.buffer:      # Ctrl-D on an empty line
                self.ended = True
                finished.append(None)
            elif key in _CONTROL_KEYS:
                _CONTROL_KEYS[key](self)
            elif _printable(key):
                self._insert(key)
        return finished

    def _accept(self) -> str:
        line = self.buffer
        if line.strip() and (not self._history or self._history[-1] != line):
            self._history.append(line)
            del self._history[:-self._history_size]
        self.buffer, self.cursor, self._draft = "", 0, ""
        self._recall = len(self._history)
        return line

    def _insert(self, text: str) -> None:
        self.buffer = self.buffer[:self.cursor] + text + self.buffer[self.cursor:]
        self.cursor += len(text)

    def _set(self, buffer: str, cursor: int) -> None:
        self.buffer, self.cursor = buffer, max(0, min(cursor, len(buffer)))

    def left(self) -> None:
        self._set(self.buffer, self.cursor - 1)

    def right(self) -> None:
        self._set(self.buffer, self.cursor + 1)

    def home(self) -> None:
        self._set(self.buffer, 0)

    def end(self) -> None:
        self._set(self.buffer, len(self.buffer))

    def backspace(self) -> None:
        if self.cursor:
            self._set(self.buffer[:self.cursor - 1] + self.buffer[self.cursor:], self.cursor - 1)

    def delete(self) -> None:
        self._set(self.buffer[:self.cursor] + self.buffer[self.cursor + 1:], self.cursor)

    def erase_to_start(self) -> None:
        self._set(self.buffer[self.cursor:], 0)

    def erase_to_end(self) -> None:
        self._set(self.buffer[:self.cursor], self.cursor)

    def erase_word(self) -> None:
        start = len(self.buffer[:self.cursor].rstrip())
        start = self.buffer.rfind(" ", 0, start) + 1
        self._set(self.buffer[:start] + self.buffer[self.cursor:], start)

    def previous(self) -> None:
        if self._recall == len(self._history):
            self._draft = self.buffer
        if self._recall > 0:
            self._recall -= 1
            self._set(self._history[self._recall], len(self._history[self._recall]))

    def next(self) -> None:
        if self._recall < len(self._history):
            self._recall += 1
            line = self._history[self._recall] if self._recall < len(self._history) else self._draft
            self._set(line, len(line))

    def _sequence(self, sequence: str) -> None:
        """A CSI (``ESC [ ... final``) or SS3 (``ESC O x``) sequence; others are ignored."""
        if sequence.startswith(ESC + "["):
            final = sequence[-1]
            key = sequence[2:-1].split(";")[0] + "~" if final == "~" else final
        elif sequence.startswith(ESC + "O"):
            key = sequence[-1]
        else:
            return                                      # Alt and a key: not ours
        action = _SEQUENCE_KEYS.get(key)
        if action is not None:
            action(self)


def _sequence_complete(sequence: str) -> bool:
    if len(sequence) < 2:
        return False
    if sequence[1] == "[":                              # CSI: parameters, then a final byte
        return len(sequence) > 2 and "\x40" <= sequence[-1] <= "\x7e"
    if sequence[1] == "O":                              # SS3: one more character
        return len(sequence) == 3
    return True


_CONTROL_KEYS: dict[str, Callable[[LineEditor], None]] = {
    "\x01": LineEditor.home, "\x05": LineEditor.end,
    "\x02": LineEditor.left, "\x06": LineEditor.right,
    "\x7f": LineEditor.backspace, "\x08": LineEditor.backspace,
    "\x04": LineEditor.delete,
    "\x15": LineEditor.erase_to_start, "\x0b": LineEditor.erase_to_end,
    "\x17": LineEditor.erase_word,
    "\x10": LineEditor.previous, "\x0e": LineEditor.next,
}

_SEQUENCE_KEYS: dict[str, Callable[[LineEditor], None]] = {
    "A": LineEditor.previous, "B": LineEditor.next,
    "C": LineEditor.right, "D": LineEditor.left,
    "H": LineEditor.home, "F": LineEditor.end,
    "1~": LineEditor.home, "7~": LineEditor.home,
    "4~": LineEditor.end, "8~": LineEditor.end,
    "3~": LineEditor.delete,
}
