"""Builds the API application: ``create_app(settings)``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

from services.api.settings import ApiSettings
from shared.db import check_db, close_pool, pool_from_settings
from shared.kafka import KafkaProbe
from shared.metrics import new_registry
from shared.ops import add_ops_routes

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", ApiSettings)
log = structlog.get_logger(__name__)


def create_app(settings: ApiSettings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    registry = new_registry()
    probe = KafkaProbe(settings.kafka_bootstrap_servers)

    async def database(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await pool_from_settings(settings)
        log.info("api started", port=settings.http_port)
        yield
        await close_pool(app[POOL])
        await probe.close()

    app.cleanup_ctx.append(database)

    async def check_postgres() -> None:
        await check_db(app[POOL])

    add_ops_routes(
        app, registry=registry, checks={"postgres": check_postgres, "kafka": probe.check}
    )
    return app
