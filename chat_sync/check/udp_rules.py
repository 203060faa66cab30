"""The UDP rules: each function checks one promise of the README's "Chat over UDP".

A rule takes a ``UdpSession``, talks to the server through its peers, and
either returns (PASS) or raises ``Failed`` saying what it sent and what came
back. The table in ``rules.py`` says which promise each checks, in one line,
and the order they run in; the docstrings here say how.

Every peer is a socket of its own, so every rule starts fresh sessions, with
its own users and rooms (``s.name()``). The chat itself is the same as over
TCP, which the TCP rules check; these rules check what UDP adds: the session
id, acks, the stream counter, retransmission, dedup and the datagram limit.
"""
from __future__ import annotations

import re
import secrets
import time
from typing import Any

from .. import protocol as p
from .udp_wire import T, UdpPeer, UdpSession, acks_of, is_n
from .wire import (Failed, Match, Message, NotChecked, chat, checkable_presence_limit, is_seq,
                   notice, of_type, shorten, told_nothing)

E = p.ErrorCode
SID = re.compile(r"[0-9a-f]{16}")
QUIET_S = 0.3                 # how long "nothing came" is watched for, where no pong can tell
LIMIT = p.MAX_DATAGRAM_BYTES  # the README's default; a server may not take less
LIST_ROOMS = 30               # of 32 characters: their names alone are over LIMIT bytes


# -- helpers the rules share --------------------------------------------------------
def say(peer: UdpPeer, text: str) -> Message:
    """Say ``text`` in the peer's room; returns the peer's own copy of the broadcast."""
    peer.send(type="message", text=text)
    return peer.expect(f"{peer.user}'s own copy of {text!r}", chat(text, peer.room))


def said(peer: UdpPeer, text: str) -> tuple[int, bytes]:
    """Say ``text`` and wait for the peer's own copy; returns the request's id and
    the datagram that carried it, for a rule to send again."""
    rid = peer.send(type="message", text=text)
    copy = peer.last_sent
    peer.expect(f"{peer.user}'s own copy of {text!r}", chat(text, peer.room))
    return rid, copy


def error(code: E, rid: int | None = None) -> Match:
    """An error with ``code`` (and the request's id, when given)."""
    return lambda m: (m.get("type") == T.ERROR and m.get("code") == code
                      and (rid is None or m.get("id") == rid))


def heard_once(peers: list[UdpPeer], match: Match, what: str, sent: str) -> None:
    """Each peer pings (so all that was caused before has come), then must have seen
    ``match`` exactly once."""
    for peer in peers:
        peer.ping()
        times = peer.count(match)
        if times != 1:
            raise Failed(f"{sent}\n{peer.user or peer.label} got {what} {times} times, "
                         "not once")


def copies(n: object) -> Match:
    """A server datagram with stream counter ``n``: the first copy or a retransmission."""
    return lambda m: m.get("n") == n and m.get("type") != T.ACK


def pad_to(message: Message, size: int) -> bytes:
    """``message`` as a datagram of exactly ``size`` bytes, padded with a key nobody reads."""
    bare = p.encode_datagram({**message, "pad": ""})
    return p.encode_datagram({**message, "pad": "x" * (size - len(bare))})


# -- udp-session ---------------------------------------------------------------------
def welcome(s: UdpSession) -> None:
    """A join from a new address: the first answer but an ack is a welcome, n 1, a sid."""
    peer = s.open()
    peer.send(type="join", room=s.name("r"), user=s.name())
    first = peer.expect("a welcome", lambda m: m.get("type") != T.ACK, errors_ok=True)
    if first.get("type") != T.WELCOME:
        raise Failed(f"expected a welcome\n{peer.exchange(first)}")
    if first.get("n") != 1 or not isinstance(first.get("sid"), str) or not SID.fullmatch(
            first["sid"]):
        raise Failed(f"expected a welcome with n 1 and a sid of 16 hex digits\n"
                     f"{peer.exchange(first)}")


