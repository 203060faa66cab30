"""The course kit keeps its promises: lessons are laid out alike, and test the student's code.

Each lesson's own tests run with the rest of the suite (pytest collects
``lessons/``), against the reference solutions. Here they run once more, in
a subprocess with ``CHAT_SYNC_LESSON=exercise``, against the untouched
exercise stubs, where every one of them must fail: a lesson test that passes
without the student's code checks nothing the student wrote.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
LESSON_DIRS = sorted(LESSONS.glob("[0-9][0-9]_*"))
sys.path.insert(0, str(LESSONS))

import lesson_snippets  # noqa: E402
import lesson_target  # noqa: E402


def number(folder: Path) -> str:
    return folder.name[:2]


def stub_problems(path: Path) -> list[str]:
    """Functions of an exercise file that are not a docstring and ``raise NotImplementedError``."""
    found = []
    functions = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return [f"{path.name} defines no function to write"]
    for function in functions:
        body = function.body
        docstring = ast.get_docstring(function)
        raised = body[-1] if body else None
        is_stub = (len(body) == 2 and docstring is not None and isinstance(raised, ast.Raise)
                   and isinstance(raised.exc, ast.Call)
                   and isinstance(raised.exc.func, ast.Name)
                   and raised.exc.func.id == "NotImplementedError"
                   and len(raised.exc.args) == 1
                   and isinstance(raised.exc.args[0], ast.Constant)
                   and str(raised.exc.args[0].value).startswith("exercise: "))
        if not is_stub:
            found.append(f"{path.name}: {function.name} is not a docstring followed by "
                         "raise NotImplementedError(\"exercise: ...\")")
    return found


def public_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")}


def test_lessons_are_numbered_from_01_without_gaps() -> None:
    numbers = [int(number(folder)) for folder in LESSON_DIRS]
    assert numbers == list(range(1, len(numbers) + 1)), [f.name for f in LESSON_DIRS]


@pytest.mark.parametrize("folder", LESSON_DIRS, ids=lambda f: f.name)
def test_lesson_layout(folder: Path) -> None:
    nn = number(folder)
    for name in ("README.md", f"lesson{nn}_exercise.py", f"lesson{nn}_solution.py",
                 f"test_lesson{nn}.py"):
        assert (folder / name).is_file(), f"{folder.name} has no {name}"
    assert not (folder / "__init__.py").exists(), "lessons are not packages"
    for path in folder.glob("*.py"):
        assert path.name == f"test_lesson{nn}.py" or path.name.startswith(f"lesson{nn}_"), (
            f"{folder.name}/{path.name}: name it lesson{nn}_...py, so no two lessons clash")


def test_module_names_are_unique() -> None:
    """pytest imports lessons and tests by bare file name: no two may share one."""
    names = Counter(path.name for base in (LESSONS, ROOT / "tests") for path in base.rglob("*.py")
                    if path.name != "conftest.py")
    assert not [name for name, count in names.items() if count > 1]


def test_course_map_links_every_lesson() -> None:
    course_map = (LESSONS / "README.md").read_text(encoding="utf-8")
    for folder in LESSON_DIRS:
        assert f"]({folder.name}/README.md)" in course_map, f"lessons/README.md lacks {folder.name}"


@pytest.mark.parametrize("folder", LESSON_DIRS, ids=lambda f: f.name)
def test_exercise_is_an_untouched_stub(folder: Path) -> None:
    exercise = folder / f"lesson{number(folder)}_exercise.py"
    solution = folder / f"lesson{number(folder)}_solution.py"
    assert not stub_problems(exercise), "\n".join(stub_problems(exercise))
    missing = public_names(exercise) - public_names(solution)
    assert not missing, f"{solution.name} lacks {sorted(missing)}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("folder", LESSON_DIRS, ids=lambda f: f.name)
def test_lesson_tests_fail_against_the_stubs(folder: Path) -> None:
    env = lesson_snippets.environment({"CHAT_SYNC_LESSON": "exercise"})
    result = subprocess.run([sys.executable, "-m", "pytest", str(folder), "-q",
                             "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=50)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stdout[-3000:]}"
    assert re.search(r"\d+ failed", summary), summary
    assert "passed" not in summary and "error" not in summary, (
        f"against the stubs every test must fail: {summary}")


# -- the kit itself ------------------------------------------------------------
def test_load_picks_solution_or_exercise(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = LESSONS / "01_sockets"
    monkeypatch.delenv("CHAT_SYNC_LESSON", raising=False)
    assert lesson_target.load(folder).__name__ == "lesson01_solution"
    monkeypatch.setenv("CHAT_SYNC_LESSON", "exercise")
    assert lesson_target.load(folder / "README.md").__name__ == "lesson01_exercise"
    monkeypatch.setenv("CHAT_SYNC_LESSON", "exercize")
    with pytest.raises(ValueError, match="exercize"):
        lesson_target.load(folder)


def write_readme(tmp_path: Path, text: str) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    return readme


def test_snippets_reject_an_excerpt_that_drifted(tmp_path: Path) -> None:
    readme = write_readme(tmp_path, (
        "```python excerpt=chat_sync/framing.py\n"
        "    @property\n"
        "    def pending(self) -> int:\n"
        "```\n"
        "```python excerpt=chat_sync/framing.py\n"
        "def pending(self) -> str:\n"
        "```\n"))
    good, drifted = lesson_snippets.blocks(readme)
    lesson_snippets.check_excerpt(good)
    with pytest.raises(AssertionError, match="verbatim"):
        lesson_snippets.check_excerpt(drifted)


@pytest.mark.timeout(30)
def test_snippets_check_output_and_exit_status(tmp_path: Path) -> None:
    readme = write_readme(tmp_path, (
        "```python\nprint('one')\n```\n\n```output\ntwo\n```\n"
        "```sh\npython -c 'raise SystemExit(3)'  # fails (exit 3)\n```\n"))
    python, _, shell = lesson_snippets.blocks(readme)
    with pytest.raises(AssertionError, match="printed"):
        lesson_snippets.check_python(python)
    lesson_snippets.check_shell(readme)
    assert lesson_snippets.parse_command("python -c pass", None).status == 0


def test_snippets_report_blocks_no_check_runs(tmp_path: Path) -> None:
    readme = write_readme(tmp_path, (
        "```text\nhello\n```\n```output\nstray\n```\n```transcript\na --> b\n```\n"))
    found = lesson_snippets.problems(readme)
    assert len(found) == 3, found
