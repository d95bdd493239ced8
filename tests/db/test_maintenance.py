"""Retention and maintenance run by the system (services/ingest/maintenance.py) on the real
PostgreSQL, as the ingest's role, through the SECURITY DEFINER wrappers; the
database's clock is moved forward with the tasks' reference time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.maintenance import (
    MAINTENANCE_LOCK,
    MaintenanceMetrics,
    MaintenanceScheduler,
    RetentionPolicy,
    default_tasks,
)
from services.ingest.settings import IngestSettings
from shared.platform.db import create_pool
from tests.procs import ops_get

pytestmark = pytest.mark.db

RUNS = "erc8004_ingest_maintenance_runs_total"
LAST_SUCCESS = "erc8004_ingest_maintenance_last_success_timestamp_seconds"
TASKS = (
    "ensure_event_partitions",
    "drop_event_partitions",
    "cleanup_action_results",
    "cleanup_trigger_evaluations",
    "cleanup_heartbeats",
    "refresh_stats_views",
)


def month_start(dt: datetime, shift: int = 0) -> datetime:
    index = dt.year * 12 + dt.month - 1 + shift
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def insert_event(conn: asyncpg.Connection, event_id: str, at: datetime, chain: int) -> None:
    """The way ingest stores one: its id in event_ids first, then the row."""
    ts = int(at.timestamp())
    await conn.execute(
        "INSERT INTO event_ids (id, block_time) VALUES ($1, to_timestamp($2::bigint))", event_id, ts
    )
    await conn.execute(
        """INSERT INTO events (id, chain_id, block_number, block_hash, transaction_hash,
                               log_index, registry, event_type, agent_id, "timestamp", block_time)
           VALUES ($1, $2, 1, '0xaa', '0xbb', 0, 'identity', 'Registered', 1, $3,
                   to_timestamp($3::bigint))""",
        event_id,
        chain,
        ts,
    )


async def partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
        " WHERE inhparent = 'events'::regclass"
    )
    return {r["name"] for r in rows}


@pytest.fixture
async def ingest_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Connections as the ingest's role, as the service has them."""
    pool = await create_pool(
        database_url, role="erc8004_ingest", application_name="test-maintenance", max_size=2
    )
    try:
        yield pool
    finally:
        await pool.close()


def scheduler(
    pool: asyncpg.Pool, policy: RetentionPolicy | None = None, *, initial_delay: float = 5.0
) -> tuple[MaintenanceScheduler, CollectorRegistry]:
    registry = CollectorRegistry()
    tasks = default_tasks(policy or RetentionPolicy())
    metrics = MaintenanceMetrics.create(registry, service="ingest", tasks=tasks)
    sched = MaintenanceScheduler(
        pool=pool, tasks=tasks, metrics=metrics, initial_delay=initial_delay
    )
    return sched, registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(f"erc8004_ingest_maintenance_{name}", labels)
    assert value is not None, (name, labels)
    return value


async def move_clock_limit(db: asyncpg.Connection, skew: str) -> None:
    """Only the owner may let callers put the reference time ahead of the clock."""
    await db.execute(
        "CREATE OR REPLACE FUNCTION maintenance_max_clock_skew() RETURNS interval"
        f" LANGUAGE sql IMMUTABLE AS $$ SELECT interval '{skew}' $$"
    )


