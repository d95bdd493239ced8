"""What the dispatcher's ResultWriter writes: every row of a flush as it was handed in
(NULLs, JSON, numbers), a repeated attempt once, and the rows of a trigger or user
deleted while their jobs were under way as the schema's ON DELETE rules would leave
them (trigger_id NULL; nothing for a deleted user), without failing the rest."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from services.dispatcher import queries
from services.dispatcher.results import ResultRow, ResultWriter
from shared.platform.db import create_pool, register_codecs
from tests.matcherutil import NEW_FEEDBACK, insert_trigger, insert_user, random_chain

pytestmark = [pytest.mark.db]

VERSION = f"8453-1-0@0x{'a' * 64}"


def row(
    job: str,
    trigger: str | None,
    user: str,
    *,
    status: str = "success",
    error: str | None = None,
    response: dict[str, object] | None = None,
    attempt: int = 1,
    run_id: str | None = None,
    trigger_version: int | None = 3,
) -> ResultRow:
    return (
        job, trigger, "8453-1-0", user, "rest", status, 12, error, response, attempt - 1,
        attempt, run_id, VERSION, trigger_version,
    )  # fmt: skip


async def stored(
    conn: asyncpg.Connection, jobs: list[str]
) -> dict[tuple[str, int], dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT job_id, trigger_id, user_id, status, duration_ms, error_message, "
        "response_data, retry_count, attempt, run_id, event_version, trigger_version "
        "FROM action_results WHERE job_id = ANY($1::text[])",
        jobs,
    )
    return {(r["job_id"], r["attempt"]): dict(r) for r in rows}


async def test_a_flush_stores_each_row_as_handed_in_and_a_repeat_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    await register_codecs(conn)
    pool = await create_pool(database_url, application_name="test-writer", min_size=1)
    try:
        user = await insert_user(conn)
        trigger = await insert_trigger(
            conn, chain_id=random_chain(), conditions=NEW_FEEDBACK, user_id=user
        )
        writer = ResultWriter(pool)
        jobs = [uuid.uuid4().hex for _ in range(4)]
        rows = [
            row(jobs[0], trigger, user),
            row(
                jobs[1],
                trigger,
                user,
                status="retrying",
                error="HTTP 503",
                response={"status": 503, "body": "busy \u2603"},
                trigger_version=None,
            ),
            row(jobs[1], trigger, user, status="success", attempt=2),
            row(jobs[2], None, user, status="failed", error="gone", run_id="redrive-1"),
            # the same attempt handed in twice (a redelivery racing its original)
            row(jobs[3], trigger, user),
            row(jobs[3], trigger, user, status="failed", error="second"),
        ]
        # handed in together: one flush holds several of them
        await asyncio.gather(*(writer.write(r) for r in rows))
        got = await stored(conn, jobs)
        assert set(got) == {(jobs[0], 1), (jobs[1], 1), (jobs[1], 2), (jobs[2], 1), (jobs[3], 1)}
        retrying = got[(jobs[1], 1)]
        assert retrying["status"] == "retrying"
        assert retrying["error_message"] == "HTTP 503"
        assert retrying["response_data"] == {"status": 503, "body": "busy \u2603"}
        assert retrying["trigger_version"] is None
        assert got[(jobs[1], 2)]["retry_count"] == 1
        assert got[(jobs[0], 1)]["response_data"] is None
        assert got[(jobs[0], 1)]["trigger_version"] == 3
        assert got[(jobs[0], 1)]["duration_ms"] == 12
        assert got[(jobs[0], 1)]["event_version"] == VERSION
        assert got[(jobs[2], 1)]["run_id"] == "redrive-1"
        assert got[(jobs[2], 1)]["trigger_id"] is None
        # the first of the repeated attempt is kept
        assert got[(jobs[3], 1)]["status"] == "success"
    finally:
        await pool.close()
        await conn.close()


async def test_rows_of_a_deleted_trigger_or_user_do_not_fail_the_flush(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    await register_codecs(conn)
    pool = await create_pool(database_url, application_name="test-writer", min_size=1)
    try:
        user, gone_user = await insert_user(conn), await insert_user(conn)
        kept = await insert_trigger(
            conn, chain_id=random_chain(), conditions=NEW_FEEDBACK, user_id=user
        )
        gone = await insert_trigger(
            conn, chain_id=random_chain(), conditions=NEW_FEEDBACK, user_id=user
        )
        await conn.execute("DELETE FROM triggers WHERE id = $1", gone)
        await conn.execute("DELETE FROM users WHERE id = $1", gone_user)
        writer = ResultWriter(pool)
        jobs = [uuid.uuid4().hex for _ in range(3)]
        await asyncio.gather(
            writer.write(row(jobs[0], kept, user)),
            writer.write(row(jobs[1], gone, user)),
            writer.write(row(jobs[2], None, gone_user)),
        )
        got = await stored(conn, jobs)
        assert set(got) == {(jobs[0], 1), (jobs[1], 1)}
        assert got[(jobs[0], 1)]["trigger_id"] == kept
        assert got[(jobs[1], 1)]["trigger_id"] is None
        assert got[(jobs[1], 1)]["user_id"] == user
    finally:
        await pool.close()
        await conn.close()


async def test_recorded_attempts_are_found_by_index_before_the_table_has_statistics(
    database_url: str,
) -> None:
    """The dispatcher's pre-batch lookup, as its role: the attempts of the asked jobs
    (every run and attempt), none of others, and no read of the whole table even
    though action_results was never analyzed (a plain query read it all)."""
    conn = await asyncpg.connect(database_url)
    pool = await create_pool(
        database_url, role="erc8004_dispatcher", application_name="test-recorded", min_size=1
    )
    try:
        # this test's own database: autovacuum must not analyze the table meanwhile
        await conn.execute("ALTER TABLE action_results SET (autovacuum_enabled = off)")
        user = await insert_user(conn)
        await conn.execute(
            "INSERT INTO action_results (job_id, user_id, action_type, status, attempt) "
            "SELECT md5(i::text), $1, 'rest', 'success', 1 FROM generate_series(1, 20000) i",
            user,
        )
        asked = [uuid.uuid4().hex for _ in range(3)]
        await conn.execute(
            "INSERT INTO action_results (job_id, user_id, action_type, status, attempt, run_id) "
            "VALUES ($1, $3, 'rest', 'retrying', 1, NULL), ($1, $3, 'rest', 'success', 2, NULL),"
            " ($2, $3, 'rest', 'dead', 1, 'redrive-1')",
            asked[0],
            asked[1],
            user,
        )
        assert await conn.fetchval(
            "SELECT reltuples < 0 FROM pg_class WHERE relname = 'action_results'"
        ), "the table was analyzed: the test no longer shows the cold case"
        async with pool.acquire() as db, db.transaction():
            rows = await db.fetch(
                queries.RECORDED_ATTEMPTS, [*asked, *(str(i) for i in range(197))]
            )
            scans = await db.fetchrow(
                "SELECT seq_scan, idx_scan, idx_tup_fetch FROM pg_stat_xact_user_tables "
                "WHERE relname = 'action_results'"
            )
        got = sorted((r["job_id"], r["run_id"], r["attempt"], r["status"]) for r in rows)
        assert got == sorted(
            [
                (asked[0], None, 1, "retrying"),
                (asked[0], None, 2, "success"),
                (asked[1], "redrive-1", 1, "dead"),
            ]
        )
        assert scans is not None
        assert scans["seq_scan"] == 0
        assert scans["idx_scan"] >= 1
        # by the job ids: the rows asked for, not a walk of a whole index
        assert scans["idx_tup_fetch"] <= 10
    finally:
        await pool.close()
        await conn.close()
