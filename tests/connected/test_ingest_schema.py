"""Ingest as its own process (``python -m services.ingest``) against its OpenAPI
document (docs/openapi/ingest.json), with the same Schemathesis run as the API's
(tests/connected/test_api_schema.py): every check, the coverage, fuzzing and
stateful phases, the rules no schema can express excused one by one."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from services.ingest.openapi import document
from tests.conftest import StartService
from tests.connected.test_api_schema import passed, report, schemathesis
from tests.procs import ServiceProcess

pytestmark = [pytest.mark.db, pytest.mark.kafka, pytest.mark.slow]

TOKEN = "schema-check-token-0123456789"


@pytest.fixture
def ingest(env: dict[str, str], database_url: str, start_service: StartService) -> ServiceProcess:
    return start_service(
        "ingest",
        {
            **env,
            "DATABASE_URL": database_url,
            "INGEST_TOKENS": TOKEN,
            "EVENTS_TOPIC": f"test.ingest.{uuid.uuid4().hex[:8]}",
            "MAINTENANCE_ENABLED": "false",
        },
    )


def without_the_feedback_layout_rule(doc: dict[str, object]) -> dict[str, object]:
    """The document less the one rule Schemathesis cannot generate from beside the
    others (a NewFeedback without score needs value and value_decimals): it stays in
    the committed document and is excused as ``feedback-layout``."""
    schemas = doc["components"]["schemas"]  # type: ignore[index]
    rules = schemas["Event"]["allOf"]
    kept = [r for r in rules if "score" not in r["if"]["properties"]]
    assert len(kept) == len(rules) - 1
    schemas["Event"]["allOf"] = kept
    return doc


def test_every_operation_conforms_to_the_openapi_document(
    ingest: ServiceProcess, tmp_path: Path
) -> None:
    committed = json.loads((Path(__file__).parents[2] / "docs/openapi/ingest.json").read_text())
    assert committed == document()
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps(without_the_feedback_layout_rule(document())))

    code, output = schemathesis(str(path), TOKEN, tmp_path, "--url", ingest.base)
    assert code == 0, report(output)
    assert passed(output) > 300
    assert "Schema Error" not in output, output[-4000:]
    assert '"request failed"' not in ingest.log_text(), ingest.log_text()[-3000:]
    assert TOKEN not in ingest.log_text()
