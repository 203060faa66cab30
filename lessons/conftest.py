"""Rules for every lesson test: a timeout on each, and the lesson kit importable.

``lesson_target`` and ``lesson_snippets`` live here, in ``lessons/``; this
folder goes on ``sys.path`` so a lesson's tests can ``from lesson_target
import load`` whatever folder they sit in.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parent
DEFAULT_TIMEOUT_S = 30

if str(LESSONS) not in sys.path:
    sys.path.insert(0, str(LESSONS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every lesson test without a ``timeout`` marker ``timeout(30)``.

    A hung socket then fails one test instead of the whole run. Only tests
    under ``lessons/`` are touched; the rest of the suite has its own rules.
    """
    for item in items:
        if LESSONS in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT_S))
