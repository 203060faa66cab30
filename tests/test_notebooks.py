"""Every notebook runs top to bottom in a fresh kernel, and shows what it promises.

Notebooks are lessons, and a lesson snippet the tests do not run rots. Each
one is executed with nbclient in a temporary working directory, with this
checkout first on ``PYTHONPATH`` so the kernel imports the code under test.
A cell that raises fails the test (nbclient's ``CellExecutionError`` shows the
cell and the traceback). The notebooks start their own servers on 127.0.0.1
port 0 and stop them in their last cell. They are committed with their
outputs, so that a reader on the web sees the tables and plots; every code
cell must have some.
"""
from __future__ import annotations

import os
import shutil
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
    "02_framing.ipynb": [
        "identical to what was sent: True",
        "refused: line_too_long",
        "the server answered:",
        "{'type': 'pong', 'id': 3}",                 # one answer per line, whatever the cuts
        "server says: {'type': 'error', 'code': 'line_too_long'",
        "then the end of the stream: True",
        "stopped",
    ],
    "03_selectors.ipynb": [
        "threads the server started: ['tcp-server']",
        "30 clients joined",
        "copies arrived within",
        "times for EVENT_READ | EVENT_WRITE",
        "clients got the shutdown notice",
        "stopped",
    ],
    "04_sans_io.ipynb": [
        '"code": "name_taken"',
        '"code": "bad_json"',
        "KeyError: 'nobody'",
        "every one as the core predicted: True",
        "the same outputs: True",
        "requests a second",
        "stopped",
    ],
    "05_rooms_history.ipynb": [
        '"history": true',
        "replayed with since: [13, 14, 15, 16]",     # exactly what bob missed
        "history_gap notices: 1",
        "after it:           epoch",
        "stopped",
    ],
    "06_threaded_client.ipynb": [
        "reconnecting in",
        "reconnect failed",
        "(history) seq",
        "replayed after the outage: ['you missed this', 'and this', 'and this too']",
        "alice exit code 0 | bob exit code 0",
        "stopped",
    ],
    "07_reliable_udp.ipynb": [
        "every message arrived exactly once, in order: True",
        "  upstream  downstream",                   # the relay's table
        "duplicate",
        "sent: sent=",                               # the clients' RetransmitStats
        "retransmissions with no loss behind them: ",
        "ideal 1/(1-p)^2 - 1 at p = 0.2: 0.5625",
        "give up      3.00         12.00",           # the fake clock's deadlines
        "alice exit code 0 | bob exit code 0",
        "stopped",
    ],
    "08_hostile_clients.ipynb": [
        "refused, ",
        "excess flood",
        "slow reader: more than 32768 bytes unsent",
        "bob read",
        "carol could not join",
        "once verified",
        "stopped",
    ],
    "09_loss_sweep.ipynb": [
        "every message arrived exactly once, in order, at every loss rate: True",
        "fixed 100 ms",
        "doubling + jitter",
        "adaptive (RFC 6298)",
    ],
    "10_cluster.ipynb": [
        "alice (on A) and bob (on B) are in the lobby, and each heard both lines",
        '{"type":"message","text":"hello from A","id":"hello from A"}',   # read with XRANGE
        "A's replica knows: ['alice', 'bob'] | B's: ['alice', 'bob']",
        "cluster, A to B: another server's client",
        "within 5 s: True",                          # the leaves, within the heartbeat TTL
        "the stream holds a 'gone' entry for ['C']",
        "stopped",
    ],
}
# Notebooks that need a program and a module besides the test extra's; CI has them all.
NEEDS = {"10_cluster.ipynb": ("redis-server", "redis")}


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
def test_notebook_is_committed_with_outputs(path: Path) -> None:
    """A reader on the web sees the tables and plots without running anything."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs, f"{path.name}: a code cell has no saved output: {cell.source[:60]!r}"
            assert cell.execution_count is not None, cell.source[:60]
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:60]
    assert images(notebook) >= 1, f"{path.name} was committed without its plot"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name in NEEDS:
        program, module = NEEDS[path.name]
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (.ci/run installs it)")
        pytest.importorskip(module)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = run(path, tmp_path)
    text = output_text(notebook)
    for expected in EXPECTED[path.name]:
        assert expected in text, f"{path.name} did not show {expected!r}"
    assert images(notebook) >= 1, f"{path.name} drew no plot"
    assert list(tmp_path.iterdir()) == [], "a notebook left files in its working directory"
