"""Ingest under faults: the process killed (-9) mid-load, Kafka stopped mid-load.
Nothing an indexer was told is stored may go missing from the table or the topic."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared.contract.jobs import parse_topic_message
from tests.kafkautil import read_topic
from tests.procs import ROOT, ServiceProcess
from tools.eventgen import stream, take

pytestmark = [pytest.mark.db, pytest.mark.kafka, pytest.mark.slow, pytest.mark.serial]

TOKEN = "dev-indexer-token"


def local_postgres() -> bool:
    """The cluster is the local one (deploy/local/postgres.sh), which we may stop."""
    if "LOCAL_DB" in os.environ:
        return os.environ["LOCAL_DB"] == "1"
    return "DATABASE_URL" not in os.environ


def local_kafka() -> bool:
    """The broker is the local one (deploy/local/kafka.sh), which we may stop:
    deploy/local/with-env says so in LOCAL_KAFKA; without it, no address was given."""
    if "LOCAL_KAFKA" in os.environ:
        return os.environ["LOCAL_KAFKA"] == "1"
    return "KAFKA_BOOTSTRAP_SERVERS" not in os.environ


class Poster:
    """An indexer: posts batches, remembers what was acknowledged, retries the rest."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.acked: set[str] = set()
        self.failed_posts = 0

    async def post(self, session: aiohttp.ClientSession, batch: list[dict[str, Any]]) -> bool:
        try:
            async with session.post(
                f"{self.base}/v1/events",
                json=batch,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=aiohttp.ClientTimeout(total=20),
            ) as resp:
                if resp.status == 200:
                    self.acked.update(
                        f"{e['chain_id']}-{e['block_number']}-{e['log_index']}" for e in batch
                    )
                    return True
        except (aiohttp.ClientError, TimeoutError):
            pass
        self.failed_posts += 1
        return False

    def start(
        self,
        session: aiohttp.ClientSession,
        pending: list[list[dict[str, Any]]],
        *,
        workers: int = 4,
    ) -> list[asyncio.Task[None]]:
        """Workers posting ``pending`` until it is empty; what is not acknowledged is
        posted again, as an indexer would."""

        async def worker() -> None:
            while pending:
                batch = pending.pop(0)
                if not await self.post(session, batch):
                    pending.append(batch)
                    await asyncio.sleep(0.05)

        return [asyncio.create_task(worker()) for _ in range(workers)]


async def topic_ids(bootstrap: str, topic: str, expect: int) -> Counter[str]:
    records = await read_topic(bootstrap, topic, expect=expect, within=60, settle=2)
    return Counter(
        parse_topic_message(r.value).event.id  # type: ignore[union-attr]
        for r in records
        if parse_topic_message(r.value).kind == "event"
    )


async def wait_outbox_empty(db: asyncpg.Connection, topic: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await db.fetchval("SELECT count(*) FROM event_outbox WHERE topic = $1", topic) == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"outbox not drained within {within}s")


