"""The engine's exactness through the running services: ingest (in process, with its
relay), the matcher and the dispatcher as their own processes, real Kafka and
PostgreSQL, a real local webhook receiver."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import hypothesis
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer

from services.ingest.app import create_app
from shared.events import Event, event_key
from shared.jobs import ActionJob, EventMessage, RetractionMessage, dump_message, job_id
from shared.kafka import LagProbe
from shared.topics import event_key as topic_key
from tests.apiutil import store_events
from tests.connected.test_ingest import TOKEN, settings_for
from tests.dispatcherutil import Receiver, action_ids, results, serve, wait_for
from tests.engine_strategies import CHAINS, cases
from tests.kafkautil import read_topic
from tests.matcherutil import insert_trigger, insert_user
from tests.procs import ServiceProcess
from tests.reference import Step, reference_firings
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


# --------------------------------------------------------------------------- differential


def draw_cases(n: int, seed: int) -> list[tuple[dict[str, Any], list[Step]]]:
    """n cases of tests/engine_strategies.py, the same ones for a seed: of 10n drawn,
    one per distinct trigger (hypothesis repeats and mutates its examples), the n with
    the most steps (it starts with its smallest)."""
    drawn: list[tuple[dict[str, Any], list[Step]]] = []

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=10 * n,
        database=None,
        phases=[hypothesis.Phase.generate],
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(cases())
    def draw(found: tuple[dict[str, Any], list[Step]]) -> None:
        drawn.append(found)

    draw()
    distinct: dict[str, tuple[dict[str, Any], list[Step]]] = {}
    for case in drawn:
        key = json.dumps(case[0], sort_keys=True)
        if key not in distinct or len(case[1]) > len(distinct[key][1]):
            distinct[key] = case
    return sorted(distinct.values(), key=lambda case: len(case[1]), reverse=True)[:n]


def remap(
    case: tuple[dict[str, Any], list[Step]], chains: dict[int, int]
) -> tuple[dict[str, Any], list[Step]]:
    """The case on chains of its own: the live matcher serves every case at once."""
    trigger, steps = case
    out: list[Step] = []
    for kind, payload in steps:
        if kind == "event":
            # validated again, not model_copy: id is derived (and cached) from chain_id
            raw = payload.model_dump(mode="json", exclude={"id", "block_time"})
            out.append((kind, Event.model_validate({**raw, "chain_id": chains[raw["chain_id"]]})))
        elif kind == "retract":
            keys = set()
            for key in payload:
                chain, _, rest = key.partition("-")
                keys.add(f"{chains[int(chain)]}-{rest}")
            out.append((kind, frozenset(keys)))
        else:
            out.append((kind, {**payload, "chain_id": chains[payload["chain_id"]]}))
    return {**trigger, "chain_id": chains[trigger["chain_id"]]}, out


def until_first_edit(steps: list[Step]) -> list[Step]:
    """Edits take effect in the live matcher when its index reloads, not at a point of
    the stream; the unit differential test covers them (tests/unit)."""
    out = []
    for step in steps:
        if step[0] == "edit":
            break
        out.append(step)
    return out


def topic_messages(steps: list[Step]) -> list[tuple[bytes, bytes]]:
    """(key, value) of erc8004.events for the steps, as ingest would produce them."""
    now = datetime.now(UTC)
    out = []
    for kind, payload in steps:
        if kind == "event":
            message = EventMessage(kind="event", event=payload, ingested_at=now)
            out.append((topic_key(payload.chain_id), dump_message(message)))
        else:
            chain = int(next(iter(payload)).partition("-")[0])
            blocks = [int(k.split("-")[1]) for k in payload]
            retraction = RetractionMessage(
                kind="retraction",
                chain_id=chain,
                from_block=min(blocks),
                reorg_id=uuid.uuid4().hex,
                created_at=now,
                event_keys=tuple(sorted(payload)),
            )
            out.append((topic_key(chain), dump_message(retraction)))
    return out


async def produce_in_chunks(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes, bytes]],
    chunk: int,
    pause: float,
    halfway: asyncio.Event,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(0, len(messages), chunk):
            if i >= len(messages) // 2:
                halfway.set()
            futures = [
                await producer.send(topic, value, key=key) for key, value in messages[i : i + chunk]
            ]
            await asyncio.gather(*futures)
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


@pytest.mark.slow
async def test_live_matchers_fire_exactly_where_the_reference_does(
    db: asyncpg.Connection,
    pipeline_env: dict[str, str],
    kafka_bootstrap: str,
    topic: str,
    actions_topic: str,
    tmp_path: Path,
    procs: list[ServiceProcess],
) -> None:
    """Random triggers and histories (tests/engine_strategies.py: every condition
    type, groups, mixed scopes, cooldowns, several agents on two chains each, both
    feedback layouts, revocations, reorgs with replacements, stored in the events table
    as ingest stores them) through two live matcher
    processes at once, one of them killed (-9) mid-stream and started again (a
    rebalance each time, and redelivery of what it had not committed): the set of
    (trigger, event version) firings on erc8004.actions equals the reference
    evaluator's (tests/reference.py, written from docs/semantics.md alone)."""
    seed = os.environ.get("ENGINE_LIVE_SEED")
    base = int(seed) if seed else random.randrange(10_000_000, 2**31 - 100_000)
    user = await insert_user(db)
    expected: set[tuple[str, str]] = set()
    drawn: dict[str, tuple[dict[str, Any], list[Step]]] = {}
    lanes: list[list[tuple[bytes, bytes]]] = []
    for n, case in enumerate(draw_cases(24, seed=base)):
        chains = {c: base + 2 * n + i for i, c in enumerate(CHAINS)}
        trigger, steps = remap(case, chains)
        steps = until_first_edit(steps)
        trigger_id = await insert_trigger(
            db,
            user_id=user,
            chain_id=trigger["chain_id"],
            registry=trigger["registry"],
            conditions=trigger["conditions"],
            cooldown_seconds=trigger.get("cooldown_seconds"),
        )
        expected |= {(trigger_id, v) for v in reference_firings(trigger, steps)}
        drawn[trigger_id] = (trigger, steps)
        lanes.append(topic_messages(steps))
        # stored as ingest stores them: a recomputation reads the events back
        await store_events(db, [e for kind, e in steps if kind == "event"])
    # every case's messages in its own order, the cases interleaved
    messages = [m for group in itertools.zip_longest(*lanes) for m in group if m is not None]
    assert len(expected) >= 5, "the draw should fire now and then"
    assert len(messages) > 200

    env = {**pipeline_env, "MATCHER_BATCH_MAX_RECORDS": "20"}
    one = ServiceProcess("matcher", env, tmp_path).start()
    procs.append(one)
    two = ServiceProcess("matcher", env, tmp_path).start()
    procs.append(two)
    one.wait_http("/readyz", timeout=60)
    two.wait_http("/readyz", timeout=60)
    halfway = asyncio.Event()
    producing = asyncio.create_task(
        produce_in_chunks(kafka_bootstrap, topic, messages, chunk=10, pause=0.1, halfway=halfway)
    )
    await halfway.wait()
    one.kill()
    again = ServiceProcess("matcher", env, tmp_path).start()
    procs.append(again)
    await producing
    probe = LagProbe(kafka_bootstrap, env["MATCHER_GROUP"], topic)
    try:
        deadline = time.monotonic() + 120
        while await probe.measure() > 0:  # every message handled and committed
            assert time.monotonic() < deadline, "the matchers did not catch up"
            await asyncio.sleep(0.5)
    finally:
        await probe.close()
    records = await read_topic(kafka_bootstrap, actions_topic, expect=len(expected), settle=2)
    jobs = [ActionJob.parse(r.value) for r in records]
    got = {(job.trigger_id, event_key(job.event)) for job in jobs}
    assert got == expected, f"ENGINE_LIVE_SEED={base}\n" + explain_difference(got, expected, drawn)
    # the revocations and reorgs were recomputed exactly, never by the fallback
    logs = "".join(p.log_text() for p in (one, two, again))
    assert "recomputation not possible" not in logs
    assert logs.count('"exact": true') >= 3, "the draw should recompute now and then"


def explain_difference(
    got: set[tuple[str, str]],
    expected: set[tuple[str, str]],
    drawn: dict[str, tuple[dict[str, Any], list[Step]]],
) -> str:
    """The differing firings with their triggers and histories, to replay by hand."""
    lines = []
    for trigger_id in sorted({t for t, _ in got ^ expected}):
        trigger, steps = drawn[trigger_id]
        lines.append(f"trigger {trigger_id}: {json.dumps(trigger)}")
        lines.append(f"  live only: {sorted(v for t, v in got - expected if t == trigger_id)}")
        lines.append(f"  reference only: {sorted(v for t, v in expected - got if t == trigger_id)}")
        for kind, payload in steps:
            shown: Any = (
                payload.model_dump(mode="json", exclude_none=True)
                if isinstance(payload, Event)
                else sorted(payload)
            )
            lines.append(f"  {kind}: {json.dumps(shown)}")
    return "\n".join(lines)
