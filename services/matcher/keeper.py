"""Keeps the trigger index current: a full load at start, one trigger at a time on
``pg_notify('trigger_changed', id)``, and a full resync at a fixed interval (a
LISTEN misses whatever is sent while its connection is down)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from pydantic import ValidationError

from services.matcher import queries
from services.matcher.evaluate import ActionSpec, TriggerSpec
from services.matcher.index import TriggerIndex
from services.matcher.metrics import MatcherMetrics
from shared.triggers import Condition

log = structlog.get_logger(__name__)
Connect = Callable[[], Awaitable[asyncpg.Connection]]


def compile_trigger(row: asyncpg.Record | dict[str, Any]) -> TriggerSpec | None:
    """A stored trigger as the evaluator takes it; None (logged) when a row written
    behind the API's back does not validate: one bad trigger never stops the rest."""
    try:
        conditions = tuple(Condition.model_validate(c) for c in row["conditions"])
    except ValidationError as exc:
        log.error("trigger skipped: invalid condition", trigger_id=row["id"], error=str(exc))
        return None
    return TriggerSpec(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        chain_id=row["chain_id"],
        registry=row["registry"],
        enabled_at=row["enabled_at"],
        cooldown_seconds=row["cooldown_seconds"],
        conditions=conditions,
        actions=tuple(
            ActionSpec(
                id=a["id"],
                action_type=a["action_type"],
                priority=a["priority"] if a["priority"] is not None else 1,
                config=a["config"] or {},
            )
            for a in row["actions"]
        ),
    )


class IndexKeeper:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        connect: Connect,
        metrics: MatcherMetrics,
        resync_interval: float = 60.0,
    ) -> None:
        self.index = TriggerIndex()
        self._pool = pool
        self._connect = connect
        self._metrics = metrics
        self._resync_interval = resync_interval
        self._changed: asyncio.Queue[str] = asyncio.Queue()
        self._lock = asyncio.Lock()

    async def load_all(self) -> None:
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            rows = await queries.list_enabled_triggers(conn)
        compiled = [t for t in map(compile_trigger, rows) if t is not None]
        async with self._lock:
            self.index = TriggerIndex(compiled)
        self._metrics.index_size.set(len(self.index))
        self._metrics.index_reloads.labels("full").inc()
        log.info(
            "trigger index loaded",
            triggers=len(compiled),
            skipped=len(rows) - len(compiled),
            seconds=round(time.perf_counter() - started, 3),
        )

    async def reload(self, trigger_id: str) -> None:
        async with self._pool.acquire() as conn:
            row = await queries.get_enabled_trigger(conn, trigger_id)
        trigger = compile_trigger(row) if row is not None else None
        async with self._lock:
            if trigger is None:
                self.index.remove(trigger_id)
            else:
                self.index.put(trigger)
        self._metrics.index_size.set(len(self.index))
        self._metrics.index_reloads.labels("trigger").inc()

    async def run(self) -> None:
        """Listen and resync until cancelled."""
        tasks = [
            asyncio.create_task(self._listen(), name="index-listen"),
            asyncio.create_task(self._apply_changes(), name="index-apply"),
            asyncio.create_task(self._resync(), name="index-resync"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _apply_changes(self) -> None:
        while True:
            trigger_id = await self._changed.get()
            try:
                await self.reload(trigger_id)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("trigger reload failed; resync will catch up", error=repr(exc))

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            try:
                await self.load_all()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("index resync failed", error=repr(exc))

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._changed.put_nowait(str(payload))

    async def _listen(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                await conn.add_listener("trigger_changed", self._on_notify)
                # Changes made while nobody listened: a full load covers them.
                await self.load_all()
                while True:
                    await asyncio.sleep(5.0)
                    async with asyncio.timeout(5.0):
                        await conn.fetchval("SELECT 1")
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("trigger listener lost its connection", error=repr(exc))
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(1.0)
