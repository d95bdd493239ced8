"""Ingest's OpenAPI 3.1 document and the JSON Schema of one posted event, generated
from the models the handlers validate with (shared.contract: Event, CheckpointIn,
ReorgIn) and the answers' models below (the handlers write the same fields). The
event's schema also says what the model checks across fields: each event type's
registry and required fields (docs/decisions.md), and a NewFeedback's value in
either layout. docs/api.md lists what it cannot say."""

from __future__ import annotations

import copy
from typing import Any, Final

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from services.ingest.routes import MAX_BODY_BYTES, MAX_EVENTS
from shared.contract.event_fields import MAX_ABS_VALUE
from shared.contract.events import EVENT_REGISTRY, REQUIRED_FIELDS, Event
from shared.contract.jobs import CheckpointIn, ReorgIn
from shared.contract.patterns import DECIMAL_RE

REF = "#/components/schemas/{model}"


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class EventsStored(_Out):
    """Committed: ``accepted`` events stored (and to be relayed), ``duplicates`` known."""

    accepted: int
    duplicates: int


class CheckpointOut(_Out):
    """Where the chain's indexer resumes: the highest block of a stored event or
    heartbeat."""

    chain_id: int
    last_block_number: int
    last_block_hash: str
    updated_at: str


class HeartbeatOut(_Out):
    chain_id: int
    block_number: int
    #: The same heartbeat (chain, block number and hash) was stored already.
    duplicate: bool


class ReorgOut(_Out):
    reorg_id: str
    #: The ids of the stored events of the replaced blocks, free to be posted again.
    released_event_ids: list[str]


class IngestErrorDetail(_Out):
    """One problem: which posted event (``index`` in the batch, null or absent for the
    body as a whole or a single object), which field (dotted) and what."""

    index: int | None = None
    field: str
    message: str


class ErrorOut(_Out):
    error: str
    details: list[IngestErrorDetail]


#: Example bodies of POST /v1/events, one per layout an indexer meets most.
EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "Registered": {
        "chain_id": 84532,
        "block_number": 20110001,
        "block_hash": "0x" + "1a" * 32,
        "transaction_hash": "0x" + "2b" * 32,
        "log_index": 3,
        "registry": "identity",
        "event_type": "Registered",
        "agent_id": 42,
        "timestamp": 1767225600,
        "owner": "0x" + "aa" * 20,
        "token_uri": "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi/agent.json",
        "registry_address": "0x" + "8004" * 10,
    },
    "NewFeedback": {
        "chain_id": 84532,
        "block_number": 20110107,
        "block_hash": "0x" + "3c" * 32,
        "transaction_hash": "0x" + "4d" * 32,
        "log_index": 0,
        "registry": "reputation",
        "event_type": "NewFeedback",
        "agent_id": 42,
        "timestamp": 1767225812,
        "client_address": "0x" + "bb" * 20,
        "feedback_index": 1,
        "value": "875",
        "value_decimals": 1,
        "tag1": "uptime",
        "endpoint": "https://agent.example.org/mcp",
        "registry_address": "0x" + "8005" * 10,
        "agent_registry": "0x" + "8004" * 10,
    },
    "NewFeedback (legacy score)": {
        "chain_id": 11155111,
        "block_number": 7000123,
        "block_hash": "0x" + "5e" * 32,
        "transaction_hash": "0x" + "6f" * 32,
        "log_index": 7,
        "registry": "reputation",
        "event_type": "NewFeedback",
        "agent_id": 5,
        "timestamp": 1735689600,
        "client_address": "0x" + "cc" * 20,
        "score": 90,
    },
    "ValidationResponse": {
        "chain_id": 84532,
        "block_number": 20110230,
        "block_hash": "0x" + "70" * 32,
        "transaction_hash": "0x" + "81" * 32,
        "log_index": 1,
        "registry": "validation",
        "event_type": "ValidationResponse",
        "agent_id": 42,
        "timestamp": 1767226058,
        "validator_address": "0x" + "dd" * 20,
        "request_hash": "0x" + "92" * 32,
        "response": 100,
    },
}


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema without its null option."""
    options = [o for o in prop.get("anyOf", [prop]) if o != {"type": "null"}]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _by_event_type(properties: dict[str, Any]) -> list[dict[str, Any]]:
    """Each event type's registry and required fields (given, and not null), as
    if/then rules."""

    def given(*names: str) -> dict[str, Any]:
        return {
            "required": list(names),
            "properties": {name: _not_null(properties[name]) for name in names},
        }

    rules: list[dict[str, Any]] = []
    for event_type, required in REQUIRED_FIELDS.items():
        then = given(*required)
        then["properties"]["registry"] = {"const": EVENT_REGISTRY[event_type].value}
        if event_type == "NewFeedback":  # without the legacy score: value and its decimals
            rules.append(
                {
                    "if": {
                        "properties": {
                            "event_type": {"const": event_type},
                            "score": {"type": "null"},
                        }
                    },
                    "then": given("value", "value_decimals"),
                }
            )
        rules.append(
            {
                "if": {"properties": {"event_type": {"const": event_type}}},
                "then": then,
            }
        )
    return rules


def _precise_event(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's schema with the event types named and their rules added."""
    schema = copy.deepcopy(schema)
    schema["properties"]["event_type"] = {
        "type": "string",
        "enum": sorted(REQUIRED_FIELDS),
        "description": "The Solidity event's name.",
    }
    # int128 as a JSON integer or a decimal string (writers whose integers stop at 64 bits)
    schema["properties"]["value"] = {
        "anyOf": [
            {"type": "integer", "minimum": -MAX_ABS_VALUE, "maximum": MAX_ABS_VALUE},
            {"type": "string", "pattern": "^[+-]?[0-9]{1,39}$"},
            {"type": "null"},
        ],
        "description": "The feedback value (int128, |value| <= 10^38), scaled by value_decimals.",
    }
    schema["properties"]["score"] = {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 100},
            {"type": "string", "maxLength": 80, "pattern": f"^{DECIMAL_RE.pattern}$"},
            {"type": "null"},
        ],
        "description": "The legacy layout's score (0..100); with value given, it must "
        "equal value / 10^value_decimals.",
    }
    schema["allOf"] = _by_event_type(schema["properties"])
    return schema


