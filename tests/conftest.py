"""Suite-wide rules: every test has a timeout, so a hung socket fails one test, not CI."""
from __future__ import annotations

import pytest

DEFAULT_TIMEOUT_S = 30


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test that has no ``timeout`` marker of its own ``timeout(30)``.

    Tests still mark themselves explicitly where they touch sockets or
    processes; this hook is the net under the ones that forget.
    """
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT_S))
