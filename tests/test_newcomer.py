"""What a newcomer meets first: the README's course pointers, its install extras, its test tools."""
from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import setuptools
from helpers import StreamLines

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## ``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def setup_arguments(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What setup.py passes to ``setup()``, read by running it with ``setup`` replaced."""
    captured: dict[str, Any] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
            for requirement in requirements}


@pytest.mark.timeout(20)
def test_the_course_extra_installs_a_notebook_front_end_and_what_the_notebooks_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    extras = setup_arguments(monkeypatch)["extras_require"]
    course = requirement_names(extras["course"])
    assert course & {"notebook", "jupyterlab"}, course
    assert {"nbformat", "nbclient", "ipykernel", "matplotlib"} <= course
    # The test extra runs the same notebooks headless: it needs the same kernel side.
    assert {"nbformat", "nbclient", "ipykernel", "matplotlib"} <= requirement_names(extras["test"])


@pytest.mark.timeout(10)
def test_the_readme_says_where_the_course_starts_and_how_to_install_it() -> None:
    course = section("Learn by building it")
    assert "python3 -m pip install -e '.[course]'" in course
    links = re.findall(r"\]\(([^)#]+)\)", course)
    assert "lessons/README.md" in links and "notebooks/" in links, links
    for link in links:
        assert (ROOT / link).exists(), f"README links {link}, which does not exist"


@pytest.mark.timeout(10)
def test_the_readme_names_every_tool_the_tests_need_beyond_pip() -> None:
    tests = section("Tests")
    for tool in ("tmux", "tshark"):
        assert f"`{tool}`" in tests, f"the Tests section does not mention {tool}"


# -- A script's answers (--plain) ---------------------------------------------------------------
@pytest.fixture(params=["tcp", "udp"])
def any_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A server of each transport, as a program: ``(transport, port)``."""
    proc = subprocess.Popen([sys.executable, "-m", f"chat_sync.{request.param}_server",
                             "--port", "0"], cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = StreamLines(proc.stdout).readline(timeout=15)
        assert line is not None and line.startswith("listening on "), line
        yield request.param, int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(10)


def script(transport: str, port: int, lines: str) -> subprocess.CompletedProcess[str]:
    """``printf LINES | chat-sync X-client --user u --plain``, as a shell script runs it."""
    return subprocess.run([sys.executable, "-m", "chat_sync", f"{transport}-client", "--user", "u",
                           "--plain", "--port", str(port)], input=lines, cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=40)


@pytest.mark.timeout(60)
def test_a_script_gets_every_answer_and_exits_0(any_server: tuple[str, int]) -> None:
    done = script(*any_server, "x\n/who\n/msg u to myself\n/quit\n")
    assert done.returncode == 0, done
    out = done.stdout.splitlines()
    assert "[lobby] u: x" in out and "in lobby: u" in out and "*to u*: to myself" in out, out


@pytest.mark.timeout(60)
def test_the_readme_script_whose_request_is_refused_prints_why_and_exits_1(
        any_server: tuple[str, int]) -> None:
    """The README's example, run as pasted (with this server's port), over each transport."""
    transport, port = any_server
    example = next(block for block in re.findall(r"```sh\n(.*?)```", section(
        "Chat between two terminals"), re.S) if block.startswith("printf"))
    command = example.strip().replace("chat-sync tcp-client",
                                      f"{sys.executable} -m chat_sync {transport}-client")
    done = subprocess.run(["bash", "-c", f"{command} --port {port}"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=40)
    assert done.returncode == 1, done
    out = done.stdout.splitlines()
    assert "[lobby] u: hello" in out, out
    assert ("error bad_message: room: may hold only letters, digits, '_' and '-', not '!'"
            in out), out
