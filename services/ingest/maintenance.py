"""Retention and maintenance inside the system: a scheduler a service runs in the
background (the ingest does), calling the database's ``maintenance_*()``
functions (SECURITY DEFINER wrappers of the owner's maintenance, EXECUTE granted
to ``erc8004_ingest``; see db/README.md).

Each task runs in one transaction under ``pg_try_advisory_xact_lock`` and, in
the loop, a claim in the table ``maintenance_runs`` (``maintenance_claim``): a
replica that finds the lock taken, or the task run by another replica within
the interval, counts it ``skipped``. So of N replicas one runs each task per
interval, and when that one is gone another takes over at its next tick. A
failed task rolls its claim back and is tried again after ``retry_after``
seconds instead of a full interval.

Metrics (prefix ``erc8004_<service>_maintenance_``): ``last_success_timestamp_seconds
{task}`` (the last success of any replica, as ``maintenance_runs`` records it: read
before the app serves /metrics (or when the loop starts) and after each run, so a
restarted replica reports it from its first scrape;
0 while none is recorded), ``runs_total{task,
outcome}`` (outcome: success, failure, skipped), ``duration_seconds{task}``,
``last_result{task}`` (what the last success returned: partitions created or
dropped, rows deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = structlog.get_logger(__name__)

Outcome = Literal["success", "failure", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("success", "failure", "skipped")

#: First key of the tasks' advisory locks (second key: the task's index), apart
#: from the ingest's own lock keys (8004_0001 relay, 8004_0002 chains).
MAINTENANCE_LOCK = 8004_0100

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class Task:
    """One maintenance task: ``sql`` returns one value (a count, or NULL) and takes
    ``args`` as ``$2…``, after the reference time as ``$1`` (NULL: the database's
    now()) when ``with_reference``, else as ``$1…``."""

    name: str
    sql: str
    interval: float
    args: tuple[object, ...] = ()
    with_reference: bool = True


@dataclass(frozen=True)
class RetentionPolicy:
    """What the tasks keep and how often they run (seconds)."""

    events_retention: timedelta = timedelta(days=365)
    action_results_retention: timedelta = timedelta(days=90)
    trigger_evaluations_retention: timedelta = timedelta(days=30)
    partitions_ahead_months: int = 3
    partitions_interval: float = 3600.0
    cleanup_interval: float = 3600.0
    refresh_interval: float = 300.0


def default_tasks(policy: RetentionPolicy) -> tuple[Task, ...]:
    """The tasks in the order they run when due together: partitions are created
    before expired ones are dropped (rows in the DEFAULT partition only go once
    they have a partition of their own)."""
    return (
        Task(
            "ensure_event_partitions",
            "SELECT maintenance_ensure_event_partitions($2, 1, $1)",
            policy.partitions_interval,
            (policy.partitions_ahead_months,),
        ),
        Task(
            "drop_event_partitions",
            "SELECT maintenance_drop_event_partitions($2, $1)",
            policy.partitions_interval,
            (policy.events_retention,),
        ),
        Task(
            "cleanup_action_results",
            "SELECT maintenance_cleanup_action_results($2, $1)",
            policy.cleanup_interval,
            (policy.action_results_retention,),
        ),
        Task(
            "cleanup_trigger_evaluations",
            "SELECT maintenance_cleanup_trigger_evaluations($2, $1)",
            policy.cleanup_interval,
            (policy.trigger_evaluations_retention,),
        ),
        Task(
            "cleanup_heartbeats",
            "SELECT maintenance_cleanup_heartbeats($2, $1)",
            policy.cleanup_interval,
            (policy.events_retention,),  # backtests replay them with the events
        ),
        Task(
            "refresh_stats_views",
            "SELECT maintenance_refresh_stats_views()",
            policy.refresh_interval,
            with_reference=False,  # a view is refreshed from what is there
        ),
    )


@dataclass(frozen=True)
class MaintenanceMetrics:
    last_success: Gauge
    runs: Counter
    duration: Histogram
    last_result: Gauge

    @classmethod
    def create(
        cls, registry: CollectorRegistry, *, service: str, tasks: Sequence[Task]
    ) -> MaintenanceMetrics:
        prefix = f"erc8004_{service}_maintenance"
        metrics = cls(
            last_success=Gauge(
                f"{prefix}_last_success_timestamp_seconds",
                "Unix time of the task's last successful run (0: none yet).",
                ("task",),
                registry=registry,
            ),
            runs=Counter(
                f"{prefix}_runs_total",
                "Maintenance task runs by outcome (skipped: another replica runs or ran it).",
                ("task", "outcome"),
                registry=registry,
            ),
            duration=Histogram(
                f"{prefix}_duration_seconds",
                "Duration of maintenance task runs (successful or not).",
                ("task",),
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            last_result=Gauge(
                f"{prefix}_last_result",
                "What the task's last success returned (partitions created or dropped,"
                " rows deleted; 0 for a refresh).",
                ("task",),
                registry=registry,
            ),
        )
        # Every series exists from the start, so rates and staleness alerts see them.
        for task in tasks:
            metrics.last_success.labels(task.name)
            metrics.last_result.labels(task.name)
            metrics.duration.labels(task.name)
            for outcome in OUTCOMES:
                metrics.runs.labels(task.name, outcome)
        return metrics


class MaintenanceScheduler:
    """Runs every task at start-up (after ``initial_delay``) and then every
    ``task.interval`` seconds, until :meth:`stop`."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        tasks: Sequence[Task],
        metrics: MaintenanceMetrics,
        initial_delay: float = 5.0,
        retry_after: float = 60.0,
        lock_timeout: float = 5.0,
        statement_timeout: float = 600.0,
    ) -> None:
        self._pool = pool
        self._tasks = tuple(tasks)
        self._index = {task.name: i for i, task in enumerate(self._tasks)}
        self._metrics = metrics
        self._initial_delay = initial_delay
        self._retry_after = retry_after
        self._lock_timeout = lock_timeout
        self._statement_timeout = statement_timeout
        self._stopping = asyncio.Event()
        self._last_success: dict[str, float] = {}
        self._loaded = False

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self._tasks

    async def run_task(
        self, name: str, *, reference: datetime | None = None, min_interval: float = 0.0
    ) -> Outcome:
        """Run one task now (``reference``: the time it computes from, default the
        database's now()), unless a replica ran it within ``min_interval`` seconds;
        never raises for a database error, records it."""
        task = self._tasks[self._index[name]]
        started = time.monotonic()
        outcome: Outcome
        result: object = None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # Creating or dropping a partition waits for a lock on events behind
                # the intake: give up soon rather than stall inserts queued behind us.
                await conn.execute(
                    "SELECT set_config('lock_timeout', $1, true),"
                    " set_config('statement_timeout', $2, true)",
                    f"{int(self._lock_timeout * 1000)}ms",
                    f"{int(self._statement_timeout * 1000)}ms",
                )
                locked = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, $2)",
                    MAINTENANCE_LOCK,
                    self._index[name],
                )
                claimed = locked and await conn.fetchval(
                    "SELECT maintenance_claim($1, $2)", name, timedelta(seconds=min_interval)
                )
                if claimed:
                    args = (reference, *task.args) if task.with_reference else task.args
                    result = await conn.fetchval(task.sql, *args)
                    outcome = "success"
                else:
                    outcome = "skipped"
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            outcome = "failure"
            log.warning("maintenance task failed", task=name, error=repr(exc))
        elapsed = time.monotonic() - started
        self._metrics.runs.labels(name, outcome).inc()
        self._metrics.duration.labels(name).observe(elapsed)
        # Ours, or another replica's (skipped): the database knows; our own clock
        # stands in for it when it cannot be read.
        read = outcome != "failure" and await self.load_last_success()
        if outcome == "success" and not read:
            self._record_success(name, time.time())
        if outcome == "success":
            self._metrics.last_result.labels(name).set(
                float(result) if isinstance(result, int | float) else 0.0
            )
            log.info(
                "maintenance task done",
                task=name,
                result=result,
                seconds=round(elapsed, 3),
                reference=None if reference is None else reference.isoformat(),
            )
        elif outcome == "skipped":
            log.info("maintenance task skipped: another replica runs it or ran it", task=name)
        return outcome

    async def load_last_success(self) -> bool:
        """Set the last-success gauges from the database's record of every task's
        last successful run (by any replica); False when it cannot be read. The
        app calls it once before it serves /metrics, and :meth:`run` when that
        read did not happen or failed."""
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch("SELECT task, last_run_at FROM maintenance_last_runs()")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("maintenance: last runs not read", error=repr(exc))
            return False
        for row in rows:
            if row["task"] in self._index:
                self._record_success(row["task"], row["last_run_at"].timestamp())
        self._loaded = True
        return True

    def _record_success(self, name: str, at: float) -> None:
        """The gauge only moves forward (a replica's own clock and the database's may
        differ by a little)."""
        if at > self._last_success.get(name, 0.0):
            self._last_success[name] = at
            self._metrics.last_success.labels(name).set(at)

    async def run_all(self, *, reference: datetime | None = None) -> dict[str, Outcome]:
        """Every task once, in order."""
        return {
            task.name: await self.run_task(task.name, reference=reference) for task in self._tasks
        }

    async def run(self) -> None:
        """The loop: each task when due, in declaration order, until stopped."""
        loop = asyncio.get_running_loop()
        if not self._loaded:
            await self.load_last_success()
        first = loop.time() + self._initial_delay
        due = {task.name: first for task in self._tasks}
        while not self._stopping.is_set():
            wait = max(0.0, min(due.values()) - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            if self._stopping.is_set():
                break
            for task in self._tasks:
                if self._stopping.is_set() or due[task.name] > loop.time():
                    continue
                # A little under the interval, so that a replica's drift does not
                # skip a whole period.
                outcome = await self.run_task(task.name, min_interval=task.interval * 0.9)
                delay = self._retry_after if outcome == "failure" else task.interval
                due[task.name] = loop.time() + min(delay, task.interval)

    def stop(self) -> None:
        self._stopping.set()
