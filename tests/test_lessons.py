"""The course kit keeps its promises: lessons are laid out alike, and test the student's code.

Each lesson's own tests run with the rest of the suite (pytest collects
``lessons/``), against the reference solutions. Here they run once more, in
a subprocess, against the exercise stubs, where every one of them must fail:
a lesson test that passes without the student's code checks nothing the
student wrote. The stubs are the pristine ones (``chat_sync.course``), copied
into a workspace of the test's own, so a student who has written an exercise,
in a workspace or even in the lesson folder, breaks none of this.
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
from chat_sync import course  # noqa: E402


def number(folder: Path) -> str:
    return folder.name[:2]


def stub_problems(path: Path) -> list[str]:
    """What in the pristine stub at ``path`` is not a docstring and ``raise NotImplementedError``."""
    return course.stub_problems(course.pristine_exercise(path), path.name)


def public_names(source: str) -> set[str]:
    tree = ast.parse(source)
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
    stub = course.pristine_exercise(exercise)
    missing = public_names(stub) - public_names(solution.read_text(encoding="utf-8"))
    assert not missing, f"{solution.name} lacks {sorted(missing)}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding every lesson's pristine stub, as ``chat-sync course start`` makes it."""
    workspace = tmp_path_factory.mktemp("pristine")
    course.start(workspace, LESSONS)
    return workspace


