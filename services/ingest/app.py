"""Builds the ingest application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

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
from shared.db import check_db, close_pool, pool_from_settings
from shared.kafka import KafkaProbe
from shared.metrics import new_registry
from shared.ops import add_ops_routes

log = structlog.get_logger(__name__)


def create_app(settings: IngestSettings, *, relay: bool = True) -> web.Application:
    """The ingest app; ``relay=False`` leaves the outbox to other replicas (tests)."""
    # A little over the body cap so that our own check answers with the JSON 413.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1, middlewares=[request_context])
    registry = new_registry()
    app[SETTINGS] = settings
    app[METRICS] = IngestMetrics.create(registry)
    probe = KafkaProbe(settings.kafka_bootstrap_servers)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await pool_from_settings(settings)
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
                producer_factory=new_producer(settings.kafka_bootstrap_servers),
                metrics=app[METRICS],
                batch_size=settings.relay_batch_size,
                poll_interval=settings.relay_poll_interval,
            )
            task = asyncio.create_task(worker.run(), name="relay")
        log.info("ingest started", port=settings.http_port, relay=relay)
        yield
        if task is not None and worker is not None:
            worker.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), 4.0)
            except TimeoutError:  # stuck on an unreachable broker: cut it short
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await close_pool(app[POOL])
        await probe.close()

    app.cleanup_ctx.append(resources)

    async def check_postgres() -> None:
        await check_db(app[POOL])

    # Kafka is informational for ingest: without it events wait in the outbox,
    # so indexers can keep posting and the pod stays in its Service.
    add_ops_routes(
        app,
        registry=registry,
        checks={"postgres": check_postgres},
        informational={"kafka": probe.check},
    )
    app.add_routes(routes)
    return app
