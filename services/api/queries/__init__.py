"""The API's SQL, one module per resource as in ``routes/`` (accounts, triggers,
results, events, backtests, agents); here what they share. Every query about a
user's objects runs inside :func:`as_user`, whose transaction names the user to
row-level security; filters compose WHERE clauses from fixed fragments (:class:`Where`),
with values always passed as parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from shared.contract.event_rows import (
    EVENT_COLUMNS,
)
from shared.platform.db import Conn

EVENT_SELECT = ", ".join(f'e."{c}"' for c in EVENT_COLUMNS)


#: Longest a statement of a user's request may run, and a request may wait for a
#: pool connection.
STATEMENT_TIMEOUT = "15s"
ACQUIRE_SECONDS = 10.0
#: Longest a statement over the shared history (events, hourly statistics) may run:
#: such a read answers within about a second or is refused (503), so that slow
#: filters cannot hold the pool's connections for everyone else.
SHARED_READ_TIMEOUT = "1s"


@asynccontextmanager
async def shared_read(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A connection (waited for at most ACQUIRE_SECONDS) in a read-only transaction
    whose statements stop after SHARED_READ_TIMEOUT."""
    async with (
        pool.acquire(timeout=ACQUIRE_SECONDS) as conn,
        conn.transaction(readonly=True),
    ):
        await conn.execute("SELECT set_config('statement_timeout', $1, true)", SHARED_READ_TIMEOUT)
        yield conn


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


# --- per-user quotas (triggers and API keys) ------------------------------------------

QUOTA_COUNTS = {
    "triggers": "SELECT count(*) FROM triggers WHERE user_id = $1",
    "api_keys": "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL",
    "link_codes": "SELECT count(*) FROM telegram_link_codes"
    " WHERE user_id = $1 AND used_at IS NULL AND expires_at > now()",
}


async def count_for_quota(conn: Conn, what: str, user_id: str) -> int:
    """How many ``what`` the user has, under a transaction-scoped lock per user and
    kind, so concurrent creations cannot both pass the last free place."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"quota:{what}:{user_id}"
    )
    value: int = await conn.fetchval(QUOTA_COUNTS[what], user_id)
    return value
