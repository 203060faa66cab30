"""Lesson 07: duplicate suppression, id by id against the package.

The package is the oracle: ``chat_sync.receiving.DedupWindow`` must answer
``seen`` as yours does, and keep the same floor and the same ids above it.
"""
from __future__ import annotations

import random

import pytest

from chat_sync import receiving
from lesson_target import load

target = load(__file__)


# -- DedupWindow ------------------------------------------------------------------------

def test_a_retransmitted_request_is_seen_once() -> None:
    window = target.DedupWindow(8)
    assert [window.seen(rid) for rid in [1, 2, 2, 3, 1, 3]] == [False, False, True, False,
                                                                 True, True]


def test_ids_in_order_keep_nothing_above_the_floor() -> None:
    window = target.DedupWindow(4)
    for rid in range(1, 1001):
        assert window.seen(rid) is False
    assert window.floor == 1000 and len(window) == 0


def test_an_id_far_ahead_moves_the_floor_and_late_ids_count_as_seen() -> None:
    window = target.DedupWindow(4)
    assert window.seen(1) is False and window.seen(3) is False
    assert window.seen(10) is False              # floor moves to 10 - 4 = 6
    assert window.floor == 6 and len(window) == 1
    assert window.seen(2) is True                # never came, but now too late
    assert window.seen(5) is True
    assert window.seen(7) is False
    assert window.floor == 7


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [1, 4, 32])
def test_dedup_window_agrees_with_the_package(seed: int, size: int) -> None:
    rng = random.Random(seed)
    mine = target.DedupWindow(size)
    package = receiving.DedupWindow(size)
    highest = 0
    for step in range(500):
        roll = rng.random()
        if roll < 0.5:
            rid = highest + 1                        # the next request
        elif roll < 0.8:
            rid = rng.randint(max(1, highest - 2 * size), highest + 1)   # a retransmission
        else:
            rid = highest + rng.randint(1, 3 * size)                     # after losses
        highest = max(highest, rid)
        assert mine.seen(rid) == package.seen(rid), f"step {step}: seen({rid})"
        assert (mine.floor, len(mine)) == (package.floor, len(package)), f"step {step}"
        assert len(mine) <= size
