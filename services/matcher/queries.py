"""The matcher's SQL: trigger loading, state and idempotency records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from shared.contract.event_rows import (
    EVENT_COLUMNS,
)
from shared.contract.events import (
    Event,
)
from shared.engine.replay import scope_order
from shared.platform.db import Conn

_TRIGGERS = """
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
                 FROM trigger_actions a WHERE a.trigger_id = t.id), '[]') AS actions{fp}
FROM triggers t
WHERE t.enabled
"""

TRIGGERS_SQL = _TRIGGERS.format(fp="")

#: A trigger's fingerprint: the versions of its rows, the trigger's and its
#: conditions' and actions' (by id). Any change to any of them (whoever makes it)
#: writes a new row version, with the writing transaction's id (``xmin``), so it
#: changes the fingerprint; vacuum, a freeze or VACUUM FULL keep the ids. The
#: database's own triggers also move ``triggers.version`` on each change of what the
#: matcher reads (migration 20261206100000); the children's versions still count
#: when those did not fire (a replica's apply, triggers disabled). The version is
#: in the text too, so that a transaction id used again after wraparound cannot
#: match an old fingerprint by itself. A change that leaves the definition as it
#: was still counts (the trigger is read again).
#: Until 2026-12-08 the fingerprint was an md5 of the whole definition built as JSON
#: for every enabled trigger: at each resync (every minute) 150-460 ms of a
#: PostgreSQL core at 10,000 triggers, 2 s at 100,000; the versions take about a
#: third of that (docs/performance.md, "Issue 17, twelfth session").
#:
#: The text hashed, written once for the two forms below: ``{conditions}`` and
#: ``{actions}`` are each child table's versions of the trigger ``t``.
_FINGERPRINT = (
    "md5(t.version::text || '|' || t.xmin::text"
    " || '|' || coalesce({conditions}, '') || '|' || coalesce({actions}, ''))"
)
#: One child table's rows of a trigger, as ``id@xmin`` in id order.
_CHILD_VERSIONS = "string_agg(id::text || '@' || xmin::text, ',' ORDER BY id)"

#: For one trigger (alias ``t``), by its key: each child table read for it alone.
#: (Composed from the constants above only, as is FINGERPRINTS_SQL.)
_ROW_VERSIONS = _FINGERPRINT.format(
    conditions=f"(SELECT {_CHILD_VERSIONS} FROM trigger_conditions WHERE trigger_id = t.id)",  # noqa: S608
    actions=f"(SELECT {_CHILD_VERSIONS} FROM trigger_actions WHERE trigger_id = t.id)",  # noqa: S608
)

#: For every enabled trigger: the same text, the children grouped in one pass each.
FINGERPRINTS_SQL = f"""
SELECT t.id, {_FINGERPRINT.format(conditions="c.v", actions="a.v")} AS fp
FROM triggers t
LEFT JOIN (SELECT trigger_id, {_CHILD_VERSIONS} AS v
           FROM trigger_conditions GROUP BY trigger_id) c ON c.trigger_id = t.id
LEFT JOIN (SELECT trigger_id, {_CHILD_VERSIONS} AS v
           FROM trigger_actions GROUP BY trigger_id) a ON a.trigger_id = t.id
