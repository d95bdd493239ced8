"""Backup and restore (tools/backup.py, make backup / make restore): a populated
database dumped with pg_dump -Fc and restored into a fresh database, on which
the pipeline carries on: ingest accepts new events (and still knows the old
ones), the relay moves them to Kafka, maintenance runs as the ingest's role."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.ingest.maintenance import (
    MaintenanceMetrics,
    MaintenanceScheduler,
    RetentionPolicy,
    default_tasks,
)
from services.ingest.settings import IngestSettings
from shared.contract.jobs import parse_topic_message
from shared.platform.db import create_pool
from tests.ingestutil import ingest_client
from tests.kafkautil import read_topic
from tests.matcherutil import NEW_FEEDBACK, insert_trigger, random_chain
from tools.backup import database_name, dump, restore
from tools.benchdb import drop_database
from tools.eventgen import make_event

pytestmark = [pytest.mark.db, pytest.mark.kafka, pytest.mark.slow]

TOKEN = "backup-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings(database_url: str, bootstrap: str, topic: str) -> IngestSettings:
    return IngestSettings(
        database_url=SecretStr(database_url),
        kafka_bootstrap_servers=bootstrap,
        ingest_tokens=(SecretStr(TOKEN),),
        events_topic=topic,
        relay_poll_interval=0.2,
        maintenance_enabled=False,
        ops_port=0,
    )


def events(chain: int, blocks: range) -> list[dict[str, object]]:
    rng = random.Random(chain)
    return [make_event(rng, chain_id=chain, block_number=b, log_index=0) for b in blocks]


async def wait_outbox_empty(db: asyncpg.Connection, within: float = 30) -> None:
    for _ in range(int(within / 0.2)):
        if await db.fetchval("SELECT count(*) FROM event_outbox") == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the relay did not empty the outbox")


async def snapshot(conn: asyncpg.Connection) -> dict[str, object]:
    return {
        "events": await conn.fetchval("SELECT count(*) FROM events"),
        "event_ids": await conn.fetchval("SELECT count(*) FROM event_ids"),
        "checkpoints": [tuple(r) for r in await conn.fetch("SELECT * FROM checkpoints ORDER BY 1")],
        "triggers": await conn.fetchval("SELECT count(*) FROM triggers"),
        "conditions": await conn.fetchval("SELECT count(*) FROM trigger_conditions"),
        "partitions": sorted(
            r[0]
            for r in await conn.fetch(
                "SELECT inhrelid::regclass::text FROM pg_inherits"
                " WHERE inhparent = 'events'::regclass"
            )
        ),
        "migrations": [
            r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        ],
        "outbox_seq": await conn.fetchval("SELECT last_value FROM event_outbox_seq_seq"),
    }


@pytest.fixture
async def restored_name(admin_url: str) -> AsyncIterator[str]:
    name = f"erc8004_test_restore_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_database(admin_url, name)


async def test_a_restored_dump_carries_the_pipeline_on(
    database_url: str,
    db: asyncpg.Connection,
    kafka_bootstrap: str,
    topic: str,
    tmp_path: Path,
    restored_name: str,
) -> None:
    chain = random_chain(10_000_000)
    await insert_trigger(db, chain_id=chain, conditions=NEW_FEEDBACK)
    before = events(chain, range(1, 41))
    async with ingest_client(settings(database_url, kafka_bootstrap, topic)) as client:
        resp = await client.post("/v1/events", json=before, headers=AUTH)
        assert await resp.json() == {"accepted": 40, "duplicates": 0}
        await wait_outbox_empty(db)
    original = await snapshot(db)

    # Back up (pg_dump -Fc), restore into a database of its own.
    dump_file = dump(database_url, tmp_path)
    assert dump_file.suffix == ".dump"
    assert dump_file.read_bytes()[:5] == b"PGDMP"  # the custom format
    assert dump_file.name.startswith(database_name(database_url))
    restored_url = await restore(database_url, dump_file, restored_name)
    with pytest.raises(asyncpg.DuplicateDatabaseError):  # never over an existing one
        await restore(database_url, dump_file, restored_name)

    conn = await asyncpg.connect(restored_url)
    try:
        assert await snapshot(conn) == original
        assert await conn.fetchval("SELECT count(*) FROM events_hourly") >= 0

        # The pipeline carries on, against the restored database only.
        after = events(chain, range(41, 61))
        async with ingest_client(settings(restored_url, kafka_bootstrap, topic)) as client:
            resp = await client.post("/v1/events", json=[*after, before[0]], headers=AUTH)
            # The old event is known (event_ids restored): a duplicate, not stored again.
            assert await resp.json() == {"accepted": 20, "duplicates": 1}
            resp = await client.get(f"/v1/checkpoints/{chain}", headers=AUTH)
            assert (await resp.json())["last_block_number"] == 60
            await wait_outbox_empty(conn)
        assert await conn.fetchval("SELECT count(*) FROM events WHERE chain_id = $1", chain) == 60
        # New outbox rows continue the restored sequence (no reuse of relayed seqs).
        assert (
            await conn.fetchval("SELECT last_value FROM event_outbox_seq_seq")
            > original["outbox_seq"]
        )

        # Maintenance runs on it as the ingest's role (grants and wrappers restored).
        pool = await create_pool(
            restored_url, role="erc8004_ingest", application_name="t", max_size=1
        )
        try:
            tasks = default_tasks(RetentionPolicy())
            scheduler = MaintenanceScheduler(
                pool=pool,
                tasks=tasks,
                metrics=MaintenanceMetrics.create(
                    CollectorRegistry(), service="ingest", tasks=tasks
                ),
            )
            outcomes = await scheduler.run_all()
            assert set(outcomes.values()) == {"success"}, outcomes
        finally:
            await pool.close()
        assert (
            await conn.fetchval(
                "SELECT sum(event_count) FROM events_hourly WHERE chain_id = $1", chain
            )
            == 60
        )
    finally:
        await conn.close()

    # Kafka got the 40 events relayed before the backup and the 20 after it.
    records = await read_topic(kafka_bootstrap, topic, expect=60, within=30)
    blocks = sorted(parse_topic_message(r.value).event.block_number for r in records)  # type: ignore[union-attr]
    assert blocks == list(range(1, 61))
