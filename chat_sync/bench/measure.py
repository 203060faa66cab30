"""Measuring helpers every scenario shares: the server as a subprocess, RSS, CPU, percentiles."""
from __future__ import annotations

import dataclasses
import os
import selectors
import subprocess
import sys

from .. import config as cfg

RECV_BYTES = 256 * 1024


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- the server under test, as a subprocess -----------------------------------
class ServerProcess:
    """A server started with ``python -m MODULE ... --port 0``; knows its port and pid."""

    def __init__(self, module: str, *args: str, ready_timeout: float = 20.0,
                 stderr_path: str | None = None) -> None:
        """Start it and wait for its ``listening on`` line; ``stderr_path`` keeps its log."""
        self.stderr_path = stderr_path
        stderr = open(stderr_path, "w") if stderr_path is not None else None
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", module, *args, "--port", "0"],
                                         stdout=subprocess.PIPE, stderr=stderr, text=True)
        finally:
            if stderr is not None:
                stderr.close()              # the child has its own copy
        assert self.proc.stdout is not None
        line = self._readline(ready_timeout)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{module} did not start: {line!r}")
        host, _, port = line.split()[-1].rpartition(":")
        self.address = (host, int(port))

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
        selector.close()
        return self.proc.stdout.readline().strip() if ready else ""

    def log_lines(self) -> list[str]:
        """What it wrote on stderr so far (with ``stderr_path``); all of it once stopped."""
        if self.stderr_path is None:
            return []
        with open(self.stderr_path, encoding="utf-8", errors="replace") as log_file:
            return log_file.read().splitlines()

    def rss_kib(self) -> int:
        return read_rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def no_limits() -> list[str]:
    """TCP server flags that lift the per-client defences a load from one address trips.

    ``fanout`` and ``connections`` measure capacity: thousands of connections
    from 127.0.0.1, each sending as fast as its echoes come back, all joined
    only once every one is connected. Defences a server does not have yet
    are skipped, so the bench runs against servers before and after them.
    """
    fields = {f.name for f in dataclasses.fields(cfg.TcpServerConfig)}
    flags: list[str] = []
    for name in ("max_clients_per_ip", "rate_limit_per_s", "join_timeout_s"):
        if name in fields:
            flags += ["--" + name.replace("_", "-"), "0"]
    return flags


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]