WHERE t.enabled
"""  # noqa: S608

_WITH_FP = _TRIGGERS.format(fp=",\n       " + _ROW_VERSIONS + " AS fp")
BY_ID_SQL = _WITH_FP + " AND t.id = any($1::text[])"

#: A page of every enabled trigger by id, with its fingerprint: the first load reads
#: each trigger once (fingerprints first, then the changed ones, is for resyncs).
PAGE_SQL = _WITH_FP + " AND t.id > $1 ORDER BY t.id LIMIT $2"


async def list_enabled_triggers(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(TRIGGERS_SQL)


def fingerprint(md5_hex: str) -> int:
    """A fingerprint (md5 in hex) as the matcher keeps it, one per enabled trigger: an
    int of 44 bytes instead of a str of 81."""
    return int(md5_hex, 16)


async def trigger_fingerprints(conn: Conn) -> dict[str, int]:
    """id -> fingerprint of each enabled trigger (its rows' versions: FINGERPRINTS_SQL):
    a resync compares these and compiles only what changed."""
    rows = await conn.fetch(FINGERPRINTS_SQL)
    return {r["id"]: fingerprint(r["fp"]) for r in rows}


async def list_triggers_by_id(conn: Conn, ids: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(BY_ID_SQL, list(ids))


async def list_triggers_after(conn: Conn, after: str, limit: int) -> list[asyncpg.Record]:
    """Up to ``limit`` enabled triggers with ids after ``after``, by id, with their
    fingerprints (``fp``)."""
    return await conn.fetch(PAGE_SQL, after, limit)


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


#: One new evaluation record: trigger id, event version, fired, explain (a firing's),
#: the event's block time, the trigger's version, the state rows it read before it.
Record = tuple[str, str, bool, "dict[str, Any] | None", datetime, int, "dict[str, Any]"]


async def save(
    conn: Conn,
    states: dict[StateKey, dict[str, Any]],
    evaluations: Sequence[Record],
) -> None:
    """Changed states and new evaluation records in one statement (one round trip;
    a data-modifying WITH runs to completion whether or not it is read). The records
    take their ``seq`` in the order given."""
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
        INSERT INTO trigger_evaluations
            (trigger_id, event_id, fired, explain, block_time, trigger_version, states_before)
        SELECT trigger_id, event_id, fired, explain, block_time, trigger_version, states_before
        FROM unnest($4::text[], $5::text[], $6::bool[], $7::jsonb[], $8::timestamptz[],
                    $9::int[], $10::jsonb[]) WITH ORDINALITY
            AS r(trigger_id, event_id, fired, explain, block_time, trigger_version,
                 states_before, n)
        ORDER BY n
        ON CONFLICT (trigger_id, event_id) DO NOTHING
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [states[k] for k in keys],
        [r[0] for r in evaluations],
        [r[1] for r in evaluations],
        [r[2] for r in evaluations],
        [r[3] for r in evaluations],
        [r[4] for r in evaluations],
        [r[5] for r in evaluations],
        [r[6] for r in evaluations],
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


# --- recomputation (docs/semantics.md section 6) ---------------------------------------

_EVENT_SELECT = ", ".join(f'e."{c}"' for c in EVENT_COLUMNS)

#: A trigger's evaluation records from a seq on, in order, with their stored events
#: (NULL columns when the event is no longer stored).
RECORDS_FROM = f"""
SELECT r.seq, r.event_id, r.fired, r.trigger_version, r.states_before, r.excluded,
       r.block_time AS record_time, e.id IS NOT NULL AS stored, {_EVENT_SELECT}
FROM trigger_evaluations r
LEFT JOIN events e
  ON e.id = split_part(r.event_id, '@', 1) AND e.block_time = r.block_time
 AND e.block_hash = split_part(r.event_id, '@', 2)
WHERE r.trigger_id = $1 AND r.seq >= $2
ORDER BY r.seq
LIMIT $3
"""  # noqa: S608 (constants)


async def records_from(conn: Conn, trigger_id: str, seq: int, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(RECORDS_FROM, trigger_id, seq, limit)


async def mark_retracted(conn: Conn, trigger_id: str, keys: Sequence[str]) -> None:
    await conn.execute(
        "UPDATE trigger_evaluations SET excluded = 'retracted'"
        " WHERE trigger_id = $1 AND event_id = any($2::text[])",
        trigger_id,
        list(keys),
    )


async def first_record_of(
    conn: Conn, trigger_ids: Sequence[str], keys: Sequence[str]
) -> dict[str, list[tuple[int | None, str]]]:
    """For each trigger, its records of these event versions: (seq, version), in order
    (seq None: written by the release before). Records already out of the effective
    history as retracted are left out."""
    if not trigger_ids or not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT r.trigger_id, r.seq, r.event_id
        FROM unnest($1::text[]) AS t(id)
        CROSS JOIN unnest($2::text[]) AS k(id)
        JOIN trigger_evaluations r ON r.trigger_id = t.id AND r.event_id = k.id
        WHERE r.excluded IS DISTINCT FROM 'retracted'
        ORDER BY r.trigger_id, r.seq NULLS FIRST
        """,
        list(trigger_ids),
        list(keys),
    )
    found: dict[str, list[tuple[int | None, str]]] = {}
    for r in rows:
        found.setdefault(r["trigger_id"], []).append((r["seq"], r["event_id"]))
    return found


