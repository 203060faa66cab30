"""Every code block of every lesson README is checked (see ``lesson_snippets``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lesson_snippets import (Block, blocks, check_excerpt, check_python, check_shell,
                             check_transcript, problems, readmes)

ALL = [block for readme in readmes() for block in blocks(readme)]


def of_kind(kind: str, excerpt: bool = False) -> list[Block]:
    return [b for b in ALL if b.kind == kind and b.options.startswith("excerpt=") == excerpt]


def name(readme: Path) -> str:
    return readme.parent.name if readme.parent.name != "lessons" else "course-map"


@pytest.mark.parametrize("readme", readmes(), ids=name)
def test_every_block_is_checked(readme: Path) -> None:
    assert not problems(readme), "\n".join(problems(readme))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("block", of_kind("python"), ids=str)
def test_python_block_runs(block: Block) -> None:
    check_python(block)


@pytest.mark.parametrize("block", of_kind("python", excerpt=True), ids=str)
def test_excerpt_matches_source(block: Block) -> None:
    check_excerpt(block)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("block", of_kind("transcript"), ids=str)
def test_transcript_replays(block: Block) -> None:
    check_transcript(block)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("readme", [r for r in readmes() if any(b.kind == "sh" for b in blocks(r))],
                         ids=name)
def test_shell_blocks_run(readme: Path) -> None:
    check_shell(readme)
