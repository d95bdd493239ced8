"""The accounts' SQL: users (registration, login, token revocation) and their API keys."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.api.queries import Where
from shared.platform.db import Conn


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


async def record_login(conn: Conn, user_id: str, checked_hash: str, new_hash: str | None) -> bool:
    """The login recorded (and the hash upgraded to ``new_hash``) if the stored hash
    is still the one the password was checked against; False otherwise."""
    status = await conn.execute(
        """UPDATE users SET last_login_at = now(), password_hash = coalesce($3, password_hash)
           WHERE id = $1 AND password_hash = $2""",
        user_id,
        checked_hash,
        new_hash,
    )
    return status == "UPDATE 1"


async def get_password(conn: Conn, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT username, password_hash FROM users WHERE id = $1 AND is_active IS NOT FALSE",
        user_id,
    )


async def set_password(
    conn: Conn, user_id: str, checked_hash: str, password_hash: str, revoke_at: float
) -> bool:
    """The new hash, if the stored one is still ``checked_hash``; every token issued up
    to ``revoke_at`` (unix s) stops working. False when the password changed meanwhile."""
    status = await conn.execute(
        """UPDATE users SET password_hash = $3, updated_at = now(),
                            tokens_valid_after = to_timestamp($4)
           WHERE id = $1 AND password_hash = $2""",
        user_id,
        checked_hash,
        password_hash,
        revoke_at,
    )
    return status == "UPDATE 1"


async def revoke_all_api_keys(conn: Conn) -> int:
    """Every API key of the user (row-level security: the caller's) revoked."""
    status = await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL")
    return int(status.split()[-1])


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
