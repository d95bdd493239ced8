"""The relay's batches are bounded in bytes as well as rows: large events (texts of
megabytes are stored as the chain has them) never make a batch that exceeds memory
or the send's time limit; a row larger than the bound still goes, alone. The
outbox's statistics and the relay's batches read its live rows, not the empty pages
a backlog left."""

from __future__ import annotations

import json

import asyncpg
import pytest

from services.ingest.queries import (
    EXACT_DEPTH,
    OUTBOX_LOCK,
    OUTBOX_SIZES,
    OUTBOX_STATS,
    lock_outbox_batch,
    outbox_stats,
)

pytestmark = [pytest.mark.db]


async def test_a_batch_stops_at_its_byte_bound_but_takes_at_least_one_row(
    db: asyncpg.Connection,
) -> None:
    sizes = [600, 300, 200, 5000, 10]
    await db.executemany(
        "INSERT INTO event_outbox (topic, msg_key, payload) VALUES ('t', 'k', $1)",
        [(b"x" * n,) for n in sizes],
    )

    async def batch(limit: int, max_bytes: int) -> list[int]:
        async with db.transaction():
            rows = await lock_outbox_batch(db, limit, max_bytes)
            assert rows is not None
            return [len(r.payload) for r in rows]

    assert await batch(100, 1000) == [600, 300]  # 600 + 300 + 200 > 1000
    assert await batch(2, 10_000) == [600, 300]  # the row limit still holds
    assert await batch(100, 100) == [600]  # larger than the bound: alone
    await db.execute("DELETE FROM event_outbox WHERE octet_length(payload) < 5000")
    assert await batch(100, 100) == [5000]
    await db.execute("DELETE FROM event_outbox")
    assert await batch(100, 100) == []


async def _pages_read(db: asyncpg.Connection, sql: str, *args: object) -> int:
    """The shared buffers ``sql`` touched (hit or read), from its plan run."""
    plan = await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    if isinstance(plan, str):  # (without the connection's json codec)
        plan = json.loads(plan)
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


async def _drained_backlog(db: asyncpg.Connection, keep: int) -> int:
    """A backlog of 20,000 rows of 700 bytes, drained but for the last ``keep`` and
    vacuumed (the statistics now say a few rows); the file's pages, still there."""
    await db.execute(
        "INSERT INTO event_outbox (msg_key, payload)"
        " SELECT 'backlog:' || g, convert_to(repeat('x', 700), 'UTF8')"
        " FROM generate_series(1, 20000) g"
    )
    await db.execute(
        "DELETE FROM event_outbox WHERE seq <= (SELECT max(seq) - $1 FROM event_outbox)", keep
    )
    await db.execute("VACUUM ANALYZE event_outbox")
    pages: int = await db.fetchval("SELECT pg_relation_size('event_outbox') / 8192")
    assert pages > 1500  # the backlog's pages are still there
    return pages


async def test_the_stats_after_a_drained_backlog_read_the_live_rows_not_the_file(
    db: asyncpg.Connection,
) -> None:
    """The outbox keeps its largest backlog's size in empty pages (it is never
    truncated): the once-a-second depth and lag must not scan them."""
    pages = await _drained_backlog(db, keep=0)
    assert await outbox_stats(db) == (0, 0.0)
    await db.execute(
        "INSERT INTO event_outbox (msg_key, payload, created_at) VALUES"
        " ('a', '\\x01', now() - interval '30 seconds'), ('b', '\\x02', now())"
    )
    depth, lag = await outbox_stats(db)
    assert depth == 2
    assert 29 < lag < 60  # the next message's age: the one with the lowest seq
    assert await _pages_read(db, OUTBOX_STATS) < 50
    # a count next to min(created_at), as before, reads every page of the file
    whole = "SELECT count(*), min(created_at) FROM event_outbox"
    assert await _pages_read(db, whole) >= pages


async def test_a_large_backlog_is_measured_by_its_span_a_small_one_exactly(
    db: asyncpg.Connection,
) -> None:
    """Up to EXACT_DEPTH queued messages are counted; beyond, the depth is the span
    of their sequence numbers (two probes of the key, not a count every second)."""
    queued = EXACT_DEPTH + 2000
    await db.execute(
        "INSERT INTO event_outbox (msg_key, payload)"
        " SELECT 'q:' || g, '\\x00' FROM generate_series(1, $1::int) g",
        queued,
    )
    first = await db.fetchval("SELECT min(seq) FROM event_outbox")
    # a gap in the middle, as a rolled-back insert leaves: the span still counts it
    await db.execute("DELETE FROM event_outbox WHERE seq BETWEEN $1 AND $1 + 99", first + 500)
    await db.execute("VACUUM ANALYZE event_outbox")
    depth, _ = await outbox_stats(db)
    assert depth == queued
    assert await _pages_read(db, OUTBOX_STATS) < 100
    # at or below the bound, exact, gap and all
    await db.execute("DELETE FROM event_outbox WHERE seq >= $1", first + EXACT_DEPTH - 1000)
    depth, _ = await outbox_stats(db)
    assert depth == EXACT_DEPTH - 1000 - 100


async def test_the_relay_reads_through_the_key_after_a_drained_backlog(
    db: asyncpg.Connection,
) -> None:
    """After a backlog drains and vacuum passes, the statistics say a few rows in a
    file of the backlog's size; the planner then prefers a sequential scan of every
    page (and a sort) to the key for the relay's batch. The relay's transaction turns
    that off: its reads touch a few pages, not the file."""
    pages = await _drained_backlog(db, keep=3)
    last = await db.fetchval("SELECT max(seq) FROM event_outbox")
    # Without the setting, the planner scans the whole file for a batch of 2,000.
    async with db.transaction():
        assert await _pages_read(db, OUTBOX_SIZES, 2000) >= pages
        assert await _pages_read(db, OUTBOX_LOCK, 2000, last) >= pages
    # The relay's own transaction: its batch is the three live rows, read through
    # the key, as are its two statements run again in the same transaction.
    async with db.transaction():
        rows = await lock_outbox_batch(db, 2000)
        assert rows is not None
        assert [r.seq for r in rows] == [last - 2, last - 1, last]
        assert await _pages_read(db, OUTBOX_SIZES, 2000) < 50
        assert await _pages_read(db, OUTBOX_LOCK, 2000, last) < 50
    # the setting ended with the transaction
    assert await db.fetchval("SHOW enable_seqscan") == "on"


async def test_the_stats_inside_a_callers_transaction_leave_its_settings_alone(
    db: asyncpg.Connection,
) -> None:
    """The statistics turn sequential scans off for themselves; in a caller's
    transaction (a savepoint, which a setting outlives) the caller's value is back
    afterwards."""
    async with db.transaction():
        assert await outbox_stats(db) == (0, 0.0)
        assert await db.fetchval("SHOW enable_seqscan") == "on"
    assert await db.fetchval("SHOW enable_seqscan") == "on"