def welcome_fields(s: UdpSession) -> None:
    """The welcome's keys have the README's types (other keys are allowed)."""
    w = s.join(s.name("r")).welcome
    wrong = [f"{key} is not a string" for key in ("server", "version", "epoch")
             if not isinstance(w.get(key), str) or not w.get(key)]
    if w.get("protocol") != p.PROTOCOL_VERSION or isinstance(w.get("protocol"), bool):
        wrong.append(f"protocol is not {p.PROTOCOL_VERSION}")
    if not is_seq(w.get("seq")):
        wrong.append("seq is not a non-negative integer")
    if wrong:
        raise Failed(f"{'; '.join(wrong)}\ngot {shorten(w)}")


def sid_everywhere(s: UdpSession) -> None:
    """Join, say a line, ask who and ping: every datagram back carries the welcome's sid."""
    peer = s.join(s.name("r"))
    say(peer, "with a session id")
    peer.send(type="who")
    peer.expect("a who reply", of_type(T.WHO))
    peer.ping()
    for message in peer.received:
        if message.get("sid") != peer.sid:
            raise Failed(f"the welcome said sid {peer.sid!r}\ngot {shorten(message)}")


def ack_needs_sid(s: UdpSession) -> None:
    """An ack of the welcome without the sid applies nothing; the same ack with it does."""
    peer = s.open()
    peer.auto_ack = False
    peer.user, room = s.name(), s.name("r")
    peer.send(type="join", room=room, user=peer.user)
    peer.expect("a welcome", of_type(T.WELCOME))
    peer.ack(1, sid=None)
    peer.last_sent = b'{"type":"ack","n":1}'
    for message in peer.drain(QUIET_S):
        if notice("join", peer.user, room)(message) or acks_of(1)(message):
            raise Failed(f"expected nothing: an ack without the sid proves nothing\n"
                         f"{peer.exchange(message)}")
    peer.auto_ack = True
    peer.ack(1, peer.sid)
    peer.last_sent = p.encode_datagram({"type": "ack", "n": 1, "sid": peer.sid})
    peer.expect(f"{peer.user}'s join notice, once the welcome is acked with its sid",
                notice("join", peer.user, room))


def no_sid_dropped(s: UdpSession) -> None:
    """A joined peer's message without the sid is neither acked nor broadcast."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    text = f"forged? {s.name()}"
    rid = a.send(type="message", text=text, sid=None)
    sent = a.sent()
    for peer in (a, b):
        peer.ping()
    if a.count(acks_of(rid)) or a.count(chat(text)) or b.count(chat(text)):
        raise Failed(f"{sent}\nit was acked or broadcast: a datagram without the sid "
                     "must be dropped")


def forgot(s: UdpSession) -> None:
    """A join naming a session the server never had: a new sid, and forgot names the old."""
    peer = s.open()
    old = secrets.token_hex(p.SESSION_ID_BYTES)
    peer.send(type="join", room=s.name("r"), user=s.name(), sid=old)
    got = peer.expect("a welcome", of_type(T.WELCOME))
    if got.get("forgot") != old or got.get("sid") == old:
        raise Failed(f"expected a welcome with a new sid and forgot {old!r}\n"
                     f"{peer.exchange(got)}")


def leave(s: UdpSession) -> None:
    """After a leave the room hears it, and the next datagram opens a new session."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    a.send(type="leave")
    a.left = True
    b.expect(f"{a.user}'s leave notice", notice("leave", a.user, room))
    old = a.sid
    a.send(type="ping")
    got = a.expect("a welcome of a new session", of_type(T.WELCOME))
    if got.get("sid") == old:
        raise Failed(f"a leave ended the session, yet the next datagram got the old sid\n"
                     f"{a.exchange(got)}")


