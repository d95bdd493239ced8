"""Helpers for matcher tests: triggers written straight into the database (as the
API or plain SQL would), events produced as the ingest relay does, the matcher
under test as a process of its own."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from shared.contract.events import Event
from shared.contract.jobs import (
    ActionJob,
    EventMessage,
    RetractionMessage,
    TickMessage,
    dump_message,
)
from shared.contract.topics import partition_key
from tests.conftest import UnderTest
from tests.kafkautil import read_topic
from tools import benchkit


async def insert_user(db: asyncpg.Connection) -> str:
    """A new user (username u + 8 hex digits of its id); its id."""
    return await benchkit.insert_user(db, "u")


#: A trigger's conditions: every NewFeedback.
NEW_FEEDBACK: list[dict[str, Any]] = [
    {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"}
]


def random_chain(low: int = 1_000_000) -> int:
    """A random chain id (``low`` or above): a chain no other test uses."""
    return random.randrange(low, 2**31 - 1)


async def insert_trigger(
    db: asyncpg.Connection,
    *,
    chain_id: int,
    conditions: Sequence[dict[str, Any]],
    user_id: str | None = None,
    registry: str = "reputation",
    name: str = "t",
    cooldown_seconds: int | None = None,
    enabled: bool = True,
    actions: Sequence[dict[str, Any]] | None = None,
) -> str:
    """A trigger with its conditions and actions, in one transaction; of a new user
    (insert_user) when no ``user_id`` is given."""
    if user_id is None:
        user_id = await insert_user(db)
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
        chain = random_chain()
        found.setdefault(DefaultPartitioner()(partition_key(chain), every, every), chain)
    return [found[p] for p in every]


async def produce_events(
    bootstrap: str, topic: str, events: Sequence[Event], *, ingested_at: datetime | None = None
) -> None:
    at = ingested_at or datetime.now(UTC)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for future in await benchkit.send_events(producer, topic, events, ingested_at=at):
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


async def produce_keyed(
    bootstrap: str, topic: str, messages: Sequence[RetractionMessage | TickMessage | Event]
) -> None:
    """Events, retractions and heartbeats, in order, on their chain's partition (as
    ingest does)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for m in messages:
            body = m if not isinstance(m, Event) else EventMessage(
                kind="event", event=m, ingested_at=datetime.now(UTC)
            )  # fmt: skip
            await producer.send_and_wait(topic, dump_message(body), key=partition_key(m.chain_id))
    finally:
        await producer.stop()


@dataclass
class Matching(UnderTest):
    """The matcher under test (its environment names EVENTS_TOPIC, ACTIONS_TOPIC, ...):
    the events given to it, the jobs it produced."""

    name = "matcher"

    @property
    def topic(self) -> str:
        return self.env["EVENTS_TOPIC"]

    @property
    def actions_topic(self) -> str:
        return self.env["ACTIONS_TOPIC"]

    async def produce(
        self, events: Sequence[Event], *, ingested_at: datetime | None = None
    ) -> None:
        await produce_events(self.bootstrap, self.topic, events, ingested_at=ingested_at)

    async def produce_keyed(
        self, messages: Sequence[RetractionMessage | TickMessage | Event]
    ) -> None:
        await produce_keyed(self.bootstrap, self.topic, messages)

    async def produce_slowly(
        self, events: Sequence[Event], chunk: int, *, pause: float = 0.15
    ) -> None:
        await produce_slowly(self.bootstrap, self.topic, events, chunk, pause=pause)

    async def jobs(self, expect: int) -> list[ActionJob]:
        """The jobs on the actions topic once ``expect`` arrived (or 60 s passed), and
        1.5 s more (a duplicate shows)."""
        records = await read_topic(
            self.bootstrap, self.actions_topic, expect=expect, within=60, settle=1.5
        )
        return [ActionJob.parse(r.value) for r in records]


#: An EMA (alpha 0.5) below 40, of the whole trigger.
EMA_BELOW_40 = [
    {"condition_type": "ema_threshold", "field": "score", "operator": "<", "value": "40",
     "config": {"alpha": "0.5"}},
]  # fmt: skip


async def ema_of(db: asyncpg.Connection, trigger: str, scope: str = "") -> Decimal | None:
    """The EMA a one-condition trigger keeps in a state row ('' the trigger's); None
    without one (no row, or a row a recomputation emptied)."""
    state = await db.fetchval(
        "SELECT state_data FROM trigger_state WHERE trigger_id = $1 AND scope_key = $2",
        trigger,
        scope,
    )
    conditions = (state or {}).get("conditions") or {}
    if not conditions:
        return None
    (ema,) = conditions.values()
    return Decimal(ema["ema"]) if ema.get("ema") is not None else None
