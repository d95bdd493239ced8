"""Builds the matcher application: ``create_app(settings)``. It only wires: the
batches are handled by services/matcher/handlers.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from faststream import FastStream

from services.matcher.handlers import Matcher
from services.matcher.keeper import IndexKeeper
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings
from shared.contract.jobs import ActionJob
from shared.platform.db import connector
from shared.platform.kafka import LagProbe, started_producer, stop_producer, watch_lag
from shared.platform.kafka_access import KafkaAccess
from shared.platform.stream import (
    FETCH_MAX_WAIT_MS,
    Handoff,
    StreamService,
    batch_subscriber,
    create_stream_app,
    new_broker,
)


class MatcherRuntime:
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
        keeper = IndexKeeper(
            pool=svc.db(),
            connect=connector(settings, "listen"),
            metrics=self.metrics,
            resync_interval=settings.resync_interval,
        )
        await keeper.start()
        # No linger: a batch's jobs are sent together and then awaited (they batch
        # anyway); waiting 2 ms more only delayed every firing.
        self._producer = await started_producer(svc.kafka, "erc8004-matcher", linger_ms=0)
        self.matcher = Matcher(
            pool=svc.db(),
            keeper=keeper,
            publish=self.publish,
            metrics=self.metrics,
            max_jobs_per_event_per_user=settings.max_jobs_per_event_per_user,
            settle_every=settings.settle_every,
        )
        lag = LagProbe(svc.kafka, settings.group_id, settings.events_topic)
        self._tasks = [
            asyncio.create_task(keeper.run(), name="index-keeper"),
            asyncio.create_task(watch_lag({lag: self.metrics.consumer_lag}), name="lag"),
        ]

    async def consume(self, bodies: list[bytes]) -> None:
        assert self.matcher is not None
        await self.matcher.consume(bodies)

    async def publish(self, jobs: Sequence[ActionJob]) -> None:
        """Produce the jobs and wait for every acknowledgement."""
        assert self._producer is not None
        topic = self.settings.actions_topic
        futures = [
            await self._producer.send(topic, value=job.dump(), key=job.trigger_id.encode())
            for job in jobs
        ]
        await asyncio.gather(*futures)

    async def stop(self, _svc: StreamService) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._producer is not None:
            # Unacknowledged jobs are safe: their batch was not committed.
            await stop_producer(self._producer)


def create_app(settings: MatcherSettings) -> FastStream:
    kafka = KafkaAccess.from_settings(settings)
    broker = new_broker(settings, kafka)
    service = StreamService(settings=settings, broker=broker, kafka=kafka)
    runtime = MatcherRuntime(settings, MatcherMetrics.create(service.registry))
    batch_subscriber(
        broker,
        settings.events_topic,
        group_id=settings.group_id,
        max_records=settings.batch_max_records,
        # A batch is one transaction of at most a few seconds.
        handoff=Handoff("matcher", limit=20.0),
        handle=runtime.consume,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    return create_stream_app(service, on_ready=runtime.start, on_stop=runtime.stop)
