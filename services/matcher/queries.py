"""The matcher's SQL: trigger loading, state and idempotency records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from shared.db import Conn

TRIGGERS_SQL = """
SELECT t.id, t.user_id, t.name, t.chain_id, t.registry, t.enabled_at, t.cooldown_seconds,
       t.version,
       coalesce((SELECT json_agg(json_build_object(
                    'condition_type', c.condition_type, 'field', c.field,
                    'operator', c.operator, 'value', c.value, 'config', c.config)
                    ORDER BY c.id)
                 FROM trigger_conditions c WHERE c.trigger_id = t.id), '[]') AS conditions,
       coalesce((SELECT json_agg(json_build_object(
                    'id', a.id, 'action_type', a.action_type, 'priority', a.priority,
                    'config', a.config)
                    ORDER BY a.priority, a.id)
                 FROM trigger_actions a WHERE a.trigger_id = t.id), '[]') AS actions
FROM triggers t
WHERE t.enabled
"""

# Composed from the constant above only (no input reaches the text).
FINGERPRINTS_SQL = "SELECT x.id, md5(x::text) AS fp FROM (" + TRIGGERS_SQL + ") AS x"  # noqa: S608
BY_ID_SQL = (
    "SELECT x.*, md5(x::text) AS fp FROM ("  # noqa: S608
    + TRIGGERS_SQL
    + " AND t.id = any($1::text[])) AS x"
)


async def list_enabled_triggers(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(TRIGGERS_SQL)


async def trigger_fingerprints(conn: Conn) -> dict[str, str]:
    """id -> md5 of everything the matcher reads of an enabled trigger: a resync
    compares these and compiles only what changed."""
    rows = await conn.fetch(FINGERPRINTS_SQL)
    return {r["id"]: r["fp"] for r in rows}


async def list_triggers_by_id(conn: Conn, ids: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(BY_ID_SQL, list(ids))


StateKey = tuple[str, str]


async def lock_states(conn: Conn, keys: Sequence[StateKey]) -> dict[StateKey, dict[str, Any]]:
    """Inside the caller's transaction: make sure a state row exists for every key of
    a trigger that still exists, lock them all in key order (concurrent matchers
    touching the same trigger wait, never deadlock) and return their states."""
    ordered = sorted(set(keys))
    trigger_ids = [k[0] for k in ordered]
    scopes = [k[1] for k in ordered]
    await conn.execute(
        """
        INSERT INTO trigger_state (trigger_id, scope_key, state_data)
        SELECT k.trigger_id, k.scope_key, '{}'::jsonb
        FROM unnest($1::text[], $2::text[]) AS k(trigger_id, scope_key)
        WHERE EXISTS (SELECT 1 FROM triggers t WHERE t.id = k.trigger_id)
        ORDER BY 1, 2
        ON CONFLICT (trigger_id, scope_key) DO NOTHING
        """,
        trigger_ids,
        scopes,
    )
    rows = await conn.fetch(
        """
        SELECT s.trigger_id, s.scope_key, s.state_data
        FROM trigger_state s
        JOIN unnest($1::text[], $2::text[]) AS k(trigger_id, scope_key)
          ON s.trigger_id = k.trigger_id AND s.scope_key = k.scope_key
        ORDER BY s.trigger_id, s.scope_key
        FOR UPDATE OF s
        """,
        trigger_ids,
        scopes,
    )
    return {(r["trigger_id"], r["scope_key"]): r["state_data"] for r in rows}


async def lock_chain_states(
    conn: Conn, trigger_ids: Sequence[str]
) -> dict[StateKey, dict[str, Any]]:
    """Every state row of the given triggers, locked (reorg retractions)."""
    rows = await conn.fetch(
        """
        SELECT trigger_id, scope_key, state_data FROM trigger_state
        WHERE trigger_id = any($1::text[])
        ORDER BY trigger_id, scope_key
        FOR UPDATE
        """,
        list(trigger_ids),
    )
    return {(r["trigger_id"], r["scope_key"]): r["state_data"] for r in rows}


async def rewrite_states(
    conn: Conn, trigger_id: str, rewrite: Callable[[dict[str, Any]], dict[str, Any]]
) -> int:
    """Every state row of a trigger through ``rewrite``, in one transaction with the
    rows locked; returns how many changed."""
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT scope_key, state_data FROM trigger_state WHERE trigger_id = $1"
            " ORDER BY scope_key FOR UPDATE",
            trigger_id,
        )
        changed = {}
        for r in rows:
            new = rewrite(r["state_data"])
            if new != r["state_data"]:
                changed[(trigger_id, r["scope_key"])] = new
        await save_states(conn, changed)
    return len(changed)


async def save_states(conn: Conn, states: dict[StateKey, dict[str, Any]]) -> None:
    await save(conn, states, [])


async def save(
    conn: Conn,
    states: dict[StateKey, dict[str, Any]],
    evaluations: Sequence[tuple[str, str, bool, dict[str, Any] | None]],
) -> None:
    """Changed states and new evaluation records in one statement (one round trip;
    a data-modifying WITH runs to completion whether or not it is read)."""
    if not states and not evaluations:
        return
    keys = sorted(states)
    await conn.execute(
        """
        WITH saved AS (
            UPDATE trigger_state s SET state_data = u.state_data, last_updated = now()
            FROM unnest($1::text[], $2::text[], $3::jsonb[])
                AS u(trigger_id, scope_key, state_data)
            WHERE s.trigger_id = u.trigger_id AND s.scope_key = u.scope_key
            RETURNING 1)
        INSERT INTO trigger_evaluations (trigger_id, event_id, fired, explain)
        SELECT * FROM unnest($4::text[], $5::text[], $6::bool[], $7::jsonb[])
        ON CONFLICT (trigger_id, event_id) DO NOTHING
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [states[k] for k in keys],
        [r[0] for r in evaluations],
        [r[1] for r in evaluations],
        [r[2] for r in evaluations],
        [r[3] for r in evaluations],
    )


async def done_evaluations(
    conn: Conn, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """(trigger, event) pairs already evaluated: their explain when they fired."""
    if not pairs:
        return {}
    rows = await conn.fetch(
        """
        SELECT e.trigger_id, e.event_id, e.fired, e.explain
        FROM trigger_evaluations e
        JOIN unnest($1::text[], $2::text[]) AS p(trigger_id, event_id)
          ON e.trigger_id = p.trigger_id AND e.event_id = p.event_id
        """,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {(r["trigger_id"], r["event_id"]): (r["explain"] if r["fired"] else None) for r in rows}
