"""Ingest against real PostgreSQL and Kafka: intake, validation, idempotency,
checkpoints, reorgs and the outbox relay (in-process app, real sockets)."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from services.ingest.queries import CHAIN_LOCK
from shared.contract.jobs import parse_topic_message
from tests.dispatcherutil import wait_for
from tests.ingestutil import AUTH, TOKEN, Client, ingest_client, settings_for
from tests.kafkautil import read_topic
from tests.procs import ops_get
from tools.eventgen import make_event, stream, take

pytestmark = [pytest.mark.db, pytest.mark.kafka]


async def count_events(db: asyncpg.Connection, chain: int) -> int:
    value = await db.fetchval("SELECT count(*) FROM events WHERE chain_id = $1", chain)
    return int(value)


async def test_single_and_batch_are_stored_and_relayed_once(
    ingest: Client, db: asyncpg.Connection, chain: int, kafka_bootstrap: str, topic: str
) -> None:
    rng = random.Random(1)
    events = take(stream(rng, chain_id=chain), 250)
    resp = await ingest.post("/v1/events", json=events[0], headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": 1, "duplicates": 0}
    # A batch that repeats the first event and holds one event twice.
    batch = [*events, events[10]]
    resp = await ingest.post("/v1/events", json=batch, headers=AUTH)
    assert await resp.json() == {"accepted": 249, "duplicates": 2}
    # The same batch again: all duplicates, nothing new.
    resp = await ingest.post("/v1/events", json=batch, headers=AUTH)
    assert await resp.json() == {"accepted": 0, "duplicates": 251}
    assert await count_events(db, chain) == 250

    records = await read_topic(kafka_bootstrap, topic, expect=250)
    ids = Counter(parse_topic_message(r.value).event.id for r in records)  # type: ignore[union-attr]
    assert len(ids) == 250
    assert set(ids.values()) == {1}, "an event was relayed more than once"
    # The key is the chain id, so a chain is one partition, in the order posted.
    assert {record.key for record in records} == {str(chain).encode()}
    assert len({record.partition for record in records}) == 1
    offsets = [r.offset for r in sorted(records, key=lambda r: r.offset)]
    assert offsets == sorted(offsets)
    outbox = await db.fetchval("SELECT count(*) FROM event_outbox WHERE topic = $1", topic)
    assert outbox == 0


async def test_concurrent_posters_store_each_event_once(
    ingest: Client, db: asyncpg.Connection, chain: int, kafka_bootstrap: str, topic: str
) -> None:
    rng = random.Random(2)
    events = take(stream(rng, chain_id=chain), 600)
    # Four posters, overlapping halves in different orders.
    batches = [events[:400], list(reversed(events[200:])), events[100:500], events[::-1][:300]]
    responses = await asyncio.gather(
        *(ingest.post("/v1/events", json=b, headers=AUTH) for b in batches)
    )
    bodies = [await r.json() for r in responses]
    assert all(r.status == 200 for r in responses), bodies
    assert sum(b["accepted"] for b in bodies) == 600
    assert sum(b["duplicates"] for b in bodies) == sum(len(b) for b in batches) - 600
    assert await count_events(db, chain) == 600
    records = await read_topic(kafka_bootstrap, topic, expect=600)
    ids = Counter(parse_topic_message(r.value).event.id for r in records)  # type: ignore[union-attr]
    assert len(ids) == 600
    assert max(ids.values()) == 1


def _valid(chain: int, **overrides: Any) -> dict[str, Any]:
    position: dict[str, Any] = {"block_number": 5, "log_index": 0, **overrides}
    return make_event(random.Random(3), chain_id=chain, legacy=True, **position)


BAD_ITEMS: list[tuple[str, dict[str, Any], str]] = [
    ("wrong type", {"block_number": "12"}, "block_number"),
    ("bool for int", {"log_index": True}, "log_index"),
    ("negative block", {"block_number": -1}, "block_number"),
    ("bad hex hash", {"block_hash": "0x1234"}, "block_hash"),
    ("bad address", {"client_address": "0xZZ" + "0" * 38}, "client_address"),
    ("unknown registry", {"registry": "payments"}, "registry"),
    ("unknown event type", {"event_type": "Exploded"}, "event_type"),
    ("event of another registry", {"registry": "identity"}, "event_type"),
    ("agent id out of range", {"agent_id": 2**63}, "agent_id"),
    ("timestamp in the future", {"timestamp": 99_999_999_999}, "timestamp"),
    ("unknown field", {"colour": "red"}, "colour"),
    ("bad registry address", {"registry_address": "0x8004"}, "registry_address"),
    ("bad agent registry", {"agent_registry": "8004" * 10}, "agent_registry"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_ITEMS, ids=[c[0] for c in BAD_ITEMS])
async def test_bad_item_rejects_the_whole_batch(
    ingest: Client,
    db: asyncpg.Connection,
    chain: int,
    case: str,
    change: dict[str, Any],
    field: str,
) -> None:
    good = _valid(chain)
    bad = {**_valid(chain, log_index=1), **change}
    resp = await ingest.post("/v1/events", json=[good, bad], headers=AUTH)
    assert resp.status == 422, case
    body = await resp.json()
    assert body["error"]
    assert {(d["index"], d["field"]) for d in body["details"]} >= {(1, field)}, body
    assert all(d["index"] == 1 for d in body["details"]), "the good item was blamed"
    assert await count_events(db, chain) == 0


async def test_missing_registry_fields_are_named(
    ingest: Client, db: asyncpg.Connection, chain: int
) -> None:
    items = [
        {k: v for k, v in _valid(chain).items() if k != "client_address"},
        {
            k: v
            for k, v in make_event(
                random.Random(4),
                chain_id=chain,
                block_number=6,
                log_index=0,
                event_type="Registered",
            ).items()
            if k != "owner"
        },
        {k: v for k, v in _valid(chain, log_index=3).items() if k not in ("score", "value")},
    ]
    resp = await ingest.post("/v1/events", json=items, headers=AUTH)
    assert resp.status == 422
    fields = {(d["index"], d["field"]) for d in (await resp.json())["details"]}
    assert (0, "client_address") in fields
    assert (1, "owner") in fields
    assert 2 in {i for i, _ in fields}
    assert await count_events(db, chain) == 0


async def test_malformed_oversized_and_unauthenticated(
    ingest: Client, db: asyncpg.Connection, chain: int
) -> None:
    resp = await ingest.post("/v1/events", data=b"{not json", headers=AUTH)
    assert resp.status == 400
    # where it broke, not the parser's own text ("Expecting property name ...")
    assert (await resp.json())["error"] == "body is not valid JSON (line 1, column 2)"

    resp = await ingest.post("/v1/events", json="a string", headers=AUTH)
    assert resp.status == 422

    # Nested deeper than any parser's stack: refused as JSON (it was a 500).
    for depth in (2_000, 200_000):
        deep = b"[" * depth + b"]" * depth
        for path in ("/v1/events", "/v1/checkpoints", "/v1/reorgs"):
            resp = await ingest.post(path, data=deep, headers=AUTH)
            assert resp.status == 400, (path, depth, await resp.text())
            assert "nested too deeply" in (await resp.json())["error"]

    too_many = [_valid(chain, log_index=i) for i in range(1001)]
    resp = await ingest.post("/v1/events", json=too_many, headers=AUTH)
    assert resp.status == 413
    assert "1000" in (await resp.json())["error"]

    huge = orjson.dumps([{**_valid(chain), "token_uri": "x" * (6 * 1024 * 1024)}])
    resp = await ingest.post("/v1/events", data=io.BytesIO(huge), headers=AUTH)
    assert resp.status == 413

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = await ingest.post("/v1/events", json=[_valid(chain)], headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]
    resp = await ingest.get(f"/v1/checkpoints/{chain}")
    assert resp.status == 401
    assert await count_events(db, chain) == 0


async def test_checkpoint_is_the_highest_block_and_never_moves_back(
    ingest: Client, chain: int
) -> None:
    rng = random.Random(5)
    resp = await ingest.get(f"/v1/checkpoints/{chain}", headers=AUTH)
    assert resp.status == 404
    high = make_event(rng, chain_id=chain, block_number=900, log_index=2)
    low = make_event(rng, chain_id=chain, block_number=100, log_index=0)
    await ingest.post("/v1/events", json=[low, high], headers=AUTH)
    await ingest.post(
        "/v1/events",
        json=make_event(rng, chain_id=chain, block_number=50, log_index=0),
        headers=AUTH,
    )
    resp = await ingest.get(f"/v1/checkpoints/{chain}", headers=AUTH)
    body = await resp.json()
    assert body["last_block_number"] == 900
    assert body["last_block_hash"] == high["block_hash"]
    resp = await ingest.get("/v1/checkpoints/abc", headers=AUTH)
    assert resp.status == 422


async def test_reorg_releases_ids_and_retracts_in_the_chains_partition(
    ingest: Client, db: asyncpg.Connection, chain: int, kafka_bootstrap: str, topic: str
) -> None:
    rng = random.Random(6)
    events = [make_event(rng, chain_id=chain, block_number=b, log_index=0) for b in range(10, 20)]
    await ingest.post("/v1/events", json=events, headers=AUTH)
    resp = await ingest.post(
        "/v1/reorgs", json={"chain_id": chain, "from_block": 15, "reason": "test"}, headers=AUTH
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert sorted(body["released_event_ids"]) == sorted(f"{chain}-{b}-0" for b in range(15, 20))
    # The checkpoint moved back below the reorg, so a resuming indexer re-reads it.
    checkpoint = await (await ingest.get(f"/v1/checkpoints/{chain}", headers=AUTH)).json()
    assert checkpoint["last_block_number"] == 14
    assert checkpoint["last_block_hash"] == events[4]["block_hash"]
    # The replaced events stay in the table (append-only); the canonical ones at
    # the same positions are accepted.
    replacement = [
        make_event(rng, chain_id=chain, block_number=b, log_index=0, block_hash="0x" + "ab" * 32)
        for b in range(15, 18)
    ]
    resp = await ingest.post("/v1/events", json=replacement, headers=AUTH)
    assert await resp.json() == {"accepted": 3, "duplicates": 0}
    assert await count_events(db, chain) == 13
    # An indexer retrying a batch of the replaced blocks (their old hashes): every
    # one is a stored version, so a duplicate, including blocks 18 and 19 whose
    # positions are free again (their canonical events may still come).
    resp = await ingest.post("/v1/events", json=events[5:], headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": 0, "duplicates": 5}
    assert await count_events(db, chain) == 13
    # Re-posted replaced versions did not move the checkpoint; the canonical ones did.
    checkpoint = await (await ingest.get(f"/v1/checkpoints/{chain}", headers=AUTH)).json()
    assert checkpoint["last_block_number"] == 17
    late = make_event(
        rng, chain_id=chain, block_number=18, log_index=0, block_hash="0x" + "ab" * 32
    )
    resp = await ingest.post("/v1/events", json=late, headers=AUTH)
    assert await resp.json() == {"accepted": 1, "duplicates": 0}
    checkpoint = await (await ingest.get(f"/v1/checkpoints/{chain}", headers=AUTH)).json()
    assert checkpoint["last_block_number"] == 18
    reorgs = await db.fetchval("SELECT count(*) FROM reorgs WHERE chain_id = $1", chain)
    assert reorgs == 1

    records = await read_topic(kafka_bootstrap, topic, expect=10 + 3 + 3 + 1)
    retractions = [r for r in records if parse_topic_message(r.value).kind == "retraction"]
    assert len(retractions) == 1
    assert {r.partition for r in records} == {retractions[0].partition}  # the chain's
    message = parse_topic_message(retractions[0].value)
    assert message.kind == "retraction"
    assert sorted(message.event_keys) == sorted(
        f"{chain}-{e['block_number']}-0@{e['block_hash']}" for e in events[5:]
    )
    # The retraction comes after the replaced events and before their replacements.
    (retraction,) = retractions
    for record in records:
        message = parse_topic_message(record.value)
        if message.kind != "event":
            continue
        canonical = message.event.block_hash == "0x" + "ab" * 32
        assert (record.offset > retraction.offset) == canonical

    resp = await ingest.post("/v1/reorgs", json={"chain_id": chain}, headers=AUTH)
    assert resp.status == 422
    assert any(d["field"] == "from_block" for d in (await resp.json())["details"])


async def test_an_id_stored_in_another_block_is_a_conflict_until_the_reorg_is_announced(
    ingest: Client, db: asyncpg.Connection, chain: int
) -> None:
    """Issue 15: the same id in another block (a restarted development chain, a reorg
    the indexer did not announce) was counted as a duplicate and silently dropped.
    It is refused (409, nothing of the batch stored) until the reorg is announced;
    then the new versions are accepted, and the old ones stay duplicates."""
    rng = random.Random(9)
    old = [make_event(rng, chain_id=chain, block_number=b, log_index=0) for b in range(30, 35)]
    assert (await ingest.post("/v1/events", json=old, headers=AUTH)).status == 200
    new_hash = "0x" + "cd" * 32
    new = [
        make_event(rng, chain_id=chain, block_number=b, log_index=0, block_hash=new_hash)
        for b in range(33, 37)
    ]
    resp = await ingest.post("/v1/events", json=new, headers=AUTH)
    assert resp.status == 409, await resp.text()
    body = await resp.json()
    assert "/v1/reorgs" in body["error"]
    assert [(d["index"], d["field"]) for d in body["details"]] == [
        (0, "block_hash"),
        (1, "block_hash"),
    ]
    assert old[3]["block_hash"] in body["details"][0]["message"]
    assert await count_events(db, chain) == 5  # blocks 35 and 36 were not stored either
    # Within one batch, the same id in two blocks is refused the same way.
    twice = [new[2], {**new[2], "block_hash": "0x" + "ef" * 32}]
    resp = await ingest.post("/v1/events", json=twice, headers=AUTH)
    assert resp.status == 409
    assert [d["index"] for d in (await resp.json())["details"]] == [1]

    reorg = {"chain_id": chain, "from_block": 33, "reason": "test"}
    assert (await ingest.post("/v1/reorgs", json=reorg, headers=AUTH)).status == 201
    resp = await ingest.post("/v1/events", json=new, headers=AUTH)
    assert await resp.json() == {"accepted": 4, "duplicates": 0}
    resp = await ingest.post("/v1/events", json=old, headers=AUTH)  # a late retry
    assert await resp.json() == {"accepted": 0, "duplicates": 5}
    assert await count_events(db, chain) == 9


async def test_json_integers_beyond_64_bits_are_read_exactly(
    ingest: Client, db: asyncpg.Connection, chain: int
) -> None:
    """Issue 15: a feedback value sent as a JSON integer beyond 64 bits was read as a
    float and refused (422); int128 values up to 10^38 are the chain's."""
    values = [10**38, -(10**38), 12345678901234567890123, 2**64]
    events = [
        {
            **make_event(random.Random(n), chain_id=chain, block_number=40, log_index=n,
                         legacy=False, event_type="NewFeedback"),
            "value": value,
            "value_decimals": 2,
        }
        for n, value in enumerate(values)
    ]  # fmt: skip
    body = json.dumps(events).encode()  # the integers as JSON integers, exactly
    assert str(10**38).encode() in body
    headers = {**AUTH, "Content-Type": "application/json"}
    resp = await ingest.post("/v1/events", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    stored = await db.fetch(
        "SELECT value, value_decimals FROM events WHERE chain_id = $1 ORDER BY log_index", chain
    )
    assert [(r["value"], r["value_decimals"]) for r in stored] == [(Decimal(v), 2) for v in values]


async def test_every_text_the_chain_can_emit_is_stored_and_relayed(
    ingest: Client, db: asyncpg.Connection, chain: int, kafka_bootstrap: str, topic: str
) -> None:
    """Issue 15: chain-valid events were refused whole (422) for a 300-character tag, a
    NUL in an endpoint, a 12 KiB data: URI, a 1,025-character metadata key; an
    indexer could never get past them. Now every text is stored as the chain has it
    (a NUL as U+2400), and relayed, even a field of megabytes."""
    rng = random.Random(21)
    card = "data:application/json;base64," + "QUJD" * 3072  # 12 KiB
    huge = "https://files.example/" + "x" * (2 * 1024 * 1024)  # 2 MiB
    events = [
        make_event(rng, chain_id=chain, block_number=50, log_index=0, event_type="Registered",
                   agent_id=1, token_uri=card),
        make_event(rng, chain_id=chain, block_number=50, log_index=1, event_type="MetadataSet",
                   agent_id=1, metadata_key="k" * 1025),
        make_event(rng, chain_id=chain, block_number=51, log_index=0, legacy=False,
                   tag1="t" * 300, endpoint="https://a.example/\x00mcp", file_uri=huge),
    ]  # fmt: skip
    body = io.BytesIO(orjson.dumps(events))
    headers = {**AUTH, "Content-Type": "application/json"}
    resp = await ingest.post("/v1/events", data=body, headers=headers)
    assert resp.status == 200, (await resp.text())[:500]
    assert await resp.json() == {"accepted": 3, "duplicates": 0}
    rows = {
        r["log_index"] + 10 * (r["block_number"] - 50): r
        for r in await db.fetch(
            "SELECT block_number, log_index, token_uri, metadata_key, tag1, endpoint, file_uri"
            " FROM events WHERE chain_id = $1",
            chain,
        )
    }
    assert rows[0]["token_uri"] == card
    assert rows[1]["metadata_key"] == "k" * 1025
    assert rows[10]["tag1"] == "t" * 300
    assert rows[10]["endpoint"] == "https://a.example/\u2400mcp"
    assert rows[10]["file_uri"] == huge

    records = await read_topic(kafka_bootstrap, topic, expect=3)
    messages = [parse_topic_message(r.value) for r in records]
    relayed = {m.event.id: m.event for m in messages}  # type: ignore[union-attr]
    assert len(relayed) == 3
    assert relayed[f"{chain}-51-0"].file_uri == huge
    assert relayed[f"{chain}-50-0"].token_uri == card


async def test_relay_listener_survives_a_lost_connection(
    database_url: str, kafka_bootstrap: str, topic: str, db: asyncpg.Connection, chain: int
) -> None:
    """With polling slowed to 30 s, only NOTIFY moves events quickly: after the
    relay's LISTEN connection is killed (as by a PostgreSQL restart) it comes back."""
    settings = settings_for(database_url, kafka_bootstrap, topic).model_copy(
        update={"relay_poll_interval": 30.0}
    )
    rng = random.Random(9)
    async with ingest_client(settings) as client:
        first = [make_event(rng, chain_id=chain, block_number=1, log_index=i) for i in range(5)]
        await client.post("/v1/events", json=first, headers=AUTH)
        await read_topic(kafka_bootstrap, topic, expect=5, within=5, settle=0)
        before = await db.fetchval(
            "SELECT array_agg(pid) FROM pg_stat_activity"
            " WHERE application_name = 'erc8004-ingest-relay' AND datname = current_database()"
        )
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'erc8004-ingest-relay' AND datname = current_database()"
        )
        assert killed == 1

        async def listening_again() -> bool:
            # A new relay connection that has run its LISTEN (then, every 5 s, SELECT 1).
            fresh = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'erc8004-ingest-relay' AND datname = current_database()"
                " AND pid <> ALL($1::int[]) AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1')",
                before,
            )
            return bool(fresh)

        await wait_for(listening_again, within=15, what="the relay to LISTEN again")
        second = [make_event(rng, chain_id=chain, block_number=2, log_index=i) for i in range(5)]
        await client.post("/v1/events", json=second, headers=AUTH)
        started = asyncio.get_running_loop().time()
        records = await read_topic(kafka_bootstrap, topic, expect=10, within=10, settle=0)
        assert len(records) == 10
        assert asyncio.get_running_loop().time() - started < 5, "relayed by the poll, not NOTIFY"