async def revoked_feedback_records(
    conn: Conn, trigger_ids: Sequence[str], revocation: Event, *, revoked_too: bool = False
) -> dict[str, int | None]:
    """For each trigger, the seq of its earliest record in its effective history of a
    NewFeedback that ``revocation`` names (None: a record of the release before); with
    ``revoked_too`` also the records already revoked (a retraction of ``revocation``
    puts them back)."""
    if not trigger_ids or revocation.feedback_index is None or revocation.agent_id is None:
        return {}
    rows = await conn.fetch(
        """
        SELECT r.trigger_id, min(r.seq) AS seq, bool_or(r.seq IS NULL) AS old
        FROM events e
        JOIN trigger_evaluations r
          ON r.event_id = e.id || '@' || e.block_hash AND r.trigger_id = any($1::text[])
        WHERE e.chain_id = $2 AND e.registry = $3 AND e.agent_id = $4
          AND e.event_type = 'NewFeedback' AND e.feedback_index = $5
          AND lower(e.client_address) = lower($6)
          AND (r.excluded IS NULL OR ($7 AND r.excluded = 'revoked'))
          AND e.registry_address IS NOT DISTINCT FROM $8
          AND e.agent_registry IS NOT DISTINCT FROM $9
        GROUP BY r.trigger_id
        """,
        list(trigger_ids),
        revocation.chain_id,
        revocation.registry.value,
        revocation.agent_id,
        revocation.feedback_index,
        revocation.client_address or "",
        revoked_too,
        revocation.registry_address,
        revocation.agent_registry,
    )
    return {r["trigger_id"]: (None if r["old"] else r["seq"]) for r in rows}


async def revocation_hits(
    conn: Conn, asks: Sequence[tuple[int, str, Event]]
) -> list[asyncpg.Record]:
    """For (position, trigger id, FeedbackRevoked) asks: the effective records of the
    NewFeedback events each names, with the trigger version they were evaluated under
    and the stored event (column ``n`` is the ask's position)."""
    asks = [a for a in asks if a[2].feedback_index is not None and a[2].agent_id is not None]
    if not asks:
        return []
    return await conn.fetch(
        f"""
        SELECT q.n, r.trigger_id, r.trigger_version, {_EVENT_SELECT}
        FROM unnest($1::int[], $2::text[], $3::int[], $4::text[], $5::bigint[],
                    $6::bigint[], $7::text[], $8::text[], $9::text[])
            AS q(n, trigger_id, chain_id, registry, agent_id, feedback_index, client,
                 registry_address, agent_registry)
        JOIN events e
          ON e.chain_id = q.chain_id AND e.registry = q.registry AND e.agent_id = q.agent_id
         AND e.event_type = 'NewFeedback' AND e.feedback_index = q.feedback_index
         AND lower(e.client_address) = lower(q.client)
         AND e.registry_address IS NOT DISTINCT FROM q.registry_address
         AND e.agent_registry IS NOT DISTINCT FROM q.agent_registry
        JOIN trigger_evaluations r
          ON r.trigger_id = q.trigger_id AND r.event_id = e.id || '@' || e.block_hash
        WHERE r.excluded IS NULL
        """,  # noqa: S608 (constants)
        [a[0] for a in asks],
        [a[1] for a in asks],
        [a[2].chain_id for a in asks],
        [a[2].registry.value for a in asks],
        [a[2].agent_id for a in asks],
        [a[2].feedback_index for a in asks],
        [a[2].client_address or "" for a in asks],
        [a[2].registry_address for a in asks],
        [a[2].agent_registry for a in asks],
    )


async def definitions_from(conn: Conn, trigger_id: str, version: int) -> dict[int, dict[str, Any]]:
    """The stored definitions of a trigger from ``version`` on."""
    rows = await conn.fetch(
        "SELECT version, definition FROM trigger_definitions"
        " WHERE trigger_id = $1 AND version >= $2",
        trigger_id,
        version,
    )
    return {r["version"]: r["definition"] for r in rows}


async def update_records(
    conn: Conn,
    trigger_id: str,
    updates: Sequence[tuple[str, dict[str, Any] | None, str | None]],
) -> None:
    """(event version, states before, excluded) of records a recomputation went over."""
    if not updates:
        return
    await conn.execute(
        """
        UPDATE trigger_evaluations r
        SET states_before = u.states_before, excluded = u.excluded
        FROM unnest($2::text[], $3::jsonb[], $4::text[]) AS u(event_id, states_before, excluded)
        WHERE r.trigger_id = $1 AND r.event_id = u.event_id
        """,
        trigger_id,
        [u[0] for u in updates],
        [u[1] for u in updates],
        [u[2] for u in updates],
    )