async def test_maintenance_with_the_clock_moved_forward(
    db: asyncpg.Connection, ingest_pool: asyncpg.Pool
) -> None:
    if await db.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        pytest.skip("monthly partitions are the native path; TimescaleDB drops chunks")
    now: datetime = await db.fetchval("SELECT now()")
    reference = now + timedelta(days=400)
    chain = 900_000 + uuid.uuid4().int % 100_000
    tag = uuid.uuid4().hex[:8]

    # Events: one older than a year before today, one of today, one ten days
    # before the reference (the future: the DEFAULT partition takes it for now).
    await insert_event(db, f"{tag}-1-0", now - timedelta(days=400), chain)
    await insert_event(db, f"{tag}-2-0", now, chain)
    await insert_event(db, f"{tag}-3-0", reference - timedelta(days=10), chain)
    user_id = await db.fetchval(
        "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x') RETURNING id",
        f"u-{tag}",
        f"{tag}@example.org",
    )
    trigger_id = await db.fetchval(
        "INSERT INTO triggers (user_id, name, chain_id, registry)"
        " VALUES ($1, 't', $2, 'identity') RETURNING id",
        user_id,
        chain,
    )
    for job, at in (("old", now), ("new", reference - timedelta(days=10))):
        await db.execute(
            "INSERT INTO action_results (job_id, trigger_id, user_id, action_type, status,"
            " executed_at) VALUES ($1, $2, $3, 'rest', 'success', $4)",
            f"{tag}-{job}",
            trigger_id,
            user_id,
            at,
        )
    for event, at in (("old", now), ("new", reference - timedelta(days=1))):
        await db.execute(
            "INSERT INTO trigger_evaluations (trigger_id, event_id, fired, evaluated_at)"
            " VALUES ($1, $2, false, $3)",
            trigger_id,
            f"{tag}-{event}",
            at,
        )

    for block, at in ((1, now - timedelta(days=400)), (2, now), (3, reference)):
        await db.execute(
            "INSERT INTO heartbeats (chain_id, block_number, block_hash, block_time)"
            " VALUES ($1, $2, $3, $4)",
            chain,
            block,
            "0x" + "ab" * 32,
            at,
        )

    sched, registry = scheduler(ingest_pool)

    # The database refuses a reference time ahead of its clock ...
    assert await sched.run_task("drop_event_partitions", reference=reference) == "failure"
    assert sample(registry, "runs_total", task="drop_event_partitions", outcome="failure") == 1
    assert sample(registry, "last_success_timestamp_seconds", task="drop_event_partitions") == 0
    assert await db.fetchval("SELECT count(*) FROM events WHERE chain_id = $1", chain) == 3

    # ... until the owner allows it.
    await move_clock_limit(db, "1000 days")
    before = await partitions(db)
    started = time.time()
    assert await sched.run_task("ensure_event_partitions", reference=reference) == "success"
    created = await partitions(db) - before
    wanted = {f"events_p{month_start(reference, s):%Y%m}" for s in range(-1, 4)}
    old_month = f"events_p{month_start(now - timedelta(days=400)):%Y%m}"
    assert wanted | {old_month} <= created
    assert sample(registry, "last_result", task="ensure_event_partitions") == len(created)
    where = await db.fetchval(
        "SELECT tableoid::regclass::text FROM events WHERE id = $1", f"{tag}-3-0"
    )
    assert where == f"events_p{month_start(reference - timedelta(days=10)):%Y%m}"
    assert await db.fetchval("SELECT count(*) FROM events_default") == 0

    # The rest, in the scheduler's order.
    outcomes = await sched.run_all(reference=reference)
    assert outcomes == dict.fromkeys(TASKS, "success")

    # Retention: 365 days of events before the reference, partitions and ids.
    cutoff = reference - timedelta(days=365)
    after = await partitions(db)
    assert old_month not in after
    assert f"events_p{month_start(now):%Y%m}" not in after  # entirely before the cutoff
    assert wanted <= after
    remaining = await db.fetch("SELECT id FROM events WHERE chain_id = $1 ORDER BY id", chain)
    assert [r["id"] for r in remaining] == [f"{tag}-3-0"]
    ids = await db.fetch("SELECT id FROM event_ids WHERE id LIKE $1 ORDER BY id", f"{tag}-%")
    assert [r["id"] for r in ids] == [f"{tag}-3-0"]
    bounds = await db.fetch(
        "SELECT pg_get_expr(c.relpartbound, c.oid) AS b FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
    )
    for row in bounds:  # no partition left that lies entirely before the cutoff
        if row["b"] != "DEFAULT":
            upper = row["b"].split("TO ('")[1].split("'")[0]
            assert datetime.fromisoformat(upper) > cutoff, row["b"]
    assert sample(registry, "last_result", task="drop_event_partitions") >= 2

    # action_results older than 90 days, trigger_evaluations older than 30 days.
    jobs = await db.fetch("SELECT job_id FROM action_results WHERE user_id = $1", user_id)
    assert [r["job_id"] for r in jobs] == [f"{tag}-new"]
    assert sample(registry, "last_result", task="cleanup_action_results") == 1
    evaluations = await db.fetch(
        "SELECT event_id FROM trigger_evaluations WHERE trigger_id = $1", trigger_id
    )
    assert [r["event_id"] for r in evaluations] == [f"{tag}-new"]
    assert sample(registry, "last_result", task="cleanup_trigger_evaluations") == 1
    # heartbeats as long as events (backtests replay them together)
    beats = await db.fetch("SELECT block_number FROM heartbeats WHERE chain_id = $1", chain)
    assert [r["block_number"] for r in beats] == [3]
    assert sample(registry, "last_result", task="cleanup_heartbeats") == 2

    # The stats views were refreshed after the retention.
    assert (
        await db.fetchval("SELECT sum(event_count) FROM events_hourly WHERE chain_id = $1", chain)
        == 1
    )
    assert (
        await db.fetchval(
            "SELECT sum(total_executions) FROM action_metrics_hourly WHERE action_type = 'rest'"
        )
        == 1
    )

    for task in TASKS:
        runs = 2 if task == "ensure_event_partitions" else 1
        assert sample(registry, "runs_total", task=task, outcome="success") == runs
        assert (
            started <= sample(registry, "last_success_timestamp_seconds", task=task) <= time.time()
        )
        assert sample(registry, "duration_seconds_count", task=task) >= 1


