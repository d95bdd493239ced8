"""The relay's batches are bounded in bytes as well as rows: large events (texts of
megabytes are stored as the chain has them) never make a batch that exceeds memory
or the send's time limit; a row larger than the bound still goes, alone."""

from __future__ import annotations

import asyncpg
import pytest

from services.ingest.queries import lock_outbox_batch

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
