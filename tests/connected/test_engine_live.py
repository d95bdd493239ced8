"""The engine's exactness through the running services: ingest (in process, with its
relay), the matcher and the dispatcher as their own processes, real Kafka and
PostgreSQL, a real local webhook receiver."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.ingest.app import create_app
from shared.events import Event, event_key
from shared.jobs import job_id
from tests.connected.test_ingest import TOKEN, settings_for
from tests.dispatcherutil import Receiver, action_ids, results, serve, wait_for
from tests.matcherutil import insert_trigger, insert_user
from tests.procs import ServiceProcess
from tools.benchdb import scratch_topic
from tools.eventgen import make_event

pytestmark = [pytest.mark.db, pytest.mark.kafka]


@pytest.fixture
async def ingest(
    database_url: str, kafka_bootstrap: str, topic: str
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings_for(database_url, kafka_bootstrap, topic))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.fixture
async def retry_topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    async with scratch_topic(kafka_bootstrap, 3, prefix="test.retry") as name:
        yield name


@pytest.fixture
def procs() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def pipeline_env(
    env: dict[str, str], database_url: str, topic: str, actions_topic: str, retry_topic: str
) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {
        **env,
        "DATABASE_URL": database_url,
        "EVENTS_TOPIC": topic,
        "ACTIONS_TOPIC": actions_topic,
        "ACTIONS_RETRY_TOPIC": retry_topic,
        "MATCHER_GROUP": f"matcher-{run}",
        "DISPATCHER_GROUP": f"dispatcher-{run}",
        "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_CAP": "1",
    }


def start(name: str, env: dict[str, str], tmp: Path, procs: list[ServiceProcess]) -> None:
    proc = ServiceProcess(name, env, tmp).start()
    procs.append(proc)
    proc.wait_http("/readyz", timeout=60)


def feedback(chain: int, block: int, score: int, *, block_hash: str) -> Event:
    raw = make_event(
        random.Random(block),
        chain_id=chain,
        block_number=block,
        log_index=0,
        event_type="NewFeedback",
        agent_id=42,
        legacy=True,
        block_hash=block_hash,
    )
    raw["score"] = score
    raw["timestamp"] = int(time.time()) - 60
    return Event.model_validate(raw)


async def post(client: TestClient[Any, Any], path: str, body: Any) -> Any:
    resp = await client.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def test_a_reorg_replacement_fires_again_and_is_delivered(
    db: asyncpg.Connection,
    ingest: TestClient[Any, Any],
    pipeline_env: dict[str, str],
    tmp_path: Path,
    procs: list[ServiceProcess],
) -> None:
    """Issue 12, item 1: score < 50 with a webhook; a feedback at block 100 (score 10)
    is delivered; a reorg replaces block 100; the canonical feedback there (score 20)
    is a new firing, delivered with its own Idempotency-Key and audit row."""
    chain = random.randrange(10_000_000, 2**31 - 1)
    async with serve(Receiver()) as receiver:
        user = await insert_user(db)
        trigger = await insert_trigger(
            db,
            user_id=user,
            chain_id=chain,
            registry="reputation",
            conditions=[{"condition_type": "score_threshold", "operator": "<", "value": "50"}],
            actions=[{"action_type": "rest", "config": {"url": f"{receiver.base}/hook"}}],
        )
        (action,) = await action_ids(db, trigger)
        start("matcher", pipeline_env, tmp_path, procs)
        start("dispatcher", pipeline_env, tmp_path, procs)

        first = feedback(chain, 100, 10, block_hash="0x" + "01" * 32)
        await post(ingest, "/v1/events", first.model_dump(mode="json"))
        await wait_for(lambda: delivered(receiver, 1), within=60, what="the first delivery")

        reorg = await post(ingest, "/v1/reorgs", {"chain_id": chain, "from_block": 100})
        assert reorg["released_event_ids"] == [first.id]
        canonical = feedback(chain, 100, 20, block_hash="0x" + "02" * 32)
        assert canonical.id == first.id
        await post(ingest, "/v1/events", canonical.model_dump(mode="json"))
        await wait_for(lambda: delivered(receiver, 2), within=60, what="the canonical delivery")
        await asyncio.sleep(1.0)  # nothing more may arrive

    keys = [seen.headers["idempotency-key"] for seen in receiver.seen]
    assert keys == [
        job_id(trigger, event_key(first), action),
        job_id(trigger, event_key(canonical), action),
    ]
    assert [seen.json()["event"]["score"] for seen in receiver.seen] == ["10", "20"]
    for key in keys:
        assert [r["status"] for r in await results(db, key)] == ["success"]


async def delivered(receiver: Receiver, n: int) -> bool:
    return len(receiver.seen) >= n