def event_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of one event as posted, with example bodies."""
    schema = _precise_event(Event.model_json_schema(mode="validation"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "examples": list(EXAMPLES.values()),
    }


def _errors(*codes: int) -> dict[str, Any]:
    why = {
        400: "The body is not JSON.",
        401: "No or unknown bearer token.",
        404: "Nothing stored for this chain yet.",
        409: "An event is stored in another block and no reorg announced it: nothing "
        "of the batch is stored (`details` name each, `field` block_hash).",
        413: f"The body is over {MAX_BODY_BYTES} bytes, or holds more than {MAX_EVENTS} events.",
        422: "Invalid input: every problem of every item is listed and nothing is stored.",
    }
    error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorOut")}}}
    return {str(c): {"description": why[c], "content": error} for c in codes}


def _ok(status: int, model: str, description: str) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
        }
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    """Ingest's OpenAPI 3.1 document."""
    _, defs = models_json_schema(
        [
            (Event, "validation"),
            (CheckpointIn, "validation"),
            (ReorgIn, "validation"),
            (EventsStored, "serialization"),
            (CheckpointOut, "serialization"),
            (HeartbeatOut, "serialization"),
            (ReorgOut, "serialization"),
            (ErrorOut, "serialization"),
        ],
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(defs["$defs"])
    schemas["Event"] = _precise_event(schemas["Event"])
    event = {"$ref": REF.format(model="Event")}
    security: list[dict[str, list[str]]] = [{"bearer": []}]
    paths = {
        "/v1/events": {
            "post": {
                "operationId": "post_events",
                "summary": "Post one event or a batch of events",
                "description": (
                    "Idempotent: an event stored already in the same block counts as a "
                    "duplicate. Post in chain order."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    event,
                                    {"type": "array", "items": event, "maxItems": MAX_EVENTS},
                                ]
                            },
                            "examples": {
                                name: {"summary": name, "value": value}
                                for name, value in EXAMPLES.items()
                            },
                        }
                    },
                },
                "responses": {
                    **_ok(200, "EventsStored", "Committed before this answer."),
                    **_errors(400, 401, 409, 413, 422),
                },
                "security": security,
            }
        },
        "/v1/checkpoints": {
            "post": {
                "operationId": "post_checkpoint",
                "summary": "A heartbeat: the chain was scanned up to this block",
                "requestBody": _body({"$ref": REF.format(model="CheckpointIn")}),
                "responses": {
                    **_ok(201, "HeartbeatOut", "Stored; its tick will be relayed."),
                    **_ok(200, "HeartbeatOut", "Stored already: nothing written again."),
                    **_errors(400, 401, 413, 422),
                },
                "security": security,
            }
        },
        "/v1/checkpoints/{chain_id}": {
            "get": {
                "operationId": "get_checkpoint",
                "summary": "Where the chain's indexer resumes",
                "parameters": [
                    {
                        "name": "chain_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                    }
                ],
                "responses": {
                    **_ok(200, "CheckpointOut", "The chain's checkpoint."),
                    **_errors(401, 404, 422),
                },
                "security": security,
            }
        },
        "/v1/reorgs": {
            "post": {
                "operationId": "post_reorg",
                "summary": "Announce that blocks from from_block were replaced",
                "requestBody": _body({"$ref": REF.format(model="ReorgIn")}),
                "responses": {
                    **_ok(201, "ReorgOut", "Recorded; the replaced events' ids are free."),
                    **_errors(400, 401, 413, 422),
                },
                "security": security,
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "erc8004-backend ingest",
            "version": "1.0.0",
            "description": (
                "Where indexers post the registries' events, heartbeats and reorgs. "
                "Authenticate with `Authorization: Bearer <one of INGEST_TOKENS>`."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
