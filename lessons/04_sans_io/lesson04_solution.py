"""Lesson 04 reference solution: ``check_name`` and ``fan_out``.

The package's own ``check_name`` is in ``chat_sync/protocol.py``; its
``fan_out`` is step 2 of ``TcpServer``, in ``_dispatch``.
"""
from __future__ import annotations

import unicodedata

from chat_sync import protocol
from chat_sync.protocol import ErrorCode, ProtocolError
from chat_sync.rooms import ConnId, Output, Reply


def check_name(value: object, field: str, limit: int) -> str:
    """The NFKC form of a valid name; ProtocolError(BAD_MESSAGE, field=field) otherwise."""
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{field}: must be a string", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{field}: holds a lone surrogate",
                            field=field) from None
    name = unicodedata.normalize("NFKC", value)
    if not 1 <= len(name) <= limit:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"{field}: must be 1 to {limit} characters, got {len(name)}",
                            field=field)
    for char in name:
        if not (char.isalnum() or char in "_-"):
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                f"{field}: may hold only letters, digits, '_' and '-', "
                                f"not {char!r}", field=field)
    return name


def fan_out(outputs: list[Output]) -> dict[ConnId, list[bytes]]:
    """Each connection's lines, in order; a broadcast is encoded once for all its members."""
    lines: dict[ConnId, list[bytes]] = {}
    for output in outputs:
        data = protocol.encode(output.message)
        if isinstance(output, Reply):
            lines.setdefault(output.to, []).append(data)
            continue
        sender, rid = output.own if output.own is not None else (None, None)
        for conn in output.to:
            line = protocol.with_id(data, rid) if conn == sender else data
            lines.setdefault(conn, []).append(line)
    return lines
