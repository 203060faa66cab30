"""Rooms, names, history and the server-wide ``seq``, with no I/O.

Theory of operation
-------------------
``ChatCore`` is the whole chat logic of a server. It knows connections only
by an opaque, hashable id (an ``int`` for TCP, a ``(host, port)`` for UDP)
and returns what to send as a list of outputs:

- ``Reply(to, message)``: one message for one connection.
- ``Broadcast(to, message, room, own)``: one message for many. The shell
  encodes it once and hands the same bytes to every member, and writes it
  to the chat log. ``to`` may be empty (a message to a room of one still
  counts). ``own`` is ``(sender, id)`` when the request had an id: the
  sender, one of ``to``, gets the message with ``"id": id`` added, so its
  client can tell which request it answers. (A broadcast to a room is to
  the whole room, so the shell can queue a run of them to the same members
  together: ``tcp_server_core.Batch``.)

Invariants:

- ``seq`` is one counter for the whole server; every room broadcast (a chat
  message, a join or leave notice) takes the next value, so every client
  sees strictly increasing ``seq`` on live broadcasts.
- A user name is fixed at the first join of a connection and unique on the
  server, compared with ``protocol.name_key`` (case-folded NFKC); nor may it
  look like a connected one (a ``protocol.skeletons`` in common, UTS #39).
- A room of more than ``limits.presence_limit`` members (counting the one
  who joins or leaves) is quiet: a join or leave notice goes only to that
  member, with its seq, and history does not keep it. Below, the room hears
  every one. (Announcing each join to every member makes filling a room of
  n members n**2/2 deliveries; Twitch's chat stops sending joins and parts
  above 1,000 members, for the same reason.)
- A room keeps its last ``history_size`` broadcasts. A join replays those
  after ``since`` (marked ``"history": true``) to the joiner, then announces
  the join, so a client that reconnects with ``since`` = the last seq it
  saw gets no gap and no repeat while history still covers the outage. When
  it does not (``since`` is older than the newest broadcast that fell out),
  the replay starts with a ``history_gap`` notice: loss is said, not hidden.
- Rooms are created on demand and kept while empty (their history is still
  useful); at ``max_rooms`` the oldest empty room is dropped to make space.
  The seq its history reached is remembered (for ``max_rooms`` rooms, then as
  one floor), so a rejoin with ``since`` into the room made again gets the
  ``history_gap`` notice, not silence.
- ``epoch``, random per ChatCore, tells clients in the welcome which run of
  the server this is: ``seq`` and ``since`` mean nothing across a restart.
- With ``resume`` on (TCP), each welcome carries a secret token; a join that
  shows the token of the connection holding its name takes the name over
  from that ghost (``take_ghosts`` tells the shell which to close).
- A request carrying ``id`` is answered by a message carrying that ``id``:
  the reply, the error, or the sender's own copy of its broadcast.

Time is an input: every call that stamps a message takes ``now``.
"""
from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Union

from . import __version__
from . import protocol as p

ConnId = Hashable


def new_resume_token() -> str:
    """A connection's resume token: unguessable, so only its holder can show it."""
    return secrets.token_urlsafe(16)
_SYSTEM_LOOKS = p.skeletons(p.SYSTEM_USER)   # nor may a user look like the log's "system"


@dataclass(frozen=True, slots=True)     # slots: built per message, twice as fast
class Reply:
    to: ConnId
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Broadcast:
    to: tuple[ConnId, ...]
    message: dict[str, Any]
    room: str | None
    own: tuple[ConnId, p.RequestId] | None = None   # (sender, id): its copy carries the id


Output = Union[Reply, Broadcast]


def deliveries(output: Output) -> list[tuple[ConnId, dict[str, Any]]]:
    """Each connection ``output`` is for, with the message it gets: the rule of
    ``Broadcast.own`` spelled out. The others' message is ``output.message``
    itself, so a shell can encode it once (the TCP one splices the id instead)."""
    if isinstance(output, Reply):
        return [(output.to, output.message)]
    if output.own is None:
        return [(conn, output.message) for conn in output.to]
    sender, rid = output.own
    return [(conn, {**output.message, "id": rid} if conn == sender else output.message)
            for conn in output.to]


