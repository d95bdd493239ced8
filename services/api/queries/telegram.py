"""SQL of the Telegram resource: a user's link codes (only their SHA-256 is stored)
and linked chats; row-level security keeps every statement to the user's rows."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.api.queries import Where
from shared.platform.db import Conn

CHAT_COLUMNS = "chat_id, chat_type, title, username, linked_at"


async def insert_link_code(
    conn: Conn, *, user_id: str, code_sha256: bytes, ttl_seconds: int
) -> datetime:
    """A new code valid for ``ttl_seconds``; the user's spent and expired codes go."""
    await conn.execute(
        "DELETE FROM telegram_link_codes WHERE user_id = $1"
        " AND (used_at IS NOT NULL OR expires_at <= now())",
        user_id,
    )
    expires_at: datetime = await conn.fetchval(
        """INSERT INTO telegram_link_codes (code_sha256, user_id, expires_at)
           VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at""",
        code_sha256,
        user_id,
        float(ttl_seconds),
    )
    return expires_at


async def list_chats(
    conn: Conn, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    where = Where()
    if after is not None:
        where.add("(linked_at, chat_id) < ({}, {})", *after)
    return await conn.fetch(
        f"""SELECT {CHAT_COLUMNS} FROM telegram_chats WHERE {where.sql()}
            ORDER BY linked_at DESC, chat_id DESC LIMIT {limit + 1}""",  # noqa: S608 (fixed fragments)
        *where.args,
    )


async def linked_chats(conn: Conn) -> list[asyncpg.Record]:
    """Every chat the user linked: its numeric id and @username (lower case)."""
    return await conn.fetch("SELECT chat_id, username FROM telegram_chats")


async def delete_chat(conn: Conn, chat_id: str) -> bool:
    status = await conn.execute("DELETE FROM telegram_chats WHERE chat_id = $1", chat_id)
    return status != "DELETE 0"
