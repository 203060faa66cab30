"""Every notebook runs top to bottom in a fresh kernel, and shows what it promises.

Notebooks are lessons, and a lesson snippet the tests do not run rots. Each
one is executed with nbclient in a temporary working directory, with this
checkout first on ``PYTHONPATH`` so the kernel imports the code under test.
A cell that raises fails the test (nbclient's ``CellExecutionError`` shows the
cell and the traceback). The notebooks start their own servers on 127.0.0.1
port 0 and stop them in their last cell.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 60

# Text each notebook's output must contain: the parts a reader came for.
EXPECTED = {
    "01_tcp_chat_traffic.ipynb": [
        "t (ms)  conn  dir   bytes  data",         # the packet table
        "[open 127.0.0.1:",
        "[close: closed by both sides]",
        '  bob --> b\'this is not JSON\\n\'',
        "conn 2 -> b'this is not JSON'",             # the bad line, as raw bytes
        "bytes to chat.pcap",                        # the pcap was written
        "magic a1b2c3d4 version 2.4 link type 1",
        "[S] seq",
        "stopped",
    ],
    "02_framing_and_slow_readers.ipynb": [
        "identical to what was sent: True",
        "refused: line_too_long",
        "every one came back to her",
        "slow reader: more than 32768 bytes unsent",
        "bob read",
        "stopped",
    ],
    "03_udp_under_loss.ipynb": [
        "every message arrived exactly once, in order: True",
        "  upstream  downstream",                   # the relay's table
        "duplicate",
        "sent: sent=",                               # the clients' RetransmitStats
        "client retransmissions per request: ",
        "ideal 1/(1-p)^2 - 1 at p = 0.2: 0.5625",
        "give up      3.00         12.00",           # the fake clock's deadlines
        "alice exit code 0 | bob exit code 0",
        "stopped",
    ],
}


def run(path: Path, workdir: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return notebook


def output_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "data" in output:
                parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.timeout(10)
def test_the_notebooks_are_there() -> None:
    assert [path.name for path in NOTEBOOKS] == sorted(EXPECTED)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = run(path, tmp_path)
    text = output_text(notebook)
    for expected in EXPECTED[path.name]:
        assert expected in text, f"{path.name} did not show {expected!r}"
    assert images(notebook) >= 1, f"{path.name} drew no plot"
    assert list(tmp_path.iterdir()) == [], "a notebook left files in its working directory"
