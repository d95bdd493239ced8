"""Write the machine-readable contracts into docs/ (docs/api.md describes them):
the API's and ingest's OpenAPI documents, the AsyncAPI document of the four Kafka
topics and the JSON Schema of a posted event, each generated from the pydantic
models the services validate with. ``--check`` writes nothing and exits 1 when a
committed file differs from what would be written (``make contracts`` writes them).

    python -m tools.contracts [--check] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.api.routes import document as api_document
from services.ingest.openapi import document as ingest_document
from services.ingest.openapi import event_schema
from shared.contract import topics
from shared.contract.jobs import (
    EVENT_DERIVED,
    ActionJob,
    DeadLetter,
    EventMessage,
    RetractionMessage,
    TickMessage,
    UnreadableLetter,
)
from shared.platform.entrypoint import cli_parser

ROOT = Path(__file__).resolve().parent.parent
MESSAGE_REF = "#/components/schemas/{model}"

#: topic -> (what it carries, its key, producers, consumers (service, group), messages)
TOPIC_FLOWS: Final[dict[str, dict[str, Any]]] = {
    topics.EVENTS: {
        "description": "Stored events, reorg retractions and heartbeat ticks, relayed from "
        "ingest's outbox in each chain's order.",
        "key": "The chain id as decimal text (shared.contract.topics.partition_key): one "
        "chain is one partition, consumed in order.",
        "producers": ["ingest"],
        "consumers": [("matcher", topics.MATCHER_GROUP)],
        "messages": (EventMessage, RetractionMessage, TickMessage),
    },
    topics.ACTIONS: {
        "description": "The first attempt of each action a firing owes; a redrive sends "
        "a job again as attempt 1 with the same job_id.",
        "key": "The trigger id.",
        "producers": ["matcher", "api"],
        "consumers": [("dispatcher", topics.DISPATCHER_GROUP)],
        "messages": (ActionJob,),
    },
    topics.ACTIONS_RETRY: {
        "description": "Later attempts, deferred jobs and guard copies, due at due_at.",
        "key": "The trigger id.",
        "producers": ["dispatcher"],
        "consumers": [("dispatcher", f"{topics.DISPATCHER_GROUP}.retry")],
        "messages": (ActionJob,),
    },
    topics.ACTIONS_DLQ: {
        "description": "Jobs whose last attempt failed, and messages of the action "
        "topics that were not jobs. Read by operators; no service consumes it.",
        "key": "The trigger id (an unreadable message keeps its own key).",
        "producers": ["dispatcher"],
        "consumers": [],
        "messages": (DeadLetter, UnreadableLetter),
    },
}


def _operation_id(action: str, service: str, topic: str) -> str:
    return f"{service}_{action}_{topic.replace('.', '_')}"


def _job_event(schemas: dict[str, Any]) -> None:
    """A job carries its event without the empty fields and without the derived ``id``
    and ``block_time`` (``ActionJob.dump``): the job's event gets a schema of its own
    that does not require those two."""
    if "Event" not in schemas or "ActionJob" not in schemas:
        return
    event = copy.deepcopy(schemas["Event"])
    event["required"] = [f for f in event["required"] if f not in EVENT_DERIVED]
    event["title"] = "JobEvent"
    event["description"] = (
        "The event of an action job: an Event written without its empty (null) fields "
        "and without the derived id and block_time, which a reader computes."
    )
    schemas["JobEvent"] = event
    schemas["ActionJob"]["properties"]["event"] = {"$ref": MESSAGE_REF.format(model="JobEvent")}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document: every topic with its messages (their JSON Schemas
    from the models), its key, and the services producing and consuming it."""
    models: list[type[BaseModel]] = []
    for flow in TOPIC_FLOWS.values():
        models += [m for m in flow["messages"] if m not in models]
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template=MESSAGE_REF)
    _job_event(defs.get("$defs", {}))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    partitions = {spec.name: spec.partitions for spec in topics.TOPICS}
    for topic, flow in TOPIC_FLOWS.items():
        channel_id = topic.replace(".", "_")
        channel_messages = {}
        for model in flow["messages"]:
            messages[model.__name__] = {
                "name": model.__name__,
                "title": model.__name__,
                "summary": (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
                "contentType": "application/json",
                "payload": {"$ref": MESSAGE_REF.format(model=model.__name__)},
            }
            channel_messages[model.__name__] = {"$ref": f"#/components/messages/{model.__name__}"}
        channels[channel_id] = {
            "address": topic,
            "description": f"{flow['description']} Key: {flow['key']}",
            "messages": channel_messages,
            "bindings": {"kafka": {"topic": topic, "partitions": partitions[topic]}},
        }
        refs = [{"$ref": f"#/channels/{channel_id}/messages/{name}"} for name in channel_messages]
        for service in flow["producers"]:
            operations[_operation_id("produces", service, topic)] = {
                "action": "send",
                "title": f"{service} produces to {topic}",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": refs,
                "bindings": {"kafka": {"clientId": {"type": "string", "enum": [service]}}},
            }
        for service, group in flow["consumers"]:
            operations[_operation_id("consumes", service, topic)] = {
                "action": "receive",
                "title": f"{service} consumes {topic} (group {group})",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": refs,
                "bindings": {"kafka": {"groupId": {"type": "string", "enum": [group]}}},
            }
    for message, flow_key in _message_keys().items():
        messages[message]["bindings"] = {
            "kafka": {"key": {"type": "string", "description": flow_key}}
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "erc8004-backend topics",
            "version": "1.0.0",
            "description": (
                "The Kafka topics between ingest, the matcher, the dispatcher and the API. "
                "Values are JSON; keys are UTF-8 text."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs.get("$defs", {})},
    }


def _message_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for flow in TOPIC_FLOWS.values():
        for model in flow["messages"]:
            keys.setdefault(model.__name__, flow["key"])
    return keys


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def _yaml(document: dict[str, Any]) -> str:
    text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return text


#: path under the output directory -> how its text is made
FILES: Final[dict[str, Callable[[], str]]] = {
    "openapi/api.json": lambda: _json(api_document()),
    "openapi/ingest.json": lambda: _json(ingest_document()),
    "asyncapi.yaml": lambda: _yaml(asyncapi()),
    "schemas/event.schema.json": lambda: _json(event_schema()),
}


def stale(out: Path) -> list[str]:
    """The files under ``out`` that differ from what would be written."""
    return [
        name
        for name, make in FILES.items()
        if not (out / name).is_file() or (out / name).read_text() != make()
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "tools.contracts",
        "Write the OpenAPI documents of the API and ingest, the AsyncAPI document of the "
        "Kafka topics and the event's JSON Schema, generated from the models, into docs/ "
        "(see docs/api.md).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and name the files that differ from what would be written",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs",
        help="the directory to write into or check",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out: Path = args.out
    if args.check:
        names = stale(out)
        for name in names:
            sys.stderr.write(f"stale: {out / name} (run `make contracts`)\n")
        return 1 if names else 0
    for name, make in FILES.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