# -- udp-acks ------------------------------------------------------------------------
def acked_once(s: UdpSession) -> None:
    """A join, ping, who, rooms and message: each acked once, with its id and the sid."""
    peer = s.join(s.name("r"))
    ids = [peer.join_id]
    for kind in ("ping", "who", "rooms"):
        ids.append(peer.send(type=kind))
    ids.append(peer.send(type="message", text="to be acked"))
    peer.expect("the message", chat("to be acked"))
    last = peer.send(type="ping")
    peer.expect(f"the ack of ping {last}", acks_of(last), errors_ok=True)
    peer.ping()
    for rid in ids:
        acks = [m for m in peer.received if acks_of(rid)(m)]
        if len(acks) != 1:
            raise Failed(f"request {rid} got {len(acks)} acks, not one\n"
                         f"got {', '.join(shorten(m, 60) for m in acks) or 'none'}")
        if acks[0].get("sid") != peer.sid:
            raise Failed(f"the ack of request {rid} has not the welcome's sid {peer.sid!r}\n"
                         f"got {shorten(acks[0])}")


def duplicate_acked(s: UdpSession) -> None:
    """A message sent twice, the same bytes: the copy is acked again."""
    peer = s.join(s.name("r"))
    rid = peer.send(type="message", text="twice")
    copy = peer.last_sent
    peer.expect(f"the ack of {rid}", acks_of(rid))
    peer.send_bytes(copy)
    peer.until(f"a second ack of {rid}, for the copy", acks_of(rid))


def n_everywhere(s: UdpSession) -> None:
    """Every server datagram but an ack carries n, an integer from 1."""
    peer = s.join(s.name("r"))
    say(peer, "numbered")
    for kind in ("who", "rooms"):
        peer.send(type=kind)
        peer.expect(f"a {kind} reply", of_type(kind))
    peer.ping()
    for message in peer.received:
        if message.get("type") != T.ACK and not is_n(message.get("n")):
            raise Failed(f"expected an n (an integer from 1) on every datagram\n"
                         f"got {shorten(message)}")


def retransmitted(s: UdpSession) -> None:
    """A broadcast left unacked comes again with the same n, waiting longer each time."""
    peer = s.join(s.name("r"))
    peer.auto_ack = False
    own = say(peer, "ack me if you can")
    n, times = own.get("n"), [time.monotonic()]
    if not is_n(n):
        raise Failed(f"expected an n on the broadcast\ngot {shorten(own)}")
    while len(times) < 3:
        peer.expect(f"n {n} again, since it was not acked", copies(n))
        times.append(time.monotonic())
    first, second = times[1] - times[0], times[2] - times[1]
    peer.auto_ack = True
    peer.ack(own["n"], peer.sid)
    if second < 1.3 * first:
        raise Failed(f"n {n} came again after {first:.2f} s, then after {second:.2f} s: "
                     "no back-off (the wait should double)")


def ack_stops(s: UdpSession) -> None:
    """A broadcast acked at once is not sent again."""
    peer = s.join(s.name("r"))
    n = say(peer, "acked at once").get("n")
    for message in peer.drain(2 * QUIET_S):
        if copies(n)(message):
            raise Failed(f"n {n} was acked at once, yet came again\ngot {shorten(message)}")


# -- udp-stream ----------------------------------------------------------------------
def counts(s: UdpSession) -> None:
    """Two peers in two rooms talk: each one's n goes 1, 2, 3 ... with no holes."""
    a, b = s.join(s.name("r")), s.join(s.name("r"))
    for index in range(3):
        say(a, f"a says {index}")
        say(b, f"b says {index}")
    for peer in (a, b):
        peer.ping()
        got = sorted(set(peer.stream))
        if not got or got != list(range(1, got[-1] + 1)) or peer.stream[0] != 1:
            raise Failed(f"expected n 1, 2, 3 ... with no holes\n{peer.user} got n "
                         f"{', '.join(map(str, list(peer.stream)[:20]))}")


