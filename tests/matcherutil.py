"""Helpers for matcher tests: triggers written straight into the database (as the
API or plain SQL would), events produced as the ingest relay does."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from shared.contract.events import Event
from shared.contract.jobs import EventMessage, dump_message
from shared.contract.topics import partition_key


async def insert_user(db: asyncpg.Connection) -> str:
    user_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO users (id, username, email, password_hash) VALUES ($1, $2, $3, 'x')",
        user_id,
        f"u{user_id[:8]}",
        f"{user_id[:8]}@example.org",
    )
    return user_id


async def insert_trigger(
    db: asyncpg.Connection,
    *,
    user_id: str,
    chain_id: int,
    registry: str,
    conditions: Sequence[dict[str, Any]],
    name: str = "t",
    cooldown_seconds: int | None = None,
    enabled: bool = True,
    actions: Sequence[dict[str, Any]] | None = None,
) -> str:
    """A trigger with its conditions and actions, in one transaction."""
    actions = actions or [
        {"action_type": "rest", "config": {"url": "http://127.0.0.1:9/hook", "method": "POST"}}
    ]
    async with db.transaction():
        trigger_id: str = await db.fetchval(
            """INSERT INTO triggers (user_id, name, chain_id, registry, enabled, cooldown_seconds,
                                     is_stateful)
               VALUES ($1, $2, $3, $4, $5, $6, false) RETURNING id""",
            user_id,
            name,
            chain_id,
            registry,
            enabled,
            cooldown_seconds,
        )
        for c in conditions:
            await db.execute(
                """INSERT INTO trigger_conditions (trigger_id, condition_type, field, operator,
                                                   value, config)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb)""",
                trigger_id,
                c["condition_type"],
                c.get("field", ""),
                c["operator"],
                c.get("value", ""),
                c.get("config") or {},
            )
        for a in actions:
            await db.execute(
                """INSERT INTO trigger_actions (trigger_id, action_type, config)
                   VALUES ($1, $2, $3::jsonb)""",
                trigger_id,
                a["action_type"],
                a["config"],
            )
    return trigger_id


def chains_over_partitions(partitions: int) -> list[int]:
    """Random chain ids, one per partition of the topic (the producer's own
    partitioner on the chain key), so a test of several consumers never depends on
    the hash sending every chain to one of them."""
    every = list(range(partitions))
    found: dict[int, int] = {}
    while len(found) < partitions:
        chain = random.randrange(1_000_000, 2**31 - 1)
        found.setdefault(DefaultPartitioner()(partition_key(chain), every, every), chain)
    return [found[p] for p in every]


async def produce_events(
    bootstrap: str, topic: str, events: Sequence[Event], *, ingested_at: datetime | None = None
) -> None:
    at = ingested_at or datetime.now(UTC)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                dump_message(EventMessage(kind="event", event=e, ingested_at=at)),
                key=partition_key(e.chain_id, e.agent_id),
            )
            for e in events
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def produce_slowly(
    bootstrap: str, topic: str, events: Sequence[Event], chunk: int, *, pause: float = 0.15
) -> None:
    """The events in chunks with a pause between: a stream that goes on for a while."""
    for i in range(0, len(events), chunk):
        await produce_events(bootstrap, topic, events[i : i + chunk])
        await asyncio.sleep(pause)
