"""The events' and statistics' SQL: stored canonical events, events per hour, and
the user's actions per hour (each over a :class:`Where` the route composed)."""

from __future__ import annotations

import asyncpg

from services.api.queries import EVENT_SELECT, Where
from shared.contract.sql import CANONICAL
from shared.platform.db import Conn

#: Bytes of events one page carries at most (at least one event): texts are stored
#: as long as the chain emits them, so a page of 200 could otherwise be a gigabyte.
PAGE_BYTES = 4 * 1024 * 1024


#: An event's size in a page: its texts' lengths (read from their headers, not
#: decompressed) and a fixed allowance for the rest.
_SIZE = "512 + " + " + ".join(
    f"coalesce(octet_length(e.{c}), 0)"
    for c in (
        "token_uri", "metadata_key", "metadata_value", "tag1", "tag2", "endpoint",
        "file_uri", "request_uri", "response_uri", "tag",
    )
)  # fmt: skip


async def list_events(
    conn: Conn,
    where: Where,
    *,
    after: tuple[str, str, str] | None,
    limit: int,
    max_bytes: int = PAGE_BYTES,
) -> tuple[list[asyncpg.Record], bool]:
    """The page's events (at most ``limit`` and ``max_bytes``, at least one) and
    whether more follow. Sizes are read first, then only the rows that fit."""
    where.clauses.append(CANONICAL)
    if after is not None:
        where.add("(e.block_time, e.id, e.block_hash) < ({}::text::timestamptz, {}, {})", *after)
    order = "e.block_time DESC, e.id DESC, e.block_hash DESC"
    sizes = await conn.fetch(
        f"""SELECT e.block_time, e.id, e.block_hash, {_SIZE} AS size
            FROM events e WHERE {where.sql()} ORDER BY {order}
            LIMIT {limit + 1}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )
    taken, total = 0, 0
    for row in sizes[:limit]:
        if taken and total + row["size"] > max_bytes:
            break
        total += row["size"]
        taken += 1
    if not taken:
        return [], False
    last = sizes[taken - 1]
    where.add(
        "(e.block_time, e.id, e.block_hash) >= ({}, {}, {})",
        last["block_time"],
        last["id"],
        last["block_hash"],
    )
    rows = await conn.fetch(
        f"""SELECT {EVENT_SELECT} FROM events e WHERE {where.sql()} ORDER BY {order}
            LIMIT {taken}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )
    return rows, len(sizes) > taken


async def list_event_stats(
    conn: Conn, where: Where, *, after: tuple[str, int, str, str] | None, limit: int
) -> list[asyncpg.Record]:
    if after is not None:
        where.add(
            "(hour, chain_id, registry, event_type) < ({}::text::timestamptz, {}, {}, {})", *after
        )
    return await conn.fetch(
        f"""SELECT hour, chain_id, registry, event_type, event_count FROM events_hourly
            WHERE {where.sql()}
            ORDER BY hour DESC, chain_id DESC, registry DESC, event_type DESC
            LIMIT {limit + 1}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )


async def list_action_stats(
    conn: Conn, where: Where, *, after: tuple[str, str] | None, limit: int
) -> list[asyncpg.Record]:
    where.clauses.append("hour IS NOT NULL")
    if after is not None:
        where.add("(hour, action_type) < ({}::text::timestamptz, {})", *after)
    return await conn.fetch(
        f"""SELECT hour, action_type, total_executions, success_count, failure_count,
                   avg_duration_ms, p95_duration_ms
            FROM action_metrics_hourly_mine WHERE {where.sql()}
            ORDER BY hour DESC, action_type DESC LIMIT {limit + 1}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )
