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

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from services.matcher import queries
from services.matcher.keeper import IndexKeeper
from services.matcher.metrics import MatcherMetrics
from shared.evaluate import TriggerSpec, evaluate, retract, scope_keys
from shared.events import Event, event_key
from shared.jobs import ActionJob, EventMessage, RetractionMessage, job_id

log = structlog.get_logger(__name__)

Publish = Callable[[Sequence[ActionJob]], Awaitable[None]]


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

    async def handle(self, messages: Sequence[EventMessage | RetractionMessage]) -> int:
        """Make a batch's effects durable; returns the number of jobs produced."""
        started = time.perf_counter()
        jobs: list[ActionJob] = []
        segment: list[EventMessage] = []
        for message in messages:
            if isinstance(message, EventMessage):
                segment.append(message)
                continue
            jobs += await self._events(segment)
            segment = []
            await self._retract(message)
        jobs += await self._events(segment)
        if jobs:
            await self._publish(jobs)
            for job in jobs:
                self._metrics.jobs.labels(job.action_type.value).inc()
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        return len(jobs)

    async def _events(self, segment: Sequence[EventMessage]) -> list[ActionJob]:
        if not segment:
            return []
        index = self._keeper.index
        jobs: list[ActionJob] = []
        stateful: list[tuple[Event, TriggerSpec]] = []
        for message in segment:
            event = message.event
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
        self._metrics.events.inc(len(segment))
        if stateful:
            jobs += await self._stateful(stateful)
        return jobs

    async def _stateful(self, pairs: list[tuple[Event, TriggerSpec]]) -> list[ActionJob]:
        jobs: list[ActionJob] = []
        async with self._pool.acquire() as conn, conn.transaction():
            scopes = [scope_keys(t, e) for e, t in pairs]
            states = await queries.lock_states(
                conn,
                [(t.id, key) for (_, t), keys in zip(pairs, scopes, strict=True) for key in keys],
            )
            done = await queries.done_evaluations(conn, [(t.id, event_key(e)) for e, t in pairs])
            changed: dict[queries.StateKey, dict[str, Any]] = {}
            records: list[tuple[str, str, bool, dict[str, Any] | None]] = []
            for (event, trigger), keys in zip(pairs, scopes, strict=True):
                if any((trigger.id, key) not in states for key in keys):
                    continue  # deleted since the index saw it
                pair = (trigger.id, event_key(event))
                if pair in done:
                    explain = done[pair]
                    if explain is not None:  # fired before: its jobs may not have left
                        jobs += self._fire(trigger, event, explain, count=False)
                    continue
                outcome = evaluate(
                    trigger,
                    event,
                    states={key: states[(trigger.id, key)] for key in keys},
                    explain_all=False,  # only a firing's explain is kept
                )
                for key in outcome.changed:
                    row = (trigger.id, key)
                    states[row] = changed[row] = outcome.states[key]
                explain_or_none = outcome.explain if outcome.fired else None
                done[pair] = explain_or_none
                records.append((pair[0], pair[1], outcome.fired, explain_or_none))
                if outcome.fired:
                    jobs += self._fire(trigger, event, outcome.explain)
            await queries.save(conn, changed, records)
        return jobs

    async def _retract(self, message: RetractionMessage) -> None:
        index = self._keeper.index
        triggers = {t.id: t for t in index.stateful_of_chain(message.chain_id)}
        if not triggers:
            self._metrics.retractions.inc()
            return
        async with self._pool.acquire() as conn, conn.transaction():
            states = await queries.lock_chain_states(conn, list(triggers))
            changed: dict[queries.StateKey, dict[str, Any]] = {}
            for key, state in states.items():
                outcome = retract(
                    triggers[key[0]],
                    state=state,
                    chain_id=message.chain_id,
                    from_block=message.from_block,
                    to_block=message.to_block,
                    # Exactly the replaced versions: a redelivered retraction, or one
                    # arriving after canonical events of the range were counted,
                    # leaves those (other keys) alone.
                    event_keys=message.event_keys,
                    scope_key=key[1],
                )
                if outcome.changed:
                    changed[key] = outcome.state
            await queries.save_states(conn, changed)
        self._metrics.retractions.inc()
        log.info(
            "retraction applied",
            reorg_id=message.reorg_id,
            chain_id=message.chain_id,
            from_block=message.from_block,
            to_block=message.to_block,
            replaced=len(message.event_keys),
            states_changed=len(changed),
        )

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
        version = event_key(event) if "event_version" in explain else event.id
        return [
            ActionJob(
                job_id=job_id(trigger.id, version, action.id),
                trigger_id=trigger.id,
                trigger_name=trigger.name,
                user_id=trigger.user_id,
                action_id=action.id,
                action_type=action.action_type,
                config=action.config,
                event=event,
                explain=explain,
                created_at=now,
            )
            for action in trigger.actions
        ]
