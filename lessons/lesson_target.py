"""Which code a lesson's tests check: the reference solution, or your exercise.

Each lesson folder holds ``lessonNN_solution.py`` (the reference) and
``lessonNN_exercise.py`` (the same functions, for you to write). A lesson's
tests never import either by name; they ask this module:

    from lesson_target import load

    target = load(__file__)          # in lessons/01_sockets/test_lesson01.py
    assert target.read_line(sock) == b"hello"

``load`` returns the solution by default, and your exercise when the
environment says ``CHAT_SYNC_LESSON=exercise``:

    CHAT_SYNC_LESSON=exercise python -m pytest lessons/01_sockets

So the same tests pass on the reference and tell you what is still missing
in your code.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ENV_VAR = "CHAT_SYNC_LESSON"
CHOICES = ("solution", "exercise")


def which() -> str:
    """``"solution"`` or ``"exercise"``, from ``CHAT_SYNC_LESSON`` (default: solution).

    Raises ValueError for any other value, so a typo cannot silently test the
    reference instead of your code.
    """
    value = os.environ.get(ENV_VAR, "solution")
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def load(path: str | Path) -> ModuleType:
    """Import the solution or the exercise of the lesson folder holding ``path``.

    ``path`` is the lesson folder or any file in it (usually ``__file__``).
    The module is imported once and kept in ``sys.modules`` under its file
    name (``lesson01_solution``), so a demo that imports it by name gets the
    same module. Raises FileNotFoundError unless the folder holds exactly
    one ``lesson*_solution.py`` (or ``lesson*_exercise.py``).
    """
    folder = Path(path).resolve()
    if folder.is_file():
        folder = folder.parent
    matches = sorted(folder.glob(f"lesson*_{which()}.py"))
    if len(matches) != 1:
        raise FileNotFoundError(f"{folder}: expected one lesson*_{which()}.py, "
                                f"found {[m.name for m in matches]}")
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
