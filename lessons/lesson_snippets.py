"""The lesson READMEs are executable: every code block in them is checked.

Theory of operation
-------------------
A README teaches with a few code blocks, and a block no test runs is a block
that rots. ``blocks(readme)`` reads a README's fenced blocks; the fence's
info string says how each is checked, and ``test_lesson_readmes.py`` checks
every block of every README under ``lessons/``:

``python``
    Run as a script (``python -c``) from the repository root with a timeout;
    it must exit 0. State facts with ``assert``, so the block checks what it
    claims.
``python excerpt=PATH``
    Code quoted from PATH (relative to the repository root). Its lines,
    dedented, must equal a run of lines of PATH, dedented: an excerpt cannot
    drift from the code it quotes.
``sh``
    One command per line, run in order from the repository root. No shell:
    a line is split the way a shell would split it, leading ``NAME=value``
    words set the environment, ``python`` is this interpreter and
    ``chat-sync`` is ``python -m chat_sync``. ``HOME`` is a fresh temporary
    directory for each README, so ``~`` (which ``lesson_target`` expands)
    and ``chat-sync course start`` leave the real one alone. Each must
    exit 0, or the status its comment names: ``# fails (exit 1) until ...``.
    A command with ``--port 0`` starts a server; it must print
    ``listening on HOST:PORT``, the word ``PORT`` in the README's later
    commands means that port, and after the README's last command the
    server gets SIGTERM and must exit 0.
``output``
    Exactly what the block before it printed on stdout: the ``python``
    block, or the last command of the ``sh`` block.
``transcript core`` and ``transcript server=PATH``
    A conversation, replayed. ``NAME --> LINE`` is a line client NAME sends;
    ``NAME <-- LINE`` is the next line NAME must receive. ``core`` replays it
    against ``chat_sync.rooms.ChatCore`` with no socket at all, the clock
    standing at ``TRANSCRIPT_NOW``, and then checks that nobody was sent a
    line the transcript does not show. ``server=PATH`` starts PATH (a script,
    or a module name for ``python -m``) with ``--port 0`` and talks to it over
    TCP; the server must greet each connection with one line. Every client
    connects before the first step, in order of first mention; its first
    line (greeting, welcome) is dropped unless its first step receives it.
    A line that is a JSON object is compared as JSON without ``ts``,
    ``version`` and ``epoch`` (they vary); any other line as text.
``mermaid``
    A diagram, drawn where the README is shown (GitHub renders Mermaid). It
    opens with a ``title:`` in ``---`` front matter, then a diagram type
    this module knows (``sequenceDiagram``, ``flowchart`` with a direction,
    ``stateDiagram-v2``); every line must be a statement of that type, and
    brackets and quotes must pair up on each line. ``test_lesson_readmes``
    lists the diagrams the course promises, by README and title.

Any other block fails the check: say it in prose, or make it one of these.
Subprocesses run without ``CHAT_SYNC_LESSON`` (they use the reference
solutions) and with the repository root on ``PYTHONPATH``, as if
``pip install -e .`` had been run.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
KINDS = ("python", "sh", "output", "transcript", "mermaid")
TIMEOUT_S = 20.0             # one snippet, one command, one server start
TRANSCRIPT_NOW = 1795600000.0

_FENCE = re.compile(r"^([ \t]*)```(\S*)[ \t]*(.*?)\n(.*?)^\1```[ \t]*$", re.S | re.M)
_STEP = re.compile(r"^(\w+) (-->|<--) (.*)$")
_READY = re.compile(r"^listening on (\S+):(\d+)$")
_EXIT = re.compile(r"#.*\(exit (\d+)\)")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a README."""

    readme: Path
    line: int          # of the opening fence, 1-based
    kind: str          # the info string's first word: python, sh, ...
    options: str       # the rest of the info string: "excerpt=PATH", "core", ...
    text: str          # the body, ending in a newline

    def __str__(self) -> str:
        where = self.readme.relative_to(LESSONS) if LESSONS in self.readme.parents else self.readme
        return f"{where.as_posix()}:{self.line}"


def blocks(readme: Path) -> list[Block]:
    """Every fenced block of ``readme``, in order."""
    text = readme.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        indent, kind, options, body = match.groups()
        if indent:                                  # a block inside a list item
            body = "".join(line.removeprefix(indent) for line in body.splitlines(True))
        found.append(Block(readme, line, kind, options, body))
    return found