async def test_kill_9_mid_load_loses_nothing_acknowledged(
    env: dict[str, str],
    database_url: str,
    kafka_bootstrap: str,
    topic: str,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    chain = random.randrange(10_000_000, 2**31 - 1)
    events = take(stream(random.Random(11), chain_id=chain), 20_000)
    batches = [events[i : i + 100] for i in range(0, len(events), 100)]
    svc_env = {**env, "DATABASE_URL": database_url, "EVENTS_TOPIC": topic}
    ingest = ServiceProcess("ingest", svc_env, tmp_path).start()
    try:
        ingest.wait_http("/readyz")
        poster = Poster(ingest.base)
        pending = list(batches)
        async with aiohttp.ClientSession() as session:
            workers = poster.start(session, pending)
            while len(poster.acked) < 5_000:
                await asyncio.sleep(0.01)
            ingest.kill()  # -9, mid-load: requests in flight are cut off
            acked_at_kill = set(poster.acked)
            await asyncio.sleep(0.5)
            # Every event acknowledged before the kill is already in the table.
            stored = {
                r["id"] for r in await db.fetch("SELECT id FROM events WHERE chain_id = $1", chain)
            }
            assert acked_at_kill <= stored
            ingest.start()  # same port: the poster carries on against the new process
            await asyncio.gather(*workers)
        assert poster.failed_posts > 0, "the kill did not interrupt the load"
        assert len(poster.acked) == 20_000

        count = await db.fetchval("SELECT count(*) FROM events WHERE chain_id = $1", chain)
        assert count == 20_000, "an event was stored twice or lost"
        await wait_outbox_empty(db, topic, within=60)
        ids = await topic_ids(kafka_bootstrap, topic, expect=20_000)
        assert set(ids) == poster.acked
    finally:
        ingest.stop()


@pytest.mark.skipif(not local_kafka(), reason="stops the local broker; an external one is not ours")
async def test_kafka_down_ingest_keeps_accepting_and_outbox_drains(
    env: dict[str, str],
    database_url: str,
    kafka_bootstrap: str,
    topic: str,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    chain = random.randrange(10_000_000, 2**31 - 1)
    events = take(stream(random.Random(12), chain_id=chain), 6_000)
    svc_env = {**env, "DATABASE_URL": database_url, "EVENTS_TOPIC": topic}
    ingest = ServiceProcess("ingest", svc_env, tmp_path).start()
    kafka = ROOT / "deploy" / "local" / "kafka.sh"
    try:
        ingest.wait_http("/readyz")
        poster = Poster(ingest.base)
        async with aiohttp.ClientSession() as session:
            for batch in (events[i : i + 200] for i in range(0, 2_000, 200)):
                assert await poster.post(session, batch)
            await asyncio.to_thread(subprocess.run, [str(kafka), "stop"], check=True)
            try:
                for batch in (events[i : i + 200] for i in range(2_000, 6_000, 200)):
                    assert await poster.post(session, batch), "ingest refused while Kafka was down"
                await asyncio.sleep(2)
                depth = await db.fetchval(
                    "SELECT count(*) FROM event_outbox WHERE topic = $1", topic
                )
                assert depth >= 4_000, "the outbox should hold what Kafka could not take"
            finally:
                await asyncio.to_thread(subprocess.run, [str(kafka), "start"], check=True)
        drained_in = await wait_outbox_empty(db, topic, within=120)
        ids = await topic_ids(kafka_bootstrap, topic, expect=6_000)
        assert set(ids) == poster.acked
        assert len(ids) == 6_000
        assert drained_in < 120
    finally:
        ingest.stop()


@pytest.mark.skipif(
    not local_postgres(), reason="crashes the local cluster; an external one is not ours"
)
async def test_postgres_crash_mid_load_loses_nothing_acknowledged(
    env: dict[str, str], database_url: str, kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    """PostgreSQL stopped as a crash would (no checkpoint) while indexers post, then
    started again: ingest answers errors meanwhile, recovers by itself, and every
    event it acknowledged is stored once and relayed."""
    chain = random.randrange(10_000_000, 2**31 - 1)
    events = take(stream(random.Random(13), chain_id=chain), 8_000)
    pending = [events[i : i + 100] for i in range(0, len(events), 100)]
    svc_env = {**env, "DATABASE_URL": database_url, "EVENTS_TOPIC": topic}
    ingest = ServiceProcess("ingest", svc_env, tmp_path).start()
    postgres = ROOT / "deploy" / "local" / "postgres.sh"
    try:
        ingest.wait_http("/readyz")
        poster = Poster(ingest.base)
        async with aiohttp.ClientSession() as session:
            workers = poster.start(session, pending)
            while len(poster.acked) < 2_000:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(
                subprocess.run,
                [str(postgres), "stop"],
                check=True,
                env={**os.environ, "PG_STOP_MODE": "immediate"},
            )
            try:
                acked_at_crash = set(poster.acked)
                await asyncio.sleep(2)
            finally:  # whatever happens, the cluster comes back for the other tests
                await asyncio.to_thread(subprocess.run, [str(postgres), "start"], check=True)
            await asyncio.wait_for(asyncio.gather(*workers), 120)
        assert poster.failed_posts > 0, "the crash did not interrupt the load"
        assert len(poster.acked) == len(events)
        db = await asyncpg.connect(database_url)
        try:
            stored = {
                r["id"] for r in await db.fetch("SELECT id FROM events WHERE chain_id = $1", chain)
            }
            assert acked_at_crash <= stored, "an acknowledged event was lost in the crash"
            assert len(stored) == len(events)
            await wait_outbox_empty(db, topic, within=60)
        finally:
            await db.close()
        ids = await topic_ids(kafka_bootstrap, topic, expect=len(events))
        assert set(ids) == poster.acked
    finally:
        ingest.stop()
