"""The events' and statistics' SQL: stored canonical events, events per hour, and
the user's actions per hour (each over a :class:`Where` the route composed)."""

from __future__ import annotations

import asyncpg

from services.api.queries import EVENT_SELECT, Where
from shared.contract.sql import CANONICAL
from shared.platform.db import Conn


async def list_events(
    conn: Conn, where: Where, *, after: tuple[str, str, str] | None, limit: int
) -> list[asyncpg.Record]:
    where.clauses.append(CANONICAL)
    if after is not None:
        where.add("(e.block_time, e.id, e.block_hash) < ({}::text::timestamptz, {}, {})", *after)
    return await conn.fetch(
        f"""SELECT {EVENT_SELECT} FROM events e WHERE {where.sql()}
            ORDER BY e.block_time DESC, e.id DESC, e.block_hash DESC
            LIMIT {limit + 1}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )


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
