"""The dispatcher's core: one attempt per consumed job, recorded, retried or
dead-lettered.

Delivery (DESIGN.md, delivery contract 4): at least once toward the outside world.

* A batch of jobs is attempted concurrently; the batch (and so its offsets) is done
  when every attempt in it was recorded in ``action_results`` and its follow-up
  (retry or dead letter) acknowledged by Kafka. Attempts still running at
  ``batch_deadline`` are covered by a *guard copy* on the retry topic, due after the
  attempt's own timeout, and the batch commits: a slow destination holds up only its
  own jobs. If the process dies, the guard copy redoes the attempt; if the attempt
  finished, its recorded row makes the copy a no-op.
* Before an attempt, jobs whose (job_id, attempt) is already recorded (a redelivery
  after a crash, a guard copy) are skipped; a successful job is never attempted again.
* A transient failure (timeout, connection error, 408/425/429/5xx) is scheduled on
  ``erc8004.actions.retry`` with its due time (exponential backoff, full jitter, at
  least the destination's retry_after); after ``max_attempts`` the job goes to
  ``erc8004.actions.dlq``. Permanent failures (4xx, templates, validation, a refused
  destination, a hash mismatch) end the job at once.
* Per destination: a circuit breaker (its jobs are deferred to the retry topic while
  it is open, without spending an attempt) and a concurrency limit with a bounded
  queue (beyond it jobs are deferred too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import structlog
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from services.dispatcher import queries
from services.dispatcher.actions import (
    TELEGRAM_LIMITER_WAIT,
    TELEGRAM_MAX_PARTS,
    TELEGRAM_PART_SECONDS,
    run_mcp,
    run_rest,
    run_telegram,
)
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.policy import (
    Breakers,
    DestinationLimits,
    Outcome,
    RateLimiter,
    backoff_delay,
)
from services.dispatcher.registration import ResolveError, Resolver
from services.dispatcher.settings import DispatcherSettings
from shared.contract.events import INT32_MAX, version_key
from shared.contract.jobs import ActionJob, DeadLetter
from shared.contract.triggers import ActionConfig, McpConfig, RestConfig, TelegramConfig
from shared.outbound.policy import (
    OutboundPolicy,
    origin,
)
from shared.platform.db import Conn
from shared.platform.secrets import SecretBox, SecretDecryptError

log = structlog.get_logger(__name__)

#: Send(topic, key, value) -> awaits the broker's acknowledgement.
Send = Callable[[str, bytes, bytes], Awaitable[None]]

GUARD_MARGIN = 10.0
TERMINAL = frozenset({"success", "failed", "dead", "retracted"})
#: Longest pause of the retry consumer after putting far-off retries back.
PARK_NAP = 5.0
ERROR_CHARS = 1000


async def _wait_any(events: Sequence[asyncio.Event], seconds: float) -> None:
    """Until one of ``events`` is set, or ``seconds`` have passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class StoppingError(Exception):
    """The dispatcher is stopping: the batch in hand is left to its next owner."""


@dataclass(frozen=True)
class _ActionRow:
    trigger_id: str
    secret_ciphertext: bytes | None
    enabled: bool
    headers_ciphertext: bytes | None = None


@dataclass
class _Prepared:
    """What one job needs before its attempt: looked up per batch."""

    action: _ActionRow | None
    #: The reorg that replaced the job's event version, if one did.
    replaced_by: str | None = None


def now_utc() -> datetime:
    return datetime.now(UTC)


def _is_infrastructure(exc: BaseException) -> bool:
    """A failure of the database or Kafka (the batch is redelivered), as opposed to a
    problem of one job (recorded as that job's permanent failure)."""
    return isinstance(
        exc,
        OSError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.InsufficientResourcesError
        | KafkaError,
    )


#: (job id, run id, attempt): what one recorded row stands for.
AttemptKey = tuple[str, str, int]


def attempt_key(job: ActionJob) -> AttemptKey:
    return (job.job_id, job.run_id or "", job.attempt)


