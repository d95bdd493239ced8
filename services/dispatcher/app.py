"""Builds the dispatcher application: ``create_app(settings)``.

Two FastStream batch subscribers: ``erc8004.actions`` (group ``dispatcher``) and
``erc8004.actions.retry`` (group ``dispatcher.retry``), both committing only after
their batch's attempts were recorded (NACK_ON_ERROR: a failed batch is redelivered).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import structlog
from aiokafka import AIOKafkaProducer
from faststream import AckPolicy, FastStream
from faststream.kafka.annotations import KafkaMessage

from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.registration import Resolver
from services.dispatcher.runner import Dispatcher, StoppingError, now_utc, parse_jobs
from services.dispatcher.settings import DispatcherSettings
from shared.contract.jobs import UnreadableLetter
from shared.outbound.client import new_session
from shared.outbound.policy import OutboundPolicy
from shared.platform.kafka import LagProbe, new_producer
from shared.platform.secrets import SecretBox
from shared.platform.stream import (
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
    """What the dispatcher owns while it runs: the producer, the HTTP session, the
    Dispatcher, the lag probes. Started before the consumers start."""

    def __init__(self, settings: DispatcherSettings, metrics: DispatcherMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.secrets = SecretBox(settings.secrets_key)
        self.policy = OutboundPolicy.from_setting(
            settings.outbound_allowed_networks,
            connect_timeout=settings.outbound_connect_timeout,
            max_response_bytes=settings.outbound_max_response_bytes,
        )
        self.dispatcher: Dispatcher | None = None
        self._producer: AIOKafkaProducer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, svc: StreamService) -> None:
        settings = self.settings
        self._producer = new_producer(settings.kafka_bootstrap_servers, "erc8004-dispatcher")
        await self._producer.start()
        self._session = new_session(
            self.policy,
            limit=200,
            limit_per_host=settings.per_destination_concurrency,
        )
        resolver = Resolver(
            pool=svc.db(),
            session=self._session,
            policy=self.policy,
            ipfs_gateway=settings.ipfs_gateway,
            identity_registries=settings.registries(),
            ttl=settings.registration_cache_ttl,
            max_bytes=settings.outbound_max_response_bytes,
        )
        self.dispatcher = Dispatcher(
            settings=settings,
            pool=svc.db(),
            send=self.send,
            metrics=self.metrics,
            session=self._session,
            policy=self.policy,
            resolver=resolver,
            secrets=self.secrets,
        )
        self._tasks = [asyncio.create_task(self._watch_topics(), name="lag")]

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        assert self._producer is not None
        await (await self._producer.send(topic, value=value, key=key))

    async def _watch_topics(self) -> None:
        settings = self.settings
        lag = LagProbe(settings.kafka_bootstrap_servers, settings.group_id, settings.actions_topic)
        dlq = LagProbe(settings.kafka_bootstrap_servers, None, settings.dlq_topic)
        try:
            while True:
                with contextlib.suppress(Exception):
                    self.metrics.consumer_lag.set(await lag.measure())
                with contextlib.suppress(Exception):
                    self.metrics.dlq_messages.set(await dlq.measure())
                await asyncio.sleep(5.0)
        finally:
            await lag.close()
            await dlq.close()

    async def stop(self, _svc: StreamService) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.drain(self.settings.shutdown_timeout / 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._producer.stop()


def create_app(settings: DispatcherSettings) -> FastStream:
    broker = new_broker(settings)
    service = StreamService(settings=settings, broker=broker)
    runtime = Runtime(settings, DispatcherMetrics.create(service.registry))
    failures = [0]

    async def handle(bodies: list[Any], *, from_retry: bool, interrupt: Handoff) -> None:
        jobs, bad = parse_jobs(bodies)
        topic = settings.retry_topic if from_retry else settings.actions_topic
        for body, reason in bad:
            # Not dropped, not retried: kept on the dead-letter topic for a person.
            log.error("unreadable job sent to the dead-letter topic", topic=topic, error=reason)
            letter = UnreadableLetter(topic=topic, raw=body, error=reason, failed_at=now_utc())
            await runtime.send(settings.dlq_topic, b"unreadable", letter.dump())
        assert runtime.dispatcher is not None
        try:
            await runtime.dispatcher.handle_batch(
                jobs, from_retry=from_retry, interrupt=interrupt.revoking
            )
        except StoppingError:
            raise
        except Exception:
            failures[0] += 1
            log.exception("batch failed; it will be redelivered", jobs=len(jobs))
            await with_backoff(failures[0])
            raise
        failures[0] = 0

    # A batch ends by batch_deadline (guard copies cover what is still running); a
    # retry batch holding jobs not yet due puts them back on the topic as soon as a
    # hand-over begins (Handoff.revoking), then ends like any other.
    handoffs = {
        topic: Handoff(f"dispatcher:{topic}", limit=settings.batch_deadline + 5.0)
        for topic in (settings.actions_topic, settings.retry_topic)
    }

    @broker.subscriber(
        settings.actions_topic,
        group_id=settings.group_id,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=IDLE_POLL_MS,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,  # committed by the handoff, after the batch
        listener=handoffs[settings.actions_topic],
        rebalance_timeout_ms=handoffs[settings.actions_topic].rebalance_timeout_ms,
        decoder=raw_values,
    )
    async def on_jobs(bodies: list[Any], batch: KafkaMessage) -> None:
        async with handoffs[settings.actions_topic].batch(batch) as current:
            if current:
                await handle(bodies, from_retry=False, interrupt=handoffs[settings.actions_topic])

    @broker.subscriber(
        settings.retry_topic,
        group_id=f"{settings.group_id}.retry",
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=IDLE_POLL_MS,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        listener=handoffs[settings.retry_topic],
        rebalance_timeout_ms=handoffs[settings.retry_topic].rebalance_timeout_ms,
        decoder=raw_values,
    )
    async def on_retries(bodies: list[Any], batch: KafkaMessage) -> None:
        async with handoffs[settings.retry_topic].batch(batch) as current:
            if current:
                await handle(bodies, from_retry=True, interrupt=handoffs[settings.retry_topic])

    app = create_stream_app(service, on_ready=runtime.start, on_stop=runtime.stop)

    @app.on_shutdown
    async def stop_holding() -> None:
        # Before the broker stops its subscribers: a retry batch sleeping until its
        # jobs are due gives up at once (uncommitted) instead of holding shutdown.
        if runtime.dispatcher is not None:
            runtime.dispatcher.stopping.set()

    return app
