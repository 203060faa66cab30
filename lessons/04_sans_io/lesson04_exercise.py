"""Lesson 04 exercise: a validation function, and the shell's "encode once".

Neither touches a socket or a clock: the tests call them with plain values.
Check your work with:

    CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/04_sans_io
"""
from __future__ import annotations

# What you will need.
from chat_sync import protocol  # noqa: F401
from chat_sync.protocol import ErrorCode, ProtocolError  # noqa: F401
from chat_sync.rooms import Broadcast, ConnId, Output, Reply  # noqa: F401


def check_name(value: object, field: str, limit: int) -> str:
    """Return ``value`` as a valid user or room name, or raise ``ProtocolError``.

    The name returned is ``unicodedata.normalize("NFKC", value)``, so a
    full-width "Ａlice" becomes "Alice". It is valid when it has 1 to
    ``limit`` characters (counted after normalising) and every one is a
    letter or digit of any script (``str.isalnum``), ``_`` or ``-``.

    Otherwise raise ``ProtocolError(ErrorCode.BAD_MESSAGE, text, field=field)``,
    with a ``text`` that starts with the field's name and says what is wrong:
    ``value`` is not a ``str``; it holds a lone surrogate (``"\\ud800"``
    cannot be encoded to UTF-8, so it could never be sent on); it is too
    short or too long; it holds any other character.
    """
    raise NotImplementedError("exercise: write check_name")


def fan_out(outputs: list[Output]) -> dict[ConnId, list[bytes]]:
    """Turn ``ChatCore`` outputs into the lines each connection must be sent.

    Return a dict from connection id to its lines (``protocol.encode`` of
    each message), in the order of ``outputs``. A ``Reply`` goes to its
    ``to``; a ``Broadcast`` to every id in its ``to``, and is encoded once:
    every member gets the very same ``bytes`` object, except the sender its
    ``own`` names, ``(sender, id)``, which gets the line with that id
    (``protocol.with_id``). A connection that gets nothing is not in the dict.
    """
    raise NotImplementedError("exercise: write fan_out")