def readmes() -> list[Path]:
    """The course map and every lesson's README."""
    return [LESSONS / "README.md", *sorted(LESSONS.glob("[0-9][0-9]_*/README.md"))]


def problems(readme: Path) -> list[str]:
    """Blocks of ``readme`` that no check would run, described; empty when all is well."""
    found: list[str] = []
    fences = sum(1 for line in readme.read_text(encoding="utf-8").splitlines()
                 if line.lstrip().startswith("```"))
    if fences != 2 * len(blocks(readme)):
        found.append(f"{readme}: {fences} fence lines make no {fences // 2} blocks; "
                     "is one unclosed, or indented unlike its pair?")
    previous: Block | None = None
    for block in blocks(readme):
        if block.kind not in KINDS:
            found.append(f"{block}: ```{block.kind} is not checked (use one of {KINDS})")
        elif block.kind == "output" and (previous is None or previous.kind not in ("python", "sh")
                                         or previous.options):
            found.append(f"{block}: an output block must follow a python or sh block")
        elif block.kind == "python" and block.options and not block.options.startswith(
                "excerpt="):
            found.append(f"{block}: unknown python option {block.options!r}")
        elif block.kind == "transcript" and not (block.options == "core"
                                                 or block.options.startswith("server=")):
            found.append(f"{block}: a transcript needs 'core' or 'server=PATH'")
        elif block.kind == "mermaid":
            found += mermaid_problems(block)
        previous = block
    return found


