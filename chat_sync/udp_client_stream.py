"""The server's stream to a UDP client, one session at a time: ``ServerStream``.

``udp_client_core.UdpClientCore`` pushes each datagram's ``n`` here. The
current session's ``ReorderBuffer`` delivers it once, in order; when a new
session starts, ``retire`` empties the old buffer and ``renew`` starts a
fresh one, and the counters of every buffer retired so far are kept, so
that ``counters`` sums all sessions. ``opens_session`` and
``refuses_entry`` say which datagrams without our session id still count;
``client_actions.RoomSeqs`` keeps the ``seq`` a rejoin asks ``since``.

Session ids (``udp_sessions`` on the server says why). The welcome gives
``sid``; every datagram we send carries it from then on, and a datagram
from the server without it is dropped unacked (counted ``forged``): forged,
or a new session's sent before its welcome, which the server sends again.
So is an ``n`` more than ``STREAM_WINDOW`` ahead of the one expected. Before
the first welcome, a datagram *with* a session id is not known to be ours
either (it may be the old session's, if we restarted on its port:
``udp_probes``): an ack waits for the welcome to name its sid, and the rest
is dropped unacked.

A new session. The server forgets us after a restart, a timeout or a
give-up; our next datagram opens a new session whose welcome names the id
we had (``forgot``). That welcome, and nothing else, starts a fresh
``ReorderBuffer`` and makes the core join its room again with ``since``
(without it after a restart: another ``epoch``, and the old ``seq`` means
nothing there). The rules that make this exact:

- ``since`` is the last ``seq`` delivered in order. What the old stream
  holds after a hole is not delivered when the new one starts: a room
  broadcast comes back with the history, and the hole's with it. (Whispers
  and replies in it are delivered; if the history no longer covers the
  absence the server says ``history_gap``.)
- The request in flight when the server forgot us is sent again with its
  id; the server keeps the old session's ``DedupWindow`` (tombstones), so
  if it was applied it is acked and not applied again, and ``not_joined``
  means it never was. Requests refused with ``not_joined`` are sent again,
  in order, once we are back in, before anything queued.
- Any answer to one of our joins completes the rejoin; the rejoin queued
  behind it is then dropped unsent.
- A server without session ids (a student's) is still followed by the
  older rules: a welcome of another ``epoch``, or a reply to a request
  whose reply we await, behind our stream, starts the new one; a welcome
  is kept aside (the *stash*) until then; a live broadcast whose ``seq`` is
  not above the welcome's is a late copy of the old session's, not acked.

For a server without session ids the core also needs the older clues,
kept here: the *stash* of low-numbered datagrams behind our stream that may
open a new session, and the ``seq`` of the welcome that opened this one
(a live broadcast at or below it is a late copy of an older session's).
"""
from __future__ import annotations

import collections
from collections.abc import Container
from typing import Any

from . import protocol as p
from .receiving import Gap, ReorderBuffer
from .retransmit import RetransmitStats
from .udp_client_actions import is_count, is_int

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

    @staticmethod
    def starts_new_session(message: Item, epoch: object, awaiting: Container[object]) -> bool:
        """Whether a datagram behind our stream opens a new one (a server without
        session ids): a welcome of another ``epoch``, or a reply we await."""
        if message.get("type") == p.MessageType.WELCOME:
            return epoch is not None and message.get("epoch") != epoch
        rid = message.get("id")
        return is_count(rid) and rid in awaiting

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


def opens_session(obj: Item, sid: str, joining: bool) -> bool:
    """Whether a datagram with another session id than ``sid`` opens our new session.

    Only a welcome that names the session id we had (``forgot``): proof
    that the server saw our datagram, which no blind sender can give. While
    the first join is out (``joining``), any welcome (we may not have had the
    first one).
    """
    if obj.get("type") != p.MessageType.WELCOME or not isinstance(obj.get("sid"), str):
        return False
    return obj.get("forgot") == sid or joining


def refuses_entry(obj: Item, joining: bool, pending_join: tuple[int, str] | None) -> bool:
    """``server_full`` (it has no ``n``: no session was made) for our first join."""
    return (joining and obj.get("type") == p.MessageType.ERROR
            and obj.get("code") == p.ErrorCode.SERVER_FULL
            and pending_join is not None and obj.get("id") == pending_join[0])


def still_in_room(error: dict[str, Any]) -> bool:
    """Whether ``error`` refuses our rejoin because we are in that room already: a
    rejoin names our own room, valid when we first joined it, so a ``bad_message``
    on its ``room`` can only say that."""
    return error.get("code") == p.ErrorCode.BAD_MESSAGE and error.get("field") == "room"
