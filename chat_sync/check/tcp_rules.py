"""The TCP rules: each function checks one promise of the README's protocol section.

A rule takes a ``Session``, talks to the server through its peers, and
either returns (PASS) or raises ``Failed`` saying what it sent and what came
back. Which promise each function checks, in one line, and the order they
run in are the table in ``rules.py``; the docstrings here say how.

Every rule makes its own users and rooms (``s.name()``), so it finds the
server as if nobody else were there, even while other people use it. The
rules of the errors and limits stages are in ``tcp_error_rules.py``.
"""
from __future__ import annotations

from .. import protocol as p
from .wire import (FLOOR_LIMITS, Failed, Message, Peer, Session, chat, is_seq, notice,
                   of_type, pong, presence_limit, same_name, shorten, told_nothing)

T = p.MessageType


# -- helpers the rules share --------------------------------------------------------
def say(peer: Peer, text: str) -> Message:
    """Say ``text`` in the peer's room; returns the peer's own copy of the broadcast."""
    peer.send(type="message", text=text)
    return peer.expect(f"{peer.user}'s own copy of {text!r}", chat(text, peer.room))


def say_many(peer: Peer, count: int) -> list[Message]:
    """Say ``count`` numbered lines in one send; returns the peer's own copies."""
    texts = [f"line {n} of {count}" for n in range(1, count + 1)]
    peer.send_bytes(b"".join(p.encode({"type": "message", "text": t}) for t in texts))
    return [peer.expect(f"{peer.user}'s own copy of {t!r}", chat(t, peer.room)) for t in texts]


def ask(peer: Peer, kind: str) -> Message:
    """Send a ``rooms`` or ``who`` request; returns its reply."""
    peer.send(type=kind)
    return peer.expect(f"a {kind} reply", of_type(kind))


def seq_of(message: Message) -> int:
    """The message's ``seq``; Failed unless it is a non-negative integer."""
    seq = message.get("seq")
    if not is_seq(seq):
        raise Failed(f"expected a seq (a non-negative integer)\ngot {shorten(message)}")
    return seq


def live_seqs(peer: Peer) -> list[int]:
    """The seq of every live broadcast the peer has received, in order."""
    return [m["seq"] for m in peer.received
            if m.get("type") in (T.MESSAGE, T.SYSTEM) and is_seq(m.get("seq"))
            and not m.get("history")]


def increasing(seqs: list[int]) -> bool:
    return all(a < b for a, b in zip(seqs, seqs[1:]))


# -- framing ------------------------------------------------------------------------
def split_line(s: Session) -> None:
    """Half a line (cut inside a UTF-8 character) gets no answer; the rest completes it."""
    peer = s.connect(welcome=False)
    rid = f"split-é-{s.name()}"
    line = p.encode({"type": "ping", "id": rid})
    cut = line.index("é".encode()) + 1
    peer.send_bytes(line[:cut])
    peer.silent(0.1)
    peer.send_bytes(line[cut:-1])
    peer.silent(0.05)
    peer.send_bytes(line[-1:])
    peer.last_sent = line                   # report the whole line, not its last byte
    peer.expect(f"a pong with id {rid!r}", pong(rid))


def coalesced_lines(s: Session) -> None:
    """Three pings in one send get three pongs, in order."""
    peer = s.connect(welcome=False)
    ids = [peer.new_id() for _ in range(3)]
    peer.send_bytes(b"".join(p.encode({"type": "ping", "id": rid}) for rid in ids))
    got = [peer.expect("a pong", of_type(T.PONG)).get("id") for _ in ids]
    if got != ids:
        raise Failed(f"{peer.sent()}\ngot pongs with ids {got}, not {ids}")


def crlf(s: Session) -> None:
    """A ping ended by \\r\\n is answered like one ended by \\n."""
    peer = s.connect(welcome=False)
    rid = peer.new_id()
    peer.send_bytes(p.encode({"type": "ping", "id": rid})[:-1] + b"\r\n")
    peer.expect(f"a pong with id {rid!r}", pong(rid))