async def test_one_replica_at_a_time_and_guards(
    db: asyncpg.Connection, ingest_pool: asyncpg.Pool, database_url: str
) -> None:
    sched, registry = scheduler(ingest_pool)
    index = [t.name for t in sched.tasks].index("cleanup_action_results")

    # Another replica holds the task's lock: this one skips it.
    async with db.transaction():
        assert await db.fetchval(
            "SELECT pg_try_advisory_xact_lock($1, $2)", MAINTENANCE_LOCK, index
        )
        assert await sched.run_task("cleanup_action_results") == "skipped"
    assert sample(registry, "runs_total", task="cleanup_action_results", outcome="skipped") == 1
    assert await sched.run_task("cleanup_action_results") == "success"

    # A retention below the database's floor is refused; the failed run claims nothing.
    short, short_registry = scheduler(
        ingest_pool, RetentionPolicy(events_retention=timedelta(days=2))
    )
    assert await short.run_task("drop_event_partitions", min_interval=3600) == "failure"
    assert (
        short_registry.get_sample_value(
            "erc8004_ingest_maintenance_runs_total",
            {"task": "drop_event_partitions", "outcome": "failure"},
        )
        == 1
    )

    # Two replicas on the hourly schedule: the first runs the task, the second
    # finds it done within the interval and skips it.
    replica_a, _ = scheduler(ingest_pool)
    replica_b, registry_b = scheduler(ingest_pool)
    assert await replica_a.run_task("drop_event_partitions", min_interval=3600) == "success"
    assert await replica_b.run_task("drop_event_partitions", min_interval=3600) == "skipped"
    assert sample(registry_b, "runs_total", task="drop_event_partitions", outcome="skipped") == 1
    assert await replica_b.run_task("drop_event_partitions", min_interval=0) == "success"
    assert await db.fetchval(
        "SELECT last_run_at > now() - interval '1 minute' FROM maintenance_runs"
        " WHERE task = 'drop_event_partitions'"
    )
    assert not await db.fetchval(
        "SELECT has_table_privilege('erc8004_ingest', 'maintenance_runs', 'UPDATE')"
    )

    # Only the ingest's role may run the wrappers.
    matcher = await create_pool(
        database_url, role="erc8004_matcher", application_name="test", max_size=1
    )
    try:
        other, _ = scheduler(matcher)
        assert await other.run_task("refresh_stats_views") == "failure"
    finally:
        await matcher.close()
    for role in ("erc8004_matcher", "erc8004_dispatcher", "erc8004_api"):
        assert not await db.fetchval(
            "SELECT has_function_privilege($1, 'maintenance_refresh_stats_views()', 'EXECUTE')",
            role,
        )


