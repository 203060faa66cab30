"""Measuring helpers every scenario shares: the server as a subprocess, its CPU and RSS,
pinning to CPUs, the open-file limit, percentiles and the median and range of rounds.

A server's CPU time is read from ``/proc/PID/task/*/schedstat``, nanoseconds on
the CPU summed over its threads, not from ``/proc/PID/stat``, whose 10 ms ticks
round a small run's cost to 0 or to one tick (a share of 2.56 of one core in a
run of 4 ms). A thread that has ended no longer counts: the servers' threads
live as long as they do.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import resource
import selectors
import statistics
import subprocess
import sys
from typing import Any

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
        return cpu_seconds(self.proc.pid)

    def pin(self, cpu: int | None) -> None:
        """Run every thread of the server on ``cpu`` (threads it starts later inherit it)."""
        if cpu is None:
            return
        for task in glob.glob(f"/proc/{self.proc.pid}/task/*"):
            try:
                os.sched_setaffinity(int(task.rsplit("/", 1)[1]), {cpu})
            except OSError:
                pass                        # a thread that has just ended

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


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid``'s live threads have used, to the nanosecond."""
    total_ns = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as schedstat:
                total_ns += int(schedstat.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass                            # a thread that has just ended
    if total_ns:
        return total_ns / 1e9
    with open(f"/proc/{pid}/stat") as stat:     # no schedstat: the kernel's ticks
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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



# -- where the processes run ------------------------------------------------------
def add_run_arguments(parser: argparse.ArgumentParser, *, log: bool = True) -> None:
    """The flags of every pinned scenario: ``--no-pin``, and ``--no-log`` where
    chat_sync runs with its chat log (as a real server does) unless told."""
    if log:
        parser.add_argument("--no-log", action="store_true",
                            help="run chat_sync without its chat log")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the server and the generator to CPUs of their own")


@dataclasses.dataclass
class Pinning:
    """Which CPU the generator (this thread) and the server under test run on.

    With two CPUs or more, each gets its own, so neither takes the other's
    time and the server's CPU per delivery is its own; on one CPU both
    share it, and ``describe`` says so.
    """

    generator: int | None
    server: int | None
    saved: set[int] = dataclasses.field(default_factory=set, repr=False)

    @classmethod
    def choose(cls, enabled: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2:
            return cls(None, None)
        return cls(cpus[0], cpus[1])

    def describe(self) -> str:
        if self.server is None:
            cpus = sorted(os.sched_getaffinity(0))
            why = "one CPU" if len(cpus) < 2 else "--no-pin"
            return f"not pinned ({why}): the generator and the server share CPUs {cpus}"
        return f"generator on CPU {self.generator}, server on CPU {self.server}"

    def __enter__(self) -> Pinning:
        self.saved = os.sched_getaffinity(0)
        if self.generator is not None:
            os.sched_setaffinity(0, {self.generator})
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.sched_setaffinity(0, self.saved)


# -- the open-file limit ---------------------------------------------------------
class FileLimit(Exception):
    """Not enough file descriptors for the run; the text says which ``ulimit`` to use."""


def raise_file_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; FileLimit if ``needed`` is more.

    Servers started afterwards inherit the raised limit. Returns the soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise FileLimit(f"{needed} open files needed, the hard limit is {hard}: "
                        f"run 'ulimit -n {needed}' (as root, or raise the hard limit) first")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


# -- rounds --------------------------------------------------------------------------
def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """The median and range of one figure over the rounds."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b