def empty_lines(s: Session) -> None:
    """Empty lines before a ping get nothing; the first answer is the pong."""
    peer = s.connect(welcome=False)
    rid = peer.new_id()
    peer.send_bytes(b"\n\r\n\n" + p.encode({"type": "ping", "id": rid}))
    first = peer.expect("an answer", lambda m: m.get("type") != T.WELCOME, errors_ok=True)
    if not pong(rid)(first):
        raise Failed(f"expected only a pong with id {rid!r}\n{peer.exchange(first)}")


def request_ids(s: Session) -> None:
    """A ping's id comes back on its pong: an integer, 64 characters, non-ASCII."""
    peer = s.connect(welcome=False)
    for rid in (7, "x" * p.MAX_ID_CHARS, "ids-é-世界"):
        peer.send(type="ping", id=rid)
        answer = peer.expect("a pong", of_type(T.PONG))
        if answer.get("id") != rid or type(answer.get("id")) is not type(rid):
            raise Failed(f"expected a pong with id {rid!r}\n{peer.exchange(answer)}")


# -- welcome ------------------------------------------------------------------------
def welcome_first(s: Session) -> None:
    """Connect and send nothing: the first line must be a welcome."""
    peer = s.connect(welcome=False)
    first = peer.receive()
    if first.get("type") != T.WELCOME:
        raise Failed(f"expected a welcome\n{peer.exchange(first)}")


def welcome_fields(s: Session) -> None:
    """The welcome's keys have the README's types (other keys are allowed)."""
    welcome = s.connect().welcome
    wrong = [f"{key} is not a string" for key in ("server", "version", "epoch")
             if not isinstance(welcome.get(key), str) or not welcome.get(key)]
    if welcome.get("protocol") != p.PROTOCOL_VERSION or isinstance(welcome.get("protocol"),
                                                                   bool):
        wrong.append(f"protocol is not {p.PROTOCOL_VERSION}")
    if not isinstance(welcome.get("limits"), dict):
        wrong.append("limits is not an object")
    if not is_seq(welcome.get("seq")):
        wrong.append("seq is not a non-negative integer")
    if wrong:
        raise Failed(f"{'; '.join(wrong)}\ngot {shorten(welcome)}")


def welcome_limits(s: Session) -> None:
    """Each limit in the welcome is at least the README's floor."""
    limits = s.connect().welcome.get("limits")
    if not isinstance(limits, dict):
        raise Failed(f"the welcome has no limits\ngot {shorten(s.welcome or {})}")
    short = []
    for key, floor in FLOOR_LIMITS.items():
        value = limits.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < floor:
            short.append(f"{key} is {value!r}, not at least {floor}")
    if short:
        raise Failed(f"{'; '.join(short)}\ngot limits {shorten(limits)}")


def welcome_seq(s: Session) -> None:
    """A new connection's welcome seq is at least the last broadcast's, and below the next."""
    a = s.join(s.name("r"))
    before = seq_of(a.joined)
    now = seq_of(s.connect().welcome)
    if now < before:
        raise Failed(f"a join notice had seq {before}, then a new connection's welcome "
                     f"said seq {now}")
    after = seq_of(say(a, "after the welcome"))
    if after <= now:
        raise Failed(f"a welcome said seq {now}, then the next broadcast had seq {after}")


def welcome_epoch(s: Session) -> None:
    """Two connections are told the same epoch."""
    first, second = s.connect().welcome.get("epoch"), s.connect().welcome.get("epoch")
    if not isinstance(first, str) or first != second:
        raise Failed(f"two welcomes said epoch {first!r} and {second!r}")