async def test_ingest_runs_maintenance_in_the_background(database_url: str) -> None:
    """Wired into the ingest's lifecycle: every task succeeds soon after start and
    shows in /metrics."""
    settings = IngestSettings(
        database_url=SecretStr(database_url),
        ingest_tokens=(SecretStr("t"),),
        maintenance_initial_delay=0,
        ops_port=0,
    )
    app = create_app(settings, relay=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        deadline = time.monotonic() + 30
        values: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            _, text = await ops_get(client, "/metrics")
            values = {
                (s.name, s.labels.get("task", "") + s.labels.get("outcome", "")): s.value
                for family in text_string_to_metric_families(text)
                if family.name.startswith("erc8004_ingest_maintenance_")
                for s in family.samples
            }
            if all(values.get((RUNS, f"{t}success")) == 1 for t in TASKS):
                break
            await asyncio.sleep(0.2)
        for task in TASKS:
            assert values[(RUNS, f"{task}success")] == 1, values
            assert values[(RUNS, f"{task}failure")] == 0
            assert values[(LAST_SUCCESS, task)] > time.time() - 60


async def test_a_restarted_replica_reports_the_last_success_the_database_recorded(
    db: asyncpg.Connection, ingest_pool: asyncpg.Pool
) -> None:
    """After a restart the claims of the previous process make the new one skip
    every task for up to an interval: its gauges still show when each task last
    succeeded (maintenance_runs), from the start, not 0 (which Erc8004MaintenanceStale
    read as "has not succeeded for 20792d")."""
    before, _ = scheduler(ingest_pool)
    assert await before.run_all() == dict.fromkeys(TASKS, "success")
    recorded = {
        r["task"]: r["last_run_at"].timestamp()
        for r in await db.fetch("SELECT task, last_run_at FROM maintenance_runs")
    }
    assert set(recorded) == set(TASKS)

    # initial_delay: it would skip them anyway, the claims are recent
    restarted_loop, registry = scheduler(ingest_pool, initial_delay=3600)
    for task in TASKS:
        assert sample(registry, "last_success_timestamp_seconds", task=task) == 0
    loop = asyncio.create_task(restarted_loop.run())
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sample(registry, "last_success_timestamp_seconds", task=TASKS[0]) > 0:
                break
            await asyncio.sleep(0.05)
        for task in TASKS:
            assert sample(registry, "last_success_timestamp_seconds", task=task) == pytest.approx(
                recorded[task]
            )
            assert sample(registry, "runs_total", task=task, outcome="success") == 0
    finally:
        restarted_loop.stop()
        await loop

    # A skipped run reads the success another replica has recorded since.
    await asyncio.sleep(0.01)
    assert await before.run_task("cleanup_heartbeats") == "success"
    newer = await db.fetchval(
        "SELECT last_run_at FROM maintenance_runs WHERE task = 'cleanup_heartbeats'"
    )
    assert newer.timestamp() > recorded["cleanup_heartbeats"]
    assert await restarted_loop.run_task("cleanup_heartbeats", min_interval=3600) == "skipped"
    assert sample(registry, "last_success_timestamp_seconds", task="cleanup_heartbeats") == (
        pytest.approx(newer.timestamp())
    )
    # Other roles cannot read the record.
    assert not await db.fetchval(
        "SELECT has_function_privilege('erc8004_api', 'maintenance_last_runs()', 'EXECUTE')"
    )


async def test_ingest_reads_the_last_successes_before_it_serves_metrics(
    db: asyncpg.Connection, ingest_pool: asyncpg.Pool, database_url: str
) -> None:
    """A restarted ingest reads maintenance_runs during its startup, before its ops
    port serves /metrics: its very first scrape shows every task's last success,
    never 0 (which Erc8004MaintenanceStale would count from 1970). The record is
    held locked while the app starts, so a read left to the background would be
    behind the first scrape every time."""
    before, _ = scheduler(ingest_pool)
    assert await before.run_all() == dict.fromkeys(TASKS, "success")
    recorded = {
        r["task"]: r["last_run_at"].timestamp()
        for r in await db.fetch("SELECT task, last_run_at FROM maintenance_runs")
    }
    settings = IngestSettings(
        database_url=SecretStr(database_url),
        ingest_tokens=(SecretStr("t"),),
        maintenance_initial_delay=3600,  # no run: only the read shows the successes
        ops_port=0,
    )
    client = TestClient(TestServer(create_app(settings, relay=False), host="127.0.0.1"))
    lock = db.transaction()
    await lock.start()
    await db.execute("LOCK TABLE maintenance_runs IN ACCESS EXCLUSIVE MODE")
    starting = asyncio.create_task(client.start_server())
    try:
        await asyncio.sleep(1.0)
        assert not starting.done(), "ingest served before it read maintenance_runs"
    finally:
        await lock.rollback()
    await asyncio.wait_for(starting, 30)
    try:
        status, text = await ops_get(client, "/metrics")
        assert status == 200
        values = {
            s.labels["task"]: s.value
            for family in text_string_to_metric_families(text)
            if family.name == LAST_SUCCESS
            for s in family.samples
        }
        assert values == pytest.approx(recorded)
    finally:
        await client.close()
