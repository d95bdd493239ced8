"""Builds the matcher application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from faststream import AckPolicy, FastStream
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from services.matcher.handlers import Matcher
from services.matcher.keeper import IndexKeeper
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings
from shared.contract.jobs import ActionJob, AnyTopicMessage, parse_topic_message
from shared.platform.kafka import LagProbe, new_producer
from shared.platform.stream import (
    FETCH_MAX_WAIT_MS,
    IDLE_POLL_MS,
    Handoff,
    StreamService,
    create_stream_app,
    new_broker,
    raw_values,
    with_backoff,
)

log = structlog.get_logger(__name__)


class Runtime:
    """What the matcher owns while it runs: the index keeper, the jobs producer,
    the lag probe. Started in the lifespan, before the consumer starts."""

    def __init__(self, settings: MatcherSettings, metrics: MatcherMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.matcher: Matcher | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, svc: StreamService) -> None:
        settings = self.settings
        dsn = settings.database_url.get_secret_value()
        role = {"role": settings.database_role} if settings.database_role else {}

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(
                dsn, server_settings={"application_name": "erc8004-matcher-listen", **role}
            )

        keeper = IndexKeeper(
            pool=svc.db(),
            connect=connect,
            metrics=self.metrics,
            resync_interval=settings.resync_interval,
        )
        await keeper.start()
        self._producer = new_producer(settings.kafka_bootstrap_servers, "erc8004-matcher")
        await self._producer.start()
        self.matcher = Matcher(
            pool=svc.db(), keeper=keeper, publish=self.publish, metrics=self.metrics
        )
        self._tasks = [
            asyncio.create_task(keeper.run(), name="index-keeper"),
            asyncio.create_task(self._watch_lag(), name="lag"),
        ]

    async def publish(self, jobs: Sequence[ActionJob]) -> None:
        """Produce the jobs and wait for every acknowledgement."""
        assert self._producer is not None
        topic = self.settings.actions_topic
        futures = [
            await self._producer.send(topic, value=job.dump(), key=job.trigger_id.encode())
            for job in jobs
        ]
        await asyncio.gather(*futures)

    async def _watch_lag(self) -> None:
        settings = self.settings
        probe = LagProbe(settings.kafka_bootstrap_servers, settings.group_id, settings.events_topic)
        try:
            while True:
                with contextlib.suppress(Exception):
                    self.metrics.consumer_lag.set(await probe.measure())
                await asyncio.sleep(5.0)
        finally:
            await probe.close()

    async def stop(self, _svc: StreamService) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._producer is not None:
            # Bounded: with Kafka away, stop() would wait out request timeouts.
            # Unacknowledged jobs are safe: their batch was not committed.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._producer.stop()


def create_app(settings: MatcherSettings) -> FastStream:
    broker = new_broker(settings)
    service = StreamService(settings=settings, broker=broker)
    runtime = Runtime(settings, MatcherMetrics.create(service.registry))
    failures = [0]
    # A batch is one transaction of at most a few seconds.
    handoff = Handoff("matcher", limit=20.0)

    @broker.subscriber(
        settings.events_topic,
        group_id=settings.group_id,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=IDLE_POLL_MS,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,  # committed by the handoff, after the batch
        listener=handoff,
        rebalance_timeout_ms=handoff.rebalance_timeout_ms,
        decoder=raw_values,
    )
    async def on_events(bodies: list[Any], batch: KafkaMessage) -> None:
        async with handoff.batch(batch) as current:
            if current:
                await handle(bodies)

    async def handle(bodies: list[Any]) -> None:
        messages: list[AnyTopicMessage] = []
        for body in bodies:
            try:
                messages.append(parse_topic_message(body))
            except ValidationError as exc:
                # A message no matcher can read would block its partition forever.
                log.error("unreadable message skipped", error=str(exc)[:500])
        assert runtime.matcher is not None
        try:
            await runtime.matcher.handle(messages)
        except Exception:
            failures[0] += 1
            log.exception("batch failed; it will be redelivered", messages=len(messages))
            await with_backoff(failures[0])
            raise
        failures[0] = 0

    return create_stream_app(service, on_ready=runtime.start, on_stop=runtime.stop)
