"""Which code a lesson's tests check: the reference solution, or your exercise.

Each lesson folder holds ``lessonNN_solution.py`` (the reference) and
``lessonNN_exercise.py`` (the same functions, for you to write). A lesson's
tests never import either by name; they ask this module:

    from lesson_target import load

    target = load(__file__)          # in lessons/01_sockets/test_lesson01.py
    assert target.read_line(sock) == b"hello"

``load`` returns the solution by default. ``CHAT_SYNC_LESSON`` says otherwise:

``CHAT_SYNC_LESSON=~/chat_sync_work`` (a directory)
    your copy of the exercise in that workspace, which
    ``chat-sync course start`` made: ``~/chat_sync_work/01_sockets/lesson01_exercise.py``.
    This is where a student works:

        CHAT_SYNC_LESSON=~/chat_sync_work python -m pytest lessons/01_sockets

``CHAT_SYNC_LESSON=exercise``
    the stub in the lesson folder itself, untouched; the project's own proof
    that every lesson test fails without the student's code runs this way
    (on a pristine copy: ``tests/test_lessons.py``).

So the same tests pass on the reference and tell you what is still missing
in your code. The programs a lesson runs pick their code the same way.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ENV_VAR = "CHAT_SYNC_LESSON"
CHOICES = ("solution", "exercise")


def which() -> str | Path:
    """``"solution"``, ``"exercise"`` or a workspace directory, from ``CHAT_SYNC_LESSON``.

    The default is the solution. Raises ValueError for a value that is
    neither a choice nor an existing directory, so a typo cannot silently
    test the reference instead of your code.
    """
    value = os.environ.get(ENV_VAR, "solution")
    if value in CHOICES:
        return value
    workspace = Path(value).expanduser()
    if not workspace.is_dir():
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(CHOICES)}, or "
                         "your workspace directory (make one with: chat-sync course start)")
    return workspace.resolve()


def load(path: str | Path) -> ModuleType:
    """Import the solution or the exercise of the lesson folder holding ``path``.

    ``path`` is the lesson folder or any file in it (usually ``__file__``).
    Under a workspace, the exercise is the one in the workspace's folder of
    the same name. The module is imported once and kept in ``sys.modules``
    under its file name (``lesson01_solution``), so a demo that imports it by
    name gets the same module. Raises FileNotFoundError unless the folder
    holds exactly one ``lesson*_solution.py`` (or ``lesson*_exercise.py``).
    """
    folder = Path(path).resolve()
    if folder.is_file():
        folder = folder.parent
    choice = which()
    role = "exercise" if isinstance(choice, Path) else choice
    where = choice / folder.name if isinstance(choice, Path) else folder
    matches = sorted(where.glob(f"lesson*_{role}.py"))
    if len(matches) != 1:
        raise FileNotFoundError(f"{where}: expected one lesson*_{role}.py, "
                                f"found {[m.name for m in matches]}"
                                + (" (chat-sync course start copies new lessons' exercises "
                                   "into a workspace)" if isinstance(choice, Path) else ""))
    name = matches[0].stem
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, matches[0])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
