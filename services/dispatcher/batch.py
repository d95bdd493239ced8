"""The dispatcher's batches: what a consumed batch of jobs becomes before and after
its attempts (docs/reliability.md: at least once toward the outside world).

* Duplicates in a batch are attempted once; jobs whose (job_id, attempt) is already
  recorded (a redelivery after a crash, a guard copy) are skipped; a successful job is
  never attempted again.
* The batch (and so its offsets) is done when every attempt in it was recorded and
  its follow-up acknowledged. Attempts still running at ``batch_deadline`` are
  covered by a *guard copy* on the retry topic, due after the attempt's own time
  limit, and the batch commits: a slow destination holds up only its own jobs. If the
  process dies, the guard copy redoes the attempt; if the attempt finished, its
  recorded row makes the copy a no-op.
* Retry-topic jobs due within ``retry_hold`` are held and started at their due time;
  later ones are parked back on the retry topic unchanged; a hand-over of the
  partitions puts back the ones not started yet.
* No new work while ``max_in_flight`` attempts run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import structlog

from services.dispatcher.attempt import Attempts, Prepared, Send
from services.dispatcher.kinds.base import ActionKind
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.policy import now_utc
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.store import JobStore, Recorded
from shared.contract.actions import ActionType
from shared.contract.jobs import ActionJob

log = structlog.get_logger(__name__)

TERMINAL = frozenset({"success", "failed", "dead", "retracted"})
#: Longest pause of the retry consumer after putting far-off retries back.
PARK_NAP = 5.0

#: (job id, run id, attempt): what one recorded row stands for.
AttemptKey = tuple[str, str, int]


def attempt_key(job: ActionJob) -> AttemptKey:
    return (job.job_id, job.run_id or "", job.attempt)


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


class Dispatcher:
    """Runs batches of jobs; one per process. Built on a :class:`JobStore`, a ``send``
    that awaits Kafka's acknowledgement and the action kinds, so that tests can build
    it on fakes."""

    def __init__(
        self,
        *,
        settings: DispatcherSettings,
        store: JobStore,
        send: Send,
        metrics: DispatcherMetrics,
        kinds: Mapping[ActionType, ActionKind],
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.attempts = Attempts(
            settings=settings, kinds=kinds, store=store, send=send, metrics=metrics
        )
        self.stopping = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        #: Attempts running in this process: a guard copy or redelivery of one of them
        #: waits for it instead of running it a second time.
        self._running: dict[AttemptKey, asyncio.Task[None]] = {}

    async def handle_batch(
        self,
        jobs: Sequence[ActionJob],
        *,
        from_retry: bool = False,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        """Attempt ``jobs``; return when every attempt is recorded or covered by a guard
        copy (:meth:`begin_batch`, then what it returns)."""
        rest = await self.begin_batch(jobs, from_retry=from_retry, interrupt=interrupt)
        if rest is not None:
            await rest

    async def begin_batch(
        self,
        jobs: Sequence[ActionJob],
        *,
        from_retry: bool = False,
        interrupt: asyncio.Event | None = None,
    ) -> asyncio.Task[None] | None:
        """Start the attempts of ``jobs``; returns the task that ends when every attempt
        is recorded or covered by a guard copy (None: nothing to wait for). Either
        raises (so the batch is redelivered) when the database or Kafka fails.
        ``interrupt`` (the consumer's partitions are being handed over) ends the waits
        of the batch early: before anything started the batch is left uncommitted,
        retry jobs not yet due go back on the retry topic."""
        if not jobs:
            return None
        interrupt = interrupt or asyncio.Event()
        unique: dict[AttemptKey, ActionJob] = {}
        for job in jobs:
            unique.setdefault(attempt_key(job), job)
        await self._back_pressure(interrupt)
        candidates = list(unique.values())
        started: dict[asyncio.Task[None], ActionJob] = {}
        nap = 0.0
        if from_retry:
            todo, nap = await self._hold_or_park(await self._not_yet_recorded(candidates))
            started = await self._start_when_due(todo, interrupt)
        else:
            # Both reads at once (one round trip of waiting, not two): the lookups of
            # a job found recorded are not used.
            todo, prepared = await asyncio.gather(
                self._not_yet_recorded(candidates), self._prepare(candidates)
            )
            started = {self._start(job, prepared): job for job in todo}
        return asyncio.create_task(self._end_batch(started, nap, interrupt), name="batch-end")

    async def _end_batch(
        self, started: dict[asyncio.Task[None], ActionJob], nap: float, interrupt: asyncio.Event
    ) -> None:
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
                    await asyncio.gather(*(self.attempts.to_retry_topic(j) for j in rest))
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

    def _start(self, job: ActionJob, prepared: dict[AttemptKey, Prepared]) -> asyncio.Task[None]:
        """The task attempting ``job``: the one already running in this process, or a
        new one."""
        key = attempt_key(job)
        running = self._running.get(key)
        if running is not None and not running.done():
            self.metrics.skipped.inc()
            return running
        task = asyncio.create_task(self.attempts.run(job, prepared[key]), name=f"job-{job.job_id}")
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
        await asyncio.gather(*(self.attempts.to_retry_topic(j) for j in park))
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
            job.model_copy(
                update={"due_at": now + timedelta(seconds=self.attempts.guard_seconds(job))}
            )
            for job in jobs
        ]
        await asyncio.gather(*(self.attempts.to_retry_topic(c) for c in copies))
        self.metrics.guards.inc(len(copies))

    async def _not_yet_recorded(self, jobs: list[ActionJob]) -> list[ActionJob]:
        """The jobs still owed an attempt: not when this run already has a row for this
        attempt or a later one, or a terminal row (success, failed, dead)."""
        if not jobs:
            return []
        by_run: dict[tuple[str, str], list[Recorded]] = {}
        for row in await self.store.recorded([j.job_id for j in jobs]):
            by_run.setdefault((row.job_id, row.run_id or ""), []).append(row)
        out = []
        for job in jobs:
            seen = by_run.get((job.job_id, job.run_id or ""), ())
            if any(r.status in TERMINAL or r.attempt >= job.attempt for r in seen):
                self.metrics.skipped.inc()
                continue
            out.append(job)
        return out

    async def _prepare(self, jobs: list[ActionJob]) -> dict[AttemptKey, Prepared]:
        if not jobs:
            return {}
        found = await self.store.lookups(jobs)
        return {
            attempt_key(j): Prepared(found.actions.get(j.action_id), found.replaced.get(i))
            for i, j in enumerate(jobs)
        }

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