def output_after(block: Block) -> Block | None:
    """The ``output`` block right after ``block``, if there is one."""
    following = blocks(block.readme)
    for index, candidate in enumerate(following[:-1]):
        if candidate == block and following[index + 1].kind == "output":
            return following[index + 1]
    return None


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every snippet: no CHAT_SYNC_LESSON, the package importable."""
    env = {k: v for k, v in os.environ.items() if k != "CHAT_SYNC_LESSON"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


# -- python --------------------------------------------------------------------
def check_python(block: Block) -> None:
    """Run a ``python`` block; it must exit 0 and print its ``output`` block, if any."""
    result = subprocess.run([sys.executable, "-c", block.text], cwd=ROOT, env=environment(),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{block} exited {result.returncode}:\n{result.stderr}"
    expected = output_after(block)
    if expected is not None:
        assert result.stdout == expected.text, f"{block} printed:\n{result.stdout}"


def check_excerpt(block: Block) -> None:
    """The excerpt's lines, dedented, are a run of its source's lines, dedented."""
    path = ROOT / block.options.removeprefix("excerpt=")
    assert path.is_file(), f"{block}: no file {path}"
    excerpt = textwrap.dedent(block.text).splitlines()
    source = path.read_text(encoding="utf-8").splitlines()
    for start in range(len(source) - len(excerpt) + 1):
        run = "\n".join(source[start:start + len(excerpt)])
        if textwrap.dedent(run).splitlines() == excerpt:
            return
    raise AssertionError(f"{block}: the excerpt is not in {path.relative_to(ROOT)} verbatim "
                         "(the code changed? copy it again)")


# -- processes -----------------------------------------------------------------
class Lines:
    """Read a pipe on a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def readline(self, timeout: float = TIMEOUT_S) -> str | None:
        """The next line, or None at end of stream; AssertionError after ``timeout`` s."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; so far {self.seen}") from None
        if line is not None:
            self.seen.append(line)
        return line


@dataclass
class Server:
    process: subprocess.Popen[str]
    stdout: Lines
    stderr: IO[str]
    port: int


@contextmanager
def running_server(argv: list[str], env: dict[str, str]) -> Iterator[Server]:
    """Start a server that prints ``listening on HOST:PORT``; SIGTERM it on exit.

    The server must exit 0 on SIGTERM (a graceful stop), within the timeout.
    """
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True)
        try:
            stdout = Lines(process.stdout)   # type: ignore[arg-type]
            ready = stdout.readline()
            match = _READY.match((ready or "").strip())
            if match is None:
                process.kill()
                process.wait()
                stderr.seek(0)
                raise AssertionError(f"{shlex.join(argv)} did not say 'listening on HOST:PORT'; "
                                     f"said {ready!r}; stderr:\n{stderr.read()}")
            yield Server(process, stdout, stderr, int(match.group(2)))
            process.send_signal(signal.SIGTERM)
            status = process.wait(TIMEOUT_S)
            stderr.seek(0)
            assert status == 0, f"{shlex.join(argv)} exited {status} on SIGTERM:\n{stderr.read()}"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


# -- sh ------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    status: int          # the exit status the README promises
    server: bool         # ``--port 0``: runs until SIGTERM


def parse_command(line: str, port: int | None) -> Command:
    """One line of an ``sh`` block, with ``PORT`` replaced by ``port``."""
    expected = _EXIT.search(line)
    words = shlex.split(line, comments=True)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words, f"no command in {line!r}"
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "chat-sync":
        words[:1] = [sys.executable, "-m", "chat_sync"]
    if "PORT" in words:
        assert port is not None, f"{line!r} says PORT, but no server was started before it"
        words = [str(port) if word == "PORT" else word for word in words]
    server = "--port=0" in words or any(a == "--port" and b == "0"
                                        for a, b in zip(words, words[1:]))
    return Command(words, env, int(expected.group(1)) if expected else 0, server)


def check_shell(readme: Path) -> None:
    """Run every ``sh`` block of ``readme`` in order, servers and all; check ``output`` blocks."""
    port: int | None = None
    with ExitStack() as servers:
        home = servers.enter_context(tempfile.TemporaryDirectory(prefix="home-"))
        for block in blocks(readme):
            if block.kind != "sh":
                continue
            stdout = ""
            for line in block.text.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                command = parse_command(line, port)
                env = environment({"HOME": home, **command.env})
                if command.server:
                    server = servers.enter_context(running_server(command.argv, env))
                    port, stdout = server.port, ""
                    continue
                result = subprocess.run(command.argv, cwd=ROOT, env=env,
                                        capture_output=True, text=True, timeout=TIMEOUT_S)
                assert result.returncode == command.status, (
                    f"{block}: {line!r} exited {result.returncode}, not {command.status}:\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
                stdout = result.stdout
            expected = output_after(block)
            if expected is not None:
                assert stdout == expected.text, f"{block}: the last command printed:\n{stdout}"


# -- mermaid -------------------------------------------------------------------
_FRONT = re.compile(r"\A---\ntitle: (\S.*)\n---\n")
_ID = r"[A-Za-z_]\w*"
_SEQUENCE = [re.compile(pattern) for pattern in (
    rf"(participant|actor) ({_ID})( as \S.*)?",
    rf"({_ID}) ?(-->>|->>|-->|->|--x|-x|--\)|-\))[+-]?({_ID}): ?\S.*",
    rf"Note (over|left of|right of) ({_ID})(, ?({_ID}))?: ?\S.*",
    r"(loop|alt|else|opt|par|and|rect|critical|break)( \S.*)?",
    rf"(end|autonumber|(de)?activate {_ID})",
)]
_STATE = [re.compile(pattern) for pattern in (
    rf"({_ID}|\[\*\]) --> ({_ID}|\[\*\])(: ?\S.*)?",
    rf'state "[^"]+" as {_ID}',
    rf"{_ID}: ?\S.*",
    rf"note (left|right) of {_ID}: ?\S.*",
)]
_DIRECTIONS = ("TD", "TB", "BT", "LR", "RL")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def mermaid_title(block: Block) -> str | None:
    """The ``title:`` of a mermaid block's front matter, or None."""
    match = _FRONT.match(block.text)
    return match.group(1).strip() if match else None


def mermaid_problems(block: Block) -> list[str]:
    """What is wrong with the shape of a mermaid block; empty when all is well."""
    match = _FRONT.match(block.text)
    if block.options:
        return [f"{block}: a mermaid block takes no options ({block.options!r})"]
    if match is None:
        return [f"{block}: a diagram opens with ---, title: ..., --- (its name in the tests)"]
    lines = [line.strip() for line in block.text[match.end():].splitlines()
             if line.strip() and not line.strip().startswith("%%")]
    if not lines:
        return [f"{block}: an empty diagram"]
    kind, *rest = lines[0].split()
    found = [f"{block}: {line!r}: brackets or quotes do not pair up"
             for line in lines[1:] if not _balanced(line)]
    if kind == "sequenceDiagram" and not rest:
        grammar = _SEQUENCE
    elif kind == "stateDiagram-v2" and not rest:
        grammar = _STATE
    elif kind == "flowchart" and rest in ([d] for d in _DIRECTIONS):
        return found
    else:
        return [f"{block}: {lines[0]!r} is not a diagram type this check knows "
                "(sequenceDiagram, flowchart TD/LR/..., stateDiagram-v2)"]
    found += [f"{block}: {line!r} is not a {kind} statement"
              for line in lines[1:] if not any(rule.fullmatch(line) for rule in grammar)]
    if kind == "sequenceDiagram":
        declared = {m.group(2) for m in map(_SEQUENCE[0].fullmatch, lines) if m}
        for line in lines[1:]:
            arrow = _SEQUENCE[1].fullmatch(line)
            if arrow and declared and not {arrow.group(1), arrow.group(3)} <= declared:
                found.append(f"{block}: {line!r} names a participant not declared")
    return found


