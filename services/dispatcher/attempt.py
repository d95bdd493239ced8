"""One attempt of one job, from its checks to its recorded row.

* Checks first: the action must still exist under the job's trigger, the trigger be
  enabled, the event version not replaced by a reorg (then the job is retracted),
  the action config valid; the kind resolves the target (ResolveError,
  SecretDecryptError end the job or defer it); the kind prepares what needs no
  destination (a webhook without templates is built: an error ends the job here).
* Then the destination's concurrency slot (shared fairly between users; a user's
  full queue defers the job) and the circuit breaker of the user and destination
  (open: deferred without spending an attempt), and the exchange itself under the
  kind's time limit.
* The outcome is concluded: a transient failure goes to ``erc8004.actions.retry``
  with its due time (exponential backoff, full jitter, at least the destination's
  retry_after) until ``max_attempts``, then to ``erc8004.actions.dlq``; the follow-up
  is acknowledged by Kafka before the row is written, so a crash in between repeats
  the attempt (same idempotency key) rather than losing it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import asyncpg
import structlog
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.dispatcher.kinds.base import ActionKind, ActionRow, Exchange, Outcome, Target
from services.dispatcher.metrics import ActionStatus, DeferReason, DispatcherMetrics
from services.dispatcher.policy import Breakers, DestinationLimits, backoff_delay, now_utc
from services.dispatcher.registration import ResolveError
from services.dispatcher.renderer import RendererUnavailableError
from services.dispatcher.results import result_row
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.store import JobStore
from shared.contract.actions import ActionType
from shared.contract.jobs import ActionJob, DeadLetter
from shared.platform.secrets import SecretDecryptError

log = structlog.get_logger(__name__)
#: The standard library logger behind ``log``: whether debug lines are written.
_DEBUG_LOG = logging.getLogger(__name__)

#: Send(topic, key, value) -> awaits the broker's acknowledgement.
Send = Callable[[str, bytes, bytes], Awaitable[None]]

#: A labelled metric (Counter, Histogram).
M = TypeVar("M", Counter, Histogram)

#: How long past an attempt's own time limit its guard copy falls due.
GUARD_MARGIN = 10.0


@dataclass
class Prepared:
    """What one job needs before its attempt: looked up per batch."""

    action: ActionRow | None
    #: The reorg that replaced the job's event version, if one did.
    replaced_by: str | None = None


def is_infrastructure(exc: BaseException) -> bool:
    """A failure of the database or Kafka (the batch is redelivered), as opposed to a
    problem of one job (recorded as that job's permanent failure)."""
    return isinstance(
        exc,
        OSError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.InsufficientResourcesError
        | KafkaError
        | RendererUnavailableError,
    )


class Attempts:
    """Makes, concludes and records attempts; one per dispatcher."""

    def __init__(
        self,
        *,
        settings: DispatcherSettings,
        kinds: Mapping[ActionType, ActionKind],
        store: JobStore,
        send: Send,
        metrics: DispatcherMetrics,
    ) -> None:
        self.settings = settings
        self.kinds = kinds
        self.store = store
        self.send = send
        self.metrics = metrics
        self.breakers = Breakers(threshold=settings.breaker_threshold, pause=settings.breaker_pause)
        self.limits = DestinationLimits(
            settings.per_destination_concurrency, settings.destination_queue
        )
        #: Attempts under way (read by the inflight gauge when it is scraped: a
        #: counter here costs less than a locked gauge update twice per attempt).
        self.running = 0
        metrics.inflight.set_function(lambda: self.running)
        metrics.open_breakers.set_function(self.breakers.open_count)
        #: The labelled series each attempt updates, looked up once per label set
        #: (``labels()`` takes a lock and builds a key each time).
        self._series: dict[tuple[object, ...], Any] = {}

    def _series_of(self, metric: M, *labels: str) -> M:
        key = (metric, *labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return cast(M, series)

    def guard_seconds(self, job: ActionJob) -> float:
        """When a guard copy of ``job`` falls due: after the attempt's time limit."""
        return self.kinds[job.action_type].time_limit(job) + GUARD_MARGIN

    async def to_retry_topic(self, job: ActionJob) -> None:
        await self.send(self.settings.retry_topic, job.trigger_id.encode(), job.dump())

    async def run(self, job: ActionJob, prepared: Prepared) -> None:
        """Attempt ``job`` and record it; raises only for infrastructure failures."""
        self.running += 1
        try:
            try:
                result = await self._checked(job, prepared)
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                # A problem of this job alone (a bug, a value nothing anticipated):
                # recorded, so it neither blocks its partition nor repeats forever.
                log.exception("attempt failed unexpectedly", job_id=job.job_id)
                result = (Outcome.permanent(f"internal error: {type(exc).__name__}"), 0.0)
            if result is not None:
                await self._conclude(job, *result)
        finally:
            self.running -= 1

    async def _checked(self, job: ActionJob, prepared: Prepared) -> tuple[Outcome, float] | None:
        """The attempt's outcome and duration; None when the job was deferred."""
        action = prepared.action
        if action is None or action.trigger_id != job.trigger_id:
            return Outcome.permanent("the trigger or action was deleted", sent=False), 0.0
        if not action.enabled:
            return Outcome.permanent("the trigger is disabled", sent=False), 0.0
        if prepared.replaced_by is not None:
            why = f"retracted: reorg {prepared.replaced_by} replaced the event's block"
            return Outcome.retracted(why), 0.0
        try:
            cfg = job.action_config()
        except ValidationError as exc:
            msg = f"invalid action config: {exc.errors()[0].get('msg', 'invalid')}"
            return Outcome.permanent(msg, sent=False), 0.0
        kind = self.kinds[job.action_type]
        try:
            target = await kind.target(job, cfg, action)
        except ResolveError as exc:
            what = str(exc)
            if exc.transient:
                return Outcome.transient(what, destination_fault=False, sent=False), 0.0
            return Outcome.permanent(what, sent=False), 0.0
        except SecretDecryptError as exc:
            return Outcome.permanent(str(exc), sent=False), 0.0
        deferral = kind.wait_before(cfg, target)
        if deferral is not None:
            return await self._defer(job, deferral.seconds, deferral.reason)
        # What needs no destination (a webhook without templates built) before the
        # slot: the slot is held for the exchange alone, and a job waiting for one
        # has done that share of its work meanwhile (docs/performance.md, "Issue 17,
        # ninth session").
        exchange = await kind.prepare(job, cfg, target)
        if isinstance(exchange, Outcome):
            return exchange, 0.0
        return await self._attempt_at(job, kind, exchange, target)

    async def _attempt_at(
        self, job: ActionJob, kind: ActionKind, exchange: Exchange, target: Target
    ) -> tuple[Outcome, float] | None:
        """The exchange within its destination's slot and breaker (None: deferred)."""
        destination = target.destination
        slot = self.limits.slot(destination, job.user_id)
        if slot is None:
            return await self._defer(job, 5.0, "busy")
        # A breaker per user and destination: one user's failing calls (a bad path,
        # a 100 ms timeout) open it for that user alone, not for everyone's jobs to
        # the same host.
        breaker = f"{job.user_id}\n{destination}"
        async with slot:
            wait = self.breakers.admit(breaker)
            if wait is not None:
                return await self._defer(job, wait, "breaker_open")
            started = time.perf_counter()
            outcome: Outcome | None = None
            try:
                async with asyncio.timeout(kind.time_limit(job)):
                    outcome = await exchange()
            except TimeoutError:
                outcome = Outcome.transient("attempt exceeded its time limit")
            finally:
                if outcome is None or outcome.sent:
                    fault = outcome is None or (
                        outcome.kind == "transient" and outcome.destination_fault
                    )
                    self.breakers.record(breaker, fault=fault)
                else:
                    self.breakers.release(breaker)
            elapsed = time.perf_counter() - started
        self._series_of(self.metrics.duration, job.action_type).observe(elapsed)
        return outcome, elapsed

    # ------------------------------------------------------------------ outcomes

    def _max_attempts(self, job: ActionJob) -> int:
        value = job.config.get("max_attempts")
        return (
            value if isinstance(value, int) and value >= 1 else self.settings.default_max_attempts
        )

    async def _conclude(self, job: ActionJob, outcome: Outcome, elapsed: float) -> None:
        """Follow-up first (retry or dead letter, acknowledged), then the row."""
        status: ActionStatus
        if outcome.kind == "success":
            status = "success"
        elif outcome.kind == "retracted":
            status = "retracted"
        elif outcome.kind == "permanent":
            status = "failed"
        elif job.attempt < self._max_attempts(job) and not (outcome.error or "").startswith(
            "expired:"
        ):
            delay = max(
                backoff_delay(
                    job.attempt, base=self.settings.backoff_base, cap=self.settings.backoff_cap
                ),
                min(outcome.retry_after or 0.0, self.settings.backoff_cap),
            )
            due = now_utc() + timedelta(seconds=delay)
            await self.to_retry_topic(job.retry(due_at=due, parts=outcome.parts))
            self.metrics.retries.labels(job.action_type).inc()
            status = "retrying"
        else:
            letter = DeadLetter(
                job=job,
                error=(outcome.error or "failed")[:2000],
                attempts=job.attempt,
                failed_at=now_utc(),
            )
            await self.send(self.settings.dlq_topic, job.trigger_id.encode(), letter.dump())
            self.metrics.dlq.labels(job.action_type).inc()
            status = "dead"
        await self.store.record(result_row(job, status, outcome, elapsed))
        self._series_of(self.metrics.actions, job.action_type, status).inc()
        start = job.due_at or job.created_at
        self._series_of(self.metrics.delay, job.action_type).observe(
            max(0.0, (now_utc() - start).total_seconds())
        )
        if status == "success" and not _DEBUG_LOG.isEnabledFor(logging.DEBUG):
            return  # the usual case: not logged, and its fields not gathered either
        (log.debug if status == "success" else log.info)(
            "attempt",
            job_id=job.job_id,
            trigger_id=job.trigger_id,
            action_type=job.action_type,
            attempt=job.attempt,
            status=status,
            duration_ms=round(elapsed * 1000),
            error=outcome.error,
        )

    async def _defer(
        self, job: ActionJob, seconds: float, reason: DeferReason
    ) -> tuple[Outcome, float] | None:
        """Back on the retry topic, same attempt, due in ``seconds`` (no attempt made);
        a job deferred past max_job_age ends as dead instead of cycling for ever."""
        age = (now_utc() - job.created_at).total_seconds()
        if age > self.settings.max_job_age:
            return (
                Outcome.transient(
                    f"expired: still deferred ({reason}) {age:.0f}s after it was created",
                    sent=False,
                ),
                0.0,
            )
        jitter = random.uniform(0, min(5.0, seconds / 4))  # noqa: S311 (spreading, not security)
        due = now_utc() + timedelta(seconds=max(0.5, seconds) + jitter)
        await self.to_retry_topic(job.model_copy(update={"due_at": due}))
        self.metrics.deferred.labels(reason).inc()
        return None