def join_notice(s: UdpSession) -> None:
    """A join is announced to the room; the joiner's own copy carries the join's id."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    if b.joined.get("id") != b.join_id:
        raise Failed(f"expected the joiner's notice to carry id {b.join_id}\n"
                     f"got {shorten(b.joined)}")
    a.expect(f"{b.user}'s join notice", notice("join", b.user, room))


def presence(s: UdpSession) -> None:
    """Past presence_limit members a room is quiet: a join reaches the joiner alone, a
    leave nobody (its session is over); back at the limit, a leave is heard again.

    The UDP welcome leaves ``limits`` out (it must stay small), so the limit is the
    one the checker is told (``--presence-limit`` or ``--config``).
    """
    if s.presence_limit is None:
        raise NotChecked("the UDP welcome does not say presence_limit: give the checker "
                         "the server's with --presence-limit N (or --config FILE)")
    limit = checkable_presence_limit(s.presence_limit)
    room = s.name("r")
    members = [s.join(room) for _ in range(limit)]
    quiet = s.join(room)                          # one past the limit: its own notice
    quiet.send(type="leave")
    quiet.left = True
    told_nothing(members, quiet, limit)
    if len(members) >= 2:
        last = members[-1]
        last.send(type="leave")
        last.left = True
        members[0].expect(f"{last.user}'s leave notice in a room of {limit}",
                          notice("leave", last.user, room))


def broadcast(s: UdpSession) -> None:
    """A message reaches the whole room, the sender's copy with its id, and no other room."""
    room = s.name("r")
    a, b, c = s.join(room), s.join(room), s.join(s.name("r"))
    text = f"hello from {a.user}"
    rid = a.send(type="message", text=text)
    own = a.expect("the sender's own copy", chat(text, room))
    if own.get("id") != rid or own.get("user") != a.user:
        raise Failed(f"expected the sender's copy from {a.user} with id {rid}\n"
                     f"{a.exchange(own)}")
    b.expect(f"{a.user}'s message", chat(text, room))
    c.ping()
    if c.count(chat(text)):
        raise Failed(f"{a.sent()}\nit reached {c.user}, in another room")


def history(s: UdpSession) -> None:
    """A joiner gets the room's history, history: true, in order, before its join notice."""
    room = s.name("r")
    a = s.join(room)
    texts = ["first of two", "second of two"]
    for text in texts:
        say(a, text)
    b = s.join(room)
    replayed = [m.get("text") for m in b.replay if m.get("type") == T.MESSAGE]
    flags = [m.get("history") for m in b.replay if m.get("type") == T.MESSAGE]
    if replayed[-2:] != texts or not all(flag is True for flag in flags):
        raise Failed(f"expected {texts} replayed with history: true before the join notice\n"
                     f"got {', '.join(shorten(m, 60) for m in b.replay) or 'nothing'}")


def seq(s: UdpSession) -> None:
    """Broadcasts in two rooms take increasing seq from one counter."""
    a, b = s.join(s.name("r")), s.join(s.name("r"))
    seqs: list[Any] = [say(peer, text).get("seq")
                       for peer, text in ((a, "one"), (b, "two"), (a, "three"))]
    if not all(is_seq(value) for value in seqs) or not seqs[0] < seqs[1] < seqs[2]:
        raise Failed(f"expected increasing seq across rooms\ngot seq {seqs}")


def whisper(s: UdpSession) -> None:
    """A whisper reaches its target in another room, and the sender a copy."""
    a, b = s.join(s.name("r")), s.join(s.name("r"))
    a.send(type="whisper", to=b.user, text="psst")
    for peer in (b, a):
        peer.expect(f"{a.user}'s whisper", lambda m: m.get("type") == T.WHISPER
                    and m.get("text") == "psst" and m.get("from") == a.user)