def _balanced(line: str) -> bool:
    if line.count('"') % 2:
        return False
    stack: list[str] = []
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in _PAIRS:
            stack.append(_PAIRS[char])
        elif char in _PAIRS.values() and (not stack or stack.pop() != char):
            return False
    return not stack


# -- transcripts ---------------------------------------------------------------
def same_line(got: str, expected: str) -> bool:
    """JSON objects compare without ``ts``, ``version`` and ``epoch``; other lines as text."""
    try:
        want = json.loads(expected)
    except ValueError:
        return got == expected
    if not isinstance(want, dict):
        return got == expected
    try:
        have = json.loads(got)
    except ValueError:
        return False
    def comparable(message: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if k not in ("ts", "version", "epoch")}
    return isinstance(have, dict) and comparable(have) == comparable(want)


def steps(block: Block) -> list[tuple[str, str, str]]:
    """The (name, arrow, line) steps of a transcript."""
    found = []
    for line in block.text.splitlines():
        match = _STEP.match(line)
        assert match, f"{block}: not a transcript step: {line!r}"
        found.append((match.group(1), match.group(2), match.group(3)))
    return found


def check_transcript(block: Block) -> None:
    """Replay a ``transcript core`` or ``transcript server=PATH`` block."""
    if block.options == "core":
        _replay_core(block)
        return
    target = block.options.removeprefix("server=")
    argv = [sys.executable, *([target] if target.endswith(".py") else ["-m", target]),
            "--port", "0"]
    with running_server(argv, environment()) as server:
        _replay_tcp(block, server.port)


def _replay_core(block: Block) -> None:
    from chat_sync import protocol
    from chat_sync.rooms import ChatCore, Output, deliveries

    core = ChatCore()
    inbox: dict[str, collections.deque[str]] = {}

    def deliver(outputs: list[Output]) -> None:
        for output in outputs:
            for name, message in deliveries(output):
                inbox[str(name)].append(protocol.encode(message).decode("utf-8").rstrip("\n"))

    conversation = steps(block)
    for name, _, _ in conversation:
        if name not in inbox:
            inbox[name] = collections.deque()
            deliver(core.connect(name))
    greeted = set()
    for name, arrow, line in conversation:
        if name not in greeted:
            greeted.add(name)
            if arrow == "-->":
                inbox[name].popleft()
        if arrow == "-->":
            deliver(core.receive(name, line.encode("utf-8"), TRANSCRIPT_NOW))
            continue
        assert inbox[name], f"{block}: {name} expected {line} but was sent nothing"
        got = inbox[name].popleft()
        assert same_line(got, line), f"{block}: {name} expected\n  {line}\ngot\n  {got}"
    for name, unread in inbox.items():
        assert not unread, f"{block}: {name} was also sent {list(unread)}"


def _replay_tcp(block: Block, port: int) -> None:
    peers: dict[str, tuple[socket.socket, IO[bytes]]] = {}
    greetings: dict[str, str | None] = {}
    try:
        for name, _, _ in steps(block):
            if name in peers:
                continue
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S / 4)
            peers[name] = (sock, sock.makefile("rb"))
            greetings[name] = _read_line(peers[name][1], block, name)
        for name, arrow, line in steps(block):
            sock, reader = peers[name]
            greeting, greetings[name] = greetings[name], None
            if arrow == "-->":
                sock.sendall(line.encode("utf-8") + b"\n")
                continue
            got = greeting if greeting is not None else _read_line(reader, block, name)
            assert same_line(got, line), f"{block}: {name} expected\n  {line}\ngot\n  {got}"
    finally:
        for sock, reader in peers.values():
            reader.close()
            sock.close()


def _read_line(reader: IO[bytes], block: Block, name: str) -> str:
    line = reader.readline()
    assert line.endswith(b"\n"), f"{block}: {name}'s connection ended; last bytes {line!r}"
    return line.decode("utf-8").rstrip("\r\n")