@dataclass(slots=True)
class Member:
    """What the core knows of one connection."""

    conn: ConnId
    user: str | None = None      # fixed at the first join
    room: Room | None = None     # None: not in a room
    resume: str | None = None    # its secret: a join that shows it may take over its name


@dataclass
class Room:
    name: str
    history: collections.deque[dict[str, Any]]
    members: dict[ConnId, str] = field(default_factory=dict)   # conn -> user, in join order
    forgotten: int = 0           # seq of the newest broadcast that fell out of history


class ChatCore:
    """The chat logic of one server: feed it requests, send what it returns."""

    def __init__(self, limits: p.Limits = p.Limits(), history_size: int = p.HISTORY_SIZE,
                 max_rooms: int = p.MAX_ROOMS, epoch: str | None = None,
                 resume: bool = False) -> None:
        self.limits = limits
        self.resume = resume                      # welcomes carry a resume token
        self.epoch = epoch if epoch is not None else secrets.token_hex(4)
        self.history_size = history_size
        self.max_rooms = max_rooms
        self.seq = 0
        self.members: dict[ConnId, Member] = {}
        self.rooms: dict[str, Room] = {}          # name_key -> room; insertion order = age
        self._names: dict[str, ConnId] = {}       # name_key(user) -> conn
        self._skeletons: dict[str, ConnId] = {}   # skeleton(user) -> conn: look-alikes
        # Rooms dropped at max_rooms -> the newest seq they had; at most max_rooms of
        # them, older ones folded into one floor (a gap is said, maybe needlessly).
        self._evicted: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._evicted_floor = 0
        self._ghosts: list[ConnId] = []           # taken over by a resume: for the shell

    # -- connection life -----------------------------------------------------
    def connect(self, conn: ConnId, token: str | None = None) -> list[Output]:
        """Register a new connection; returns its welcome.

        ``token`` is its resume token when ``resume`` is on (a cluster's
        replicas must all hold the one its server chose); None: a new one.
        """
        if conn in self.members:
            raise ValueError(f"connection {conn!r} is already connected")
        if not self.resume:
            token = None
        elif token is None:
            token = new_resume_token()
        self.members[conn] = Member(conn, resume=token)
        return [Reply(conn, p.welcome(__version__, self.limits, self.seq, self.epoch, token))]

    def disconnect(self, conn: ConnId, now: float) -> list[Output]:
        """Forget a connection; its room hears that it left."""
        member = self.members.pop(conn)
        outputs = self._leave_room(member, now, notify_self=False)
        if member.user is not None:
            del self._names[p.name_key(member.user)]
            for look in p.skeletons(member.user):
                del self._skeletons[look]
        return outputs

    def take_ghosts(self) -> list[ConnId]:
        """Connections a resume took the name from, since the last call: close them.

        The core has forgotten them already (their room heard that they left).
        """
        ghosts, self._ghosts = self._ghosts, []
        return ghosts

    def is_member(self, conn: ConnId) -> bool:
        return conn in self.members

    def is_joined(self, conn: ConnId) -> bool:
        member = self.members.get(conn)
        return member is not None and member.user is not None

    # -- the whole state, for a cluster's replicas (see ``cluster``) ------------
    def snapshot(self) -> dict[str, Any]:
        """Everything the core knows, as JSON values: ``restore`` of it is this core.

        Connection ids must be JSON values themselves (a cluster's are
        ``[server, number]`` lists once encoded); ``restore`` takes a function
        to turn them back. Ghosts not yet taken by the shell are not kept.
        """
        rooms = [{"name": room.name, "history": list(room.history),
                  "members": [[conn, user] for conn, user in room.members.items()],
                  "forgotten": room.forgotten} for room in self.rooms.values()]
        members = [[m.conn, m.user, None if m.room is None else p.name_key(m.room.name),
                    m.resume] for m in self.members.values()]
        return {"seq": self.seq, "epoch": self.epoch, "rooms": rooms, "members": members,
                "evicted": list(self._evicted.items()), "evicted_floor": self._evicted_floor}

    def restore(self, state: dict[str, Any], conn_id: Callable[[Any], ConnId]) -> None:
        """Become the core ``state`` describes. Raises ValueError if it is not a snapshot."""
        try:
            rooms: dict[str, Room] = {}
            for r in state["rooms"]:
                room = Room(str(r["name"]), collections.deque(r["history"],
                                                              maxlen=self.history_size),
                            {conn_id(c): str(user) for c, user in r["members"]},
                            int(r["forgotten"]))
                rooms[p.name_key(room.name)] = room
            members: dict[ConnId, Member] = {}
            for conn, user, room_key, resume in state["members"]:
                key = conn_id(conn)
                members[key] = Member(key, user, None if room_key is None else rooms[room_key],
                                      resume)
            evicted = collections.OrderedDict((str(k), int(v)) for k, v in state["evicted"])
            seq, epoch, floor = int(state["seq"]), str(state["epoch"]), int(state["evicted_floor"])
        except (KeyError, TypeError, ValueError, IndexError, AssertionError) as exc:
            raise ValueError(f"not a snapshot of a ChatCore: {exc!r}") from None
        self.rooms, self.members, self._evicted = rooms, members, evicted
        self.seq, self.epoch, self._evicted_floor = seq, epoch, floor
        self._names, self._skeletons, self._ghosts = {}, {}, []
        for member in members.values():
            if member.user is not None:
                self._names[p.name_key(member.user)] = member.conn
                for look in p.skeletons(member.user):
                    self._skeletons[look] = member.conn

    def user_named(self, name: str) -> str | None:
        """The connected user whose name compares equal to ``name``, as they spelled it."""
        conn = self._names.get(p.name_key(name))
        return None if conn is None else self.members[conn].user

    def shutdown_notice(self, now: float) -> Broadcast:
        """The notice every connection gets when the server stops."""
        message = p.system(None, p.SystemEvent.SHUTDOWN, None, "server shutting down", None, now)
        return Broadcast(tuple(self.members), message, None)

    # -- requests --------------------------------------------------------------
    def receive(self, conn: ConnId, data: bytes, now: float) -> list[Output]:
        """Handle one line or datagram of a connection: decode, validate, act.

        A ProtocolError becomes an error reply; the connection stays usable.
        """
        try:
            request = p.parse_request(p.decode(data), self.limits)
            return self.handle(conn, request, now)
        except p.ProtocolError as exc:
            return [Reply(conn, exc.to_message())]

    def handle(self, conn: ConnId, request: p.Request, now: float) -> list[Output]:
        """Act on one validated request. Raises ProtocolError for refusals."""
        member = self.members[conn]
        if isinstance(request, p.Join):
            return self._join(member, request, now)
        if isinstance(request, p.Message):
            return self._message(member, request, now)
        if isinstance(request, p.Leave):
            self._require_room(member, request.id)
            return self._leave_room(member, now, notify_self=True, rid=request.id)
        if isinstance(request, p.Whisper):
            return self._whisper(member, request, now)
        if isinstance(request, p.Who):
            room = self._require_room(member, request.id)
            users = sorted(room.members.values(), key=p.name_key)
            return [Reply(conn, p.who_reply(room.name, users, request.id))]
        if isinstance(request, p.ListRooms):
            listing = [(r.name, len(r.members)) for r in self.rooms.values() if r.members]
            listing.sort(key=lambda item: p.name_key(item[0]))
            return [Reply(conn, p.rooms_reply(listing, request.id))]
        if isinstance(request, p.Ping):
            return [Reply(conn, p.pong(request.id))]
        raise TypeError(f"not a request: {request!r}")

    # -- the actions -----------------------------------------------------------
    def _join(self, member: Member, request: p.Join, now: float) -> list[Output]:
        outputs = self._reclaim(member, request, now)
        key = self._check_name(member, request)
        if member.room is not None and member.room is self.rooms.get(p.name_key(request.room)):
            raise p.ProtocolError(p.ErrorCode.BAD_MESSAGE,
                                  f"room: already in room {member.room.name!r}",
                                  field="room", id=request.id)
        room = self._room(request.room, request.id, leaving=member.room)
        if member.user is None:     # claimed only now: a refused join fixes no name
            self._names[key] = member.conn
            for look in p.skeletons(request.user):
                self._skeletons[look] = member.conn
            member.user = request.user
        outputs += self._leave_room(member, now, notify_self=True)
        since = request.since if request.since is not None else -1
        if since < room.forgotten and request.since is not None:
            outputs.append(Reply(member.conn, p.system(
                room.name, p.SystemEvent.HISTORY_GAP, None,
                f"history no longer holds broadcasts up to seq {room.forgotten}; "
                "some messages since you left are lost to you", None, now)))
        for old in room.history:
            if old["seq"] > since:
                outputs.append(Reply(member.conn, {**old, "history": True}))
        assert member.user is not None
        room.members[member.conn] = member.user
        member.room = room
        notice = p.system(room.name, p.SystemEvent.JOIN, member.user,
                          f"{member.user} joined", self._next_seq(), now)
        if self._announced(room):
            outputs += self._broadcast(room, notice, member.conn, request.id)
        else:
            outputs.append(self._quiet(room, notice, member.conn, request.id))
        return outputs

    def _reclaim(self, member: Member, request: p.Join, now: float) -> list[Output]:
        """A join showing the resume token of the connection that holds its name
        takes the name over: that connection is a ghost (its peer vanished
        without a word), and goes, its room hearing that it left."""
        holder = self._names.get(p.name_key(request.user))
        if request.resume is None or member.user is not None or holder is None:
            return []
        ghost = self.members[holder]
        if ghost.resume is None or not secrets.compare_digest(ghost.resume.encode(),
                                                              request.resume.encode()):
            return []
        self._ghosts.append(holder)
        return self.disconnect(holder, now)

    def _check_name(self, member: Member, request: p.Join) -> str:
        """Return the key of the name the join asks for, or raise if it may not have it."""
        key = p.name_key(request.user)
        if member.user is not None:
            if p.name_key(member.user) != key:
                raise p.ProtocolError(
                    p.ErrorCode.BAD_MESSAGE,
                    f"user: this connection is {member.user!r}; a name is fixed at the first join",
                    field="user", id=request.id)
            return key
        looks = p.skeletons(request.user)
        if key in self._names or looks & _SYSTEM_LOOKS:
            raise p.ProtocolError(p.ErrorCode.NAME_TAKEN, f"the name {request.user!r} is taken",
                                  field="user", id=request.id)
        twin = next((self._skeletons[look] for look in looks if look in self._skeletons), None)
        if twin is not None:
            raise p.ProtocolError(p.ErrorCode.NAME_TAKEN,
                                  f"the name {request.user!r} looks like "
                                  f"{self.members[twin].user!r}, who is here",
                                  field="user", id=request.id)
        return key

    def _room(self, name: str, rid: p.RequestId, leaving: Room | None = None) -> Room:
        """The room called ``name`` (compared like user names), created on demand.

        ``leaving`` is the joiner's current room: empty once it moves, so it may make way.
        """
        key = p.name_key(name)
        room = self.rooms.get(key)
        if room is not None:
            return room
        if len(self.rooms) >= self.max_rooms:
            empty = next((k for k, r in self.rooms.items()
                          if not r.members or (r is leaving and len(r.members) == 1)), None)
            if empty is None:
                raise p.ProtocolError(p.ErrorCode.SERVER_FULL,
                                      f"room limit {self.max_rooms} reached", field="room", id=rid)
            self._evict(empty)
        room = Room(name, collections.deque(maxlen=self.history_size),
                    forgotten=self._evicted.pop(key, self._evicted_floor))
        self.rooms[key] = room
        return room

    def _evict(self, key: str) -> None:
        """Drop an empty room, remembering the seq its history reached, so that a
        rejoin with ``since`` into the room made again hears of the gap."""
        room = self.rooms.pop(key)
        self._evicted[key] = room.history[-1]["seq"] if room.history else room.forgotten
        if len(self._evicted) > self.max_rooms:         # the oldest memory goes ...
            _, newest = self._evicted.popitem(last=False)
            self._evicted_floor = max(self._evicted_floor, newest)   # ... into the floor

    def _message(self, member: Member, request: p.Message, now: float) -> list[Output]:
        room = self._require_room(member, request.id)
        if request.room is not None and p.name_key(request.room) != p.name_key(room.name):
            raise p.ProtocolError(p.ErrorCode.BAD_MESSAGE,
                                  f"room: {request.room!r} is not your room {room.name!r}",
                                  field="room", id=request.id)
        assert member.user is not None
        message = p.chat_message(room.name, member.user, request.text, self._next_seq(), now)
        return self._broadcast(room, message, member.conn, request.id)

    def _whisper(self, member: Member, request: p.Whisper, now: float) -> list[Output]:
        if member.user is None:
            raise p.ProtocolError(p.ErrorCode.NOT_JOINED, "join a room to get a name first",
                                  id=request.id)
        target = self._names.get(p.name_key(request.to))
        if target is None:
            raise p.ProtocolError(p.ErrorCode.NO_SUCH_USER, f"no user called {request.to!r}",
                                  field="to", id=request.id)
        target_user = self.members[target].user
        assert target_user is not None
        delivery = p.whisper(member.user, target_user, request.text, now)
        outputs: list[Output] = []
        if target != member.conn:
            outputs.append(Reply(target, delivery))
        outputs.append(Reply(member.conn, p.whisper(member.user, target_user, request.text,
                                                    now, request.id)))
        return outputs

    def _leave_room(self, member: Member, now: float, *, notify_self: bool,
                    rid: p.RequestId = None) -> list[Output]:
        """Take ``member`` out of its room, if any; returns the leave notice."""
        if member.room is None:
            return []
        room = member.room
        assert member.user is not None
        announced = self._announced(room)         # it counts the leaver, still in the room
        outputs: list[Output] = []
        if announced or notify_self:
            notice = p.system(room.name, p.SystemEvent.LEAVE, member.user,
                              f"{member.user} left", self._next_seq(), now)
            if not announced:
                outputs = [self._quiet(room, notice, member.conn, rid)]
            elif notify_self:
                outputs = self._broadcast(room, notice, member.conn, rid)
            else:
                del room.members[member.conn]
                outputs = self._broadcast(room, notice, None, None)
        room.members.pop(member.conn, None)
        member.room = None
        return outputs

    # -- helpers ---------------------------------------------------------------
    def _require_room(self, member: Member, rid: p.RequestId) -> Room:
        if member.room is None:
            raise p.ProtocolError(p.ErrorCode.NOT_JOINED, "join a room first", id=rid)
        return member.room

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _announced(self, room: Room) -> bool:
        """Whether the room hears joins and leaves: not above ``presence_limit``
        members, counting the one who joins or leaves."""
        return len(room.members) <= self.limits.presence_limit

    def _quiet(self, room: Room, notice: dict[str, Any], actor: ConnId,
               rid: p.RequestId) -> Reply:
        """A join or leave notice in a room over ``presence_limit``: only the member
        who joins or leaves is told, and history does not keep it. (A notice to
        every member for every join makes filling a room of n members n**2/2
        deliveries.)"""
        # (Short: the longest join notice must still fit in MIN_DATAGRAM_BYTES.)
        quiet = {**notice, "text": f"{notice['text']} (over {self.limits.presence_limit} "
                                   "members: not announced)"}
        return Reply(actor, quiet if rid is None else {**quiet, "id": rid})

    def _broadcast(self, room: Room, message: dict[str, Any], sender: ConnId | None,
                   rid: p.RequestId) -> list[Output]:
        """Record ``message`` in the room's history and send it to every member.

        When the request had an id, the sender gets its own copy carrying it.
        """
        if len(room.history) == room.history.maxlen:   # the oldest falls out: remember it
            room.forgotten = room.history[0]["seq"] if room.history else message["seq"]
        room.history.append(message)
        own = None if rid is None or sender is None else (sender, rid)
        return [Broadcast(tuple(room.members), message, room.name, own)]
