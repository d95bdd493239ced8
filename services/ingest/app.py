"""Builds the ingest application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import structlog
from aiohttp import web

from services.ingest.maintenance import (
    MaintenanceMetrics,
    MaintenanceScheduler,
    RetentionPolicy,
    Task,
    default_tasks,
)
from services.ingest.metrics import IngestMetrics
from services.ingest.relay import Relay, new_producer
from services.ingest.routes import (
    MAX_BODY_BYTES,
    METRICS,
    POOL,
    SETTINGS,
    request_context,
    routes,
)
from services.ingest.settings import IngestSettings
from shared.platform.kafka_access import KafkaAccess
from shared.platform.metrics import new_registry
from shared.platform.web import frame_web_app, ops_port

log = structlog.get_logger(__name__)


MAINTENANCE = web.AppKey("maintenance", MaintenanceScheduler)


def maintenance_tasks(settings: IngestSettings) -> tuple[Task, ...]:
    return default_tasks(
        RetentionPolicy(
            events_retention=timedelta(days=settings.events_retention_days),
            action_results_retention=timedelta(days=settings.action_results_retention_days),
            trigger_evaluations_retention=timedelta(
                days=settings.trigger_evaluations_retention_days
            ),
            partitions_ahead_months=settings.event_partitions_ahead_months,
            partitions_interval=settings.maintenance_partitions_interval,
            cleanup_interval=settings.maintenance_cleanup_interval,
            refresh_interval=settings.maintenance_refresh_interval,
        )
    )


def create_app(settings: IngestSettings, *, relay: bool = True) -> web.Application:
    """The ingest app; ``relay=False`` leaves the outbox to other replicas (tests).
    With ``MAINTENANCE_ENABLED`` it also runs the database's maintenance
    (services/ingest/maintenance.py): partitions, retention, stats views."""
    # A little over the body cap so that our own check answers with the JSON 413.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1, middlewares=[request_context])
    registry = new_registry()
    app[SETTINGS] = settings
    app[METRICS] = IngestMetrics.create(registry)
    tasks = maintenance_tasks(settings)
    maintenance_metrics = MaintenanceMetrics.create(registry, service="ingest", tasks=tasks)

    async def maintenance_scheduler(pool: asyncpg.Pool) -> None:
        app[MAINTENANCE] = MaintenanceScheduler(
            pool=pool,
            tasks=tasks,
            metrics=maintenance_metrics,
            initial_delay=settings.maintenance_initial_delay,
        )
        if settings.maintenance_enabled:
            # Before the ops port serves /metrics: a scrape in the first moments
            # would read 0 for every task (Erc8004MaintenanceStale).
            await app[MAINTENANCE].load_last_success()

    # Kafka is informational for ingest: without it events wait in the outbox,
    # so indexers can keep posting and the pod stays in its Service.
    kafka = KafkaAccess.from_settings(settings)
    frame_web_app(
        app,
        settings,
        kafka=kafka,
        ops_port=settings.ops_port,
        pool=POOL,
        registry=registry,
        kafka_required=False,
        on_pool=maintenance_scheduler,
    )

    async def workers(app: web.Application) -> AsyncIterator[None]:
        task: asyncio.Task[None] | None = None
        worker: Relay | None = None
        if relay:
            worker = Relay(
                pool=app[POOL],
                connect=lambda: asyncpg.connect(
                    settings.database_url.get_secret_value(),
                    server_settings={"application_name": "erc8004-ingest-relay"}
                    | ({"role": settings.database_role} if settings.database_role else {}),
                ),
                producer_factory=new_producer(kafka),
                metrics=app[METRICS],
                batch_size=settings.relay_batch_size,
                poll_interval=settings.relay_poll_interval,
            )
            task = asyncio.create_task(worker.run(), name="relay")
        maintenance: asyncio.Task[None] | None = None
        if settings.maintenance_enabled:
            maintenance = asyncio.create_task(app[MAINTENANCE].run(), name="maintenance")
        log.info(
            "ingest started",
            port=settings.http_port,
            ops_port=ops_port(app),
            relay=relay,
            maintenance=settings.maintenance_enabled,
        )
        yield
        app[MAINTENANCE].stop()  # a task in flight finishes while the relay stops
        if task is not None and worker is not None:
            worker.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), 4.0)
            except TimeoutError:  # stuck on an unreachable broker: cut it short
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if maintenance is not None:
            try:  # rolled back if it takes too long; the next start runs it again
                await asyncio.wait_for(asyncio.shield(maintenance), 2.0)
            except TimeoutError:
                maintenance.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await maintenance

    app.cleanup_ctx.append(workers)
    app.add_routes(routes)
    return app
