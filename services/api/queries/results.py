"""The results' SQL: a trigger's action results with their firings' explains, and
what a redrive reads (the job's latest result, its event, the trigger's actions) and
claims."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from services.api.queries import EVENT_SELECT, Where
from shared.contract.event_rows import (
    EVENT_COLUMNS,
)
from shared.contract.sql import CANONICAL
from shared.platform.db import Conn

RESULT_FIELDS = (
    "id", "job_id", "trigger_id", "event_id", "action_type", "status", "executed_at",
    "duration_ms", "error_message", "response_data", "retry_count", "attempt",
    "event_version", "trigger_version",
)  # fmt: skip
RESULT_COLUMNS = ", ".join(f"r.{c}" for c in RESULT_FIELDS)
#: Sort key of results (``action_results r``): newest first, rows without a time last.
RESULT_TIME = "coalesce(r.executed_at, '-infinity'::timestamptz)"
#: The columns of a result's stored event, each as ``ev_<column>``.
RESULT_EVENT_COLUMNS = ", ".join(f'e."{c}" AS "ev_{c}"' for c in EVENT_COLUMNS)


async def list_results(
    conn: Conn,
    trigger_id: str,
    *,
    status: str | None,
    action_type: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[str, str] | None,
    limit: int,
    events_of_version: int | None = None,
) -> list[asyncpg.Record]:
    """A page of the trigger's results, each with ``recorded_explain``: the explain the
    matcher recorded for the firing (its trigger_evaluations row, matched on the event
    version), or NULL. With ``events_of_version``, rows written at that trigger version
    that have no recorded explain also carry their stored event version
    (``ev_<column>``, NULL when not stored), to evaluate again. One statement: the
    page is chosen first, the joins run for its rows only."""
    where = Where(trigger_id)
    where.add("r.trigger_id = $1")
    if status is not None:
        where.add("r.status = {}", status)
    if action_type is not None:
        where.add("r.action_type = {}", action_type)
    if since is not None:
        where.add("r.executed_at >= {}", since)
    if until is not None:
        where.add("r.executed_at < {}", until)
    if after is not None:
        where.add(f"({RESULT_TIME}, r.id) < ({{}}::text::timestamptz, {{}})", *after)
    version = where.param(events_of_version)
    explain = FIRING_EXPLAIN.format(trigger="r.trigger_id", version="r.event_version")
    return await conn.fetch(
        f"""
        SELECT r.*, x.explain AS recorded_explain, e.*
        FROM (SELECT {RESULT_COLUMNS} FROM action_results r WHERE {where.sql()}
              ORDER BY {RESULT_TIME} DESC, r.id DESC LIMIT {limit + 1}) r
        LEFT JOIN LATERAL ({explain}) x ON true
        LEFT JOIN LATERAL (
            SELECT {RESULT_EVENT_COLUMNS} FROM events e
            WHERE {version}::int IS NOT NULL AND x.explain IS NULL
              AND r.trigger_version = {version}::int
              AND e.id = r.event_id AND e.id || '@' || e.block_hash = r.event_version
            ORDER BY e.created_at DESC LIMIT 1) e ON true
        ORDER BY {RESULT_TIME} DESC, r.id DESC""",  # noqa: S608 (fixed fragments)
        *where.args,
    )


async def latest_result(conn: Conn, trigger_id: str, job_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {RESULT_COLUMNS} FROM action_results r
            WHERE r.trigger_id = $1 AND r.job_id = $2
            ORDER BY {RESULT_TIME} DESC, r.attempt DESC, r.id DESC LIMIT 1""",  # noqa: S608 (constants)
        trigger_id,
        job_id,
    )


async def get_actions(conn: Conn, trigger_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, action_type, priority, config FROM trigger_actions WHERE trigger_id = $1",
        trigger_id,
    )


async def get_canonical_event(conn: Conn, event_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {EVENT_SELECT} FROM events e WHERE e.id = $1 AND {CANONICAL}
            ORDER BY e.created_at DESC LIMIT 1""",  # noqa: S608 (constants)
        event_id,
    )


#: The recorded explain of a trigger's firing for an event version: the event's own
#: evaluation, or (an absence firing, docs/semantics.md 5a) the record of the tick
#: that fired the silence the event started.
FIRING_EXPLAIN = """
        SELECT x.explain FROM trigger_evaluations x
        WHERE x.trigger_id = {trigger} AND x.fired
          AND (x.event_id = {version}
               OR (x.event_id LIKE 'tick:%' AND x.explain ->> 'event_version' = {version}))
        ORDER BY x.seq NULLS FIRST LIMIT 1"""


async def get_evaluation_explain(
    conn: Conn, trigger_id: str, version_key: str
) -> dict[str, Any] | None:
    value: dict[str, Any] | None = await conn.fetchval(
        FIRING_EXPLAIN.format(trigger="$1", version="$2"), trigger_id, version_key
    )
    return value


# --- redrive claims ------------------------------------------------------------------------


async def claim_redrive(
    conn: Conn, job_id: str, user_id: str, run_id: str, interval: float
) -> float:
    """Record a redrive of ``job_id``; 0 when it may go ahead, else the seconds until
    the job may be redriven again (the previous one was less than ``interval`` ago)."""
    claimed = await conn.fetchval(
        """INSERT INTO job_redrives (job_id, user_id, run_id) VALUES ($1, $2, $3)
           ON CONFLICT (job_id) DO UPDATE SET run_id = excluded.run_id, requested_at = now()
           WHERE job_redrives.requested_at <= now() - make_interval(secs => $4)
           RETURNING true""",
        job_id,
        user_id,
        run_id,
        interval,
    )
    if claimed:
        return 0.0
    wait: float = await conn.fetchval(
        """SELECT extract(epoch FROM requested_at + make_interval(secs => $2) - now())::float8
           FROM job_redrives WHERE job_id = $1""",
        job_id,
        interval,
    )
    return max(wait, 0.1)


async def release_redrive(conn: Conn, job_id: str, run_id: str) -> None:
    """Forget a redrive claim that came to nothing (only this run's)."""
    await conn.execute("DELETE FROM job_redrives WHERE job_id = $1 AND run_id = $2", job_id, run_id)
