"""Lesson 11: ``for_this_server`` and ``server_gone``, checked on replicas with no I/O.

The package's ``cluster.ClusterChat`` is the oracle: two replicas fed the
same log with your functions must say to each server's clients exactly what
they would say with the package's.
"""
from __future__ import annotations

import json

import pytest

from chat_sync.rooms import Broadcast, ChatCore, Reply
from lesson_target import load

target = load(__file__)
TS = 1795600000.0


def replica_with(*joins: tuple[str, int, str]) -> ChatCore:
    """A replica in which each (server, number, user) has connected and joined lobby."""
    core = ChatCore(epoch="e")
    for server, number, user in joins:
        core.connect((server, number))
        core.receive((server, number), json.dumps(
            {"type": "join", "room": "lobby", "user": user}).encode(), TS)
    return core


def test_a_reply_to_this_server_is_kept_with_its_number() -> None:
    outputs = [Reply(("a", 3), {"type": "pong"})]
    assert target.for_this_server(outputs, "a") == [Reply(3, {"type": "pong"})]


def test_a_reply_to_another_server_is_left_out() -> None:
    assert target.for_this_server([Reply(("b", 3), {"type": "pong"})], "a") == []


def test_a_broadcast_is_cut_to_this_server_in_order() -> None:
    message = {"type": "message", "text": "hi"}
    outputs = [Broadcast((("a", 2), ("b", 1), ("a", 1)), message, "lobby")]
    assert target.for_this_server(outputs, "a") == [Broadcast((2, 1), message, "lobby")]


def test_a_broadcast_with_nobody_here_is_still_kept_for_the_log() -> None:
    message = {"type": "message", "text": "hi"}
    outputs = [Broadcast((("b", 1),), message, "lobby")]
    assert target.for_this_server(outputs, "a") == [Broadcast((), message, "lobby")]


def test_the_order_of_mixed_outputs_is_kept() -> None:
    outputs = [Broadcast((("a", 1),), {"n": 1}, "r"), Reply(("b", 1), {"n": 2}),
               Reply(("a", 1), {"n": 3})]
    assert target.for_this_server(outputs, "a") == [Broadcast((1,), {"n": 1}, "r"),
                                                     Reply(1, {"n": 3})]


def test_server_gone_disconnects_that_server_only_in_member_order() -> None:
    core = replica_with(("b", 2, "bob"), ("a", 1, "alice"), ("b", 1, "bea"))
    outputs = target.server_gone(core, "b", TS + 1)
    leaves = [o.message["user"] for o in outputs if isinstance(o, Broadcast)]
    assert leaves == ["bob", "bea"]
    assert list(core.members) == [("a", 1)]
    assert core.user_named("bob") is None          # the name is free


def test_the_senders_copy_stays_with_the_senders_server() -> None:
    message = {"type": "message", "text": "hi", "seq": 3}
    outputs = [Broadcast((("a", 1), ("b", 1)), message, "lobby", own=(("b", 1), 4))]
    assert target.for_this_server(outputs, "b") == [Broadcast((1,), message, "lobby", (1, 4))]
    assert target.for_this_server(outputs, "a") == [Broadcast((1,), message, "lobby")]


def test_server_gone_twice_changes_nothing() -> None:
    core = replica_with(("a", 1, "alice"), ("b", 1, "bob"))
    target.server_gone(core, "b", TS)
    seq = core.seq
    assert target.server_gone(core, "b", TS) == []
    assert core.seq == seq


@pytest.mark.parametrize("server", ["a", "b"])
def test_two_replicas_say_the_same_as_one_chat(server: str) -> None:
    """Feed two replicas one log; each server's clients hear what one server would say."""
    log = [(("a", 1), {"type": "join", "room": "lobby", "user": "alice"}),
           (("b", 1), {"type": "join", "room": "lobby", "user": "bob"}),
           (("b", 1), {"type": "message", "text": "hi", "id": 4}),
           (("a", 1), {"type": "whisper", "to": "bob", "text": "psst"})]
    single = ChatCore(epoch="e")
    replica = ChatCore(epoch="e")
    said, heard = [], []
    for conn in (("a", 1), ("b", 1)):
        said += single.connect(conn)
        heard += target.for_this_server(replica.connect(conn), server)
    for conn, request in log:
        line = json.dumps(request).encode()
        said += single.receive(conn, line, TS)
        heard += target.for_this_server(replica.receive(conn, line, TS), server)
    expected = expected_for(said, server)
    assert heard == expected


def expected_for(outputs: list, server: str) -> list:  # type: ignore[type-arg]
    """What ``server``'s clients get from one server's outputs: the reference, inline."""
    kept = []
    for output in outputs:
        if isinstance(output, Reply):
            if output.to[0] == server:
                kept.append(Reply(output.to[1], output.message))
        else:
            own = output.own
            kept.append(Broadcast(tuple(n for s, n in output.to if s == server),
                                  output.message, output.room,
                                  (own[0][1], own[1]) if own and own[0][0] == server else None))
    return kept