# -- broadcast ----------------------------------------------------------------------
def broadcast_room(s: Session) -> None:
    """a says something in a room of two; both get it with room, user, text, seq, ts."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    text = f"hello from {a.user}"
    a.send(type="message", text=text)
    for peer in (a, b):
        got = peer.expect(f"{a.user}'s message", chat(room=room))
        ts = got.get("ts")
        if (got.get("user") != a.user or got.get("text") != text or not is_seq(got.get("seq"))
                or not isinstance(ts, (int, float)) or isinstance(ts, bool)):
            raise Failed(f"expected a message from {a.user} with text {text!r}, a seq and a ts "
                         f"(as {peer.user})\n{a.sent()}\ngot {shorten(got)}")


def broadcast_id(s: Session) -> None:
    """A message with an id: the sender's own copy carries it."""
    a = s.join(s.name("r"))
    rid = a.new_id()
    a.send(type="message", text="with an id", id=rid)
    own = a.expect("the sender's own copy", chat("with an id", a.room))
    if own.get("id") != rid:
        raise Failed(f"expected the sender's copy to carry id {rid!r}\n{a.exchange(own)}")


def broadcast_stamped(s: Session) -> None:
    """A message claiming to be from 'mallory' reaches the room as from its sender."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    a.send(type="message", text="I am mallory", user="mallory")
    got = b.expect("the message", chat("I am mallory", room))
    if got.get("user") != a.user:
        raise Failed(f"expected user {a.user!r} on the message\n{a.sent()}\n"
                     f"got {shorten(got)}")


def broadcast_only_room(s: Session) -> None:
    """A message in one room is not delivered to a member of another."""
    room = s.name("r")
    a, b, c = s.join(room), s.join(room), s.join(s.name("r"))
    say(a, "for this room only")
    b.expect("the message", chat("for this room only", room))
    leaked = [m for m in c.ping() if chat("for this room only", live=False)(m)]
    if leaked:
        raise Failed(f"{a.user} said it in {room}; {c.user} in {c.room} got it too\n"
                     f"got {shorten(leaked[0])}")


def unknown_keys(s: Session) -> None:
    """A join and a message with extra keys work as if the keys were not there."""
    a = s.join(s.name("r"), client="chat-sync check", extra={"nested": [1, None]})
    a.send(type="message", text="extra keys", colour="red", extra={"a": [1, 2]})
    a.expect("the message", chat("extra keys", a.room))


def message_room(s: Session) -> None:
    """A message naming the sender's room is said; naming another gets bad_message (room)."""
    a = s.join(s.name("r"))
    a.send(type="message", text="my room", room=a.room)
    a.expect("the message", chat("my room", a.room))
    rid = a.new_id()
    a.refused(p.encode({"type": "message", "text": "elsewhere", "room": s.name("r"),
                        "id": rid}), p.ErrorCode.BAD_MESSAGE, rid, "room")


def text_exact(s: Session) -> None:
    """Text with quotes, backslashes, tabs, newlines, accents, CJK and emoji arrives unchanged."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    text = 'héllo "world" \\ back\\slash\ttab\nline 世界 🎉'
    a.send(type="message", text=text)
    got = b.expect(f"a message from {a.user}", chat(room=room))
    if got.get("text") != text:
        raise Failed(f"expected the text unchanged\n{a.sent()}\ngot {shorten(got)}")


# -- rooms --------------------------------------------------------------------------
def join_notice(s: Session) -> None:
    """b joins a's room: a and b both get a live system join notice with user, text, seq."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    for peer in (a, b):
        got = peer.joined if peer is b else peer.expect(
            f"{b.user}'s join notice", notice("join", b.user, room))
        if not isinstance(got.get("text"), str) or not is_seq(got.get("seq")):
            raise Failed(f"expected a join notice with a text and a seq\n{b.sent()}\n"
                         f"got {shorten(got)}")


def join_id(s: Session) -> None:
    """A join with an id: the joiner's own join notice carries it."""
    a = s.join(s.name("r"), id="join-1")
    if a.joined.get("id") != "join-1":
        raise Failed(f"expected the join notice to carry id 'join-1'\n{a.exchange(a.joined)}")


