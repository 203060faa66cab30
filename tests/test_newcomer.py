"""What a newcomer meets first: the README's course pointers, its install extras, its test tools."""
from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest
import setuptools

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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
