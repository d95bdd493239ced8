"""The frame of a Kafka-consuming service (matcher, dispatcher): a FastStream
app whose lifespan owns the database pool and serves the operational endpoints
on the service's port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from prometheus_client import CollectorRegistry

from shared.db import check_db, close_pool, pool_from_settings
from shared.metrics import new_registry
from shared.ops import add_ops_routes, start_site
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)


@dataclass
class StreamService:
    """What a consuming service's handlers need, filled in by the lifespan."""

    settings: ServiceSettings
    broker: KafkaBroker
    registry: CollectorRegistry = field(default_factory=new_registry)
    pool: asyncpg.Pool | None = None

    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("the database pool is not open (service not started)")
        return self.pool


#: How long a batch subscriber's poll waits for records. FastStream sleeps as long
#: again after an empty poll, so this bounds the delay a record arriving at an idle
#: consumer can meet (its default, 200 ms, put ~200 ms on the p99 of a sparse stream).
IDLE_POLL_MS = 25


def new_broker(settings: ServiceSettings) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        graceful_timeout=settings.shutdown_timeout,
        client_id=f"erc8004-{settings.service_name}",
        # FastStream's per-message "Received"/"Processed" lines: debug, not info.
        log_level=logging.DEBUG,
    )


async def _ping(broker: KafkaBroker) -> None:
    if not await broker.ping(timeout=2.0):
        raise ConnectionError("Kafka does not answer")


def create_stream_app(
    service: StreamService,
    *,
    on_ready: Callable[[StreamService], Awaitable[None]] | None = None,
    on_stop: Callable[[StreamService], Awaitable[None]] | None = None,
) -> FastStream:
    """A FastStream app around ``service.broker``; /healthz, /readyz and /metrics
    are served on the service's port for as long as the app runs."""
    settings = service.settings

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        service.pool = await pool_from_settings(settings)
        ops = web.Application()

        async def check_postgres() -> None:
            await check_db(service.db())

        async def check_kafka() -> None:
            await _ping(service.broker)

        checks = {"postgres": check_postgres, "kafka": check_kafka}
        add_ops_routes(ops, registry=service.registry, checks=checks)
        runner = await start_site(ops, settings.http_host, settings.http_port)
        try:
            if on_ready is not None:
                await on_ready(service)
            log.info("started", port=settings.http_port)
            yield
        finally:
            if on_stop is not None:
                await on_stop(service)
            await runner.cleanup()
            await close_pool(service.db())
            service.pool = None
            log.info("stopped")

    return FastStream(service.broker, lifespan=lifespan)


async def raw_values(msg: StreamMessage[Any]) -> list[bytes]:
    """The records' own bytes, as the batch handler's body: FastStream's default
    decoder would build a message object and json.loads every record first, only
    for us to parse the same bytes into our models again."""
    records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
    return [record.value for record in records]


async def with_backoff(attempt: int) -> None:
    """Pause before a failed batch is redelivered, so a database outage is not hammered."""
    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
