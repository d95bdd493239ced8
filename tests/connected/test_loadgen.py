"""The load generator against a real ingest (in-process, real PostgreSQL and Kafka):
what it reports acknowledged is what ingest stored, its re-posts are counted as
duplicates, and its reorgs replace the blocks they name."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp import web

from services.ingest.app import create_app
from tests.ingestutil import TOKEN, settings_for
from tests.kafkautil import read_topic
from tools.loadgen import LoadGenerator, Settings
from tools.localnet import free_port

pytestmark = [pytest.mark.db, pytest.mark.kafka]


async def test_loadgen_posts_batches_singles_duplicates_and_reorgs(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, topic: str
) -> None:
    runner = web.AppRunner(create_app(settings_for(database_url, kafka_bootstrap, topic)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    acked: list[dict[str, object]] = []
    try:
        gen = LoadGenerator(
            Settings(
                base=f"http://127.0.0.1:{port}",
                token=TOKEN,
                chains=(11, 12),
                events=2000,
                rate=0,
                batch=100,
                single=0.2,
                duplicates=0.3,
                reorg_every=500,
                reorg_depth=2,
                seed=3,
            ),
            on_ack=lambda e, _t: acked.append(e),
        )
        stats = await gen.run()
        # The relay runs in the app: let it empty the outbox before stopping it.
        for _ in range(300):
            if await db.fetchval("SELECT count(*) FROM event_outbox") == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()

    assert stats.reorgs >= 2
    assert stats.replaced > 0
    assert stats.duplicates_answered > 0  # re-posted batches were counted, not stored
    assert stats.acked_events == len(acked) == 2000 + stats.replaced
    # Every acknowledged version is stored once; replaced blocks are in reorgs.
    stored = await db.fetchval("SELECT count(*) FROM events WHERE chain_id IN (11, 12)")
    assert stored == stats.acked_events
    assert await db.fetchval("SELECT count(*) FROM reorgs") == stats.reorgs
    ids = await db.fetchval("SELECT count(DISTINCT id) FROM events WHERE chain_id IN (11, 12)")
    assert ids == 2000  # replacements share their positions' ids
    records = await read_topic(kafka_bootstrap, topic, expect=stored + stats.reorgs, within=30)
    assert len(records) >= stored