def presence(s: Session) -> None:
    """Past presence_limit members a room is quiet: a join or leave reaches that member alone;
    back at the limit, a leave is heard again."""
    limit = presence_limit(s.connect().welcome)
    room = s.name("r")
    members = [s.join(room) for _ in range(limit)]
    quiet = s.join(room, id="quiet-join")        # one past the limit
    if quiet.joined.get("id") != "quiet-join":
        raise Failed(f"expected the joiner's own join notice, with id 'quiet-join'\n"
                     f"{quiet.exchange(quiet.joined)}")
    quiet.send(type="leave", id="quiet-leave")
    own = quiet.expect(f"{quiet.user}'s own leave notice", notice("leave", quiet.user, room))
    if own.get("id") != "quiet-leave":
        raise Failed(f"expected the leaver's notice to carry id 'quiet-leave'\n"
                     f"{quiet.exchange(own)}")
    told_nothing(members, quiet, limit)
    if len(members) >= 2:
        last = members[-1]
        last.send(type="leave")
        members[0].expect(f"{last.user}'s leave notice in a room of {limit}",
                          notice("leave", last.user, room))


def move(s: Session) -> None:
    """b moves from a's room to c's: a sees b leave, c sees b join, the leave first."""
    old, new = s.name("r"), s.name("r")
    a, c, b = s.join(old), s.join(new), s.join(old)
    b.send(type="join", room=new, user=b.user)
    left = a.expect(f"{b.user}'s leave notice in {old}", notice("leave", b.user, old))
    arrived = c.expect(f"{b.user}'s join notice in {new}", notice("join", b.user, new))
    b.expect(f"{b.user}'s own join notice in {new}", notice("join", b.user, new))
    if seq_of(left) >= seq_of(arrived):
        raise Failed(f"the leave notice had seq {left['seq']}, the join notice "
                     f"{arrived['seq']}: the leave comes first")


def leave(s: Session) -> None:
    """b leaves: a and b get the notice (b's with its id); b stays connected, out of the room."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    rid = b.new_id()
    b.send(type="leave", id=rid)
    a.expect(f"{b.user}'s leave notice", notice("leave", b.user, room))
    own = b.expect(f"{b.user}'s own leave notice", notice("leave", b.user, room))
    if own.get("id") != rid:
        raise Failed(f"expected the leaver's notice to carry id {rid!r}\n{b.exchange(own)}")
    rid = b.new_id()
    b.refused(p.encode({"type": "message", "text": "still here?", "id": rid}),
              p.ErrorCode.NOT_JOINED, rid)


def name_fixed(s: Session) -> None:
    """A later join under another name is refused, and the user stays where it was."""
    a = s.join(s.name("r"))
    rid = a.new_id()
    a.refused(p.encode({"type": "join", "room": s.name("r"), "user": s.name(), "id": rid}),
              None, rid)
    where = ask(a, T.WHO)
    if not same_name(where.get("room"), a.room):
        raise Failed(f"after the refused join, who said {shorten(where)}, not room {a.room}")


def rooms_list(s: Session) -> None:
    """rooms lists rooms with people in them and how many; an emptied room drops out."""
    full, single = s.name("r"), s.name("r")
    s.join(full)
    s.join(full)
    c = s.join(single)
    listing = _rooms(ask(s.connect(), T.ROOMS))
    for room, members in ((full, 2), (single, 1)):
        if listing.get(p.name_key(room)) != members:
            raise Failed(f"expected {room} with {members} members in the rooms reply\n"
                         f"got {shorten(listing)}")
    c.send(type="leave")
    c.expect(f"{c.user}'s own leave notice", notice("leave", c.user, single))
    listing = _rooms(ask(s.connect(), T.ROOMS))
    if p.name_key(single) in listing:
        raise Failed(f"{single} is empty, yet the rooms reply lists it\ngot {shorten(listing)}")


def _rooms(reply: Message) -> dict[str, object]:
    """A rooms reply as name_key -> members; Failed if it is not a list of rooms."""
    rooms = reply.get("rooms")
    if not isinstance(rooms, list) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) for r in rooms):
        raise Failed(f"expected rooms: a list of {{name, members}}\ngot {shorten(reply)}")
    return {p.name_key(r["name"]): r.get("members") for r in rooms}


def who(s: Session) -> None:
    """who in a room of two names the room and both users."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    reply = ask(a, T.WHO)
    users = reply.get("users")
    names = sorted(p.name_key(u) for u in users if isinstance(u, str)) if isinstance(
        users, list) else None
    if not same_name(reply.get("room"), room) or names != sorted([p.name_key(a.user),
                                                                 p.name_key(b.user)]):
        raise Failed(f"expected room {room} with users {a.user} and {b.user}\n"
                     f"{a.sent()}\ngot {shorten(reply)}")


