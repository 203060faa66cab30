"""``--workers N``: N server processes on one port, one chat through the bus.

One Python process runs one event loop on one core. To use every core of a
machine, start several servers on the same port with ``SO_REUSEPORT``: the
kernel spreads new connections over their listening sockets, and the bus
(``bus_url``) makes them one chat. The first process binds (so port 0 picks
one free port for all), then starts the others with the same settings and
that port; each is a whole server with its own loop. SIGINT or SIGTERM to
the first stops them all. Trade-off: a worker killed on its own is noticed
by the others through its heartbeat, like any server of a cluster, and not
restarted: a supervisor (systemd, a container runtime) is the place for that.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

CHILD_ENV = "CHAT_SYNC_WORKER"        # set in a worker started by the first process
STOP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0                # for a worker to say ``listening on``


def is_worker() -> bool:
    """True in a process that the first one started: it must not start more."""
    return os.environ.get(CHILD_ENV) == "1"


def start(count: int, port: int, argv: list[str]) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` more servers with the command line ``argv``, on ``port``.

    Returns once each has said ``listening on``, so the first one's own
    ready line means every worker is serving. Raises RuntimeError (after
    stopping them) if one exits or stays silent for ``READY_TIMEOUT_S``.
    """
    command = [sys.executable, "-m", "chat_sync.tcp_server", *argv, "--port", str(port)]
    env = {**os.environ, CHILD_ENV: "1"}
    started = [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE) for _ in range(count)]
    deadline = time.monotonic() + READY_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        for worker in started:
            assert worker.stdout is not None
            selector.register(worker.stdout, selectors.EVENT_READ, worker)
        waiting = len(started)
        while waiting:
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                stop(started)
                raise RuntimeError(f"a worker did not start within {READY_TIMEOUT_S:.0f} s")
            for key, _ in ready:
                line = key.fileobj.readline()   # type: ignore[union-attr]
                if not line.startswith(b"listening on"):
                    stop(started)
                    raise RuntimeError("a worker exited before it was serving")
                selector.unregister(key.fileobj)
                waiting -= 1
    return started


def stop(workers: list[subprocess.Popen[bytes]]) -> int:
    """Stop every worker gracefully; returns 0, or 1 if one did not end well."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    status = 0
    for worker in workers:
        try:
            code = worker.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
        status = status or (1 if code else 0)
    return status


def serve(server: Any, argv: list[str] | None, foreground: Callable[[Any], int]) -> int:
    """Run ``server`` with ``foreground``; with ``workers`` > 1, that many processes in all.

    ``server`` is a bound ``TcpServer``; ``argv`` its program's command line.
    """
    if server.config.workers == 1 or is_worker():
        return foreground(server)
    try:
        others = start(server.config.workers - 1, server.address[1],
                       sys.argv[1:] if argv is None else argv)
    except RuntimeError as exc:
        print(f"chat-sync: {exc}", file=sys.stderr)
        return 1
    status = foreground(server)
    return stop(others) or status
