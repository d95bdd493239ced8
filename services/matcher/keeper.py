"""Keeps the trigger index current: a full load at start, one trigger at a time on
``pg_notify('trigger_changed', id)``, and a full resync at a fixed interval (a
LISTEN misses whatever is sent while its connection is down)."""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import structlog

from services.matcher import queries
from services.matcher.metrics import MatcherMetrics
from shared.engine.evaluate import TriggerSpec, forget_removed, has_absence, programs_built
from shared.engine.replay import compile_trigger
from shared.engine.trigger_index import TriggerIndex
from shared.platform import frozen_heap
from shared.platform.db import keep_listening, listen

log = structlog.get_logger(__name__)
#: Triggers fetched, stored and compiled at a time by a load.
LOAD_CHUNK = 5000
Connect = Callable[[], Awaitable[asyncpg.Connection]]
#: Programs built between two settles (:class:`ProgramSettler`).
SETTLE_EVERY = 5000


class ProgramSettler:
    """Moves the triggers' programs out of the cyclic GC's sight as they are built.

    A trigger compiles at its first evaluation (shared.engine.evaluate), so after a
    start the index grows by about ten long-lived objects a trigger, batch after
    batch (a million triggers: most of a first pass's events meet a trigger not yet
    compiled). Left to the cyclic GC, each of them is walked by the young
    collections and then by every full collection while the heap grows (a full one
    runs each time it grew by a quarter: each object walked about five times, 70 ms a
    collection, 7 µs of a first pass's event at a million triggers;
    docs/performance.md). ``settle`` is called between batches: once SETTLE_EVERY
    programs were built since the last time, one collection frees whatever cyclic
    garbage there is and what is left is frozen, as the index was after its load:
    each program is walked once more, then never again.

    The price: an object alive at that moment that later becomes part of a garbage
    cycle stays (a frozen object is still freed by its reference count, as
    programs and states are: they hold no cycles). Between batches little else is
    alive, and a settle comes only with SETTLE_EVERY new programs (MATCHER_SETTLE_EVERY:
    about 200 settles for a million triggers, then one for each 5,000 edits and
    reloads). ``erc8004_matcher_gc_frozen_objects_total`` counts what was frozen."""

    def __init__(self, every: int = SETTLE_EVERY) -> None:
        self._every = every
        self._at = programs_built()
        self.settles = 0

    def settle(self) -> bool:
        """Collect and freeze if SETTLE_EVERY programs were built since the last time;
        whether it did."""
        built = programs_built()
        if built - self._at < self._every:
            return False
        self._at = built
        gc.collect()
        frozen_heap.freeze_young()
        self.settles += 1
        return True


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
        self._fingerprints: dict[str, int] = {}
        #: Triggers taken out of the index (disabled, deleted), as they were: an edit
        #: while disabled is still compared with them when they come back.
        self._left: dict[str, TriggerSpec] = {}
        self._pool = pool
        self._connect = connect
        self._metrics = metrics
        self._resync_interval = resync_interval
        self._changed: asyncio.Queue[str] = asyncio.Queue()
        self._listener: asyncpg.Connection | None = None
        # resync and reload both change the index across awaits: one at a time,
        # so a reload is never undone by a resync that read the database before it.
        self._sync_lock = asyncio.Lock()
        self._frozen = False

    async def start(self) -> None:
        """LISTEN first, then load: a change committed in between is either in the
        load or in the queue, never lost."""
        self._listener = await listen(self._connect, "trigger_changed", self._on_notify)
        # The first load makes millions of long-lived objects (about 30 per trigger)
        # and nothing else runs yet: the cyclic GC would walk the growing heap again
        # and again (40 % of a 300,000-trigger load). At the end the index is frozen
        # out of its sight (_resync).
        gc.disable()
        try:
            await self.resync()
        finally:
            gc.enable()

    async def resync(self) -> None:
        """Bring the index in line with the database: fingerprints of every enabled
        trigger, then only the new or changed ones are fetched and compiled (the
        first load reads every trigger once, by pages of LOAD_CHUNK)."""
        async with self._sync_lock:
            await self._resync()

    async def _resync(self) -> None:
        started = time.perf_counter()
        current: dict[str, int] | None = None
        if self._fingerprints:
            async with self._pool.acquire() as conn:
                current = await queries.trigger_fingerprints(conn)
            stale = [i for i, fp in current.items() if self._fingerprints.get(i) != fp]
            chunks = self._by_id(stale)
        else:  # the first load: every trigger, read once
            chunks = self._every_trigger()
        compiled = fetched = 0
        edited: list[TriggerSpec] = []
        # A chunk at a time: the rows of a large load (a million triggers) are never
        # all held at once beside the index they become.
        async for rows in chunks:
            fetched += len(rows)
            # stored before the fingerprints move on: a failure here is retried next time
            new = await self._save_definitions(rows)
            for n, row in enumerate(rows):
                trigger = compile_trigger(row)
                if trigger is None:
                    self._take_out(row["id"])
                else:
                    if self._edited(trigger, new):
                        edited.append(trigger)
                    self.index.put(trigger)
                    compiled += 1
                self._fingerprints[row["id"]] = queries.fingerprint(row["fp"])
                if n % 500 == 499:
                    await asyncio.sleep(0)  # a large load must not stall the consumer
            if fetched >= LOAD_CHUNK:
                log.info("trigger index loading", loaded=fetched, triggers=len(self.index))
        await self._forget_removed(edited)
        removed = [i for i in self._fingerprints if i not in current] if current is not None else []
        for trigger_id in removed:
            self._take_out(trigger_id)
            del self._fingerprints[trigger_id]
        if fetched and not self._frozen:
            # The index is long-lived and large (100k triggers: millions of
            # objects); left to the cyclic GC, every full collection walks all of
            # it. Frozen objects are skipped. Once, after the first load (the
            # programs compiled later are frozen between batches, ProgramSettler,
            # after a collection: a freeze pins what is alive then). Without a
            # collection first: the load leaves no cyclic garbage to free (a test
            # holds it to that), and a full collection walks the whole new heap (about
            # 5 s of a million triggers' load). What a cycle made meanwhile would
            # cost is its own few bytes, pinned once. (Counted by one walk: the
            # collector was off, so the index is wherever it was made.)
            frozen_heap.freeze()
            self._frozen = True
        self._metrics.index_size.set(len(self.index))
        self._metrics.index_reloads.labels("full").inc()
        if fetched or removed:
            log.info(
                "trigger index synced",
                triggers=len(self.index),
                compiled=compiled,
                skipped=fetched - compiled,
                removed=len(removed),
                seconds=round(time.perf_counter() - started, 3),
            )

    async def _by_id(self, ids: list[str]) -> AsyncIterator[list[asyncpg.Record]]:
        for i in range(0, len(ids), LOAD_CHUNK):
            async with self._pool.acquire() as conn:
                yield await queries.list_triggers_by_id(conn, ids[i : i + LOAD_CHUNK])

    async def _every_trigger(self) -> AsyncIterator[list[asyncpg.Record]]:
        """Pages of every enabled trigger; the next one is read while the caller
        compiles this one (PostgreSQL and the compiling run on two cores: a million
        triggers load in about the time of the longer of the two, not their sum)."""

        async def page(after: str) -> list[asyncpg.Record]:
            async with self._pool.acquire() as conn:
                return await queries.list_triggers_after(conn, after, LOAD_CHUNK)

        ahead: asyncio.Future[list[asyncpg.Record]] = asyncio.ensure_future(page(""))
        try:
            while rows := await ahead:
                if len(rows) == LOAD_CHUNK:
                    ahead = asyncio.ensure_future(page(rows[-1]["id"]))
                else:
                    ahead = asyncio.get_running_loop().create_future()
                    ahead.set_result([])
                yield rows
        finally:
            ahead.cancel()

    async def reload(self, trigger_id: str) -> None:
        async with self._sync_lock:
            await self._reload(trigger_id)

    async def _reload(self, trigger_id: str) -> None:
        async with self._pool.acquire() as conn:
            rows = await queries.list_triggers_by_id(conn, [trigger_id])
        new = await self._save_definitions(rows)
        trigger = compile_trigger(rows[0]) if rows else None
        if trigger is None:
            self._take_out(trigger_id)
            self._fingerprints.pop(trigger_id, None)
        else:
            edited = self._edited(trigger, new)
            self.index.put(trigger)
            self._fingerprints[trigger_id] = queries.fingerprint(rows[0]["fp"])
            if edited:
                await self._forget_removed([trigger])
        self._metrics.index_size.set(len(self.index))
        self._metrics.index_reloads.labels("trigger").inc()

    def _take_out(self, trigger_id: str) -> None:
        before = self.index.get(trigger_id)
        self.index.remove(trigger_id)
        if before is not None:
            if len(self._left) > 100_000:
                self._left.clear()  # bounded; an edit of a long-disabled trigger is rare
            self._left[trigger_id] = before

    def _edited(self, trigger: TriggerSpec, new: set[tuple[str, int]]) -> bool:
        """Whether the trigger changed what its state depends on since last seen, before
        it replaces that version in the index (not known for the first sight after a
        start: an edit made while no matcher ran keeps the state of conditions it
        removed and added back). Compiles only triggers seen before: a start does not
        compile the whole index. An absence trigger at a version no matcher loaded
        before (``new``) counts as edited: its rows' due times follow its definition."""
        before = self.index.get(trigger.id) or self._left.pop(trigger.id, None)
        if before is None:
            return has_absence(trigger) and (trigger.id, trigger.version) in new
        return before.state_signature != trigger.state_signature

    async def _save_definitions(self, rows: list[asyncpg.Record]) -> set[tuple[str, int]]:
        """Store each trigger version loaded (what a recomputation evaluates the events
        of that version under), once. Returns the (trigger, version) pairs stored now."""
        async with self._pool.acquire() as conn:
            return await queries.save_definitions(conn, rows)

    async def _forget_removed(self, triggers: list[TriggerSpec]) -> None:
        """The state rows of edited triggers drop what the edit removed
        (shared.engine.evaluate.forget_removed), so a condition added back starts afresh."""
        for trigger in triggers:
            async with self._pool.acquire() as conn:
                changed = await queries.rewrite_states(
                    conn, trigger.id, functools.partial(forget_removed, trigger)
                )
            if changed:
                log.info("trigger edited: state rows cleared", trigger_id=trigger.id, rows=changed)

    async def run(self) -> None:
        """Listen and resync until cancelled."""
        tasks = [
            asyncio.create_task(self._listen(), name="index-listen"),
            asyncio.create_task(self._apply_changes(), name="index-apply"),
            asyncio.create_task(self._resync_loop(), name="index-resync"),
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
            except Exception as exc:  # noqa: BLE001 (any failure: the resync catches up)
                log.warning("trigger reload failed; resync will catch up", error=repr(exc))

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            try:
                await self.resync()
            except Exception as exc:  # noqa: BLE001 (any failure: retried next interval)
                log.warning("index resync failed", error=repr(exc))

    def _on_notify(self, payload: str) -> None:
        self._changed.put_nowait(payload)

    async def _listen(self) -> None:
        """After a reconnect, resync: whatever was sent while nobody listened is
        lost to LISTEN."""
        first, self._listener = self._listener, None
        await keep_listening(
            self._connect,
            "trigger_changed",
            self._on_notify,
            on_listening=self.resync,
            first=first,
        )
