"""Lesson 06: the relay that cuts a client off is the package's ``RecordingRelay``.

    client --> relay.port --> server

The lesson's demo and tests use ``chat_sync.recorder.RecordingRelay``
directly: ``cut()`` ends every relayed connection (each end reads ``b""``)
and holds clients that connect meanwhile until ``resume()``. This module
keeps the name the lesson first gave it, ``CuttingRelay``, for code written
against that name (notebook 06): the same relay, built from a port, started
at once, with the server's address settable, so a notebook can point it at a
port where nothing listens and make every reconnection fail.
"""
from __future__ import annotations

from chat_sync.recorder import Address, RecordingRelay


class CuttingRelay(RecordingRelay):
    """``RecordingRelay`` in front of 127.0.0.1:``server_port``, already relaying."""

    def __init__(self, server_port: int, host: str = "127.0.0.1") -> None:
        super().__init__((host, server_port), host=host)
        self.port = self.address[1]
        self.start()

    @property
    def server_address(self) -> Address:
        """Where new connections are relayed to; those already relayed stay where they are."""
        return self.server_addr

    @server_address.setter
    def server_address(self, address: Address) -> None:
        # One attribute, read by the relay's thread for each new connection.
        self.server_addr = address

    def close(self) -> None:
        """Stop relaying and close every socket (``stop``)."""
        self.stop()