def run_lesson_tests(folder: Path, workspace: Path) -> subprocess.CompletedProcess[str]:
    env = lesson_snippets.environment({"CHAT_SYNC_LESSON": str(workspace)})
    return subprocess.run([sys.executable, "-m", "pytest", str(folder), "-q",
                           "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=50)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("folder", LESSON_DIRS, ids=lambda f: f.name)
def test_lesson_tests_fail_against_the_stubs(folder: Path, pristine: Path) -> None:
    result = run_lesson_tests(folder, pristine)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stdout[-3000:]}"
    assert re.search(r"\d+ failed", summary), summary
    assert "passed" not in summary and "error" not in summary, (
        f"against the stubs every test must fail: {summary}")


# -- a student's workspace -----------------------------------------------------
@pytest.mark.timeout(60)
def test_a_finished_exercise_in_a_workspace_passes_and_breaks_nothing(tmp_path: Path) -> None:
    """The student's path: start a workspace, write exercise 01 there, run its tests."""
    result = subprocess.run([sys.executable, "-m", "chat_sync", "course", "start",
                             str(tmp_path / "work")], cwd=ROOT, env=lesson_snippets.environment(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    workspace = (tmp_path / "work").resolve()
    assert f"CHAT_SYNC_LESSON={workspace} python -m pytest lessons/01_sockets" in result.stdout
    folder = LESSONS / "01_sockets"
    mine = workspace / "01_sockets" / "lesson01_exercise.py"
    assert mine.read_text(encoding="utf-8") == course.pristine_exercise(
        folder / "lesson01_exercise.py")
    assert run_lesson_tests(folder, workspace).returncode == 1, "the copy starts as a stub"
    mine.write_text((folder / "lesson01_solution.py").read_text(encoding="utf-8"),
                    encoding="utf-8")
    finished = run_lesson_tests(folder, workspace)
    assert finished.returncode == 0, finished.stdout[-3000:]
    assert not course.stub_problems((folder / "lesson01_exercise.py").read_text(encoding="utf-8"),
                                    "lesson01_exercise.py"), "the project's stub is untouched"
    again = course.start(workspace, LESSONS)
    assert ("01_sockets/lesson01_exercise.py", False) in again, "start again keeps your work"
    assert mine.read_text(encoding="utf-8") == (folder / "lesson01_solution.py").read_text(
        encoding="utf-8")


@pytest.mark.timeout(60)
def test_a_stub_written_in_place_is_taken_from_git(tmp_path: Path) -> None:
    """A student who wrote in the lesson folder's own stub: the proof still gets the stub."""
    folder = tmp_path / "lessons" / "01_sockets"
    folder.mkdir(parents=True)
    stub = folder / "lesson01_exercise.py"
    original = (LESSONS / "01_sockets" / "lesson01_exercise.py").read_text(encoding="utf-8")
    stub.write_text(original, encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "stub"]):
        subprocess.run(git + command, cwd=tmp_path, check=True, capture_output=True, timeout=30)
    stub.write_text((LESSONS / "01_sockets" / "lesson01_solution.py").read_text(
        encoding="utf-8"), encoding="utf-8")
    assert course.pristine_exercise(stub) == original
    subprocess.run(git + ["rm", "-q", "--cached", stub.name], cwd=folder, check=True,
                   capture_output=True, timeout=30)
    subprocess.run(git + ["commit", "-q", "-m", "gone"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=30)
    with pytest.raises(course.CourseError, match="workspace"):
        course.pristine_exercise(stub)


def test_a_workspace_that_does_not_exist_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("CHAT_SYNC_LESSON", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="course start"):
        lesson_target.load(LESSONS / "01_sockets")
    monkeypatch.setenv("CHAT_SYNC_LESSON", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="course start"):
        lesson_target.load(LESSONS / "01_sockets")


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


@pytest.mark.timeout(30)
def test_the_python_nc_sends_typed_lines_and_prints_replies() -> None:
    """``lesson01_nc.py``, the lessons' stand-in for ``nc``, against the echo server."""
    server = [sys.executable, str(LESSONS / "01_sockets" / "lesson01_echo_server.py"),
              "--port", "0"]
    with lesson_snippets.running_server(server, lesson_snippets.environment()) as echo:
        result = subprocess.run(
            [sys.executable, str(LESSONS / "01_sockets" / "lesson01_nc.py"),
             "--port", str(echo.port)], input="hello, stream\r\na second line\n",
            cwd=ROOT, env=lesson_snippets.environment(), capture_output=True, text=True,
            timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello, stream\na second line\n"


def test_snippets_check_the_shape_of_a_diagram(tmp_path: Path) -> None:
    good = ("```mermaid\n---\ntitle: t\n---\nsequenceDiagram\n    participant A as a\n"
            "    participant B as b\n    A->>B: SYN\n    Note over A,B: open\n```\n")
    readme = write_readme(tmp_path, good + (
        "```mermaid\nsequenceDiagram\n    A->>B: hi\n```\n"                      # no title
        "```mermaid\n---\ntitle: t\n---\npie\n    \"a\" : 1\n```\n"                # unknown type
        "```mermaid\n---\ntitle: t\n---\nsequenceDiagram\n    participant A\n"
        "    A->>C: who is C?\n    A sends B hi\n```\n"                            # two slips
        "```mermaid\n---\ntitle: t\n---\nflowchart LR\n    a[\"open\" --> b\n```\n"))  # unpaired
    first, *bad = lesson_snippets.blocks(readme)
    assert lesson_snippets.mermaid_title(first) == "t" and not lesson_snippets.problems(
        write_readme(tmp_path, good))
    found = [lesson_snippets.mermaid_problems(block) for block in bad]
    assert ["title" in " ".join(f) for f in found] == [True, False, False, False]
    assert "not a diagram type" in found[1][0]
    assert len(found[2]) == 2 and "not declared" in " ".join(found[2])
    assert "pair up" in found[3][0]


def test_the_glossary_is_linked_and_holds_the_words_the_lessons_lean_on() -> None:
    glossary = (LESSONS / "GLOSSARY.md").read_text(encoding="utf-8")
    assert "](GLOSSARY.md)" in (LESSONS / "README.md").read_text(encoding="utf-8")
    for word in ("TIME_WAIT", "RST", "RTO", "Nagle", "EAGAIN", "half-close", "FIN",
                 "sans-IO", "jitter", "token bucket"):
        assert f"**{word}" in glossary or f"**`{word}" in glossary or f", `{word}" in glossary, (
            f"GLOSSARY.md does not define {word}")


SELF_CHECK_TO_COME: set[str] = set()   # lessons whose questions are still to write


@pytest.mark.parametrize("folder", [f for f in LESSON_DIRS if f.name not in SELF_CHECK_TO_COME],
                         ids=lambda f: f.name)
def test_each_lesson_ends_with_questions_to_check_yourself(folder: Path) -> None:
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "\n## Check yourself\n" in readme, f"{folder.name} has no self-check"
    section = readme.split("\n## Check yourself\n", 1)[1].split("\n## ", 1)[0]
    questions = section.count("<details>")
    assert questions >= 3 and questions == section.count("</details>") == section.count(
        "<summary>"), f"{folder.name}: {questions} questions, each in <details> with its answer"
