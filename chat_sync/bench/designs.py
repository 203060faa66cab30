"""The servers a comparison runs, started and pinned alike: chat_sync and its baselines.

- ``chat_sync``: ``python -m chat_sync.tcp_server`` with the per-client
  defences a load from one address trips lifted (``no_limits``), and its
  chat log on unless asked otherwise.
- ``raw``, ``asyncio``: the baselines of ``baselines``, served by
  ``python -m chat_sync.bench raw-relay`` and ``asyncio-chat``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from .baselines import SERVERS
from .measure import Pinning, ServerProcess, no_limits

DESIGNS = ("chat_sync", *SERVERS)


def start(design: str, max_clients: int, pinning: Pinning, log_dir: str | None = None,
          extra: Sequence[str] = ()) -> ServerProcess:
    """Start ``design`` on a free port, pinned to the server's CPU; ``log_dir``: chat log on.

    ``extra``: more chat_sync flags (``--bus URL``).
    """
    if design == "chat_sync":
        args = ["--max-clients", str(max_clients), *no_limits(), "--log-level", "warning",
                *extra]
        if log_dir is not None:
            args += ["--log-file", os.path.join(log_dir, "chat.log")]
        server = ServerProcess("chat_sync.tcp_server", *args)
    else:
        server = ServerProcess("chat_sync.bench", SERVERS[design])
    server.pin(pinning.server)
    return server
