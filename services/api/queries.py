"""The API's SQL. Every query about a user's objects runs inside :func:`as_user`,
whose transaction names the user to row-level security; filters compose WHERE
clauses from fixed fragments, with values always passed as parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from shared.contract.events import EVENT_COLUMNS
from shared.contract.sql import AGENT_OWNER, CANONICAL
from shared.platform.db import Conn

EVENT_SELECT = ", ".join(f'e."{c}"' for c in EVENT_COLUMNS)


#: Longest a statement of a user's request may run, and a request may wait for a
#: pool connection.
STATEMENT_TIMEOUT = "15s"
ACQUIRE_SECONDS = 10.0


@asynccontextmanager
async def as_user(pool: asyncpg.Pool, user_id: str) -> AsyncIterator[Conn]:
    """A connection in a transaction whose ``app.current_user_id`` is the user's
    (``set_config(..., true)`` is ``SET LOCAL`` with a parameter): row-level
    security shows it that user's rows only, and the setting ends with it."""
    async with pool.acquire(timeout=ACQUIRE_SECONDS) as conn, conn.transaction():
        # Every statement of a request is bounded too: one user's heavy filter cannot
        # hold a pool connection (and a core of PostgreSQL) for minutes.
        await conn.execute(
            "SELECT set_config('app.current_user_id', $1, true),"
            " set_config('statement_timeout', $2, true)",
            user_id,
            STATEMENT_TIMEOUT,
        )
        yield conn


class Where:
    """WHERE clauses with numbered parameters."""

    def __init__(self, *args: Any) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = list(args)

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str, *values: Any) -> None:
        """``clause`` with ``{}`` placeholders for the values' parameters."""
        self.clauses.append(clause.format(*(self.param(v) for v in values)))

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "true"


# --- users and keys ------------------------------------------------------------------------


async def insert_user(
    conn: Conn, *, username: str, email: str, password_hash: str
) -> asyncpg.Record | None:
    """The new user; None when the username or e-mail is taken (compared without case)."""
    return await conn.fetchrow(
        """
        INSERT INTO users (username, email, password_hash)
        SELECT $1, $2, $3
        WHERE NOT EXISTS (SELECT 1 FROM users
                          WHERE lower(username) = lower($1) OR lower(email) = lower($2))
        ON CONFLICT DO NOTHING
        RETURNING id, username, email, created_at
        """,
        username,
        email,
        password_hash,
    )


async def get_login(conn: Conn, username: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, password_hash, is_active IS NOT FALSE AS active FROM users WHERE username = $1",
        username,
    )


async def record_login(conn: Conn, user_id: str, new_hash: str | None) -> None:
    await conn.execute(
        """UPDATE users SET last_login_at = now(), password_hash = coalesce($2, password_hash)
           WHERE id = $1""",
        user_id,
        new_hash,
    )


async def is_active_user(conn: Conn, user_id: str, issued_at: int) -> bool:
    """The user is active and has not revoked tokens issued at ``issued_at`` (unix s)."""
    return bool(
        await conn.fetchval(
            """SELECT true FROM users
               WHERE id = $1 AND is_active IS NOT FALSE
                 AND (tokens_valid_after IS NULL
                      OR $2::bigint > extract(epoch FROM tokens_valid_after))""",
            user_id,
            issued_at,
        )
    )


async def revoke_tokens(conn: Conn, user_id: str, at: float) -> None:
    """Tokens issued up to ``at`` (unix seconds of the API's own clock, the clock
    that stamps their ``iat``) stop working."""
    await conn.execute(
        "UPDATE users SET tokens_valid_after = to_timestamp($2) WHERE id = $1", user_id, at
    )


async def authenticate_api_key(conn: Conn, key_hash: str) -> str | None:
    row = await conn.fetchrow("SELECT user_id FROM authenticate_api_key($1)", key_hash)
    return None if row is None else str(row["user_id"])


API_KEY_COLUMNS = "id, name, prefix, created_at, last_used_at, revoked_at"


QUOTA_COUNTS = {
    "triggers": "SELECT count(*) FROM triggers WHERE user_id = $1",
    "api_keys": "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL",
}


async def count_for_quota(conn: Conn, what: str, user_id: str) -> int:
    """How many ``what`` the user has, under a transaction-scoped lock per user and
    kind, so concurrent creations cannot both pass the last free place."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"quota:{what}:{user_id}"
    )
    value: int = await conn.fetchval(QUOTA_COUNTS[what], user_id)
    return value


async def insert_api_key(
    conn: Conn, *, user_id: str, name: str | None, prefix: str, key_hash: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)
            RETURNING {API_KEY_COLUMNS}""",  # noqa: S608 (a constant column list)
        user_id,
        name,
        prefix,
        key_hash,
    )
    assert row is not None
    return row


