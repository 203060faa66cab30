"""The package is fully typed: ``mypy --strict`` finds nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_mypy_strict_on_the_package() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                             "chat_sync"], cwd=ROOT, capture_output=True, text=True,
                            timeout=230)
    assert result.returncode == 0, result.stdout + result.stderr
