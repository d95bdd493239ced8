"""docs/architecture.md names every module of shared/, the dispatcher and the indexer, and every
path it names exists: the document cannot drift from the code unnoticed."""

from __future__ import annotations

import pathlib
import re

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def modules(folder: str) -> list[str]:
    return sorted(
        p.stem for p in (ROOT / folder).rglob("*.py") if p.stem not in {"__init__", "__main__"}
    )


@pytest.mark.parametrize(
    "folder",
    [
        "shared/contract",
        "shared/engine",
        "shared/platform",
        "shared/outbound",
        "services/dispatcher",
        "services/indexer",
    ],
)
def test_every_module_is_named(folder: str) -> None:
    words = set(re.findall(r"[a-z_]+", DOC))
    missing = [m for m in modules(folder) if m not in words]
    assert not missing, f"docs/architecture.md does not name {folder}: {missing}"


def test_every_named_path_exists() -> None:
    paths = set(re.findall(r"`((?:services|shared|tests|docs)/[A-Za-z0-9_./]+)`", DOC))
    assert paths  # the document names paths at all
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
