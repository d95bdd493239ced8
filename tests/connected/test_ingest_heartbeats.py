"""Ingest's heartbeats (POST /v1/checkpoints) against real PostgreSQL and Kafka:
stored once, relayed as a tick in the chain's partition in order with the
chain's events, the checkpoint advanced, bad bodies refused."""

from __future__ import annotations

import asyncio
import io
import random
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from services.ingest.queries import CHAIN_LOCK
from shared.contract.jobs import EventMessage, TickMessage, parse_topic_message
from tests.ingestutil import AUTH, TOKEN, Client
from tests.kafkautil import read_topic
from tests.procs import ops_get
from tools.eventgen import hex_of, make_event

pytestmark = [pytest.mark.db, pytest.mark.kafka]


def block_hash(chain: int, block: int) -> str:
    """The hash tools.eventgen gives the events of that block."""
    return hex_of(random.Random(f"{chain}:{block}"), 32)


def heartbeat(chain: int, block: int, **overrides: Any) -> dict[str, Any]:
    return {
        "chain_id": chain,
        "block_number": block,
        "block_hash": block_hash(chain, block),
        "timestamp": int(time.time()) - 60 + block,
        **overrides,
    }


async def checkpoint_of(ingest: Client, chain: int) -> dict[str, Any]:
    resp = await ingest.get(f"/v1/checkpoints/{chain}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def checkpoint_at(ingest: Client, chain: int) -> tuple[int, str]:
    """The chain's checkpoint: (last block number, its hash)."""
    checkpoint = await checkpoint_of(ingest, chain)
    return checkpoint["last_block_number"], checkpoint["last_block_hash"]


async def test_heartbeat_is_relayed_between_the_events_around_it(
    ingest: Client, db: asyncpg.Connection, chain: int, kafka_bootstrap: str, topic: str
) -> None:
    rng = random.Random(11)
    before = make_event(rng, chain_id=chain, block_number=10, log_index=0)
    resp = await ingest.post("/v1/events", json=before, headers=AUTH)
    assert await resp.json() == {"accepted": 1, "duplicates": 0}

    beat = heartbeat(chain, 11)
    resp = await ingest.post("/v1/checkpoints", json=beat, headers=AUTH)
    assert resp.status == 201, await resp.text()
    assert await resp.json() == {"chain_id": chain, "block_number": 11, "duplicate": False}
    # The indexer scanned up to block 11: that is where it resumes.
    assert await checkpoint_at(ingest, chain) == (11, beat["block_hash"])

    after = make_event(rng, chain_id=chain, block_number=12, log_index=0)
    resp = await ingest.post("/v1/events", json=after, headers=AUTH)
    assert await resp.json() == {"accepted": 1, "duplicates": 0}
    assert (await checkpoint_of(ingest, chain))["last_block_number"] == 12

    row = await db.fetchrow(
        "SELECT block_hash, block_time, created_at FROM heartbeats"
        " WHERE chain_id = $1 AND block_number = 11",
        chain,
    )
    assert row is not None
    assert row["block_hash"] == beat["block_hash"]
    assert row["block_time"] == datetime.fromtimestamp(beat["timestamp"], UTC)

    records = await read_topic(kafka_bootstrap, topic, expect=3)
    assert len(records) == 3
    assert {r.key for r in records} == {str(chain).encode()}
    assert len({r.partition for r in records}) == 1
    messages = [parse_topic_message(r.value) for r in sorted(records, key=lambda r: r.offset)]
    assert [m.kind for m in messages] == ["event", "tick", "event"]
    first, tick, last = messages
    assert isinstance(first, EventMessage)
    assert isinstance(last, EventMessage)
    assert (first.event.block_number, last.event.block_number) == (10, 12)
    assert isinstance(tick, TickMessage)
    assert (tick.chain_id, tick.block_number, tick.block_hash, tick.timestamp) == (
        chain,
        11,
        beat["block_hash"],
        beat["timestamp"],
    )
    assert tick.key == f"hb:{chain}-11@{beat['block_hash']}"
    assert tick.ingested_at is not None
    assert first.ingested_at is not None
    assert last.ingested_at is not None
    assert first.ingested_at <= tick.ingested_at <= last.ingested_at
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


async def test_repost_is_a_duplicate_and_an_older_heartbeat_keeps_the_checkpoint(
    ingest: Client, db: asyncpg.Connection, chain: int, kafka_bootstrap: str, topic: str
) -> None:
    beat = heartbeat(chain, 50)
    resp = await ingest.post("/v1/checkpoints", json=beat, headers=AUTH)
    assert resp.status == 201
    resp = await ingest.post("/v1/checkpoints", json=beat, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"chain_id": chain, "block_number": 50, "duplicate": True}
    # Upper-case hex is the same hash: a duplicate too.
    upper = {**beat, "block_hash": "0x" + beat["block_hash"][2:].upper()}
    resp = await ingest.post("/v1/checkpoints", json=upper, headers=AUTH)
    assert (await resp.json())["duplicate"] is True
    # An older block is a tick of its own but does not move the checkpoint back.
    resp = await ingest.post("/v1/checkpoints", json=heartbeat(chain, 40), headers=AUTH)
    assert resp.status == 201
    assert await checkpoint_at(ingest, chain) == (50, beat["block_hash"])
    assert await db.fetchval("SELECT count(*) FROM heartbeats WHERE chain_id = $1", chain) == 2

    records = await read_topic(kafka_bootstrap, topic, expect=2, settle=2.0)
    ticks = [parse_topic_message(r.value) for r in sorted(records, key=lambda r: r.offset)]
    assert [(t.kind, getattr(t, "block_number", None)) for t in ticks] == [
        ("tick", 50),
        ("tick", 40),
    ], "a duplicate heartbeat was relayed"

    _, text = await ops_get(ingest, "/metrics")
    assert f'erc8004_ingest_heartbeats_total{{chain_id="{chain}",result="stored"}} 2.0' in text
    assert f'erc8004_ingest_heartbeats_total{{chain_id="{chain}",result="duplicate"}} 2.0' in text
    assert (
        'erc8004_ingest_request_duration_seconds_count{route="/v1/checkpoints",status="201"}'
        in text
    )


async def test_reorgs_do_not_retract_heartbeats(
    ingest: Client, db: asyncpg.Connection, chain: int, kafka_bootstrap: str, topic: str
) -> None:
    for block in (20, 21, 22):
        resp = await ingest.post("/v1/checkpoints", json=heartbeat(chain, block), headers=AUTH)
        assert resp.status == 201
    resp = await ingest.post("/v1/reorgs", json={"chain_id": chain, "from_block": 22}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["released_event_ids"] == []
    # The checkpoint moved back to the block before, with the hash its heartbeat gave.
    assert await checkpoint_at(ingest, chain) == (21, block_hash(chain, 21))
    # The replaced heartbeat stays and, posted again, is a duplicate that does not
    # move the checkpoint forward; the canonical block 22 is a new heartbeat.
    resp = await ingest.post("/v1/checkpoints", json=heartbeat(chain, 22), headers=AUTH)
    assert (resp.status, (await resp.json())["duplicate"]) == (200, True)
    assert (await checkpoint_of(ingest, chain))["last_block_number"] == 21
    canonical = heartbeat(chain, 22, block_hash="0x" + "cd" * 32)
    resp = await ingest.post("/v1/checkpoints", json=canonical, headers=AUTH)
    assert resp.status == 201
    assert await checkpoint_at(ingest, chain) == (22, canonical["block_hash"])
    assert await db.fetchval("SELECT count(*) FROM heartbeats WHERE chain_id = $1", chain) == 4

    records = await read_topic(kafka_bootstrap, topic, expect=5)
    kinds = [parse_topic_message(r.value).kind for r in sorted(records, key=lambda r: r.offset)]
    assert kinds == ["tick", "tick", "tick", "retraction", "tick"]


BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("missing timestamp", {"timestamp": None}, "timestamp"),
    ("missing block hash", {"block_hash": None}, "block_hash"),
    ("negative block", {"block_number": -1}, "block_number"),
    ("block as string", {"block_number": "11"}, "block_number"),
    ("bool for int", {"timestamp": True}, "timestamp"),
    ("bad hex hash", {"block_hash": "0x1234"}, "block_hash"),
    ("chain zero", {"chain_id": 0}, "chain_id"),
    ("chain out of range", {"chain_id": 2**31}, "chain_id"),
    ("timestamp in the future", {"timestamp": int(time.time()) + 3 * 86400}, "timestamp"),
    ("timestamp beyond any date", {"timestamp": 2**63 - 1}, "timestamp"),
    ("unknown field", {"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_invalid_heartbeat_is_refused_naming_the_field(
    ingest: Client,
    db: asyncpg.Connection,
    chain: int,
    case: str,
    change: dict[str, Any],
    field: str,
) -> None:
    body = {k: v for k, v in {**heartbeat(chain, 5), **change}.items() if v is not None}
    resp = await ingest.post("/v1/checkpoints", json=body, headers=AUTH)
    assert resp.status == 422, case
    answer = await resp.json()
    assert answer["error"] == "invalid checkpoint"
    assert field in {d["field"] for d in answer["details"]}, answer
    assert all(d["message"] for d in answer["details"])
    assert await db.fetchval("SELECT count(*) FROM heartbeats") == 0
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


async def test_malformed_oversized_and_unauthenticated_heartbeats(
    ingest: Client, db: asyncpg.Connection, chain: int
) -> None:
    resp = await ingest.post("/v1/checkpoints", data=b"{not json", headers=AUTH)
    assert resp.status == 400
    assert "JSON" in (await resp.json())["error"]

    resp = await ingest.post("/v1/checkpoints", json=[heartbeat(chain, 5)], headers=AUTH)
    assert resp.status == 422

    huge = orjson.dumps({**heartbeat(chain, 5), "padding": "x" * (6 * 1024 * 1024)})
    resp = await ingest.post("/v1/checkpoints", data=io.BytesIO(huge), headers=AUTH)
    assert resp.status == 413

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = await ingest.post("/v1/checkpoints", json=heartbeat(chain, 5), headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.json())["error"]
    assert await db.fetchval("SELECT count(*) FROM heartbeats") == 0
    resp = await ingest.get(f"/v1/checkpoints/{chain}", headers=AUTH)
    assert resp.status == 404


async def test_heartbeat_waits_for_a_reorg_of_its_chain_in_flight(
    ingest: Client, db: asyncpg.Connection, chain: int
) -> None:
    """The chain lock is taken shared: a reorg holding it exclusively goes first,
    and a store of events holding it shared does not hold the heartbeat up."""
    tx = db.transaction()
    await tx.start()
    try:
        await db.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", CHAIN_LOCK, chain)
        resp = await asyncio.wait_for(
            ingest.post("/v1/checkpoints", json=heartbeat(chain, 7), headers=AUTH), 5
        )
        assert resp.status == 201
        await db.execute("SELECT pg_advisory_xact_lock($1, $2)", CHAIN_LOCK, chain)
        beat = asyncio.create_task(
            ingest.post("/v1/checkpoints", json=heartbeat(chain, 8), headers=AUTH)
        )
        await asyncio.sleep(0.5)
        assert not beat.done(), "the heartbeat did not wait for the reorg in flight"
    finally:
        await tx.commit()
    resp = await asyncio.wait_for(beat, 10)
    assert resp.status == 201
