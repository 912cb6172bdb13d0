"""The layout's boundaries hold: import-linter's contracts (pyproject.toml) and mypy (strict for the
contract and the engine). Both run in `make lint` too; here they make `make test` fail when broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    executable = BIN / tool
    assert executable.exists(), f"{tool} is not installed next to {sys.executable} (it is in the dev extra)"
    return subprocess.run([str(executable), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_import_contracts_are_kept():
    result = run("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_import_contract_is_checked():
    """A contract whose modules are renamed away would pass vacuously: each must be listed as kept."""
    result = run("lint-imports", "--no-cache")
    kept = [line for line in result.stdout.splitlines() if line.rstrip().endswith("KEPT")]
    assert len(kept) == 4, result.stdout


def test_mypy_passes():
    result = run("mypy", timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
