"""A name held by a silent session: the server probes its holder.

Theory of operation
-------------------
A client restarted with a new socket has no session id and a new address,
while its old session lives on, holding its name, until
``client_timeout_s``. Refusing its join ``name_taken`` for a minute is
wrong; giving it the name at once would let anyone take a live user's. So
a first join for a name another session holds waits, unacked, in
``Peer.deferred`` (everything after it too: requests apply in id order),
and the holder is *probed*: a ``ping`` with ``n`` (a ``Probe``), reliable,
on the normal retransmit schedule. Any datagram of the holder with its
session id answers it (its ack of the ping, most likely): the join is
applied, and ``ChatCore`` refuses it ``name_taken``. Silence for
``probe_timeout_s`` (2 s: four tries at the default ``base_delay``) means
the holder is gone: it is dropped, its room hears it leave, and the join
applies. A join that waited is never probed again. Only a verified session
can make a probe (its join waits for verification first), and a holder
has one probe out at a time, however many joins wait on it. Trade-off: a
live client that misses every try (p = 0.36^4, about 1 in 60, at 20% loss
each way) loses its name to the joiner.

A client restarted on the *same* address and port (a fixed source port, a
NAT that maps it back) has no session id either, and its first join comes
from its old session's address. The server cannot tell it from a late copy
of the old session's own first join, or from a forgery, so once the session
has been silent ``RESTART_SILENCE_S`` it probes the session the same way
(``own_join``), and the join waits unacked. Answered, the join was the
session's own late copy and is acked; unanswered, the session is dropped
and the client's next copy opens a new one. Before that silence the join is
acked again, as any used id is, with the old session's id, which tells the
new client nothing: it keeps sending. The silence keeps a blind forger to
one probe per silence of a session, since an answer ends the silence.

``Probes`` is the table of probes out, one per holder, and of those settled
(answered or given up), which ``UdpChat`` settles when its step ends: it
drops a silent holder and applies the joins that waited.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from .rooms import ChatCore
from .udp_sessions import Peer

PROBE_TIMEOUT_S = 2.0            # how long a name's holder has to answer a probe
RESTART_SILENCE_S = 2.0          # a session silent this long may have restarted (below)


@dataclass(eq=False)
class Probe:
    """A ``ping`` to the session holding a name that another session's join asks for."""

    holder: Peer
    n: int                       # the ping's stream number (0: none could be sent)
    deadline: float              # monotonic: silent until then, the holder is gone
    waiting: list[Peer] = field(default_factory=list)   # whose requests wait on the answer
    alive: bool | None = None    # None until answered (True) or given up (False)
    own_join: bool = False       # a first join without a session id came from its address


class Probes:
    """The probes out, by the holder's session id, and those settled since the last step."""

    def __init__(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.out: dict[str, Probe] = {}
        self.settled: list[Probe] = []

    def start(self, holder: Peer, n: int, now: float) -> Probe:
        """The probe ``holder`` must answer: its ping is ``n`` (0: none could be sent)."""
        probe = self.out[holder.sid] = Probe(holder, n, now + self.timeout_s)
        return probe

    def wait(self, probe: Probe, peer: Peer) -> None:
        """``peer``'s requests wait, from now on, on ``probe``'s answer."""
        probe.waiting.append(peer)
        peer.probe = probe

    def settle(self, peer: Peer, alive: bool) -> None:
        """``peer`` spoke with its session id (``alive``) or was dropped: a probe it
        owes is settled."""
        probe = self.out.get(peer.sid)
        if probe is not None and probe.alive is None:
            probe.alive = alive
            self.settled.append(probe)

    def expire(self, now: float) -> None:
        """Every probe unanswered at its deadline is settled: the holder is gone."""
        for probe in self.out.values():
            if probe.alive is None and now >= probe.deadline:
                probe.alive = False
                self.settled.append(probe)

    def next_deadline(self) -> float | None:
        deadlines = [probe.deadline for probe in self.out.values() if probe.alive is None]
        return min(deadlines) if deadlines else None

    def close(self, probe: Probe) -> None:
        if self.out.get(probe.holder.sid) is probe:
            del self.out[probe.holder.sid]


def holder_of(core: ChatCore, sessions: dict[str, Peer], peer: Peer,
              obj: dict[str, Any]) -> Peer | None:
    """The other session holding the name a first join of ``peer`` asks for."""
    user = obj.get("user")
    if (obj.get("type") != p.MessageType.JOIN or not isinstance(user, str)
            or core.is_joined(peer.sid) or core.user_named(user) is None):
        return None
    key = p.name_key(user)
    for other in sessions.values():
        name = core.members[other.sid].user
        if other is not peer and name is not None and p.name_key(name) == key:
            return other
    return None
