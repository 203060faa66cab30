"""Every code block of every lesson README is checked (see ``lesson_snippets``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lesson_snippets import (LESSONS, Block, blocks, check_excerpt, check_python, check_shell,
                             check_transcript, mermaid_problems, mermaid_title, problems,
                             readmes)

ALL = [block for readme in readmes() for block in blocks(readme)]

# The pictures the course promises: README, and the title of its mermaid block.
DIAGRAMS = [
    ("01_sockets/README.md", "One TCP connection, from connect to TIME_WAIT"),
    ("03_selectors/README.md", "One turn of the selectors loop"),
    ("07_udp_datagrams/README.md", "Ids, acks and retransmissions, with a loss each way"),
    ("09_hostile_clients/README.md", "A slow reader's output queue, against two limits"),
]


# What a lesson's shell blocks run besides Python; .ci/run installs each of them.
PROGRAMS = {"11_one_chat_many_servers": ("redis-server",)}


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
    missing = [program for program in PROGRAMS.get(name(readme), ())
               if shutil.which(program) is None]
    if missing:
        pytest.skip(f"{missing[0]} is not installed (.ci/run installs it)")
    check_shell(readme)


def test_each_program_a_lesson_needs_is_one_ci_installs() -> None:
    ci = (LESSONS.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert all(program in ci for programs in PROGRAMS.values() for program in programs)


@pytest.mark.parametrize(("readme", "title"), DIAGRAMS, ids=[t for _, t in DIAGRAMS])
def test_each_promised_diagram_is_drawn_and_referred_to(readme: str, title: str) -> None:
    path = LESSONS / readme
    drawn = [b for b in blocks(path) if b.kind == "mermaid" and mermaid_title(b) == title]
    assert len(drawn) == 1, f"{readme} has no mermaid block titled {title!r}"
    assert not mermaid_problems(drawn[0]), mermaid_problems(drawn[0])
    above = path.read_text(encoding="utf-8").splitlines()[:drawn[0].line - 1]
    paragraph = "\n".join(above).strip().split("\n\n")[-1].lower()
    assert "picture" in paragraph or "diagram" in paragraph, (
        f"{readme}: the paragraph before {title!r} does not point at the picture")


def test_every_diagram_is_one_the_course_lists() -> None:
    listed = {(readme, title) for readme, title in DIAGRAMS}
    drawn = {(b.readme.relative_to(LESSONS).as_posix(), mermaid_title(b))
             for b in ALL if b.kind == "mermaid"}
    assert drawn <= listed, f"add these to DIAGRAMS: {sorted(drawn - listed)}"
