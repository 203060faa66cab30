"""The server's stream to a UDP client, one session at a time: ``ServerStream``.

``udp_client_core.UdpClientCore`` pushes each datagram's ``n`` here. The
current session's ``ReorderBuffer`` delivers it once, in order; when a new
session starts (``udp_client_core``: "A new session"), ``retire`` empties
the old buffer and ``renew`` starts a fresh one, and the counters of every
buffer retired so far are kept, so that ``counters`` sums all sessions.

For a server without session ids the core also needs the older clues,
kept here: the *stash* of low-numbered datagrams behind our stream that may
open a new session, and the ``seq`` of the welcome that opened this one
(a live broadcast at or below it is a late copy of an older session's).
"""
from __future__ import annotations

import collections
from typing import Any

from . import protocol as p
from .retransmit import Gap, ReorderBuffer, RetransmitStats
from .udp_client_actions import is_int

STASH_MAX_N = 64           # low stream numbers kept aside in case a new session starts

Item = dict[str, Any]


class ServerStream:
    """The current session's stream, what earlier ones counted, and the stash."""

    def __init__(self, gap_timeout_s: float, stats: RetransmitStats) -> None:
        self.gap_timeout_s = gap_timeout_s
        self.stats = stats
        self.reorder = self._new_reorder()
        self.stash: dict[int, Item] = {}     # a new session's first datagrams
        self.session_seq: int | None = None  # seq in the welcome that opened this stream
        self._retired = collections.Counter[str]()   # counters of replaced buffers

    def counters(self) -> dict[str, int]:
        """Receive-side counters, summed over every session's stream."""
        return {"duplicates": self._retired["duplicates"] + self.reorder.duplicates,
                "gaps": self._retired["gaps"] + self.reorder.gaps,
                "lost": self._retired["skipped"] + self.reorder.skipped,
                "buffered": self.reorder.buffered}

    def retire(self, restarted: bool) -> list[Item | Gap]:
        """Empty the old buffer: what it still holds, after the holes that never filled.

        Those holes count as lost only after a restart: from the same run the
        rejoin's history brings their room broadcasts back.
        """
        old = self.reorder
        lost_before = old.skipped
        items = old.poll(float("inf"))
        if restarted:
            self._retired.update(duplicates=old.duplicates, gaps=old.gaps, skipped=old.skipped)
        else:
            self._retired.update(duplicates=old.duplicates, gaps=old.gaps - len(
                [item for item in items if isinstance(item, Gap)]), skipped=lost_before)
        return items

    def renew(self, n: int, message: Item, now: float) -> list[Item | Gap]:
        """Start the new session's stream with ``message`` (``n``) and what was stashed."""
        self.reorder = self._new_reorder()
        released: list[Item | Gap] = []
        for m in sorted(self.stash):
            if m < n:
                released += self.reorder.push(m, self.stash[m], now)
        self.stash.clear()
        released += self.reorder.push(n, message, now)
        return released

    def keep_aside(self, n: int, message: Item, epoch: object) -> None:
        """Stash a datagram behind our stream that may belong to a new session.

        A welcome from this run (``epoch``) with a higher ``seq`` than ours
        opens one: the stash starts again with it. What comes after it,
        low-numbered, is kept too (the latest copy of each ``n``). Anything
        else is a duplicate: not kept, so that an old copy cannot stand in
        for a new session's datagram.
        """
        if message.get("type") == p.MessageType.WELCOME:
            seq = message.get("seq")
            if message.get("epoch") != epoch or not is_int(seq) or self.session_seq is None:
                return
            if seq > self.session_seq:
                self.stash = {n: message}
            elif seq == self.session_seq and not self.stash:
                self.stash = {n: message}   # ours again, or a new one just like it
            return
        if self.stash and n <= STASH_MAX_N:
            self.stash[n] = message

    def from_older_session(self, message: Item) -> bool:
        """A live room broadcast stamped before this stream's welcome: an older session's.

        Every broadcast a session carries is newer than its welcome's ``seq``,
        except the history a join replays (marked ``history``). A late copy
        from the session the server forgot would otherwise take the place of
        the new stream's datagram with the same ``n``.
        """
        seq = message.get("seq")
        return (self.session_seq is not None and isinstance(message.get("room"), str)
                and is_int(seq) and seq <= self.session_seq
                and message.get("history") is not True)

    def _new_reorder(self) -> ReorderBuffer[Item]:
        return ReorderBuffer(gap_timeout=self.gap_timeout_s, stats=self.stats)
