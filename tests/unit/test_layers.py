"""The layers of shared/ and the independence of the services (docs/architecture.md),
checked by import-linter with the contracts in pyproject.toml (in a process of its
own: it reconfigures logging)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint = pathlib.Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # both contracts were checked, not just read
    assert "shared in layers" in done.stdout
    assert "do not import one another" in done.stdout
    assert "2 kept, 0 broken" in done.stdout
