"""``chat-sync course start``: copy the lesson exercises into a workspace of your own.

Theory of operation
-------------------
Each lesson folder ships ``lessonNN_exercise.py`` as a stub: every function a
docstring and ``raise NotImplementedError("exercise: ...")``. The project's
own suite proves, on those stubs, that every lesson test fails without the
student's code. A student who wrote in the stub itself would break that
proof, so a student works on a copy: ``start`` copies every stub into a
workspace (``~/chat_sync_work`` unless told otherwise), one folder per
lesson, and never overwrites a file that is already there: running it again
after a new lesson arrives adds only the new one. The lesson tests then run
on the copy with ``CHAT_SYNC_LESSON=WORKSPACE`` (``lessons/lesson_target.py``).

The stub copied, and the one the suite proves, is the *pristine* one: the
file in the lesson folder while it is still a stub, else the version git
has committed (someone wrote in the folder's copy after all). The lessons
live beside the package in the repository; they are not installed with it.
"""
from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
DEFAULT_WORKSPACE = Path("~") / "chat_sync_work"


class CourseError(Exception):
    """The course cannot do what was asked; the text says why and what to do."""


def stub_problems(source: str, name: str) -> list[str]:
    """What in ``source`` (file ``name``) is not a stub; empty for an untouched exercise.

    A stub defines at least one function, and each is a docstring followed by
    ``raise NotImplementedError("exercise: ...")``.
    """
    functions = [node for node in ast.walk(ast.parse(source))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return [f"{name} defines no function to write"]
    return [f"{name}: {function.name} is not a docstring followed by "
            "raise NotImplementedError(\"exercise: ...\")"
            for function in functions if not _is_stub(function)]


def _is_stub(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    body = function.body
    if len(body) != 2 or ast.get_docstring(function) is None:
        return False
    raised = body[1]
    if not isinstance(raised, ast.Raise) or not isinstance(raised.exc, ast.Call):
        return False
    call = raised.exc
    return (isinstance(call.func, ast.Name) and call.func.id == "NotImplementedError"
            and len(call.args) == 1 and isinstance(call.args[0], ast.Constant)
            and str(call.args[0].value).startswith("exercise: "))


def exercises(lessons: Path = LESSONS) -> list[Path]:
    """Every lesson's exercise file, in lesson order."""
    return sorted(lessons.glob("[0-9][0-9]_*/lesson[0-9][0-9]_exercise.py"))


def pristine_exercise(path: Path) -> str:
    """The stub as the project ships it: the file while it is a stub, else git's HEAD copy.

    Raises CourseError when the file is no stub and git has no copy of it.
    """
    text = path.read_text(encoding="utf-8")
    if not stub_problems(text, path.name):
        return text
    try:
        result = subprocess.run(["git", "show", f"HEAD:./{path.name}"], cwd=path.parent,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CourseError(f"{path} is no longer a stub, and git cannot give the original: "
                          f"{exc}") from None
    if result.returncode != 0 or stub_problems(result.stdout, path.name):
        raise CourseError(f"{path} is no longer a stub, and git has no stub of it: restore "
                          "it, and write your code in a workspace (chat-sync course start)")
    return result.stdout


def start(workspace: Path, lessons: Path = LESSONS) -> list[tuple[str, bool]]:
    """Copy each pristine stub to ``workspace/NN_slug/``, keeping files already there.

    Returns (path relative to the workspace, whether it was copied now), in lesson order.
    """
    if not exercises(lessons):
        raise CourseError(f"no lessons in {lessons}: the course lives in the repository, "
                          "not in the installed package; run this from a clone "
                          "(python -m pip install -e . there)")
    done = []
    for exercise in exercises(lessons):
        relative = f"{exercise.parent.name}/{exercise.name}"
        copy = workspace / relative
        if copy.exists():
            done.append((relative, False))
            continue
        text = pristine_exercise(exercise)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(text, encoding="utf-8")
        shutil.copymode(exercise, copy)
        done.append((relative, True))
    return done


def report(workspace: Path, done: list[tuple[str, bool]]) -> str:
    """What ``start`` did, and the command that tests the first lesson on the copy."""
    lines = [f"your workspace: {workspace}"]
    for relative, copied in done:
        lines.append(f"  {'new ' if copied else 'kept'}  {relative}")
    first = done[0][0].split("/")[0]
    lines += ["",
              "Write each exercise there; files already there are kept, never overwritten.",
              f"Test one lesson on your copy, from the repository root ({ROOT}):",
              f"  CHAT_SYNC_LESSON={workspace} python -m pytest lessons/{first}",
              "On Windows (PowerShell):",
              f'  $env:CHAT_SYNC_LESSON = "{workspace}"; python -m pytest lessons/{first}']
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chat-sync course",
        description="The course's exercises, in a workspace of your own.")
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="copy every lesson's exercise into a workspace")
    begin.add_argument("workspace", nargs="?", default=str(DEFAULT_WORKSPACE),
                       help="where to put them (default: ~/chat_sync_work)")
    args = parser.parse_args(argv)
    workspace = Path(args.workspace).expanduser().resolve()
    try:
        done = start(workspace)
    except (CourseError, OSError) as exc:
        print(f"chat-sync course: {exc}", file=sys.stderr)
        return 2
    print(report(workspace, done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