# -- udp-dedup -----------------------------------------------------------------------
def dedup_once(s: UdpSession) -> None:
    """A message sent twice, the same bytes: the room hears it once."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    text = f"once from {a.user}"
    rid, copy = said(a, text)
    a.send_bytes(copy)
    a.until(f"a second ack of {rid}, for the copy", acks_of(rid))
    heard_once([a, b], chat(text), repr(text), f"sent {shorten(copy)} twice")


def dedup_late(s: UdpSession) -> None:
    """A copy that arrives after a later request is still not applied again."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    text = f"late copy from {a.user}"
    _, copy = said(a, text)
    say(a, "a later line")
    a.send_bytes(copy)
    heard_once([a, b], chat(text), repr(text), f"sent {shorten(copy)} again, late")


def dedup_join(s: UdpSession) -> None:
    """A join sent twice before the welcome came: one join notice."""
    room = s.name("r")
    a = s.join(room)
    b = s.open()
    b.user, b.room = s.name(), room
    b.send(type="join", room=room, user=b.user)
    b.send_bytes(b.last_sent)
    b.expect(f"{b.user}'s join notice", notice("join", b.user, room))
    heard_once([a, b], notice("join", b.user, room), f"{b.user}'s join notice",
               f"sent {shorten(b.last_sent)} twice")


def after_leave(s: UdpSession) -> None:
    """A late copy of a message sent before a leave is acked, and not broadcast again."""
    room = s.name("r")
    a, b = s.join(room), s.join(room)
    text = f"before leaving, {a.user}"
    rid, copy = said(a, text)
    a.send(type="leave")
    a.left = True
    b.expect(f"{a.user}'s leave notice", notice("leave", a.user, room))
    a.send_bytes(copy)
    a.expect(f"an ack of {rid}, for the late copy", acks_of(rid))
    heard_once([b], chat(text), repr(text), f"sent {shorten(copy)} again after the leave")


# -- udp-errors ----------------------------------------------------------------------
def bad_json(s: UdpSession) -> None:
    """A joined peer's datagram that is not JSON gets bad_json; pings go on."""
    peer = s.join(s.name("r"))
    peer.send_bytes(b'{"type":"ping",')
    peer.expect("a bad_json error", error(E.BAD_JSON), errors_ok=True)
    peer.ping()


def no_id(s: UdpSession) -> None:
    """A ping without an id gets bad_message naming the field id."""
    peer = s.join(s.name("r"))
    peer.send(type="ping", id=None)
    got = peer.expect("a bad_message error", of_type(T.ERROR), errors_ok=True)
    if got.get("code") != E.BAD_MESSAGE or got.get("field") != "id":
        raise Failed(f"expected a bad_message error with field 'id'\n{peer.exchange(got)}")


def chat_errors(s: UdpSession) -> None:
    """A message before any join gets not_joined, an unknown type unknown_type, with ids."""
    peer = s.open()
    # A new address may be sent 3x what it sent until it acks the welcome: a
    # first datagram a third the size of the welcome would get nothing yet.
    rid = peer.send(type="message", text="is anyone here? I have not joined a room yet")
    peer.expect(f"a not_joined error with id {rid}", error(E.NOT_JOINED, rid), errors_ok=True)
    rid = peer.send(type="shout", text="hi")
    peer.expect(f"an unknown_type error with id {rid}", error(E.UNKNOWN_TYPE, rid),
                errors_ok=True)


def stranger(s: UdpSession) -> None:
    """Garbage from a new address gets no answer at all; its join then gets a welcome."""
    peer = s.open()
    peer.send_bytes(b"\xff not json, from nobody")
    for message in peer.drain(QUIET_S):
        raise Failed(f"expected no answer to garbage from an unknown address\n"
                     f"{peer.exchange(message)}")
    peer.send(type="join", room=s.name("r"), user=s.name())
    got = peer.expect("a welcome", of_type(T.WELCOME))
    if got.get("n") != 1:
        raise Failed(f"expected a welcome with n 1\n{peer.exchange(got)}")


