"""The machine-readable contracts in docs/ (docs/api.md): committed as the generator
makes them, complete (four topics with their producers, consumers and keys), with
example events that the service and the schema both accept, and the documented
exceptions of the schema check equal to those the check excuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]  # (no stubs installed)
import pytest
import yaml
from hypothesis import given, settings

from services.ingest.openapi import EXAMPLES, event_schema
from shared.contract import topics
from shared.contract.events import Event
from shared.contract.jobs import ActionJob, DeadLetter, EventMessage, dump_message
from tests.schema_exceptions import KEYS, excused
from tests.strategies import action_jobs
from tools import contracts

pytestmark = pytest.mark.unit

DOCS = contracts.ROOT / "docs"


def test_the_committed_contracts_are_what_the_generator_makes() -> None:
    assert contracts.stale(DOCS) == [], "run `make contracts` and commit docs/"
    assert contracts.main(["--check"]) == 0


def test_check_mode_names_a_stale_file_and_fails(tmp_path: Path) -> None:
    assert contracts.main(["--out", str(tmp_path)]) == 0
    assert contracts.main(["--check", "--out", str(tmp_path)]) == 0
    event = tmp_path / "schemas" / "event.schema.json"
    event.write_text(event.read_text().replace('"chain_id"', '"chain"', 1))
    assert contracts.stale(tmp_path) == ["schemas/event.schema.json"]
    assert contracts.main(["--check", "--out", str(tmp_path)]) == 1


def test_asyncapi_names_every_topic_with_its_producers_consumers_and_key() -> None:
    document = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {spec.name for spec in topics.TOPICS}
    operations = document["operations"].values()
    sends = {
        (o["channel"]["$ref"], o["title"].split()[0]) for o in operations if o["action"] == "send"
    }
    assert ("#/channels/erc8004_events", "ingest") in sends
    assert ("#/channels/erc8004_actions", "matcher") in sends
    assert ("#/channels/erc8004_actions", "api") in sends
    receives = {o["title"] for o in operations if o["action"] == "receive"}
    assert "matcher consumes erc8004.events (group matcher)" in receives
    assert "dispatcher consumes erc8004.actions.retry (group dispatcher.retry)" in receives
    for message in document["components"]["messages"].values():
        assert message["bindings"]["kafka"]["key"]["description"]
        name = message["payload"]["$ref"].rsplit("/", 1)[1]
        assert name in document["components"]["schemas"]


@settings(max_examples=60)
@given(action_jobs())
def test_the_topics_schema_accepts_the_jobs_and_letters_the_services_write(job: ActionJob) -> None:
    """The AsyncAPI document describes what goes on the wire: a job's event without its
    empty and derived fields, a dead letter's job with them."""
    schemas = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())["components"]["schemas"]

    def check(model: str, body: bytes) -> None:
        root = {"components": {"schemas": schemas}, "$ref": f"#/components/schemas/{model}"}
        jsonschema.Draft202012Validator(root).validate(json.loads(body))

    check("ActionJob", job.dump())
    assert "id" not in json.loads(job.dump())["event"]
    letter = DeadLetter(job=job, error="e", attempts=job.attempt, failed_at=job.created_at)
    check("DeadLetter", letter.dump())
    check("EventMessage", dump_message(EventMessage(event=job.event)))


def test_every_example_event_is_accepted_by_the_model_and_the_schema() -> None:
    schema = event_schema()
    validator = jsonschema.Draft202012Validator(schema)
    assert schema["examples"] == list(EXAMPLES.values())
    for example in EXAMPLES.values():
        Event.model_validate(example)
        validator.validate(example)


def test_the_event_schema_says_what_each_event_type_needs() -> None:
    validator = jsonschema.Draft202012Validator(event_schema())
    registered = dict(EXAMPLES["Registered"])
    del registered["owner"]
    assert not validator.is_valid(registered)
    feedback = dict(EXAMPLES["NewFeedback"])
    feedback["registry"] = "identity"
    assert not validator.is_valid(feedback)
    del feedback["value_decimals"]
    feedback["registry"] = "reputation"
    assert not validator.is_valid(feedback)


def test_the_exceptions_of_the_schema_check_are_the_documented_ones() -> None:
    text = (DOCS / "api.md").read_text()
    section = text.split("## What the documents cannot say", 1)[1].split("\n## ", 1)[0]
    documented = tuple(re.findall(r"^\| `([a-z-]+)` \|", section, re.MULTILINE))
    assert documented == KEYS


def test_only_refusals_entirely_of_documented_rules_are_excused() -> None:
    cursor = {"field": "cursor", "message": "not a cursor of this list"}
    other = {"field": "limit", "message": "Input should be less than or equal to 200"}
    assert excused(422, {"error": "invalid query", "details": [cursor]})
    assert not excused(422, {"error": "invalid query", "details": [cursor, other]})
    assert not excused(400, {"error": "invalid query", "details": [cursor]})
    assert not excused(422, {"error": "invalid query", "details": []})