def names_unique(s: Session) -> None:
    """While a holds a name, a join as it, in upper case or full width, gets name_taken."""
    room = s.name("r")
    a = s.join(room, user=s.name("Nm"))
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in a.user)
    for name in (a.user, a.user.upper(), fullwidth):
        peer = s.connect()
        rid = peer.new_id()
        peer.refused(p.encode({"type": "join", "room": room, "user": name, "id": rid}),
                     p.ErrorCode.NAME_TAKEN, rid)


def room_names_fold(s: Session) -> None:
    """A room joined as 'Rm…' and as 'RM…' is one room: the first sees the second join."""
    room = s.name("Rm")
    a = s.join(room)
    b = s.join(room.upper())
    a.expect(f"{b.user}'s join notice", notice("join", b.user, room))


def hangup(s: Session) -> None:
    """b closes its connection: a gets b's leave notice, and b's name is free again."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    b.close()
    a.expect(f"{b.user}'s leave notice after it hung up", notice("leave", b.user, room))
    s.join(room, user=b.user)


# -- history ------------------------------------------------------------------------
def replay(s: Session) -> None:
    """b joins after a's join and two messages: all three are replayed, in order, first."""
    room = s.name("r")
    a = s.join(room)
    said = [a.joined, say(a, "one"), say(a, "two")]
    b = s.join(room)
    want = [seq_of(m) for m in said]
    got = [m.get("seq") for m in b.replay if m.get("history") is True]
    if got != want:
        raise Failed(f"expected the replay of seqs {want}, each with history: true, before "
                     f"{b.user}'s join notice\ngot {shorten(str(b.replay))}")


def history_flag(s: Session) -> None:
    """Replayed broadcasts say history: true; live ones (the notice, a new message) do not."""
    room = s.name("r")
    a = s.join(room)
    say(a, "before")
    b = s.join(room)
    unmarked = [m for m in b.replay if m.get("type") in (T.MESSAGE, T.SYSTEM)
                and m.get("history") is not True]
    if unmarked or not b.replay:
        raise Failed(f"expected the replay marked history: true\n"
                     f"got {shorten(str(unmarked or b.replay))}")
    say(a, "after")
    live = b.expect("the live message", chat("after", room, live=False))
    for message in (b.joined, live):
        if message.get("history"):
            raise Failed(f"a live broadcast says history\ngot {shorten(message)}")


def since(s: Session) -> None:
    """a says three things; b joins with since = the first's seq: only two are replayed."""
    room = s.name("r")
    a = s.join(room)
    first, second, third = (say(a, text) for text in ("one", "two", "three"))
    b = s.join(room, since=seq_of(first))
    want = [seq_of(second), seq_of(third)]
    got = [m.get("seq") for m in b.replay if "seq" in m]
    if got != want or any(m.get("event") == p.SystemEvent.HISTORY_GAP for m in b.replay):
        raise Failed(f"expected only seqs {want} replayed, with no gap notice\n"
                     f"{b.sent()}\ngot {shorten(str(b.replay))}")