# -- udp-limits ----------------------------------------------------------------------
def too_large(s: UdpSession) -> None:
    """A 1500-byte message gets datagram_too_large naming 1500, and is not broadcast."""
    peer = s.join(s.name("r"))
    size = LIMIT + 300
    text = f"too large, {peer.user}"
    peer.send_bytes(pad_to({"type": "message", "text": text, "id": 999,
                            "sid": peer.sid}, size))
    got = peer.expect("a datagram_too_large error", of_type(T.ERROR), errors_ok=True)
    if got.get("code") != E.DATAGRAM_TOO_LARGE or str(size) not in str(got.get("text")):
        raise Failed(f"expected datagram_too_large, with the real size {size} in its text\n"
                     f"{peer.exchange(got)}")
    peer.ping()
    if peer.count(chat(text)):
        raise Failed(f"sent a datagram of {size} bytes\nit was broadcast")


def largest(s: UdpSession) -> None:
    """A ping of exactly 1200 bytes is answered."""
    peer = s.join(s.name("r"))
    rid = 900
    peer.send_bytes(pad_to({"type": "ping", "id": rid, "sid": peer.sid}, LIMIT))
    peer.expect(f"a pong with id {rid}, to {LIMIT} bytes",
                lambda m: m.get("type") == T.PONG and m.get("id") == rid)


def delivery(s: UdpSession) -> None:
    """A message that fits, but whose broadcast would not: datagram_too_large, with its id."""
    peer = s.join(s.name("r"))
    rid = peer.send(type="message", text="y" * (LIMIT - 100))
    peer.expect(f"a datagram_too_large error with id {rid}",
                error(E.DATAGRAM_TOO_LARGE, rid), errors_ok=True)


def fits(s: UdpSession) -> None:
    """Replies and broadcasts, a long one too, each fit in 1200 bytes."""
    peer = s.join(s.name("r"))
    say(peer, "z" * (LIMIT - 400))
    for kind in ("who", "rooms"):
        peer.send(type=kind)
        peer.expect(f"a {kind} reply", of_type(kind))
    if peer.largest > LIMIT:
        raise Failed(f"{peer.sent()}\ngot a datagram of {peer.largest} bytes, over {LIMIT}")


def lists_cut(s: UdpSession) -> None:
    """A rooms reply for 30 rooms of long names fits, and its more counts some left out.

    Each peer is alone in its room, so no peer hears another's join.
    """
    peers = []
    for _ in range(LIST_ROOMS):
        room = s.name("r")
        peers.append(s.join(room + "x" * (p.MAX_ROOM_CHARS - len(room))))
    last = peers[-1]
    last.send(type="rooms")
    got = last.expect("a rooms reply", of_type(T.ROOMS))
    rooms, more = got.get("rooms"), got.get("more")
    if (last.largest > LIMIT or not isinstance(rooms, list) or not is_n(more)
            or len(rooms) + more < LIST_ROOMS):
        raise Failed(f"expected a rooms reply of at most {LIMIT} bytes, with more saying "
                     f"how many of the {LIST_ROOMS} rooms or more it left out\n"
                     f"{last.sent()}\ngot {last.largest} bytes: {shorten(got)}")


def id_window(s: UdpSession) -> None:
    """An id 5000 ahead gets id_out_of_window and is not applied; the next real id is."""
    peer = s.join(s.name("r"))
    far = peer.join_id + 5000
    text = f"from far ahead, {peer.user}"
    peer.send(type="message", text=text, id=far)
    peer.expect(f"an id_out_of_window error with id {far}", error(E.ID_OUT_OF_WINDOW, far),
                errors_ok=True)
    say(peer, "the next real id")
    if peer.count(chat(text)):
        raise Failed(f"sent a message with id {far}\nit was broadcast")