async def save_definitions(conn: Conn, rows: Sequence[asyncpg.Record]) -> set[tuple[str, int]]:
    """The definitions (what a recomputation evaluates under) of these trigger rows
    (TRIGGERS_SQL), where not stored yet; returns the (trigger, version) pairs stored
    now. The missing ones are asked for first (their positions in ``rows``), so a
    load of triggers whose versions are all stored, every start but the first, sends
    none of their definitions and reads nothing back."""
    if not rows:
        return set()
    missing = await conn.fetch(
        """
        SELECT k.n
        FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS k(trigger_id, version, n)
        WHERE NOT EXISTS (
            SELECT 1 FROM trigger_definitions d
            WHERE d.trigger_id = k.trigger_id AND d.version = k.version
        )
        """,
        [r["id"] for r in rows],
        [r["version"] for r in rows],
    )
    if not missing:
        return set()
    new = [rows[m["n"] - 1] for m in missing]
    inserted = await conn.fetch(
        """
        INSERT INTO trigger_definitions (trigger_id, version, definition)
        SELECT t.id, t.version, t.definition
        FROM unnest($1::text[], $2::int[], $3::jsonb[]) AS t(id, version, definition)
        WHERE EXISTS (SELECT 1 FROM triggers x WHERE x.id = t.id)
        ON CONFLICT (trigger_id, version) DO NOTHING
        RETURNING trigger_id, version
        """,
        [r["id"] for r in new],
        [r["version"] for r in new],
        [definition_of(r) for r in new],
    )
    return {(r["trigger_id"], r["version"]) for r in inserted}


def definition_of(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """What of a trigger row a recomputation needs: its stream, cooldown, conditions."""
    return {
        "chain_id": row["chain_id"],
        "registry": row["registry"],
        "cooldown_seconds": row["cooldown_seconds"],
        "conditions": row["conditions"],
    }


# --- absence (docs/semantics.md section 5a) --------------------------------------------


async def due_scopes(
    conn: Conn, trigger_ids: Sequence[str], before: int, limit: int
) -> list[StateKey]:
    """The state rows of these triggers whose silence is due before block time
    ``before`` (a tick at ``before`` or later fires them), the earliest ``limit``.
    Not locked: the caller locks them with the batch's other rows, in key order."""
    rows = await conn.fetch(
        "SELECT trigger_id, scope_key FROM trigger_state"
        " WHERE trigger_id = any($1::text[]) AND due_at < $2"
        " ORDER BY due_at, trigger_id, scope_key LIMIT $3",
        list(trigger_ids),
        before,
        limit,
    )
    return [(r["trigger_id"], r["scope_key"]) for r in rows]


async def tick_firings(
    conn: Conn, trigger_ids: Sequence[str], low: datetime, high: datetime
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Recorded firing ticks of these triggers with block times in [low, high]: tick
    key -> (trigger id, explain) of each scope it fired, in scope order (a
    redelivered batch produces their jobs again)."""
    rows = await conn.fetch(
        """
        SELECT trigger_id, event_id, explain FROM trigger_evaluations
        WHERE trigger_id = any($1::text[]) AND event_id LIKE 'tick:%'
          AND block_time >= $2 AND block_time <= $3 AND fired
        """,
        list(trigger_ids),
        low,
        high,
    )
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for r in sorted(rows, key=lambda r: scope_order(r["explain"]["scope"])):
        explain = r["explain"]
        found.setdefault(explain["tick"]["key"], []).append((r["trigger_id"], explain))
    return found


async def events_by_version(
    conn: Conn, wanted: Sequence[tuple[str, datetime]]
) -> dict[str, asyncpg.Record]:
    """Stored events by version (``{id}@{block_hash}``, with the event's block time)."""
    if not wanted:
        return {}
    versions = sorted(set(wanted))
    rows = await conn.fetch(
        f"""
        SELECT k.version, {_EVENT_SELECT}
        FROM unnest($1::text[], $2::timestamptz[]) AS k(version, block_time)
        JOIN events e ON e.id = split_part(k.version, '@', 1)
          AND e.block_hash = split_part(k.version, '@', 2) AND e.block_time = k.block_time
        """,  # noqa: S608 (constants)
        [v for v, _ in versions],
        [t for _, t in versions],
    )
    return {r["version"]: r for r in rows}
