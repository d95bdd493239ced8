"""The stateful transaction of a run of events and ticks (one segment of a batch).

It locks the state rows the segment's (event, trigger) pairs need together with the
absence rows due before its newest tick, in one sorted lock; skips the (trigger,
event version) pairs already evaluated (a redelivered or replayed event never counts
twice: a firing's jobs are produced again from its recorded explain); evaluates the
others in order; and records the new evaluations with the state change, in one
statement. A revocation's recomputation (services/matcher/recompute.py) runs first
in the same transaction.

Absence (docs/semantics.md 5a): each event of a chain, and each heartbeat, is a tick
of the chain's clock at its block time (``Tick``). The locked absence rows wait on a
heap per chain by due time; a tick fires the silences due before it, and the firing
ticks are recorded like evaluations (a redelivered tick produces the jobs of its
recorded firings again), their jobs carrying the silence's last matching event.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from services.matcher import queries
from services.matcher.jobs import fire
from services.matcher.keeper import IndexKeeper
from services.matcher.metrics import MatcherMetrics
from services.matcher.recompute import Recomputations
from shared.contract.event_rows import (
    event_from_row,
)
from shared.contract.events import (
    Event,
    version_key,
)
from shared.contract.jobs import ActionJob
from shared.engine.evaluate import (
    TriggerSpec,
    due_at,
    evaluate,
    scope_keys,
    tick,
    with_due,
)
from shared.engine.replay import scope_order, tick_record
from shared.platform.db import Conn

log = structlog.get_logger(__name__)

#: A batch fires at most this many due silences (docs/semantics.md 5a): the others
#: fire at the next ticks.
MAX_DUE = 10_000


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick of a chain's clock (docs/semantics.md 5a): an event of the chain or a
    heartbeat, at block time ``time``."""

    chain_id: int
    time: int
    key: str
    ingested_at: datetime | None


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(slots=True)
class _Batch:
    """The locked state rows of one stateful segment and what it writes."""

    states: dict[queries.StateKey, dict[str, Any]]
    changed: dict[queries.StateKey, dict[str, Any]]
    records: list[queries.Record]
    #: the absence triggers of the segment's chains, by id
    absent: dict[str, TriggerSpec]
    #: firing ticks recorded before (a redelivery): tick key -> (trigger id,
    #: explain) of each scope it fired
    recorded: dict[str, list[tuple[str, dict[str, Any]]]]
    #: per chain, a heap of (due time, trigger id, scope) of the locked absence rows,
    #: checked against the row when popped (an entry whose row moved on is stale)
    due: dict[int, list[tuple[int, str, str]]] = field(default_factory=dict)
    #: firing ticks: (trigger, explain, new: False when recorded before)
    fired: list[tuple[TriggerSpec, dict[str, Any], bool]] = field(default_factory=list)

    def push(self, trigger: TriggerSpec, scope: str) -> None:
        """An absence row changed: when it is due now."""
        deadline = due_at(trigger, self.states.get((trigger.id, scope)))
        if deadline is not None:
            heapq.heappush(self.due.setdefault(trigger.chain_id, []), (deadline, trigger.id, scope))

    def tick(self, item: Tick) -> None:
        """Fire the silences due before the tick (section 5a): trigger by trigger (by
        id), scope by scope."""
        heap = self.due.get(item.chain_id, [])
        ready: dict[str, set[str]] = {}
        later: list[tuple[int, str, str]] = []
        while heap and heap[0][0] < item.time:
            entry = heapq.heappop(heap)
            deadline, trigger_id, scope = entry
            trigger = self.absent[trigger_id]
            if due_at(trigger, self.states[(trigger_id, scope)]) != deadline:
                continue  # stale
            if item.ingested_at is not None and item.ingested_at < trigger.enabled_at:
                later.append(entry)  # a trigger sees the ticks after it was enabled
                continue
            ready.setdefault(trigger_id, set()).add(scope)
        for entry in later:
            heapq.heappush(heap, entry)
        # fired before (a redelivery): the jobs again, they may not have left
        again: dict[str, list[dict[str, Any]]] = {}
        for trigger_id, explain in self.recorded.pop(item.key, []):
            if trigger_id in self.absent:
                again.setdefault(trigger_id, []).append(explain)
        for trigger_id in sorted(ready.keys() | again.keys()):
            trigger = self.absent[trigger_id]
            self.fired += [(trigger, explain, False) for explain in again.get(trigger_id, [])]
            done = {explain["scope"] for explain in again.get(trigger_id, [])}
            for scope in sorted(ready.get(trigger_id, set()) - done, key=scope_order):
                self._fire(trigger, scope, item)

    def _fire(self, trigger: TriggerSpec, scope: str, item: Tick) -> None:
        row_key = (trigger.id, scope)
        row = self.states[row_key]
        outcome = tick(trigger, scope, row, item.time, item.key)
        self.states[row_key] = self.changed[row_key] = outcome.states[scope]
        self.records.append(
            (
                trigger.id, tick_record(scope, item.key), True, outcome.explain,
                _at(item.time), trigger.version, {scope: row},
            )
        )  # fmt: skip
        self.fired.append((trigger, outcome.explain, True))


