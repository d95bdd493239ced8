"""Reads over the shared history at scale (issue 14): with a million stored events,
every filter of GET /v1/events and GET /v1/stats/events answers within a second or
is refused (503), and a burst of slow reads cannot keep other users' requests from
a pool connection beyond the acquire limit.

The million rows are written by PostgreSQL itself (INSERT ... SELECT over
generate_series, spread over 60 days of block time, four chains, every registry),
once per test module; each test reads its own copy."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.api.app import create_app
from services.api.queries import ACQUIRE_SECONDS, shared_read
from shared.platform.db import create_pool
from tests.apiutil import Client, api_settings, cheap_passwords, signup
from tests.conftest import create_dated_database
from tools.benchdb import drop_database, with_database

pytestmark = [
    pytest.mark.db,
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.serial,
]

ROWS = 1_000_000
#: Every event type with its registry; the last is rare (1 in 100,000).
TYPES = [
    ("reputation", "NewFeedback"),
    ("reputation", "FeedbackRevoked"),
    ("identity", "Registered"),
    ("identity", "MetadataSet"),
    ("validation", "ValidationRequest"),
    ("validation", "ValidationResponse"),
]


async def fill(db: asyncpg.Connection) -> None:
    """ROWS events, newest ``now - 1 min``, oldest 60 days before."""
    started = time.monotonic()
    kinds = ", ".join(f"('{r}', '{t}')" for r, t in TYPES)
    await db.execute(
        f"""
        WITH kinds AS (SELECT row_number() OVER () - 1 AS k, r, t
                       FROM (VALUES {kinds}) v(r, t))
        INSERT INTO events (id, chain_id, block_number, block_hash, transaction_hash,
                            log_index, registry, event_type, agent_id, timestamp, block_time,
                            client_address, score, feedback_index, owner, token_uri,
                            metadata_key, validator_address, request_hash, response)
        SELECT (1 + n % 4) || '-' || (n / 4) || '-0', 1 + n % 4, n / 4,
               '0x' || lpad(to_hex(n), 64, '0'), '0x' || lpad(to_hex(n), 64, 'f'), 0,
               kinds.r, kinds.t, n % 5000, ts, to_timestamp(ts),
               CASE WHEN kinds.r = 'reputation' THEN '0x' || lpad(to_hex(n % 997), 40, '0') END,
               CASE WHEN kinds.t = 'NewFeedback' THEN 50 END,
               CASE WHEN kinds.t = 'FeedbackRevoked' THEN 1 END,
               CASE WHEN kinds.t = 'Registered' THEN '0x' || lpad('a', 40, '0') END,
               CASE WHEN kinds.t = 'Registered' THEN 'https://agents.example/' || n END,
               CASE WHEN kinds.t = 'MetadataSet' THEN 'name' END,
               CASE WHEN kinds.r = 'validation' THEN '0x' || lpad('b', 40, '0') END,
               CASE WHEN kinds.r = 'validation' THEN '0x' || lpad(to_hex(n), 64, 'c') END,
               CASE WHEN kinds.t = 'ValidationResponse' THEN 100 END
        FROM generate_series(0::bigint, {ROWS - 1}) AS n
        CROSS JOIN LATERAL (SELECT extract(epoch FROM now())::bigint - 60
                                   - (({ROWS} - n) * 5184 / 1000) AS ts) AS t
        JOIN kinds ON kinds.k = CASE WHEN n % 100000 = 7 THEN 5 ELSE n % 5 END
        """
    )
    await db.execute("REFRESH MATERIALIZED VIEW events_hourly")
    await db.execute("ANALYZE events")
    print(f"[shared reads] {ROWS:,} events in {time.monotonic() - started:.1f}s")  # noqa: T201


@pytest.fixture(scope="module")
def filled_template(admin_url: str, template_db: str) -> Iterator[str]:
    """A migrated database holding the million events, filled once for the module:
    each test reads its own copy of it (``filled_url``)."""
    name = f"erc8004_shared_reads_{uuid.uuid4().hex[:12]}"

    async def build() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            # Left behind by a run killed outright (a million rows each): dropped once
            # a day old, as the migrated templates are.
            await create_dated_database(
                admin, name, sweep="erc8004_shared_reads_", template=template_db
            )
        finally:
            await admin.close()
        db = await asyncpg.connect(with_database(admin_url, name))
        try:
            await fill(db)
        finally:
            await db.close()

    try:
        asyncio.run(build())
        yield name
    finally:
        asyncio.run(drop_database(admin_url, name))


@pytest.fixture
def filled_url(admin_url: str, filled_template: str) -> Iterator[str]:
    """This test's own copy of the filled database (a file copy: seconds, where
    filling takes half a minute); its statistics and refreshed view come with it."""
    name = f"erc8004_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(
                f'CREATE DATABASE "{name}" TEMPLATE "{filled_template}" STRATEGY FILE_COPY'
            )
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield with_database(admin_url, name)
    finally:
        asyncio.run(drop_database(admin_url, name))


@pytest.fixture
async def client(filled_url: str, kafka_bootstrap: str) -> AsyncIterator[Client]:
    settings = api_settings(filled_url, kafka_bootstrap, "erc8004.actions.unused")
    app = create_app(settings, passwords=cheap_passwords())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def timed(
    client: Client, path: str, params: dict[str, str], auth: dict[str, str]
) -> tuple[int, float]:
    started = time.monotonic()
    resp = await client.get(path, params=params, headers=auth)
    await resp.read()
    return resp.status, time.monotonic() - started


async def test_every_filter_answers_within_a_second_or_is_refused(client: Client) -> None:
    auth = await signup(client)
    week_ago = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    month_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    filters: list[tuple[str, dict[str, str]]] = [
        ("/v1/events", {}),
        ("/v1/events", {"limit": "200"}),
        ("/v1/events", {"chain_id": "3"}),
        ("/v1/events", {"registry": "validation"}),
        ("/v1/events", {"event_type": "ValidationResponse"}),  # 10 of a million
        ("/v1/events", {"event_type": "NoSuchEvent"}),
        ("/v1/events", {"agent_id": "4321"}),
        ("/v1/events", {"agent_id": "4999999"}),  # nobody
        ("/v1/events", {"since": week_ago}),
        ("/v1/events", {"until": month_ago}),
        ("/v1/events", {"since": month_ago, "until": week_ago, "registry": "identity"}),
        ("/v1/events", {"chain_id": "2", "from_block": "1000", "to_block": "2000"}),
        ("/v1/events", {"chain_id": "2", "event_type": "Registered", "agent_id": "17"}),
        ("/v1/stats/events", {}),
        ("/v1/stats/events", {"chain_id": "1", "event_type": "NewFeedback"}),
        ("/v1/stats/events", {"since": month_ago, "limit": "200"}),
    ]
    seen: list[str] = []
    for path, params in filters:
        status, took = await timed(client, path, params, auth)
        seen.append(f"{path} {params}: {status} in {took * 1000:.0f} ms")
        assert status in (200, 503), seen[-1]
        # Every filter has its index: milliseconds (without them, the unfiltered page
        # sorts a million rows: ~0.4 s here). The 1 s statement limit is the backstop.
        assert took < 0.25, seen[-1]
    print("\n".join(seen))  # noqa: T201
    # a page deep into the history by cursor is as quick as the first
    deep: dict[str, str] = {"limit": "200", "event_type": "NewFeedback"}
    for _ in range(5):
        resp = await client.get("/v1/events", params=deep, headers=auth)
        page = await resp.json()
        deep["cursor"] = page["next_cursor"]
    status, took = await timed(client, "/v1/events", deep, auth)
    assert (status, took < 0.25) == (200, True)


async def test_a_shared_read_stops_after_a_second(database_url: str) -> None:
    pool = await create_pool(database_url, application_name="test-shared-read", max_size=2)
    try:
        started = time.monotonic()
        async with shared_read(pool) as conn:
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2.0
    finally:
        await pool.close()


async def test_a_burst_of_reads_does_not_lock_out_other_users(client: Client) -> None:
    """Sixty-four reads of the history at once: at most SHARED_READ_CONCURRENCY (4) run
    and as many wait, the rest are refused at once (503); they never hold the pool,
    so another user's own request is answered without waiting for them."""
    reader, other = await signup(client), await signup(client)
    wide = {"limit": "200", "since": (datetime.now(UTC) - timedelta(days=59)).isoformat()}
    burst = [
        asyncio.create_task(client.get("/v1/events", params=wide, headers=reader))
        for _ in range(64)
    ]
    await asyncio.sleep(0)
    started = time.monotonic()
    resp = await client.get("/v1/triggers", headers=other)
    waited = time.monotonic() - started
    assert resp.status == 200
    responses = await asyncio.gather(*burst)
    statuses = [r.status for r in responses]
    for r in responses:
        r.release()
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 4
    assert statuses.count(503) > 0  # refused at once rather than queued without end
    assert waited < 1.0, f"another user's request waited {waited:.2f}s behind the burst"
    assert ACQUIRE_SECONDS > 1.0
