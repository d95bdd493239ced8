"""The triggers' SQL: a trigger with its conditions and actions (read, listed,
written), and its stateful condition state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.api.queries import Where
from shared.platform.db import Conn

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
        *_columns(data, is_stateful),
    )
    return trigger_id


def _columns(data: dict[str, Any], is_stateful: bool) -> tuple[object, ...]:
    """name, description, chain_id, registry, enabled, is_stateful, cooldown_seconds:
    the trigger's own columns, in the order its INSERT and UPDATE take them."""
    return (
        data["name"],
        data.get("description"),
        data["chain_id"],
        data["registry"],
        data["enabled"],
        is_stateful,
        data.get("cooldown_seconds"),
    )


async def update_trigger(
    conn: Conn, trigger_id: str, *, data: dict[str, Any], is_stateful: bool
) -> None:
    await conn.execute(
        """UPDATE triggers SET name = $2, description = $3, chain_id = $4, registry = $5,
                               enabled = $6, is_stateful = $7, cooldown_seconds = $8
           WHERE id = $1""",
        trigger_id,
        *_columns(data, is_stateful),
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
