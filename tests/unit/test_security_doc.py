"""docs/security.md names, for every defence, the tests that perform the attack: each
named test file and test function must exist (a renamed or deleted test would
otherwise leave a defence claimed without proof). ``::name`` alone refers to the
file named last before it on the same line."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`((?:unit|connected|db|deploy)/[\w/]+\.py)?(?:::(\w+))?`")


def named_tests() -> list[tuple[str, str | None]]:
    named: list[tuple[str, str | None]] = []
    for line in (ROOT / "docs" / "security.md").read_text().splitlines():
        current = None
        for match in REFERENCE.finditer(line):
            path, name = match.groups()
            if path is None and name is None:
                continue
            current = path or current
            assert current is not None, f"::{name} without a file before it: {line}"
            named.append((current, name))
    return named


def test_every_test_the_security_doc_names_exists() -> None:
    named = named_tests()
    assert len(named) > 40
    missing = []
    for path, name in named:
        file = ROOT / "tests" / path
        if not file.is_file():
            missing.append(path)
        elif name is not None and not re.search(rf"^(async )?def {name}\(", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
