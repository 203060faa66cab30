"""Waking a sleeping ``select()`` from another thread or a signal handler.

A selector sleeps until one of its sockets is ready. To wake it from outside
(a ``stop()`` call on another thread, a SIGTERM handler) give it one more
socket to watch: the reading end of a socketpair. ``wake`` writes a byte to
the other end; the loop sees it readable, ``drain``s it and checks its flags.
Both ends are non-blocking: when the pair is already full of wake-ups,
``wake`` has nothing left to do, and must not block (a signal handler that
blocks would hang the process). This is trio's ``WakeupSocketpair`` in small.
"""
from __future__ import annotations

import socket
import threading


class Wakeup:
    """A socketpair whose ``reader`` a selector watches and ``wake`` makes readable."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def wake(self) -> None:
        try:
            self.writer.send(b"\0")
        except OSError:
            pass  # full of wake-ups already, or closed at shutdown: nothing to add

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class Stoppable:
    """A loop that any thread or a signal handler may stop (both servers are one).

    The loop sleeps in ``select()`` with ``_wakeup.reader`` registered and
    checks ``_stop`` each turn: ``stop`` sets the flag, then wakes it.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wakeup = Wakeup()

    def stop(self) -> None:
        """Ask the loop to shut down gracefully; safe from any thread or signal handler."""
        self._stop.set()
        self._wakeup.wake()

    def wakeup_fileno(self) -> int:
        """The wake-up pair's writing end, for ``signal.set_wakeup_fd`` (see serving)."""
        return self._wakeup.writer.fileno()
