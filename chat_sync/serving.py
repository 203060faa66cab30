"""Running a chat server, TCP or UDP: in a background thread, or as the program.

Theory of operation
-------------------
Both servers (``tcp_server.TcpServer``, ``udp_server.UdpServer``) are bound
when they are built, so their ``address`` is known before they serve; then
``serve_forever`` runs their loop in the calling thread until ``stop``,
which any thread or a signal handler may call. That is all this module
needs of a server (``Server``), and it runs one in one of two ways:

- ``ServerHandle``: in a daemon thread, for tests, notebooks, lessons and
  programs that embed a server (each server module's ``serve`` makes one).
  ``stop`` asks the loop to end and waits for its thread.
- as the program, ``chat-sync tcp-server`` or ``chat-sync udp-server``: its
  ``main`` calls ``configure`` (the settings from the command line, then
  the operational log on stderr), builds the server, and hands it to
  ``run_in_foreground``, which serves in the main thread until SIGINT
  (Ctrl-C) or SIGTERM stops the loop gracefully. Once bound, the program
  prints ``listening on HOST:PORT`` on stdout: with ``--port 0`` that line
  is how a parent process (the bench, the tests) learns the port, and that
  the server is ready. The loop also logs ``listening on …`` on stderr: each
  stream says it once, on purpose, stdout for a parent process and stderr
  for the operational log, which a stdout redirect would otherwise lose.
"""
from __future__ import annotations

import gc
import logging
import resource
import signal
import socket
import ssl
import sys
import threading
from types import TracebackType
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from . import config as cfg
from .logs import log_to_stderr

log = logging.getLogger("chat_sync.serving")

SPARE_DESCRIPTORS = 64      # beyond one per client: the listener, log files, the wake-up pair
ACCEPTS_PER_TURN = 64       # bound the time one turn spends on a connection storm


class Server(Protocol):
    """What it takes to run a server: an address, a loop, and a way to stop it."""

    @property
    def address(self) -> tuple[str, int]: ...

    def serve_forever(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


class ServerHandle(Generic[S]):
    """A server running in a background thread: ``port``, ``stop()``, a context manager.

    ``name`` names the thread. The server is ``server``; ``host`` and
    ``port`` are where it listens.
    """

    def __init__(self, server: S, name: str) -> None:
        self.server = server
        self.host, self.port = server.address
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully and wait for the loop thread; raises if it does not end."""
        self.server.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"server thread did not stop within {timeout} s")

    def __enter__(self) -> ServerHandle[S]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


ServerConfig = TypeVar("ServerConfig", cfg.TcpServerConfig, cfg.UdpServerConfig)


def accepted(listener: socket.socket, on_error: Callable[[OSError], None]
             ) -> Iterator[tuple[socket.socket, Any]]:
    """The connections waiting on a non-blocking ``listener``: at most
    ``ACCEPTS_PER_TURN``, so that a storm of connects cannot starve the sockets
    already open. An accept that fails (EMFILE and friends) goes to ``on_error``
    and ends the turn's accepting: the caller keeps serving the others."""
    for _ in range(ACCEPTS_PER_TURN):
        try:
            sock, addr = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            on_error(exc)
            return
        yield sock, addr


def configure(cls: type[ServerConfig], argv: list[str] | None, *, prog: str,
              description: str) -> ServerConfig | None:
    """A server program's first steps: its settings from ``argv``, then its log.

    The operational log goes to stderr at the ``log_level`` setting, through
    a bounded queue and a writer thread, so that a stderr nobody reads never
    stalls the loop (the chat log is separate; both are in ``logs``). Returns None after saying on stderr what
    is wrong with a setting: the program then exits with 2.
    """
    try:
        config = cfg.from_command_line(cls, argv, prog=prog, description=description)
    except cfg.ConfigError as exc:
        print(f"chat-sync: {exc}", file=sys.stderr)
        return None
    log_to_stderr(config.log_level)     # never blocks the loop (see logs)
    return config


def run_in_foreground(server: Server) -> int:
    """Serve in this thread until SIGINT or SIGTERM; returns the exit code, 0.

    Prints ``listening on HOST:PORT`` first (see the module comment).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    # A signal that lands just before the loop enters select() would run its
    # Python handler only once select() returns, which with no deadline is
    # never: so the C-level handler also writes to the loop's wake-up pair.
    wakeup_fileno = getattr(server, "wakeup_fileno", None)
    if wakeup_fileno is not None:
        signal.set_wakeup_fd(wakeup_fileno(), warn_on_full_buffer=False)
    print(f"listening on {server.address[0]}:{server.address[1]}", flush=True)
    # What the program has built by now (its modules, settings, tables) lives as
    # long as it does: frozen, out of the cyclic collector's sight, so a full
    # collection walks only what serving adds. It walked all 34,000 objects, a
    # 16-22 ms pause in the middle of the chat (bench latency, 50 clients).
    gc.freeze()
    server.serve_forever()
    return 0


def fit_descriptor_limit(max_clients: int) -> None:
    """Raise the soft open-file limit toward the hard one so it holds ``max_clients``.

    Where the hard limit is too low, warn naming both numbers: accepts will
    then fail (and pause) before ``max_clients`` is reached.
    """
    needed = max_clients + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open-file limit %d (hard limit %s) cannot hold max_clients %d and %d "
                    "spare descriptors: raise it (ulimit -n %d) or lower max_clients",
                    soft, "unlimited" if hard == resource.RLIM_INFINITY else hard,
                    max_clients, SPARE_DESCRIPTORS, needed)


def startup_failure(exc: cfg.ConfigError | OSError, config: ServerConfig) -> tuple[str, int]:
    """What a server program says when it cannot start, and its exit code.

    A bad setting is 2; a file or the address it cannot use is 1, named.
    """
    if isinstance(exc, cfg.ConfigError):
        return str(exc), 2
    cert, key = getattr(config, "tls_cert", None), getattr(config, "tls_key", None)
    if isinstance(exc, ssl.SSLError):           # before OSError: it is one
        return f"cannot use TLS certificate {cert}: {exc.reason or exc}", 1
    if exc.filename is not None and exc.filename in (cert, key):
        return f"cannot read TLS file {exc.filename}: {exc.strerror}", 1
    if exc.filename is not None:                # the chat log's file, not the socket
        return f"cannot open chat log {exc.filename}: {exc.strerror}", 1
    return f"cannot listen on {config.host}:{config.port}: {exc.strerror}", 1


def run_program(cls: type[ServerConfig], build: Callable[[ServerConfig], Server],
                argv: list[str] | None, *, prog: str, description: str,
                serve: Callable[[Server], int] = run_in_foreground) -> int:
    """A server program's ``main``: settings, log, ``build(config)``, serve until a signal.

    Returns the exit code: 0 after a graceful stop, 2 for a bad setting, 1
    for a file or an address the server cannot use (``startup_failure``).
    """
    config = configure(cls, argv, prog=prog, description=description)
    if config is None:
        return 2
    try:
        server = build(config)
    except (cfg.ConfigError, OSError) as exc:
        text, code = startup_failure(exc, config)
        print(f"chat-sync: {text}", file=sys.stderr)
        return code
    return serve(server)
