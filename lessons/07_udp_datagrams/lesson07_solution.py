"""Lesson 07 reference solution: ``DedupWindow``.

The package's version is in ``chat_sync/receiving.py``: the same, plus a
counter of the duplicates it dropped and ``in_window``, which the server
asks first so that an id far ahead is refused rather than let drag the
floor up.
"""
from __future__ import annotations


class DedupWindow:
    """Which request ids of one client were seen already, in bounded memory."""

    def __init__(self, size: int) -> None:
        """Nothing seen yet."""
        self.size = size
        self.floor = 0                  # this id and every one below it count as seen
        self._above: set[int] = set()   # ids seen above the floor

    def __len__(self) -> int:
        """How many ids above ``floor`` are remembered."""
        return len(self._above)

    def seen(self, request_id: int) -> bool:
        """Mark ``request_id`` seen; True if it already was."""
        if request_id <= self.floor or request_id in self._above:
            return True
        if request_id > self.floor + self.size:
            self.floor = request_id - self.size
            still_above = set()
            for old_id in self._above:
                if old_id > self.floor:
                    still_above.add(old_id)
            self._above = still_above
        self._above.add(request_id)
        while self.floor + 1 in self._above:
            self.floor += 1
            self._above.remove(self.floor)
        return False