async def list_api_keys(
    conn: Conn, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    where = Where()
    if after is not None:
        where.add("(created_at, id) < ({}, {})", *after)
    return await conn.fetch(
        f"""SELECT {API_KEY_COLUMNS} FROM api_keys WHERE {where.sql()}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )


async def revoke_api_key(conn: Conn, key_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
            RETURNING {API_KEY_COLUMNS}""",  # noqa: S608 (a constant column list)
        key_id,
    )


# --- triggers ------------------------------------------------------------------------------

TRIGGER_SELECT = """
SELECT t.id, t.user_id, t.name, t.description, t.chain_id, t.registry,
       t.enabled IS NOT FALSE AS enabled, t.is_stateful IS TRUE AS is_stateful,
       t.cooldown_seconds, t.enabled_at, t.created_at, t.updated_at, t.version,
       coalesce((SELECT json_agg(json_build_object(
                    'id', c.id, 'condition_type', c.condition_type, 'field', c.field,
                    'operator', c.operator, 'value', c.value, 'config', c.config)
                    ORDER BY c.id)
                 FROM trigger_conditions c WHERE c.trigger_id = t.id), '[]') AS conditions,
       coalesce((SELECT json_agg(json_build_object(
                    'id', a.id, 'action_type', a.action_type, 'priority', a.priority,
                    'config', a.config,
                    'signing_secret_set', a.secret_ciphertext IS NOT NULL,
                    'secret_headers_set', coalesce(to_json(a.secret_header_names), '[]'))
                    ORDER BY a.priority, a.id)
                 FROM trigger_actions a WHERE a.trigger_id = t.id), '[]') AS actions
FROM triggers t
"""


async def get_trigger(conn: Conn, trigger_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    suffix = " FOR UPDATE OF t" if lock else ""
    return await conn.fetchrow(TRIGGER_SELECT + " WHERE t.id = $1" + suffix, trigger_id)


async def list_triggers(
    conn: Conn, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    where = Where()
    if after is not None:
        where.add("(t.created_at, t.id) < ({}, {})", *after)
    return await conn.fetch(
        TRIGGER_SELECT
        + f" WHERE {where.sql()} ORDER BY t.created_at DESC, t.id DESC LIMIT {limit + 1}",
        *where.args,
    )


async def insert_trigger(
    conn: Conn, *, user_id: str, data: dict[str, Any], is_stateful: bool
) -> str:
    trigger_id: str = await conn.fetchval(
        """INSERT INTO triggers (user_id, name, description, chain_id, registry, enabled,
                                 is_stateful, cooldown_seconds)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
        user_id,
        data["name"],
        data.get("description"),
        data["chain_id"],
        data["registry"],
        data["enabled"],
        is_stateful,
        data.get("cooldown_seconds"),
    )
    return trigger_id


async def update_trigger(
    conn: Conn, trigger_id: str, *, data: dict[str, Any], is_stateful: bool
) -> None:
    await conn.execute(
        """UPDATE triggers SET name = $2, description = $3, chain_id = $4, registry = $5,
                               enabled = $6, is_stateful = $7, cooldown_seconds = $8
           WHERE id = $1""",
        trigger_id,
        data["name"],
        data.get("description"),
        data["chain_id"],
        data["registry"],
        data["enabled"],
        is_stateful,
        data.get("cooldown_seconds"),
    )


async def replace_conditions(
    conn: Conn, trigger_id: str, conditions: Sequence[dict[str, Any]]
) -> None:
    await conn.execute("DELETE FROM trigger_conditions WHERE trigger_id = $1", trigger_id)
    if conditions:
        await conn.executemany(
            """INSERT INTO trigger_conditions (trigger_id, condition_type, field, operator, value,
                                               config)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            [
                (
                    trigger_id,
                    c["condition_type"],
                    c["field"],
                    c["operator"],
                    c["value"],
                    c["config"],
                )
                for c in conditions
            ],
        )


async def next_action_id(conn: Conn) -> int:
    value: int = await conn.fetchval("SELECT nextval('trigger_actions_id_seq')")
    return value


async def insert_action(
    conn: Conn,
    *,
    action_id: int,
    trigger_id: str,
    action_type: str,
    priority: int,
    config: dict[str, Any],
    secret: bytes | None,
    headers: bytes | None = None,
    header_names: list[str] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO trigger_actions (id, trigger_id, action_type, priority, config,
                                        secret_ciphertext, secret_headers_ciphertext,
                                        secret_header_names)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        action_id,
        trigger_id,
        action_type,
        priority,
        config,
        secret,
        headers,
        header_names,
    )


async def update_action(
    conn: Conn,
    *,
    action_id: int,
    action_type: str,
    priority: int,
    config: dict[str, Any],
    secret: bytes | None,
    keep_secret: bool,
    headers: bytes | None = None,
    header_names: list[str] | None = None,
    keep_headers: bool = False,
) -> None:
    await conn.execute(
        """UPDATE trigger_actions
           SET action_type = $2, priority = $3, config = $4,
               secret_ciphertext = CASE WHEN $6 THEN secret_ciphertext ELSE $5 END,
               secret_headers_ciphertext =
                   CASE WHEN $9 THEN secret_headers_ciphertext ELSE $7 END,
               secret_header_names = CASE WHEN $9 THEN secret_header_names ELSE $8 END
           WHERE id = $1""",
        action_id,
        action_type,
        priority,
        config,
        secret,
        keep_secret,
        headers,
        header_names,
        keep_headers,
    )


async def delete_actions_except(conn: Conn, trigger_id: str, keep: Sequence[int]) -> None:
    await conn.execute(
        "DELETE FROM trigger_actions WHERE trigger_id = $1 AND NOT (id = any($2::int[]))",
        trigger_id,
        list(keep),
    )


async def delete_trigger(conn: Conn, trigger_id: str) -> bool:
    return (
        await conn.fetchval("DELETE FROM triggers WHERE id = $1 RETURNING true", trigger_id) is True
    )


async def list_states(
    conn: Conn, trigger_id: str, *, after: str | None, limit: int
) -> list[asyncpg.Record]:
    where = Where(trigger_id)
    where.add("trigger_id = $1")
    if after is not None:
        where.add("scope_key > {}", after)
    return await conn.fetch(
        f"""SELECT scope_key, state_data, last_updated FROM trigger_state
            WHERE {where.sql()} ORDER BY scope_key LIMIT {limit + 1}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )


# --- results -------------------------------------------------------------------------------

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


# --- events and stats ----------------------------------------------------------------------


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


def backtest_events_sql(limit: int) -> str:
    """Canonical events of one chain and registry (every registry when $2 is NULL) in
    a block-time range [$3, $4), in chain order, at most ``limit``."""
    return f"""SELECT {EVENT_SELECT} FROM events e
               WHERE e.chain_id = $1 AND ($2::text IS NULL OR e.registry = $2)
                 AND e.block_time >= $3 AND e.block_time < $4 AND {CANONICAL}
               ORDER BY e.block_number, e.log_index, e.created_at
               LIMIT {int(limit)}"""  # noqa: S608 (constants and an int)


#: A chain's heartbeats in a block-time range [$2, $3), in chain order (a backtest's
#: ticks between events, docs/semantics.md 5a).
BACKTEST_HEARTBEATS = """
SELECT block_number, block_hash, extract(epoch FROM block_time)::bigint AS timestamp
FROM heartbeats
WHERE chain_id = $1 AND block_time >= $2 AND block_time < $3
ORDER BY block_number, created_at
"""


# --- agents --------------------------------------------------------------------------------


async def agent_owner(conn: Conn, chain_id: int, agent_id: int) -> str | None:
    """The owner named by the agent's latest canonical Registered or Transfer event."""
    value: str | None = await conn.fetchval(AGENT_OWNER, chain_id, agent_id)
    return value


async def use_nonce(
    conn: Conn, chain_id: int, agent_id: int, nonce: str, expires_at: datetime
) -> bool:
    """Record a signature's nonce; False when it was used before. Expired nonces
    are forgotten (their messages are refused by their expiry anyway)."""
    await conn.execute("DELETE FROM agent_mcp_token_nonces WHERE expires_at < now()")
    inserted = await conn.fetchval(
        """INSERT INTO agent_mcp_token_nonces (chain_id, agent_id, nonce, expires_at)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true""",
        chain_id,
        agent_id,
        nonce,
        expires_at,
    )
    return inserted is True


async def upsert_mcp_token(
    conn: Conn, chain_id: int, agent_id: int, *, ciphertext: bytes, owner: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO agent_mcp_tokens (chain_id, agent_id, token_ciphertext, owner_address)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (chain_id, agent_id) DO UPDATE
           SET token_ciphertext = excluded.token_ciphertext,
               owner_address = excluded.owner_address
           RETURNING chain_id, agent_id, owner_address, updated_at""",
        chain_id,
        agent_id,
        ciphertext,
        owner,
    )
    assert row is not None
    return row


async def delete_mcp_token(conn: Conn, chain_id: int, agent_id: int) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM agent_mcp_tokens WHERE chain_id = $1 AND agent_id = $2 RETURNING true",
        chain_id,
        agent_id,
    )
    return deleted is True


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
