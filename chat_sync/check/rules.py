"""Every rule the checker knows: its id, its stage, the promise it checks, in one line.

The rules are the README's protocol section, promise by promise, in stages
that follow the course: framing (lesson 02), the welcome, broadcast
(lesson 03), rooms and history (lesson 05), whispers, errors and limits
(lessons 04 and 09). ``--stage S`` runs S and every stage before it.

A rule's id is ``stage.name``. ``needs`` names rules whose failure makes it
pointless: a server that sends no welcome cannot be checked for history, so
those rules are skipped, with the reason, instead of failing by the dozen.

The UDP rules (``--udp``) are a second table, ``UDP_RULES``, in stages that
follow the UDP lessons: the session id, acks, the stream, dedup, errors and
limits. Their first rule, a welcome in answer to a join, is needed by the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from . import tcp_error_rules as e
from . import tcp_rules as t
from . import udp_rules as u
from .udp_wire import UdpSession
from .wire import RuleSession, Session

WELCOME = "welcome.first"
UDP_WELCOME = "udp-session.welcome"
S = TypeVar("S", bound=RuleSession)         # a TCP or a UDP rule's session


@dataclass(frozen=True)
class Rule(Generic[S]):
    id: str                                  # "stage.name"
    statement: str                           # the promise, in one line
    check: Callable[[S], None]               # returns, or raises Failed
    needs: tuple[str, ...] = (WELCOME,)      # rules that must pass first

    @property
    def stage(self) -> str:
        return self.id.split(".", 1)[0]


def _framing(id: str, statement: str, check: Callable[[Session], None]) -> Rule[Session]:
    """A framing rule: it pings, so it does not need the welcome."""
    return Rule(id, statement, check, needs=())


def _udp(id: str, statement: str, check: Callable[[UdpSession], None]) -> Rule[UdpSession]:
    """A UDP rule: it needs a welcome in answer to a join."""
    return Rule(id, statement, check, needs=(UDP_WELCOME,))


TCP_STAGES = ("framing", "welcome", "broadcast", "rooms", "history", "whispers", "errors",
              "limits")

TCP_RULES: tuple[Rule[Session], ...] = (
    _framing("framing.split", "a line that arrives in pieces is one request, answered once whole",
             t.split_line),
    _framing("framing.coalesced", "several lines in one packet are each answered, in order",
             t.coalesced_lines),
    _framing("framing.crlf", "a \\r before the \\n is ignored", t.crlf),
    _framing("framing.empty-lines", "empty lines are ignored", t.empty_lines),
    _framing("framing.id", "a request's id (an integer or a string) comes back on its answer",
             t.request_ids),
    Rule(WELCOME, "the server greets each connection with a welcome, unasked", t.welcome_first,
         needs=()),
    Rule("welcome.fields", "the welcome has server, version, protocol 1, limits, seq and epoch",
         t.welcome_fields),
    Rule("welcome.limits", "the welcome's limits are at least what a client may rely on",
         t.welcome_limits),
    Rule("welcome.seq", "the welcome's seq is the server's current seq", t.welcome_seq),
    Rule("welcome.epoch", "every connection to one run is told the same epoch", t.welcome_epoch),
    Rule("broadcast.room", "a message goes to the whole room, the sender included",
         t.broadcast_room),
    Rule("broadcast.id", "the sender's copy of its message carries the request's id",
         t.broadcast_id),
    Rule("broadcast.stamped", "a message is stamped with the sender's name, not its user key",
         t.broadcast_stamped),
    Rule("broadcast.only-room", "a message reaches no other room", t.broadcast_only_room),
    Rule("broadcast.unknown-keys", "keys a request does not define are ignored", t.unknown_keys),
    Rule("broadcast.message-room", "a message's room, if given, must be the sender's",
         t.message_room),
    Rule("broadcast.text-exact", "text arrives exactly as sent, any Unicode", t.text_exact),
    Rule("rooms.join-notice", "a join is announced to the room, the joiner included",
         t.join_notice),
    Rule("rooms.join-id", "the joiner's own join notice carries the join's id", t.join_id),
    Rule("rooms.move", "a second join moves: a leave notice in the old room, a join in the new",
         t.move),
    Rule("rooms.leave", "leave sends a leave notice; the leaver stays connected, in no room",
         t.leave),
    Rule("rooms.presence", "past presence_limit members a join or leave reaches its member "
         "alone", t.presence),
    Rule("rooms.name-fixed", "a later join must give the connection's first name", t.name_fixed),
    Rule("rooms.rooms", "rooms lists the rooms with people in them, and how many", t.rooms_list),
    Rule("rooms.who", "who lists the users in your room", t.who),
    Rule("rooms.names-unique", "one name, one connection: compared case-folded and NFKC",
         t.names_unique),
    Rule("rooms.room-names", "room names compare case-insensitively too", t.room_names_fold),
    Rule("rooms.hangup", "a closed connection leaves its room and frees its name", t.hangup),
    Rule("history.replay", "a joiner gets the room's history, in order, before its join notice",
         t.replay),
    Rule("history.flag", "replayed broadcasts say history: true, live ones do not",
         t.history_flag),
    Rule("history.since", "a join with since N replays only what came after seq N", t.since),
    Rule("history.gap", "a since that history no longer reaches gets a history_gap notice first",
         t.gap),
    Rule("history.seq", "seq is one counter for the server: live broadcasts increase",
         t.seq_server_wide),
    Rule("whispers.deliver", "a whisper reaches its target alone, in any room; the sender a copy",
         t.whisper),
    Rule("whispers.fold", "a whisper's target name compares case-insensitively", t.whisper_fold),
    Rule("errors.bad-json", "a line that is not JSON gets bad_json", e.bad_json),
    Rule("errors.not-object", "JSON that is not an object gets bad_json", e.not_object),
    Rule("errors.nan", "NaN and Infinity are not JSON: bad_json", e.nan),
    Rule("errors.duplicate-keys", "an object with a key twice gets bad_json", e.duplicate_keys),
    Rule("errors.deep-nesting", "deep nesting gets bad_json (or is read) and harms nothing",
         e.deep_nesting),
    Rule("errors.lone-surrogate", "a lone surrogate in a text gets an error, not a broadcast",
         e.lone_surrogate),
    Rule("errors.bad-utf8", "a line that is not UTF-8 gets bad_utf8", e.bad_utf8),
    Rule("errors.unknown-type", "an unknown type gets unknown_type, with field and id",
         e.unknown_type),
    Rule("errors.no-type", "an object without a string type gets bad_message", e.no_type),
    Rule("errors.bad-field", "a bad field gets bad_message naming it, with the request's id",
         e.bad_field),
    Rule("errors.not-joined", "message, leave, who and whisper before a join get not_joined",
         e.not_joined),
    Rule("errors.system-name", "the name system is reserved: name_taken", e.system_name),
    Rule("errors.no-such-user", "a whisper to nobody gets no_such_user", e.no_such_user),
    Rule("errors.line-too-long", "a line over max_line_bytes gets line_too_long, then a close",
         e.line_too_long),
    Rule("errors.survives", "after bad input the connection works and is still heard",
         e.survives),
    Rule("limits.line", "a line of exactly max_line_bytes is read", e.line_max),
    Rule("limits.text", "a text of max_text_chars is said; one more gets bad_message",
         e.text_max),
    Rule("limits.text-empty", "an empty text gets bad_message", e.text_empty),
    Rule("limits.user", "a user name of max_user_chars joins; one more gets bad_message",
         e.user_max),
    Rule("limits.room", "a room name of max_room_chars is joined; one more gets bad_message",
         e.room_max),
    Rule("limits.burst", "a burst of 40 requests is answered, none rate_limited", e.burst),
    Rule("limits.history", "a joiner is replayed at least the room's last 20 broadcasts",
         e.history_depth),
)


UDP_STAGES = ("udp-session", "udp-acks", "udp-stream", "udp-dedup", "udp-errors", "udp-limits")

UDP_RULES: tuple[Rule[UdpSession], ...] = (
    Rule(UDP_WELCOME, "a join from a new address gets a welcome: n 1, a 16-hex-digit sid",
         u.welcome, needs=()),
    _udp("udp-session.fields", "the welcome has server, version, protocol 1, seq and epoch",
         u.welcome_fields),
    _udp("udp-session.sid", "every server datagram carries the welcome's sid",
         u.sid_everywhere),
    _udp("udp-session.ack-sid", "an ack of the welcome without its sid verifies nothing",
         u.ack_needs_sid),
    _udp("udp-session.no-sid", "a joined client's datagram without its sid is dropped",
         u.no_sid_dropped),
    _udp("udp-session.forgot", "a datagram naming an unknown sid gets a welcome saying forgot",
         u.forgot),
    _udp("udp-session.leave", "a leave is announced and ends the session", u.leave),
    _udp("udp-acks.once", "every request is acked once, with its id and the sid",
         u.acked_once),
    _udp("udp-acks.duplicate", "a request sent twice is acked twice", u.duplicate_acked),
    _udp("udp-acks.n", "every server datagram but an ack carries n", u.n_everywhere),
    _udp("udp-acks.retransmit", "a datagram not acked comes again, after longer each time",
         u.retransmitted),
    _udp("udp-acks.stop", "a datagram acked is not sent again", u.ack_stops),
    _udp("udp-stream.counts", "each client's n counts 1, 2, 3 ... with no holes", u.counts),
    _udp("udp-stream.join", "a join is announced to the room; the joiner's copy has its id",
         u.join_notice),
    _udp("udp-stream.broadcast", "a message reaches its whole room and no other",
         u.broadcast),
    _udp("udp-stream.presence", "past presence_limit members the room is not told of joins "
         "and leaves", u.presence),
    _udp("udp-stream.history", "a joiner gets the room's history before its join notice",
         u.history),
    _udp("udp-stream.seq", "seq is one counter for the server: broadcasts increase", u.seq),
    _udp("udp-stream.whisper", "a whisper reaches its target, in any room; the sender a copy",
         u.whisper),
    _udp("udp-dedup.message", "a message sent twice is broadcast once", u.dedup_once),
    _udp("udp-dedup.late", "a copy that comes after later requests is not applied",
         u.dedup_late),
    _udp("udp-dedup.join", "a join sent twice makes one join notice", u.dedup_join),
    _udp("udp-dedup.after-leave", "a late copy of a request from before a leave: acked only",
         u.after_leave),
    _udp("udp-errors.bad-json", "a datagram that is not JSON gets bad_json; pings go on",
         u.bad_json),
    _udp("udp-errors.no-id", "a request without an integer id gets bad_message, field id",
         u.no_id),
    _udp("udp-errors.chat", "chat errors are as over TCP: not_joined, unknown_type, with ids",
         u.chat_errors),
    _udp("udp-errors.stranger", "garbage from an unknown address gets no answer",
         u.stranger),
    _udp("udp-limits.too-large", "a datagram over 1200 bytes gets datagram_too_large, its size",
         u.too_large),
    _udp("udp-limits.largest", "a datagram of exactly 1200 bytes is read", u.largest),
    _udp("udp-limits.delivery", "a message whose broadcast would not fit: datagram_too_large",
         u.delivery),
    _udp("udp-limits.fits", "every datagram the server sends fits in 1200 bytes", u.fits),
    _udp("udp-limits.lists", "a rooms list too long for a datagram is cut, says how many more",
         u.lists_cut),
    _udp("udp-limits.id-window", "an id far beyond the window: id_out_of_window, not applied",
         u.id_window),
)
