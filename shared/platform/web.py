"""The frame of an HTTP service (api, ingest): an aiohttp app that holds the
database pool while it runs and serves the operational endpoints beside its own
routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from shared.platform.db import check_db, close_pool, pool_from_settings
from shared.platform.kafka import KafkaProbe
from shared.platform.ops import add_ops_routes
from shared.platform.settings import ServiceSettings


def frame_web_app(
    app: web.Application,
    settings: ServiceSettings,
    *,
    pool: web.AppKey[asyncpg.Pool],
    registry: CollectorRegistry,
    kafka_required: bool = True,
    on_pool: Callable[[asyncpg.Pool], Awaitable[None]] | None = None,
) -> None:
    """Open the service's pool into ``app[pool]`` on startup and close it on cleanup
    (cleanup contexts appended after this call run inside: the pool is open for
    them), and serve /healthz, /readyz and /metrics (``registry``). Readiness needs
    PostgreSQL, and Kafka unless ``kafka_required`` is False (then it is only
    reported). ``on_pool`` checks the new pool before anything else starts: if it
    raises, the pool is closed and the app does not start."""
    probe = KafkaProbe(settings.kafka_bootstrap_servers)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[pool] = await pool_from_settings(settings)
        if on_pool is not None:
            try:
                await on_pool(app[pool])
            except BaseException:
                await close_pool(app[pool])
                raise
        yield
        await close_pool(app[pool])
        await probe.close()

    app.cleanup_ctx.append(resources)

    async def check_postgres() -> None:
        await check_db(app[pool])

    kafka = {"kafka": probe.check}
    add_ops_routes(
        app,
        registry=registry,
        checks={"postgres": check_postgres, **(kafka if kafka_required else {})},
        informational=None if kafka_required else kafka,
    )
