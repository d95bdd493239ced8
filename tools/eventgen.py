"""Realistic ERC-8004 event payloads, as indexers post them (JSON-ready dicts).

Used by the tests, the benchmarks and the load generator. Deterministic for a
given ``random.Random`` seed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

IDENTITY_MAINNET = "0x8004a169fb4a3325136eb29fa0ceb6d2e539a432"
TAGS = ("starred", "reachable", "uptime", "responseTime", "tradingYield")

#: event_type -> weight in a realistic mix (feedback dominates)
MIX: dict[str, int] = {
    "NewFeedback": 55,
    "FeedbackRevoked": 3,
    "ResponseAppended": 5,
    "Registered": 8,
    "URIUpdated": 3,
    "MetadataSet": 8,
    "Transfer": 3,
    "ValidationRequest": 7,
    "ValidationResponse": 8,
}
REGISTRY = {
    "NewFeedback": "reputation",
    "FeedbackRevoked": "reputation",
    "ResponseAppended": "reputation",
    "Registered": "identity",
    "URIUpdated": "identity",
    "MetadataSet": "identity",
    "Transfer": "identity",
    "MetadataUpdate": "identity",
    "ValidationRequest": "validation",
    "ValidationResponse": "validation",
}


def hex_of(rng: random.Random, nbytes: int) -> str:
    return "0x" + rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


def make_event(
    rng: random.Random,
    *,
    chain_id: int,
    block_number: int,
    log_index: int,
    event_type: str = "NewFeedback",
    agent_id: int | None = None,
    timestamp: int | None = None,
    legacy: bool | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """One event of ``event_type`` at (chain, block, log index)."""
    agent = rng.randrange(1, 5000) if agent_id is None else agent_id
    event: dict[str, Any] = {
        "chain_id": chain_id,
        "block_number": block_number,
        "block_hash": hex_of(random.Random(f"{chain_id}:{block_number}"), 32),
        "transaction_hash": hex_of(rng, 32),
        "log_index": log_index,
        "registry": REGISTRY[event_type],
        "event_type": event_type,
        "agent_id": agent,
        "timestamp": timestamp if timestamp is not None else int(time.time()) - 60,
    }
    if event_type == "NewFeedback":
        event["client_address"] = hex_of(rng, 20)
        event["feedback_index"] = rng.randrange(1, 50)
        tag = rng.choice(TAGS)
        event["tag1"] = tag
        event["tag2"] = rng.choice(("day", "week", ""))
        event["file_uri"] = f"ipfs://bafy{rng.getrandbits(64):016x}"
        event["file_hash"] = hex_of(rng, 32)
        if legacy if legacy is not None else rng.random() < 0.3:
            event["score"] = rng.randrange(0, 101)
        else:
            event["value"] = rng.randrange(-10_000, 10_001)
            event["value_decimals"] = 2
            event["endpoint"] = "https://agent.example/mcp"
    elif event_type == "FeedbackRevoked":
        event["client_address"] = hex_of(rng, 20)
        event["feedback_index"] = rng.randrange(1, 50)
    elif event_type == "ResponseAppended":
        event["client_address"] = hex_of(rng, 20)
        event["feedback_index"] = rng.randrange(1, 50)
        event["responder"] = hex_of(rng, 20)
        event["response_uri"] = f"ipfs://bafy{rng.getrandbits(64):016x}"
        event["response_hash"] = hex_of(rng, 32)
    elif event_type == "Registered":
        event["token_uri"] = f"ipfs://bafy{rng.getrandbits(64):016x}"
        event["owner"] = hex_of(rng, 20)
    elif event_type == "URIUpdated":
        event["token_uri"] = f"https://agents.example/{agent}.json"
        event["updated_by"] = hex_of(rng, 20)
    elif event_type == "MetadataSet":
        event["metadata_key"] = "agentWallet"
        event["metadata_value"] = hex_of(rng, 20)
    elif event_type == "Transfer":
        event["owner"] = hex_of(rng, 20)
        event["previous_owner"] = hex_of(rng, 20)
    elif event_type == "ValidationRequest":
        event["validator_address"] = hex_of(rng, 20)
        event["request_uri"] = f"ipfs://bafy{rng.getrandbits(64):016x}"
        event["request_hash"] = hex_of(rng, 32)
    elif event_type == "ValidationResponse":
        event["validator_address"] = hex_of(rng, 20)
        event["request_hash"] = hex_of(rng, 32)
        event["response"] = rng.randrange(0, 101)
        event["response_uri"] = f"ipfs://bafy{rng.getrandbits(64):016x}"
        event["response_hash"] = hex_of(rng, 32)
        event["tag"] = rng.choice(("soft-finality", "hard-finality", ""))
    event.update(overrides)
    return event


def stream(
    rng: random.Random,
    *,
    chain_id: int,
    start_block: int = 1_000_000,
    per_block: int = 4,
    mix: dict[str, int] | None = None,
    timestamp: int | None = None,
) -> Iterator[dict[str, Any]]:
    """An endless chain-ordered stream of events of a realistic mix."""
    weights = mix or MIX
    kinds, cum = list(weights), list(weights.values())
    block = start_block
    ts = timestamp if timestamp is not None else int(time.time()) - 3600
    while True:
        for log_index in range(per_block):
            kind = rng.choices(kinds, cum)[0]
            yield make_event(
                rng,
                chain_id=chain_id,
                block_number=block,
                log_index=log_index,
                event_type=kind,
                timestamp=ts,
            )
        block += 1
        ts += 2


def take(it: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [next(it) for _ in range(n)]
