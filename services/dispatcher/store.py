"""What the dispatcher reads and writes in PostgreSQL, behind one small interface
(:class:`JobStore`) so that the batch and attempt stages can be built on a fake in
unit tests. :class:`PgJobStore` is the real one: the queries of ``queries.py`` and
the group-committing :class:`~services.dispatcher.results.ResultWriter`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from services.dispatcher import queries
from services.dispatcher.kinds.base import ActionRow, AgentToken
from services.dispatcher.results import ResultRow, ResultWriter
from shared.contract.event_fields import (
    INT32_MAX,
)
from shared.contract.jobs import ActionJob


@dataclass(frozen=True)
class Recorded:
    """An attempt already in action_results."""

    job_id: str
    run_id: str | None
    attempt: int
    status: str


@dataclass(frozen=True)
class Lookups:
    """What a batch needs before its attempts: each action (by id) as it is now, and
    the reorg that replaced each job's event version (by the job's index)."""

    actions: dict[int, ActionRow]
    replaced: dict[int, str]


class JobStore(Protocol):
    async def recorded(self, job_ids: Sequence[str]) -> list[Recorded]: ...

    async def lookups(self, jobs: Sequence[ActionJob]) -> Lookups: ...

    async def agent_token(
        self, chain_id: int, agent_id: int, agent_registry: str | None = None
    ) -> AgentToken | None: ...

    async def record(self, row: ResultRow) -> None: ...


class PgJobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._writer = ResultWriter(pool)

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self._pool.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows

    async def recorded(self, job_ids: Sequence[str]) -> list[Recorded]:
        rows = await self._fetch(queries.RECORDED_ATTEMPTS, list(job_ids))
        return [Recorded(r["job_id"], r["run_id"], r["attempt"], r["status"]) for r in rows]

    async def lookups(self, jobs: Sequence[ActionJob]) -> Lookups:
        """Both reads at once, each on its own connection."""
        ids = sorted({j.action_id for j in jobs if j.action_id <= INT32_MAX})
        action_rows, replaced_rows = await asyncio.gather(
            self._fetch(queries.ACTIONS_OF_JOBS, ids),
            self._fetch(
                queries.REPLACED_VERSIONS,
                [j.event.id for j in jobs],
                [j.event.block_time for j in jobs],
                [j.event.block_hash for j in jobs],
            ),
        )
        actions = {
            r["id"]: ActionRow(
                r["trigger_id"],
                r["secret_ciphertext"],
                bool(r["enabled"]),
                r["secret_headers_ciphertext"],
                r["telegram_chat"],
            )
            for r in action_rows
        }
        return Lookups(actions, {r["n"] - 1: str(r["reorg_id"]) for r in replaced_rows})

    async def agent_token(
        self, chain_id: int, agent_id: int, agent_registry: str | None = None
    ) -> AgentToken | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(queries.AGENT_CIPHERTEXT, chain_id, agent_id, agent_registry)
        if row is None:
            return None
        tools, users = row["allowed_tools"], row["allowed_users"]
        return AgentToken(
            row["token_ciphertext"],
            None if tools is None else frozenset(tools),
            None if users is None else frozenset(users),
            row["agent_registry"],
        )

    async def record(self, row: ResultRow) -> None:
        await self._writer.write(row)
