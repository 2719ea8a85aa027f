from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # fixtures/ (shared corpora and models) imports as a package
    sys.path.insert(0, str(ROOT))


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str | Path, timeout: float = 300) -> CliResult:
    """The real command line, in a subprocess, exactly as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "aprtool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return CliResult(proc)


@pytest.fixture
def cli():
    return run_cli
