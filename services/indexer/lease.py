"""One replica per chain: the indexer that holds a chain's PostgreSQL advisory lock
follows it; the others stand by and try again every ``STANDBY_INTERVAL`` seconds.

The lock lives in a session of its own (TCP keepalives on: a session whose host
vanished ends within about a minute, and the lock with it). Before each post the
holder checks its session still answers; when it does not, the lock may be someone
else's by now, so the holder stops posting (``LeaseLostError``) and queues again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg

from services.indexer.follower import LeaseLostError

#: pg_try_advisory_lock(int4, int4): this class, then the chain id.
LOCK_CLASS = 0x65726338  # "erc8"
CHECK_SECONDS = 5.0


class ChainLease:
    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], chain_id: int) -> None:
        self._connect = connect
        self.chain_id = chain_id
        self._conn: asyncpg.Connection | None = None

    async def acquire(self) -> bool:
        """True when this replica now holds the chain (a connection error propagates)."""
        conn = await self._connect()
        try:
            held = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1::int, $2::int)", LOCK_CLASS, self.chain_id
            )
        except BaseException:
            conn.terminate()
            raise
        if not held:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def check(self) -> None:
        """Raise LeaseLostError unless the lock's session still answers."""
        conn = self._conn
        if conn is None or conn.is_closed():
            raise LeaseLostError(f"chain {self.chain_id}: no lock")
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                await conn.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise LeaseLostError(f"chain {self.chain_id}: the lock's session failed") from exc

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await conn.close()  # the lock ends with the session
        if not conn.is_closed():
            conn.terminate()
