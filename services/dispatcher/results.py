"""The results writer: every attempt ends in one ``action_results`` row, written by
group commit (many attempts, one INSERT statement and one transaction), patient
through a database restart, and tolerant of a trigger or user deleted meanwhile."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from services.dispatcher import queries
from services.dispatcher.kinds.base import Outcome
from shared.contract.event_fields import (
    INT32_MAX,
)
from shared.contract.events import (
    version_key,
)
from shared.contract.jobs import ActionJob
from shared.platform.db import Conn

log = structlog.get_logger(__name__)

ERROR_CHARS = 1000

#: One action_results row, in INSERT_RESULT's parameter order.
ResultRow = tuple[object, ...]


def trigger_version(job: ActionJob) -> int | None:
    """The trigger's version when it fired, as its explain names it (None when the
    explain names none: a job of a matcher that did not know versions)."""
    value = job.explain.get("trigger_version")
    # bool is an int to Python, not a version; a version fits the INTEGER column.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32_MAX:
        return None
    return value


def result_row(job: ActionJob, status: str, outcome: Outcome, elapsed: float) -> ResultRow:
    return (
        job.job_id,
        job.trigger_id,
        job.event.id,
        job.user_id,
        job.action_type.value,
        status,
        round(elapsed * 1000),
        (outcome.error or None) and outcome.error[:ERROR_CHARS],
        outcome.response,
        job.attempt - 1,
        job.attempt,
        job.run_id,
        version_key(job.event),
        trigger_version(job),
    )


class ResultWriter:
    """Group commit of action_results rows: concurrent attempts hand in their rows and
    wait; one INSERT statement per flush (the rows as one array per column) writes
    every row handed in meanwhile, then each waiter learns the outcome. One round
    trip, one execution and one commit for many attempts instead of one each."""

    def __init__(self, pool: asyncpg.Pool, max_rows: int = 1000, patience: float = 30.0) -> None:
        self._pool = pool
        self._max_rows = max_rows
        #: How long a flush keeps trying through a database restart: an attempt made
        #: but not recorded would be made again (its batch is redelivered).
        self._patience = patience
        self._rows: list[tuple[tuple[object, ...], asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def write(self, row: tuple[object, ...]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rows.append((row, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="action-results-writer")
        await future

    async def _flush(self) -> None:
        while self._rows:
            batch, self._rows = self._rows[: self._max_rows], self._rows[self._max_rows :]
            try:
                await self._insert_patiently([row for row, _ in batch])
            except Exception as exc:  # noqa: BLE001 (handed to every waiter)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _insert_patiently(self, rows: list[tuple[object, ...]]) -> None:
        """Insert ``rows`` (one transaction, idempotent: ON CONFLICT DO NOTHING), again
        after a lost connection until ``patience`` runs out."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._patience
        pause = 0.2
        while True:
            try:
                await self._insert(rows)
                return
            except _CONNECTION_LOST as exc:
                if loop.time() + pause > give_up:
                    raise
                log.warning(
                    "recording attempts failed; trying again", rows=len(rows), error=repr(exc)[:200]
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _insert(self, rows: list[tuple[object, ...]]) -> None:
        async with self._pool.acquire() as conn:
            try:
                # One statement: all of its rows or none (no explicit transaction).
                await conn.execute(queries.INSERT_RESULTS, *map(list, zip(*rows, strict=True)))
            except asyncpg.ForeignKeyViolationError:
                # A trigger or user deleted while its jobs were under way: the rows go
                # in one by one, without the reference that is gone.
                for row in rows:
                    await _insert_orphan(conn, row)


#: A database restart as the writer sees it: worth trying again.
_CONNECTION_LOST = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)


async def _insert_orphan(conn: Conn, row: tuple[object, ...]) -> None:
    """One row; its trigger_id set NULL when the trigger is gone (as ON DELETE SET NULL
    does to the rows already there); dropped when its user is gone (their rows are
    deleted with them)."""
    try:
        await conn.execute(queries.INSERT_RESULT, *row)
    except asyncpg.ForeignKeyViolationError:
        try:
            await conn.execute(queries.INSERT_RESULT, row[0], None, *row[2:])
        except asyncpg.ForeignKeyViolationError:
            log.info("result of a deleted user's job not recorded", job_id=row[0])