class Stateful:
    """Runs the stateful transactions of the matcher's segments."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        keeper: IndexKeeper,
        metrics: MatcherMetrics,
        recomputations: Recomputations,
    ) -> None:
        self._pool = pool
        self._keeper = keeper
        self._metrics = metrics
        self._recomputations = recomputations

    async def evaluate(
        self, work: list[tuple[Event, TriggerSpec] | Tick], *, recompute: set[str] | None
    ) -> list[ActionJob]:
        """One segment's (event, trigger) pairs and ticks, in order, in one transaction
        (``recompute``: the triggers a revocation recomputes first); returns the jobs
        of its firings, new ones and those recorded before."""
        jobs: list[ActionJob] = []
        pairs = [w for w in work if not isinstance(w, Tick)]
        ticks = [w for w in work if isinstance(w, Tick)]
        index = self._keeper.index
        absent = {t.id: t for c in {w.chain_id for w in ticks} for t in index.absence_of_chain(c)}
        async with self._pool.acquire() as conn, conn.transaction():
            if recompute:
                await self._recomputations.revocation(conn, pairs, recompute)
            scopes = {id(p): scope_keys(p[1], p[0]) for p in pairs}
            batch = await self._lock(conn, pairs, scopes, ticks, absent)
            states, changed, records = batch.states, batch.changed, batch.records
            done = await queries.done_evaluations(conn, [(t.id, version_key(e)) for e, t in pairs])
            for item in work:
                if isinstance(item, Tick):
                    batch.tick(item)
                    continue
                event, trigger = item
                keys = scopes[id(item)]
                if any((trigger.id, key) not in states for key in keys):
                    continue  # deleted since the index saw it
                pair = (trigger.id, version_key(event))
                if pair in done:
                    explain = done[pair]
                    if explain is not None:  # fired before: its jobs may not have left
                        jobs += fire(self._metrics, trigger, event, explain, count=False)
                    continue
                before = {key: states[(trigger.id, key)] for key in keys}
                outcome = evaluate(
                    trigger,
                    event,
                    states=before,
                    explain_all=False,  # only a firing's explain is kept
                )
                for key in outcome.changed:
                    row_key = (trigger.id, key)
                    states[row_key] = changed[row_key] = outcome.states[key]
                    if trigger.id in batch.absent:
                        batch.push(trigger, key)
                explain_or_none = outcome.explain if outcome.fired else None
                done[pair] = explain_or_none
                records.append(
                    (
                        pair[0],
                        pair[1],
                        outcome.fired,
                        explain_or_none,
                        event.block_time,
                        trigger.version,
                        before,
                    )
                )
                if outcome.fired:
                    jobs += fire(self._metrics, trigger, event, outcome.explain)
            await queries.save(conn, changed, records)
            if batch.fired:
                jobs += await self._silences(conn, batch.fired, pairs)
        return jobs

    @staticmethod
    async def _lock(
        conn: Conn,
        pairs: list[tuple[Event, TriggerSpec]],
        scopes: dict[int, tuple[str, ...]],
        ticks: list[Tick],
        absent: dict[str, TriggerSpec],
    ) -> _Batch:
        """Lock the state rows the pairs need and those due before the segment's
        newest tick (at most MAX_DUE), in one sorted lock; with the segment's
        recorded firing ticks. An absence row whose stored due time its definition
        no longer gives (written under an earlier one) is set right."""
        due: list[queries.StateKey] = []
        recorded: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        if absent:
            low, high = min(w.time for w in ticks), max(w.time for w in ticks)
            due = await queries.due_scopes(conn, list(absent), high, MAX_DUE)
            recorded = await queries.tick_firings(conn, list(absent), _at(low), _at(high))
        states = await queries.lock_states(
            conn, [(p[1].id, key) for p in pairs for key in scopes[id(p)]] + due
        )
        batch = _Batch(states, {}, [], absent, recorded)
        for key, row in states.items():
            trigger = absent.get(key[0])
            if trigger is None:
                continue
            if row.get("due_at") != due_at(trigger, row):
                states[key] = batch.changed[key] = with_due(trigger, row)
            batch.push(trigger, key[1])
        return batch

    async def _silences(
        self,
        conn: Conn,
        fired: list[tuple[TriggerSpec, dict[str, Any], bool]],
        pairs: list[tuple[Event, TriggerSpec]],
    ) -> list[ActionJob]:
        """The jobs of firing ticks: each carries its silence's last matching event
        (of this batch, or stored)."""
        known = {version_key(e): e for e, _ in pairs}
        wanted = [
            (x["event_version"], _at(x["silent_since"]))
            for _, x, _ in fired
            if x["event_version"] not in known
        ]
        for version, row in (await queries.events_by_version(conn, wanted)).items():
            known[version] = event_from_row(row)
        jobs: list[ActionJob] = []
        for trigger, explain, new in fired:
            event = known.get(explain["event_version"])
            if event is None:
                log.error(
                    "absence firing without its event: no job",
                    trigger_id=trigger.id,
                    event_version=explain["event_version"],
                )
                continue
            jobs += fire(self._metrics, trigger, event, explain, count=new)
        return jobs
