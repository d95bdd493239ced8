"""The frame of an HTTP service (api, ingest): an aiohttp app that holds the
database pool while it runs, answers load balancers' /healthz and /readyz beside
its own routes, and serves /metrics and the detailed /readyz on a second port
(``OPS_PORT``) that only the cluster's monitoring reaches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from shared.platform.db import check_db, close_pool, pool_from_settings
from shared.platform.kafka import KafkaProbe
from shared.platform.kafka_access import KafkaAccess
from shared.platform.ops import (
    Readiness,
    add_ops_routes,
    add_public_health_routes,
    bound_port,
    start_site,
)
from shared.platform.settings import ServiceSettings

#: The runner of the ops port while the app runs (:func:`ops_port` tells its port).
OPS_RUNNER = web.AppKey("ops_runner", web.AppRunner)


def frame_web_app(
    app: web.Application,
    settings: ServiceSettings,
    *,
    kafka: KafkaAccess,
    ops_port: int,
    pool: web.AppKey[asyncpg.Pool],
    registry: CollectorRegistry,
    kafka_required: bool = True,
    on_pool: Callable[[asyncpg.Pool], Awaitable[None]] | None = None,
) -> None:
    """Open the service's pool into ``app[pool]`` on startup and close it on cleanup
    (cleanup contexts appended after this call run inside: the pool is open for
    them). The app itself gets /healthz and a terse /readyz; a second site on
    ``settings.http_host``:``ops_port`` (0: a free port) serves /healthz, the
    detailed /readyz and /metrics (``registry``) from the moment the pool is open
    until the app's cleanup. Readiness needs PostgreSQL, and Kafka unless
    ``kafka_required`` is False (then it is only reported), probed through ``kafka``
    (the service's own access, built once). ``on_pool`` checks the
    new pool before anything else starts: if it raises, the pool is closed and the
    app does not start."""
    probe = KafkaProbe(kafka)

    async def check_postgres() -> None:
        await check_db(app[pool])

    kafka_check = {"kafka": probe.check}
    readiness = Readiness(
        {"postgres": check_postgres, **(kafka_check if kafka_required else {})},
        None if kafka_required else kafka_check,
    )
    add_public_health_routes(app, readiness)
    ops = web.Application()
    add_ops_routes(ops, registry=registry, checks=readiness)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[pool] = await pool_from_settings(settings)
        try:
            if on_pool is not None:
                await on_pool(app[pool])
            app[OPS_RUNNER] = await start_site(ops, settings.http_host, ops_port)
        except BaseException:
            await close_pool(app[pool])
            raise
        yield
        await app[OPS_RUNNER].cleanup()
        await close_pool(app[pool])
        await probe.close()

    app.cleanup_ctx.append(resources)


def ops_port(app: web.Application) -> int:
    """The port the app's ops site listens on (while the app runs)."""
    return bound_port(app[OPS_RUNNER])
