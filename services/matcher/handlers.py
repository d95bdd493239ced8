"""The matcher's unit of work: one consumed batch of erc8004.events.

Stateless triggers are evaluated in memory (a pure function of the event:
redelivery gives the same jobs with the same ids). Stateful ones are evaluated
inside one transaction that locks their state rows, skips (trigger, event
version) pairs already evaluated, and records the new evaluations with the state change, so a
redelivered or replayed event never counts twice. Jobs are produced after the
commit and before the batch is acknowledged: a firing whose jobs were lost with
the process is produced again from its recorded explain on redelivery.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from pydantic import ValidationError

from services.matcher import queries
from services.matcher.keeper import IndexKeeper
from services.matcher.metrics import MatcherMetrics
from shared.contract.events import Event, event_from_row, version_key
from shared.contract.jobs import (
    ActionJob,
    AnyTopicMessage,
    EventMessage,
    RetractionMessage,
    TickMessage,
    build_job,
    parse_topic_message,
)
from shared.engine.evaluate import (
    State,
    TriggerSpec,
    due_at,
    evaluate,
    passes_gate,
    retract,
    scope_keys,
    tick,
    with_due,
)
from shared.engine.replay import (
    EDIT,
    Evaluated,
    exclude,
    refold,
    restore,
    revokes,
    scope_order,
    spec_at,
    tick_record,
    tick_scope,
)
from shared.platform.db import Conn
from shared.platform.stream import with_backoff

log = structlog.get_logger(__name__)

Publish = Callable[[Sequence[ActionJob]], Awaitable[None]]
REVOCATION = "FeedbackRevoked"
#: A recomputation replays at most this many evaluations of a trigger; beyond, the
#: removed events only leave the rate windows (a revocation of an old feedback of a
#: busy agent must not hold the chain's partition for long).
MAX_REPLAY = 20_000
#: A batch fires at most this many due silences (docs/semantics.md 5a): the others
#: fire at the next ticks.
MAX_DUE = 10_000


@dataclass(frozen=True, slots=True)
class _Tick:
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

    def tick(self, item: _Tick) -> None:
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

    def _fire(self, trigger: TriggerSpec, scope: str, item: _Tick) -> None:
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


class Matcher:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        keeper: IndexKeeper,
        publish: Publish,
        metrics: MatcherMetrics,
    ) -> None:
        self._pool = pool
        self._keeper = keeper
        self._publish = publish
        self._metrics = metrics
        self._failures = 0

    async def consume(self, bodies: Sequence[bytes]) -> None:
        """One consumed batch of erc8004.events, as the subscriber hands it over: a
        message that does not parse is logged and skipped; a batch that fails is
        logged and raised (to be redelivered) after a pause that grows with the
        failures in a row, so that a database outage is not hammered."""
        messages: list[AnyTopicMessage] = []
        for body in bodies:
            try:
                messages.append(parse_topic_message(body))
            except ValidationError as exc:
                # A message no matcher can read would block its partition forever.
                log.error("unreadable message skipped", error=str(exc)[:500])
        try:
            await self.handle(messages)
        except Exception:
            self._failures += 1
            log.exception("batch failed; it will be redelivered", messages=len(messages))
            await with_backoff(self._failures)
            raise
        self._failures = 0

    async def handle(self, messages: Sequence[AnyTopicMessage]) -> int:
        """Make a batch's effects durable; returns the number of jobs produced."""
        started = time.perf_counter()
        jobs: list[ActionJob] = []
        segment: list[EventMessage | TickMessage | _Tick] = []
        recompute = await self._to_recompute(messages)
        for n, message in enumerate(messages):
            if isinstance(message, TickMessage):
                segment.append(message)
                continue
            if isinstance(message, EventMessage):
                if n not in recompute:
                    segment.append(message)
                    continue
                # A revocation recomputes from the records: those before it first,
                # then its tick, under the history before it (docs/semantics.md 5a).
                event = message.event
                segment.append(
                    _Tick(event.chain_id, event.timestamp, version_key(event), message.ingested_at)
                )
                jobs += await self._events(segment)
                segment = []
                jobs += await self._events([message], recompute=recompute[n], tick=False)
                continue
            jobs += await self._events(segment)
            segment = []
            await self._retract(message)
            # a retraction may put back a feedback a revocation of the rest revokes
            rest = await self._to_recompute(messages[n + 1 :])
            recompute = {k: v for k, v in recompute.items() if k <= n}
            recompute.update({n + 1 + k: v for k, v in rest.items()})
        jobs += await self._events(segment)
        if jobs:
            await self._publish(jobs)
            for job in jobs:
                self._metrics.jobs.labels(job.action_type.value).inc()
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        return len(jobs)

    async def _to_recompute(self, messages: Sequence[AnyTopicMessage]) -> dict[int, set[str]]:
        """The revocations of the batch that change some trigger's state: position ->
        the ids of those triggers. A trigger's state changes when it evaluated the
        revoked NewFeedback and that feedback passed its gate (an event that failed
        it changed no state); one query for the whole batch. A feedback earlier in
        the same batch (not recorded yet) counts as evaluated."""
        index = self._keeper.index
        found: dict[int, set[str]] = {}
        asks: list[tuple[int, str, Event]] = []
        triggers: dict[str, TriggerSpec] = {}
        for n, message in enumerate(messages):
            if not isinstance(message, EventMessage) or message.event.event_type != REVOCATION:
                continue
            event = message.event
            earlier: bool | None = None  # the named feedback is earlier in this batch
            for trigger in index.candidates(event):
                if not trigger.is_stateful or (
                    message.ingested_at is not None and message.ingested_at < trigger.enabled_at
                ):
                    continue
                triggers[trigger.id] = trigger
                if earlier is None:
                    earlier = any(
                        isinstance(m, EventMessage) and revokes(event, m.event)
                        for m in messages[:n]
                    )
                if earlier:
                    found.setdefault(n, set()).add(trigger.id)
                else:
                    asks.append((n, trigger.id, event))
        if asks:
            async with self._pool.acquire() as conn:
                hits = await queries.revocation_hits(conn, asks)
            for row in hits:
                trigger = triggers[row["trigger_id"]]
                if row["trigger_version"] == trigger.version and not passes_gate(
                    trigger, event_from_row(row)
                ):
                    continue  # it changed no state
                found.setdefault(row["n"], set()).add(trigger.id)
        return found

    async def _events(
        self,
        segment: Sequence[EventMessage | TickMessage | _Tick],
        *,
        recompute: set[str] | None = None,
        tick: bool = True,
    ) -> list[ActionJob]:
        """Evaluate a run of events and ticks (``tick``: each event is a tick of its
        chain too; False when the caller took it already)."""
        if not segment:
            return []
        index = self._keeper.index
        jobs: list[ActionJob] = []
        stateful: list[tuple[Event, TriggerSpec] | _Tick] = []
        events = 0
        for message in segment:
            if isinstance(message, _Tick):
                if index.ticks(message.chain_id):
                    stateful.append(message)
                continue
            if isinstance(message, TickMessage):
                self._metrics.heartbeats.inc()
                if index.ticks(message.chain_id):
                    stateful.append(
                        _Tick(message.chain_id, message.timestamp, message.key, message.ingested_at)
                    )
                continue
            events += 1
            event = message.event
            if tick and index.ticks(event.chain_id):  # a tick of its chain too
                stateful.append(
                    _Tick(event.chain_id, event.timestamp, version_key(event), message.ingested_at)
                )
            t0 = time.perf_counter()
            candidates = index.candidates(event)
            for trigger in candidates:
                if message.ingested_at is not None and message.ingested_at < trigger.enabled_at:
                    continue  # history: a trigger fires on what comes after it was enabled
                if trigger.is_stateful:
                    stateful.append((event, trigger))
                    continue
                outcome = evaluate(trigger, event, states={})
                if outcome.fired:
                    jobs += self._fire(trigger, event, outcome.explain)
            self._metrics.evaluation_seconds.observe(time.perf_counter() - t0)
            self._metrics.candidates.observe(len(candidates))
        self._metrics.events.inc(events)
        if stateful:
            jobs += await self._stateful(stateful, recompute=recompute)
        return jobs

    async def _stateful(
        self, work: list[tuple[Event, TriggerSpec] | _Tick], *, recompute: set[str] | None
    ) -> list[ActionJob]:
        jobs: list[ActionJob] = []
        pairs = [w for w in work if not isinstance(w, _Tick)]
        ticks = [w for w in work if isinstance(w, _Tick)]
        index = self._keeper.index
        absent = {t.id: t for c in {w.chain_id for w in ticks} for t in index.absence_of_chain(c)}
        async with self._pool.acquire() as conn, conn.transaction():
            if recompute:
                await self._revocation(conn, pairs, recompute)
            scopes = {id(p): scope_keys(p[1], p[0]) for p in pairs}
            batch = await self._lock(conn, pairs, scopes, ticks, absent)
            states, changed, records = batch.states, batch.changed, batch.records
            done = await queries.done_evaluations(conn, [(t.id, version_key(e)) for e, t in pairs])
            for item in work:
                if isinstance(item, _Tick):
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
                        jobs += self._fire(trigger, event, explain, count=False)
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
                    jobs += self._fire(trigger, event, outcome.explain)
            await queries.save(conn, changed, records)
            if batch.fired:
                jobs += await self._silences(conn, batch.fired, pairs)
        return jobs

    @staticmethod
    async def _lock(
        conn: Conn,
        pairs: list[tuple[Event, TriggerSpec]],
        scopes: dict[int, tuple[str, ...]],
        ticks: list[_Tick],
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

    async def _revocation(
        self, conn: Conn, pairs: list[tuple[Event, TriggerSpec]], recompute: set[str]
    ) -> None:
        """One revocation: the states of the triggers it concerns recomputed without
        the feedback it revokes, before it is evaluated itself (not again on
        redelivery)."""
        done = await queries.done_evaluations(conn, [(t.id, version_key(e)) for e, t in pairs])
        event = pairs[0][0]
        todo = [t for e, t in pairs if t.id in recompute and (t.id, version_key(e)) not in done]
        starts = await queries.revoked_feedback_records(conn, [t.id for t in todo], event)
        for trigger in todo:
            if trigger.id in starts:
                await self._recompute(
                    conn, trigger, starts[trigger.id], revocation=event, why="revocation"
                )

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
            jobs += self._fire(trigger, event, explain, count=new)
        return jobs

    async def _retract(self, message: RetractionMessage) -> None:
        """Recompute the state of every stateful trigger of the chain that evaluated a
        replaced version, without those versions (docs/semantics.md section 6)."""
        index = self._keeper.index
        triggers = {t.id: t for t in index.stateful_of_chain(message.chain_id)}
        recomputed = 0
        if triggers and message.event_keys:
            async with self._pool.acquire() as conn, conn.transaction():
                found = await queries.first_record_of(conn, list(triggers), message.event_keys)
                for trigger_id, hits in sorted(found.items()):
                    seqs = [seq for seq, _ in hits]
                    start = None if None in seqs else min(s for s in seqs if s is not None)
                    await self._recompute(
                        conn,
                        triggers[trigger_id],
                        start,
                        replaced=frozenset(message.event_keys),
                        why="reorg",
                    )
                    recomputed += 1
        self._metrics.retractions.inc()
        log.info(
            "retraction applied",
            reorg_id=message.reorg_id,
            chain_id=message.chain_id,
            from_block=message.from_block,
            to_block=message.to_block,
            replaced=len(message.event_keys),
            triggers_recomputed=recomputed,
        )

    async def _recompute(
        self,
        conn: Conn,
        trigger: TriggerSpec,
        start: int | None,
        *,
        why: str,
        replaced: frozenset[str] = frozenset(),
        revocation: Event | None = None,
    ) -> None:
        """Restore the trigger's state rows to before its record ``start`` and evaluate
        its effective history after it again (shared.engine.replay.restore and refold), in
        the caller's transaction; when that cannot be done, only withdraw the removed
        events from the rate windows."""
        current = await queries.lock_chain_states(conn, [trigger.id])
        rows = {key[1]: state for key, state in current.items()}
        result: dict[str, State] | str = "a record written by the release before"
        records: list[Evaluated] = []
        if start is not None:
            loaded = await queries.records_from(conn, trigger.id, start, MAX_REPLAY + 1)
            if len(loaded) > MAX_REPLAY:
                loaded = []
                result = f"more than {MAX_REPLAY} evaluations to replay"
            records = await self._evaluated(conn, trigger, loaded)
            # a replaced revocation un-revokes its feedback: start there when earlier
            for rec in records:
                if rec.key in replaced and rec.event and rec.event.event_type == REVOCATION:
                    more = await queries.revoked_feedback_records(
                        conn, [trigger.id], rec.event, revoked_too=True
                    )
                    earlier = more.get(trigger.id, start)
                    if earlier is None or earlier < start:
                        await self._recompute(
                            conn, trigger, earlier, why=why, replaced=replaced,
                            revocation=revocation,
                        )  # fmt: skip
                        return
            if records:
                result = exclude(records, replaced=replaced, revocation=revocation) or restore(
                    records, rows
                )
            if not isinstance(result, str):
                # the restored rows are as the first record found them, under its definition
                result = refold(
                    trigger, records, result, since=records[0].trigger, keep_before=True
                )
        if isinstance(result, str):
            log.warning(
                "recomputation not possible: rate windows withdrawn only",
                trigger_id=trigger.id,
                cause=why,
                reason=result,
            )
            # (a revocation withdraws its feedback when it is evaluated next: evaluate)
            new = self._withdrawn(trigger, rows, replaced)
            if replaced:  # out of the history all the same, for later recomputations
                await queries.mark_retracted(conn, trigger.id, sorted(replaced))
        else:
            new = result
            await queries.update_records(
                conn,
                trigger.id,
                [(r.key, r.before, r.excluded) for r in records if r.excluded != EDIT],
            )
        save = {(trigger.id, k): v for k, v in new.items() if v != rows.get(k)}
        await queries.save_states(conn, save)
        exact = not isinstance(result, str)
        self._metrics.recomputations.labels(why, "exact" if exact else "withdrawn").inc()
        log.info(
            "trigger state recomputed",
            trigger_id=trigger.id,
            cause=why,
            exact=exact,
            events=len(records),
            rows_changed=len(save),
        )

    @staticmethod
    def _withdrawn(
        trigger: TriggerSpec,
        rows: dict[str, State],
        replaced: frozenset[str],
    ) -> dict[str, State]:
        """The fallback: the replaced versions out of the rate windows only."""
        new = dict(rows)
        for key, state in rows.items():
            if replaced:
                out = retract(
                    trigger, state=state, chain_id=trigger.chain_id, from_block=0,
                    to_block=None, event_keys=replaced, scope_key=key,
                )  # fmt: skip
                new[key] = out.state
        return new

    async def _evaluated(
        self, conn: Conn, trigger: TriggerSpec, loaded: Sequence[asyncpg.Record]
    ) -> list[Evaluated]:
        """Records as the engine takes them: each with its event and the definition it
        was evaluated under (the trigger now for its current version), and an edit
        marker (shared.engine.replay.EDIT) for every stored version in between, so that a
        recomputation applies the edits as the matcher did."""
        known = [r["trigger_version"] for r in loaded if r["trigger_version"] is not None]
        if not known:
            return [self._record(r, {}) for r in loaded]
        low = min(known)
        stored = (
            await queries.definitions_from(conn, trigger.id, low) if low < trigger.version else {}
        )
        specs: dict[int, TriggerSpec | None] = {
            v: spec_at(trigger, v, d) for v, d in stored.items() if v != trigger.version
        }
        specs[trigger.version] = trigger
        versions = sorted(v for v, spec in specs.items() if spec is not None)
        out: list[Evaluated] = []
        last: int | None = None
        for r in loaded:
            version = r["trigger_version"]
            if version is not None and last is not None and version > last:
                out += [self._edit(v, specs) for v in versions if last < v < version]
            if version is not None:
                last = version
            out.append(self._record(r, specs))
        if last is not None:
            out += [self._edit(v, specs) for v in versions if last < v < trigger.version]
        return out

    @staticmethod
    def _record(r: asyncpg.Record, specs: dict[int, TriggerSpec | None]) -> Evaluated:
        version = r["trigger_version"]
        scope = tick_scope(r["event_id"])
        if scope is not None:
            return Evaluated(
                r["event_id"],
                None,
                specs.get(version) if version is not None else None,
                r["fired"],
                r["states_before"],
                tick=int(r["record_time"].timestamp()),
                scope=scope,
            )
        return Evaluated(
            r["event_id"],
            event_from_row(r) if r["stored"] else None,
            specs.get(version) if version is not None else None,
            r["fired"],
            r["states_before"],
            r["excluded"],
        )

    @staticmethod
    def _edit(version: int, specs: dict[int, TriggerSpec | None]) -> Evaluated:
        return Evaluated(f"edit#{version}", None, specs[version], excluded=EDIT)

    def _fire(
        self, trigger: TriggerSpec, event: Event, explain: dict[str, Any], *, count: bool = True
    ) -> list[ActionJob]:
        if count:
            for condition_type in {c.condition_type.value for c in trigger.conditions} or {"none"}:
                self._metrics.fired.labels(condition_type).inc()
        now = datetime.now(UTC)
        # A firing recorded by the previous release (its explain has no event_version)
        # and produced again after a redelivery keeps the job id it had then (the
        # event id), so the dispatcher and receivers recognise it.
        version = version_key(event) if "event_version" in explain else event.id
        return [
            build_job(
                trigger_id=trigger.id,
                trigger_name=trigger.name,
                user_id=trigger.user_id,
                action_id=action.id,
                action_type=action.action_type,
                config=action.config,
                event=event,
                event_version=version,
                explain=explain,
                created_at=now,
            )
            for action in trigger.actions
        ]