def gap(s: Session) -> None:
    """b asks since a seq 24 broadcasts ago: if any is not replayed, a history_gap comes first."""
    room = s.name("r")
    a = s.join(room)
    start = seq_of(a.joined)
    said = say_many(a, 24)
    b = s.join(room, since=start)
    replayed = {m["seq"] for m in b.replay if is_seq(m.get("seq"))}
    lost = [seq_of(m) for m in said if m["seq"] not in replayed]
    gaps = [m for m in b.replay if m.get("type") == T.SYSTEM
            and m.get("event") == p.SystemEvent.HISTORY_GAP]
    if lost and (not gaps or b.replay[0] is not gaps[0]):
        raise Failed(f"since={start}: seqs {lost} were not replayed, and the replay did not "
                     f"start with a history_gap notice\ngot {shorten(str(b.replay))}")
    if not lost and gaps:
        raise Failed(f"since={start}: everything was replayed, yet a history_gap came\n"
                     f"got {shorten(gaps[0])}")
    if gaps and (not same_name(gaps[0].get("room"), room) or "seq" in gaps[0]):
        raise Failed(f"expected the history_gap notice to name room {room} and carry no seq\n"
                     f"got {shorten(gaps[0])}")


def seq_server_wide(s: Session) -> None:
    """Messages said in turn in two rooms have increasing seq; so does each peer's live stream."""
    a, b = s.join(s.name("r")), s.join(s.name("r"))
    in_turn = [seq_of(say(peer, f"turn {n}")) for n in (1, 2) for peer in (a, b)]
    if not increasing(in_turn):
        raise Failed(f"messages said in turn in two rooms had seq {in_turn}: one counter "
                     "for the whole server gives increasing numbers")
    a.send(type="join", room=b.room, user=a.user)
    a.expect(f"{a.user}'s own join notice", notice("join", a.user, b.room))
    a.room = b.room
    say(a, "moved")
    b.expect(f"{a.user}'s message", chat("moved", b.room))
    for peer in (a, b):
        if not increasing(live_seqs(peer)):
            raise Failed(f"{peer.user}'s live broadcasts came with seq {live_seqs(peer)}")


# -- whispers -----------------------------------------------------------------------
def whisper(s: Session) -> None:
    """a whispers to b in another room: b gets it, a a copy with its id, a's room-mate nothing."""
    room = s.name("r")
    a, c, b = s.join(room), s.join(room), s.join(s.name("r"))
    rid = a.new_id()
    a.send(type="whisper", to=b.user, text="psst", id=rid)
    copy = a.expect("the sender's copy of the whisper", of_type(T.WHISPER))
    got = b.expect("the whisper", of_type(T.WHISPER))
    for peer, message in ((a, copy), (b, got)):
        if (message.get("from") != a.user or not same_name(message.get("to"), b.user)
                or message.get("text") != "psst"):
            raise Failed(f"expected a whisper from {a.user} to {b.user} saying 'psst' "
                         f"(as {peer.user})\n{a.sent()}\ngot {shorten(message)}")
    if copy.get("id") != rid:
        raise Failed(f"expected the sender's copy to carry id {rid!r}\n{a.exchange(copy)}")
    overheard = [m for m in c.ping() if m.get("type") == T.WHISPER]
    if overheard:
        raise Failed(f"{c.user}, in {a.user}'s room, got the whisper too\n"
                     f"got {shorten(overheard[0])}")


def whisper_fold(s: Session) -> None:
    """A whisper to the target's name in upper case reaches it."""
    a, b = s.join(s.name("r")), s.join(s.name("r"))
    a.send(type="whisper", to=b.user.upper(), text="shout-whisper")
    a.expect("the sender's copy of the whisper", of_type(T.WHISPER))
    b.expect("the whisper", of_type(T.WHISPER))
