"""The project's docs stand alone: nothing a user reads points at a document they do
not have (the design notes and schema draft the project started from, or files
beside the repository), and the documented minimum of JWT_SECRET is the one the
API enforces."""

from __future__ import annotations

import pathlib
import re

import pytest
from annotated_types import MinLen

from services.api.settings import ApiSettings

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: What users read: the docs, the deployment files, the migrations, the code.
SCANNED = ("README.md", "docs", "deploy", "db", "services", "shared", "tools", "Makefile")
SUFFIXES = {".md", ".py", ".sql", ".yaml", ".yml", ".sh", ".env", ".toml", ".json", ""}
#: Spelled in pieces so this file does not match itself if tests/ is ever scanned.
MISSING_DOCUMENTS = (
    "DESIGN" + ".md",
    ".." + "/shared",
    "spec/" + "database-schema",
    "CONVENTIONS" + ".md",
)


def scanned_files() -> list[pathlib.Path]:
    files: list[pathlib.Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
            continue
        files.extend(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in SUFFIXES
            and "node_modules" not in p.parts
            and "__pycache__" not in p.parts
        )
    return files


def test_the_scan_covers_the_docs_and_the_migrations() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert {"README.md", "docs/architecture.md", "deploy/README.md", "db/README.md"} <= names
    assert any(n.startswith("db/migrations/") and n.endswith(".sql") for n in names)


def test_nothing_points_at_a_document_users_do_not_have() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in scanned_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if any(missing in line for missing in MISSING_DOCUMENTS)
    ]
    assert not found, "\n".join(found)


def jwt_secret_minimum() -> int:
    lengths = [
        m.min_length
        for m in ApiSettings.model_fields["jwt_secret"].metadata
        if isinstance(m, MinLen)
    ]
    assert lengths, "ApiSettings.jwt_secret has no min_length"
    return lengths[0]


#: Every place that tells an operator how long JWT_SECRET must be.
JWT_DOCS = ("README.md", "deploy/README.md", "docs/security.md")


@pytest.mark.parametrize("doc", JWT_DOCS)
def test_every_doc_states_the_jwt_secret_minimum_the_api_enforces(doc: str) -> None:
    minimum = jwt_secret_minimum()
    text = (ROOT / doc).read_text()
    # Each statement of a length near a mention of JWT_SECRET ("at least N characters",
    # "N+ characters").
    near = [text[m.start() : m.start() + 200] for m in re.finditer(r"JWT_SECRET", text)]
    stated = [
        int(n)
        for window in near
        for pair in re.findall(r"at least (\d+) characters|(\d+)\+ characters", window)
        for n in pair
        if n
    ]
    assert stated, f"{doc} does not say how long JWT_SECRET must be"
    assert set(stated) == {minimum}, (
        f"{doc} states {sorted(set(stated))}, the API enforces {minimum}"
    )


def test_the_example_secrets_are_long_enough() -> None:
    minimum = jwt_secret_minimum()
    for name in (
        "deploy/local/dev.env",
        "deploy/k8s/overlays/dev/migrate/dev-secrets.env",
        "deploy/compose.yaml",
    ):
        values = re.findall(r"^\s*JWT_SECRET[=:]\s*(\S+)", (ROOT / name).read_text(), re.M)
        assert values, name
        assert all(len(v) >= minimum for v in values), (name, values)


def test_a_shorter_jwt_secret_stops_the_api_at_start() -> None:
    minimum = jwt_secret_minimum()
    base = {
        "DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/db",
        "SECRETS_KEY": "k",
    }
    with pytest.raises(ValueError, match="JWT_SECRET"):
        ApiSettings.model_validate({**base, "JWT_SECRET": "x" * (minimum - 1)})
    assert ApiSettings.model_validate({**base, "JWT_SECRET": "x" * minimum})
