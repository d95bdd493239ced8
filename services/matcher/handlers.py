"""The matcher's unit of work: one consumed batch of erc8004.events.

Stateless triggers are evaluated here, in memory (a pure function of the event:
redelivery gives the same jobs with the same ids). Stateful ones, and the ticks of
the chains' clocks (events and heartbeats), are handed over by segments to the
stateful transaction (services/matcher/stateful.py); a revocation that changes some
trigger's state and a retraction (a reorg) end a segment and recompute
(services/matcher/recompute.py). Jobs are produced after the commits and before the
batch is acknowledged: a firing whose jobs were lost with the process is produced
again from its recorded explain on redelivery.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import structlog
from pydantic import ValidationError

from services.matcher.jobs import fire
from services.matcher.keeper import SETTLE_EVERY, IndexKeeper, ProgramSettler
from services.matcher.metrics import MatcherMetrics
from services.matcher.recompute import Recomputations
from services.matcher.stateful import Stateful, Tick
from shared.contract.events import Event, version_key
from shared.contract.jobs import (
    ActionJob,
    AnyTopicMessage,
    EventMessage,
    TickMessage,
    event_keys,
    parse_topic_message,
)
from shared.engine.evaluate import TriggerSpec, evaluate
from shared.platform.stream import with_backoff

log = structlog.get_logger(__name__)

Publish = Callable[[Sequence[ActionJob]], Awaitable[None]]

#: Jobs of one user one event version may produce (MATCHER_MAX_JOBS_PER_EVENT_PER_USER).
MAX_JOBS_PER_EVENT_PER_USER = 100


class Matcher:
    """Handles the consumed batches: parses them, cuts them into segments, evaluates
    stateless triggers, produces the jobs."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        keeper: IndexKeeper,
        publish: Publish,
        metrics: MatcherMetrics,
        max_jobs_per_event_per_user: int = MAX_JOBS_PER_EVENT_PER_USER,
        settle_every: int = SETTLE_EVERY,
    ) -> None:
        self._keeper = keeper
        self._max_jobs = max_jobs_per_event_per_user
        self._publish = publish
        self._metrics = metrics
        self._failures = 0
        self._settler = ProgramSettler(settle_every)
        self._recomputations = Recomputations(pool=pool, keeper=keeper, metrics=metrics)
        self._stateful = Stateful(
            pool=pool, keeper=keeper, metrics=metrics, recomputations=self._recomputations
        )

    async def consume(self, bodies: Sequence[bytes]) -> None:
        """One consumed batch of erc8004.events, as the subscriber hands it over: an
        event no trigger of the index can match is counted, not decoded (its
        evaluation would find no candidate); a message that does not parse is logged
        and skipped; a batch that fails is
        logged and raised (to be redelivered) after a pause that grows with the
        failures in a row, so that a database outage is not hammered."""
        messages: list[AnyTopicMessage] = []
        index = self._keeper.index
        passed = 0
        for body in bodies:
            # Most events concern no trigger: those are counted and left undecoded
            # (building an event's model costs more than evaluating it). Not on a
            # chain with an absence trigger, where every event is a tick too.
            keys = event_keys(body)
            if keys is not None and not (
                index.ticks(keys.chain_id)
                or index.may_match(keys.chain_id, keys.registry, keys.event_type, keys.agent_id)
            ):
                passed += 1
                continue
            try:
                messages.append(parse_topic_message(body))
            except ValidationError as exc:
                # A message no matcher can read would block its partition forever.
                log.error("unreadable message skipped", error=str(exc)[:500])
        if passed:
            self._metrics.events.inc(passed)
            for _ in range(passed):
                self._metrics.candidates.observe(0)
        try:
            await self.handle(messages)
        except Exception:
            self._failures += 1
            self._metrics.batches_failed.inc()
            log.exception("batch failed; it will be redelivered", messages=len(messages))
            await with_backoff(self._failures)
            raise
        self._failures = 0
        # between batches: the programs this one built leave the cyclic GC's sight
        self._settler.settle()

    async def handle(self, messages: Sequence[AnyTopicMessage]) -> int:
        """Make a batch's effects durable; returns the number of jobs produced."""
        started = time.perf_counter()
        jobs: list[ActionJob] = []
        segment: list[EventMessage | TickMessage | Tick] = []
        recompute = await self._recomputations.to_recompute(messages)
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
                    Tick(event.chain_id, event.timestamp, version_key(event), message.ingested_at)
                )
                jobs += await self._events(segment)
                segment = []
                jobs += await self._events([message], recompute=recompute[n], tick=False)
                continue
            jobs += await self._events(segment)
            segment = []
            await self._recomputations.retract(message)
            # a retraction may put back a feedback a revocation of the rest revokes
            rest = await self._recomputations.to_recompute(messages[n + 1 :])
            recompute = {k: v for k, v in recompute.items() if k <= n}
            recompute.update({n + 1 + k: v for k, v in rest.items()})
        jobs += await self._events(segment)
        jobs = self._within_cap(jobs)
        if jobs:
            await self._publish(jobs)
            for job in jobs:
                self._metrics.jobs.labels(job.action_type.value).inc()
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        return len(jobs)

    def _within_cap(self, jobs: list[ActionJob]) -> list[ActionJob]:
        """At most ``max_jobs_per_event_per_user`` jobs of one user for one event
        version: one user's triggers cannot turn one event into thousands of calls.
        Which ones stay is decided by (trigger id, action id), so a redelivered batch
        produces the same jobs; the others are counted and logged."""
        groups: dict[tuple[str, str], list[ActionJob]] = defaultdict(list)
        for job in jobs:
            groups[(version_key(job.event), job.user_id)].append(job)
        dropped: set[str] = set()
        for (version, user_id), group in groups.items():
            if len(group) <= self._max_jobs:
                continue
            group.sort(key=lambda j: (j.trigger_id, j.action_id))
            extra = group[self._max_jobs :]
            dropped.update(j.job_id for j in extra)
            self._metrics.jobs_dropped.inc(len(extra))
            log.warning(
                "jobs beyond the per-event limit not produced",
                event_version=version,
                jobs_user_id=user_id,
                dropped=len(extra),
                limit=self._max_jobs,
            )
        return [j for j in jobs if j.job_id not in dropped] if dropped else jobs

    async def _events(
        self,
        segment: Sequence[EventMessage | TickMessage | Tick],
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
        stateful: list[tuple[Event, TriggerSpec] | Tick] = []
        events = 0
        for message in segment:
            if isinstance(message, Tick):
                if index.ticks(message.chain_id):
                    stateful.append(message)
                continue
            if isinstance(message, TickMessage):
                self._metrics.heartbeats.inc()
                if index.ticks(message.chain_id):
                    stateful.append(
                        Tick(message.chain_id, message.timestamp, message.key, message.ingested_at)
                    )
                continue
            events += 1
            event = message.event
            if tick and index.ticks(event.chain_id):  # a tick of its chain too
                stateful.append(
                    Tick(event.chain_id, event.timestamp, version_key(event), message.ingested_at)
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
                    jobs += fire(self._metrics, trigger, event, outcome.explain)
            self._metrics.evaluation_seconds.observe(time.perf_counter() - t0)
            self._metrics.candidates.observe(len(candidates))
        self._metrics.events.inc(events)
        if stateful:
            jobs += await self._stateful.evaluate(stateful, recompute=recompute)
        return jobs