async def test_two_relays_share_the_outbox_without_double_relaying(
    database_url: str, kafka_bootstrap: str, topic: str, db: asyncpg.Connection, chain: int
) -> None:
    settings = settings_for(database_url, kafka_bootstrap, topic)
    async with ingest_client(settings) as c1, ingest_client(settings) as c2:
        events = take(stream(random.Random(7), chain_id=chain), 3000)
        posts = [
            (c1 if i % 2 else c2).post("/v1/events", json=events[i : i + 100], headers=AUTH)
            for i in range(0, 3000, 100)
        ]
        for resp in await asyncio.gather(*posts):
            assert resp.status == 200
        records = await read_topic(kafka_bootstrap, topic, expect=3000, settle=2.0)
    ids = Counter(parse_topic_message(r.value).event.id for r in records)  # type: ignore[union-attr]
    assert len(ids) == 3000
    assert max(ids.values()) == 1


async def test_metrics_count_by_chain_and_registry(ingest: Client, chain: int) -> None:
    rng = random.Random(8)
    events = [make_event(rng, chain_id=chain, block_number=1, log_index=i) for i in range(5)]
    await ingest.post("/v1/events", json=events, headers=AUTH)
    await ingest.post("/v1/events", json=events[:2], headers=AUTH)
    await ingest.post("/v1/events", json=[{**events[0], "block_hash": "bad"}], headers=AUTH)
    _, text = await ops_get(ingest, "/metrics")
    labels = f'chain_id="{chain}",registry="reputation"'
    assert f"erc8004_ingest_events_received_total{{{labels}}} 8.0" in text
    assert f"erc8004_ingest_events_accepted_total{{{labels}}} 5.0" in text
    assert f"erc8004_ingest_events_duplicate_total{{{labels}}} 2.0" in text
    assert f"erc8004_ingest_events_rejected_total{{{labels}}} 1.0" in text
    assert 'erc8004_ingest_request_duration_seconds_count{route="/v1/events",status="200"}' in text
    assert "erc8004_ingest_outbox_depth" in text
    assert "erc8004_ingest_relay_lag_seconds" in text


async def test_reorg_waits_for_stores_of_its_chain_in_flight(
    ingest: Client, db: asyncpg.Connection, chain: int
) -> None:
    """A store still committing when a reorg arrives finishes first, so the reorg
    sees (and releases) its events, and its outbox rows precede the retraction."""
    tx = db.transaction()
    await tx.start()
    try:
        await db.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", CHAIN_LOCK, chain)
        reorg = asyncio.create_task(
            ingest.post("/v1/reorgs", json={"chain_id": chain, "from_block": 1}, headers=AUTH)
        )
        await asyncio.sleep(0.5)
        assert not reorg.done(), "the reorg did not wait for the store in flight"
    finally:
        await tx.commit()
    resp = await asyncio.wait_for(reorg, 10)
    assert resp.status == 201