def trigger_version(job: ActionJob) -> int | None:
    """The trigger's version when it fired, as its explain names it (None when the
    explain names none: a job of a matcher that did not know versions)."""
    value = job.explain.get("trigger_version")
    # bool is an int to Python, not a version; a version fits the INTEGER column.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32_MAX:
        return None
    return value


class Dispatcher:
    """Runs jobs; owned by the dispatcher app, one per process."""

    def __init__(
        self,
        *,
        settings: DispatcherSettings,
        pool: asyncpg.Pool,
        send: Send,
        metrics: DispatcherMetrics,
        session: aiohttp.ClientSession,
        policy: OutboundPolicy,
        resolver: Resolver,
        secrets: SecretBox,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.send = send
        self.metrics = metrics
        self.session = session
        self.policy = policy
        self.resolver = resolver
        self.secrets = secrets
        self.breakers = Breakers(threshold=settings.breaker_threshold, pause=settings.breaker_pause)
        self.limits = DestinationLimits(
            settings.per_destination_concurrency, settings.destination_queue
        )
        self.telegram_limiter = RateLimiter(
            rate=settings.telegram_rate,
            burst=max(1, int(settings.telegram_rate)),
            per_key_interval=settings.telegram_chat_interval,
        )
        self.stopping = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        #: Attempts running in this process: a guard copy or redelivery of one of them
        #: waits for it instead of running it a second time.
        self._running: dict[AttemptKey, asyncio.Task[None]] = {}
        self.writer = ResultWriter(pool)

    # ------------------------------------------------------------------ batches

    async def handle_batch(
        self,
        jobs: Sequence[ActionJob],
        *,
        from_retry: bool = False,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        """Attempt ``jobs``; return when every attempt is recorded or covered by a guard
        copy. Raises (so the batch is redelivered) when the database or Kafka fails.
        ``interrupt`` (the consumer's partitions are being handed over) ends the waits
        of the batch early: before anything started the batch is left uncommitted,
        retry jobs not yet due go back on the retry topic."""
        if not jobs:
            return
        interrupt = interrupt or asyncio.Event()
        unique: dict[AttemptKey, ActionJob] = {}
        for job in jobs:
            unique.setdefault(attempt_key(job), job)
        await self._back_pressure(interrupt)
        todo = await self._not_yet_recorded(list(unique.values()))
        started: dict[asyncio.Task[None], ActionJob] = {}
        nap = 0.0
        if from_retry:
            todo, nap = await self._hold_or_park(todo)
            started = await self._start_when_due(todo, interrupt)
        else:
            prepared = await self._prepare(todo)
            started = {self._start(job, prepared): job for job in todo}
        await self._wait_or_guard(started)
        if nap > 0 and not started:
            # Everything read was put back: pause before reading the same jobs again.
            await _wait_any((self.stopping, interrupt), nap)

    async def _start_when_due(
        self, jobs: list[ActionJob], interrupt: asyncio.Event
    ) -> dict[asyncio.Task[None], ActionJob]:
        """Retry-topic jobs in due order, each started at its due time (earlier ones
        run meanwhile), unless recorded while it waited (a guard copy's original). On
        ``interrupt`` the ones not started yet go back on the retry topic unchanged."""
        started: dict[asyncio.Task[None], ActionJob] = {}
        ordered = sorted(jobs, key=lambda j: j.due_at or j.created_at)
        for i, job in enumerate(ordered):
            if job.due_at is not None and job.due_at > now_utc():
                if await self._sleep_until(job.due_at, interrupt):
                    rest = ordered[i:]
                    await asyncio.gather(*(self._to_retry_topic(j) for j in rest))
                    self.metrics.deferred.labels("handover").inc(len(rest))
                    break
                if not await self._not_yet_recorded([job]):
                    continue
            started[self._start(job, await self._prepare([job]))] = job
        return started

    async def _wait_or_guard(self, started: dict[asyncio.Task[None], ActionJob]) -> None:
        """Until every attempt is recorded, or the batch deadline: then the slower
        ones get guard copies and the batch may commit."""
        if not started:
            return
        done, pending = await asyncio.wait(started, timeout=self.settings.batch_deadline)
        if pending:
            await self._guard([started[t] for t in pending])
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _back_pressure(self, interrupt: asyncio.Event) -> None:
        """No new work while the dispatcher holds max_in_flight jobs (at most a minute:
        the consumer must poll again before Kafka's max.poll.interval); a hand-over
        meanwhile leaves the batch, untouched, to the next owner."""
        deadline = asyncio.get_running_loop().time() + 60
        while len(self._background) >= self.settings.max_in_flight:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            if interrupt.is_set():
                raise StoppingError("partitions handed over: batch left to the next owner")
            waiter = asyncio.ensure_future(interrupt.wait())
            try:
                await asyncio.wait(
                    {*self._background, waiter},
                    timeout=left,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()

    def _start(self, job: ActionJob, prepared: dict[AttemptKey, _Prepared]) -> asyncio.Task[None]:
        """The task attempting ``job``: the one already running in this process, or a
        new one."""
        key = attempt_key(job)
        running = self._running.get(key)
        if running is not None and not running.done():
            self.metrics.skipped.inc()
            return running
        task = asyncio.create_task(self.run_job(job, prepared[key]), name=f"job-{job.job_id}")
        self._running[key] = task
        self._background.add(task)
        task.add_done_callback(lambda t: self._finished(key, t))
        return task

    def _finished(self, key: AttemptKey, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled() and task.exception() is not None:
            # Raised to the batch when it still waits; logged here for the ones whose
            # batch already committed (their guard copy covers them).
            log.warning("attempt not recorded", error=repr(task.exception())[:300])

    async def _hold_or_park(self, jobs: list[ActionJob]) -> tuple[list[ActionJob], float]:
        """Retry-topic jobs due within retry_hold are held; later ones go back on the
        retry topic unchanged (bounded waits in the consumer, bounded head-of-line).
        Also returns how long to pause before reading on when some were put back (at
        most PARK_NAP seconds), so that a topic of far-off retries is not spun through."""
        now = now_utc()
        horizon = now + timedelta(seconds=self.settings.retry_hold)
        keep: list[ActionJob] = []
        park: list[ActionJob] = []
        for job in jobs:
            (park if job.due_at is not None and job.due_at > horizon else keep).append(job)
        if not park:
            return keep, 0.0
        await asyncio.gather(*(self._to_retry_topic(j) for j in park))
        self.metrics.deferred.labels("not_due").inc(len(park))
        earliest = min(j.due_at for j in park if j.due_at is not None)
        return keep, min(PARK_NAP, (earliest - now).total_seconds())

    async def _sleep_until(self, due: datetime, interrupt: asyncio.Event) -> bool:
        """Sleep until ``due``; True when ``interrupt`` ended the sleep early."""
        delay = (due - now_utc()).total_seconds()
        if delay > 0:
            await _wait_any((self.stopping, interrupt), delay)
        if self.stopping.is_set():
            # An ordinary exception: the batch is nacked, not committed (a
            # CancelledError would end FastStream's consume loop silently).
            raise StoppingError("dispatcher stopping: retry batch left uncommitted")
        return interrupt.is_set()

    async def _guard(self, jobs: list[ActionJob]) -> None:
        now = now_utc()
        copies = [
            job.model_copy(update={"due_at": now + timedelta(seconds=self._max_seconds(job))})
            for job in jobs
        ]
        await asyncio.gather(*(self._to_retry_topic(c) for c in copies))
        self.metrics.guards.inc(len(copies))

    def _max_seconds(self, job: ActionJob) -> float:
        timeout = float(job.config.get("timeout_ms", 10_000)) / 1000
        if job.action_type == "telegram":
            # every part: its turn in the rate limiter, then the request
            timeout = TELEGRAM_MAX_PARTS * (TELEGRAM_LIMITER_WAIT + TELEGRAM_PART_SECONDS + 1)
        elif job.action_type == "mcp":
            timeout *= 3  # endpoint resolution, the file fetch, then the call
        return timeout + GUARD_MARGIN

    async def _not_yet_recorded(self, jobs: list[ActionJob]) -> list[ActionJob]:
        """The jobs still owed an attempt: not when this run already has a row for this
        attempt or a later one, or a terminal row (success, failed, dead)."""
        if not jobs:
            return []
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(queries.RECORDED_ATTEMPTS, [j.job_id for j in jobs])
        by_run: dict[tuple[str, str], list[asyncpg.Record]] = {}
        for row in rows:
            by_run.setdefault((row["job_id"], row["run_id"] or ""), []).append(row)
        out = []
        for job in jobs:
            seen = by_run.get((job.job_id, job.run_id or ""), ())
            if any(r["status"] in TERMINAL or r["attempt"] >= job.attempt for r in seen):
                self.metrics.skipped.inc()
                continue
            out.append(job)
        return out

    async def _prepare(self, jobs: list[ActionJob]) -> dict[AttemptKey, _Prepared]:
        ids = sorted({j.action_id for j in jobs if j.action_id <= INT32_MAX})
        rows: dict[int, _ActionRow] = {}
        replaced: dict[int, str] = {}
        if jobs:
            async with self.pool.acquire() as conn:
                for r in await conn.fetch(queries.ACTIONS_OF_JOBS, ids):
                    rows[r["id"]] = _ActionRow(
                        r["trigger_id"],
                        r["secret_ciphertext"],
                        bool(r["enabled"]),
                        r["secret_headers_ciphertext"],
                    )
                replaced = await self._replaced(conn, jobs)
        return {
            attempt_key(j): _Prepared(rows.get(j.action_id), replaced.get(i))
            for i, j in enumerate(jobs)
        }

    @staticmethod
    async def _replaced(conn: Conn, jobs: list[ActionJob]) -> dict[int, str]:
        """Index in ``jobs`` -> id of the reorg that replaced the job's event version."""
        rows = await conn.fetch(
            queries.REPLACED_VERSIONS,
            [j.event.id for j in jobs],
            [j.event.block_time for j in jobs],
            [j.event.block_hash for j in jobs],
        )
        return {r["n"] - 1: str(r["reorg_id"]) for r in rows}

    # ------------------------------------------------------------------ one job

    async def run_job(self, job: ActionJob, prepared: _Prepared) -> None:
        self.metrics.inflight.inc()
        try:
            try:
                result = await self._run_job(job, prepared)
            except Exception as exc:
                if _is_infrastructure(exc):
                    raise
                # A problem of this job alone (a bug, a value nothing anticipated):
                # recorded, so it neither blocks its partition nor repeats forever.
                log.exception("attempt failed unexpectedly", job_id=job.job_id)
                result = (Outcome.permanent(f"internal error: {type(exc).__name__}"), 0.0)
            if result is not None:
                await self._conclude(job, *result)
        finally:
            self.metrics.inflight.dec()

    async def _run_job(self, job: ActionJob, prepared: _Prepared) -> tuple[Outcome, float] | None:
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
        try:
            target = await self._target(job, cfg, action)
        except ResolveError as exc:
            what = f"resolving the agent's MCP endpoint: {exc}"
            if exc.transient:
                return Outcome.transient(what, destination_fault=False, sent=False), 0.0
            return Outcome.permanent(what, sent=False), 0.0
        except SecretDecryptError as exc:
            return Outcome.permanent(str(exc), sent=False), 0.0
        if isinstance(cfg, TelegramConfig):
            chat_wait = self.telegram_limiter.wait_for(cfg.chat_id)
            if chat_wait > 1.0:
                # This chat's turn is far off: wait outside the shared Telegram slots.
                return await self._defer(job, chat_wait, "chat_rate")
        return await self._attempt_at(job, cfg, target)

    async def _attempt_at(
        self, job: ActionJob, cfg: ActionConfig, target: _Target
    ) -> tuple[Outcome, float] | None:
        """The attempt within its destination's slot and breaker (None: deferred)."""
        destination = target.destination
        slot = self.limits.slot(destination)
        if slot is None:
            return await self._defer(job, 5.0, "busy")
        async with slot:
            wait = self.breakers.admit(destination)
            if wait is not None:
                return await self._defer(job, wait, "breaker_open")
            started = time.perf_counter()
            outcome: Outcome | None = None
            try:
                async with asyncio.timeout(self._max_seconds(job) - GUARD_MARGIN):
                    outcome = await self._attempt(job, cfg, target)
            except TimeoutError:
                outcome = Outcome.transient("attempt exceeded its time limit")
            finally:
                if outcome is None or outcome.sent:
                    fault = outcome is None or (
                        outcome.kind == "transient" and outcome.destination_fault
                    )
                    self.breakers.record(destination, fault=fault)
                else:
                    self.breakers.release(destination)
                self.metrics.open_breakers.set(self.breakers.open_count())
            elapsed = time.perf_counter() - started
        self.metrics.duration.labels(job.action_type).observe(elapsed)
        return outcome, elapsed

    async def _target(self, job: ActionJob, cfg: ActionConfig, action: _ActionRow) -> _Target:
        if isinstance(cfg, RestConfig):
            secret = None
            if action.secret_ciphertext is not None:
                secret = self.secrets.decrypt(
                    action.secret_ciphertext, context=f"trigger_actions:{job.action_id}"
                )
            elif cfg.signing_secret is not None:
                secret = cfg.signing_secret.get_secret_value()
            headers = None
            if action.headers_ciphertext is not None:
                headers = self._secret_headers(job, action.headers_ciphertext)
            # The URL may be a template: its unrendered origin is still per destination.
            return _Target(destination=origin(cfg.url), secret=secret, headers=headers)
        if isinstance(cfg, TelegramConfig):
            return _Target(destination=f"telegram:{origin(self.settings.telegram_api_base)}")
        assert isinstance(cfg, McpConfig)
        if not cfg.resolve_endpoint:
            # The agent's token goes only to the agent's own (resolved) server, never to
            # a URL a trigger's author typed.
            assert cfg.server_url is not None
            return _Target(destination=origin(cfg.server_url), server_url=cfg.server_url)
        event = job.event
        if event.agent_id is None:
            raise ResolveError("the event names no agent", transient=False)
        url = await self.resolver.mcp_endpoint(
            event.chain_id, event.agent_id, time_limit=cfg.timeout_ms / 1000
        )
        try:
            destination = origin(url)
        except ValueError:
            raise ResolveError(
                "the registration file's MCP endpoint is invalid", transient=False
            ) from None
        token = None
        if self._may_carry_token(url):
            async with self.pool.acquire() as conn:
                ciphertext = await conn.fetchval(
                    queries.AGENT_CIPHERTEXT, event.chain_id, event.agent_id
                )
            if ciphertext is not None:
                token = self.secrets.decrypt(
                    ciphertext, context=f"agent_mcp_tokens:{event.chain_id}:{event.agent_id}"
                )
        return _Target(destination=destination, server_url=url, secret=token)

    def _secret_headers(self, job: ActionJob, ciphertext: bytes) -> dict[str, str]:
        text = self.secrets.decrypt(ciphertext, context=f"trigger_actions:{job.action_id}:headers")
        try:
            headers = orjson.loads(text)
        except orjson.JSONDecodeError:
            headers = None
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise SecretDecryptError("the action's secret headers are not a JSON object")
        return headers

    def _may_carry_token(self, url: str) -> bool:
        """Bearer tokens travel over https only, or over http to an address the
        operator allowed explicitly (a development setup on loopback)."""
        parts = urlsplit(url)
        if parts.scheme.lower() == "https":
            return True
        try:
            ip = ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            return False
        return self.policy.allows(ip)

    async def _attempt(self, job: ActionJob, cfg: ActionConfig, target: _Target) -> Outcome:
        if isinstance(cfg, RestConfig):
            return await run_rest(
                job,
                cfg,
                session=self.session,
                policy=self.policy,
                secret=target.secret,
                secret_headers=target.headers,
            )
        if isinstance(cfg, TelegramConfig):
            return await run_telegram(
                job,
                cfg,
                session=self.session,
                policy=self.policy,
                api_base=self.settings.telegram_api_base,
                bot_token=self.settings.telegram_bot_token.get_secret_value(),
                limiter=self.telegram_limiter,
            )
        assert isinstance(cfg, McpConfig)
        return await run_mcp(
            job,
            cfg,
            resolver=self.resolver,
            policy=self.policy,
            bearer_token=target.secret,
            server_url=target.server_url,
        )

    # ------------------------------------------------------------------ outcomes

    def _max_attempts(self, job: ActionJob) -> int:
        value = job.config.get("max_attempts")
        return (
            value if isinstance(value, int) and value >= 1 else self.settings.default_max_attempts
        )

    async def _conclude(self, job: ActionJob, outcome: Outcome, elapsed: float) -> None:
        """Follow-up first (retry or dead letter, acknowledged), then the row: a crash in
        between repeats the attempt (same idempotency key) rather than losing it."""
        status: str
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
            await self._to_retry_topic(job.retry(due_at=due, parts=outcome.parts))
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
        await self._record(job, status, outcome, elapsed)
        self.metrics.actions.labels(job.action_type, status).inc()
        start = job.due_at or job.created_at
        self.metrics.delay.labels(job.action_type).observe(
            max(0.0, (now_utc() - start).total_seconds())
        )
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

    async def _record(self, job: ActionJob, status: str, outcome: Outcome, elapsed: float) -> None:
        await self.writer.write(
            (
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
        )

    async def _defer(
        self, job: ActionJob, seconds: float, reason: str
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
        await self._to_retry_topic(job.model_copy(update={"due_at": due}))
        self.metrics.deferred.labels(reason).inc()
        return None

    async def _to_retry_topic(self, job: ActionJob) -> None:
        await self.send(self.settings.retry_topic, job.trigger_id.encode(), job.dump())

    # ------------------------------------------------------------------ lifecycle

    async def drain(self, grace: float) -> None:
        """Stop holding retries; wait up to ``grace`` seconds for attempts in flight, then
        cancel them (their batches either were not committed or have guard copies)."""
        self.stopping.set()
        tasks = list(self._background)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class ResultWriter:
    """Group commit of action_results rows: concurrent attempts hand in their rows and
    wait; one INSERT statement per flush (executemany, one transaction) writes every
    row handed in meanwhile, then each waiter learns the outcome. One pool connection
    and one commit for many attempts instead of one each."""

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
                async with conn.transaction():
                    await conn.executemany(queries.INSERT_RESULT, rows)
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


@dataclass(frozen=True)
class _Target:
    destination: str
    server_url: str | None = None
    secret: str | None = None
    headers: dict[str, str] | None = None  # a REST action's secret headers


def parse_jobs(bodies: Sequence[bytes]) -> tuple[list[ActionJob], list[tuple[bytes, str]]]:
    """Jobs, and the messages that are not jobs with the reason (field locations and
    error kinds only: input values may hold a user's header secrets)."""
    jobs: list[ActionJob] = []
    bad: list[tuple[bytes, str]] = []
    for body in bodies:
        try:
            jobs.append(ActionJob.parse(body))
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['type']}"
                for e in exc.errors(include_input=False, include_url=False)[:10]
            )
            bad.append((body, reason[:500]))
    return jobs, bad
