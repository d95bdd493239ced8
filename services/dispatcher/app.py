"""Builds the dispatcher application: ``create_app(settings)``.

Two batch subscribers: ``erc8004.actions`` (group ``dispatcher``) and
``erc8004.actions.retry`` (group ``dispatcher.retry``), both committing only after
their batch's attempts were recorded (a failed batch is redelivered), both handled
by :class:`~services.dispatcher.handlers.JobHandler`. The stages a job goes through
from there are listed in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import functools

import aiohttp
import structlog
from aiokafka import AIOKafkaProducer
from faststream import FastStream

from services.dispatcher.batch import Dispatcher
from services.dispatcher.handlers import JobHandler
from services.dispatcher.kinds.table import build_kinds
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.registration import Resolver
from services.dispatcher.renderer import Renderer
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.store import PgJobStore
from services.dispatcher.telegram_links import ChatLinker
from shared.outbound.client import new_session
from shared.outbound.policy import OutboundPolicy, OutboundProxy, parse_ports
from shared.platform.db import connector
from shared.platform.kafka import LagProbe, started_producer, stop_producer, watch_lag
from shared.platform.kafka_access import KafkaAccess
from shared.platform.secrets import SecretBox
from shared.platform.stream import (
    FETCH_MAX_WAIT_MS,
    Handoff,
    StreamService,
    batch_subscriber,
    create_stream_app,
    new_broker,
)

log = structlog.get_logger(__name__)


class DispatcherRuntime:
    """What the dispatcher owns while it runs: the producer, the HTTP session, the
    Dispatcher, the lag probes. Started before the consumers start."""

    def __init__(self, settings: DispatcherSettings, metrics: DispatcherMetrics) -> None:
        self.settings = settings
        self.handler = JobHandler(settings, send=self.send)
        self.metrics = metrics
        self.secrets = SecretBox(settings.secrets_key)
        self.policy = OutboundPolicy.from_setting(
            settings.outbound_allowed_networks,
            allowed_ports=parse_ports(settings.outbound_allowed_ports),
            proxy=OutboundProxy.parse(settings.outbound_proxy_url.get_secret_value()),
            connect_timeout=settings.outbound_connect_timeout,
            max_response_bytes=settings.outbound_max_response_bytes,
        )
        self.dispatcher: Dispatcher | None = None
        self._producer: AIOKafkaProducer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._renderer: Renderer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, svc: StreamService) -> None:
        settings = self.settings
        self._renderer = Renderer(
            workers=settings.template_workers,
            seconds=settings.template_render_seconds,
            memory_mb=settings.template_memory_mb,
        )
        # The template workers start (a fork server's imports, ~1 s) while the
        # producer connects.
        warming = asyncio.create_task(self._renderer.start(), name="renderer-start")
        try:
            self._producer = await started_producer(svc.kafka, "erc8004-dispatcher")
        except BaseException:
            warming.cancel()  # (on_stop reaps the workers)
            raise
        await warming
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
        store = PgJobStore(svc.db())
        kinds = build_kinds(
            settings,
            session=self._session,
            policy=self.policy,
            resolver=resolver,
            secrets=self.secrets,
            agent_token=store.agent_token,
            renderer=self._renderer,
        )
        self.dispatcher = Dispatcher(
            settings=settings, store=store, send=self.send, metrics=self.metrics, kinds=kinds
        )
        self.handler.dispatcher = self.dispatcher
        gauges = {
            LagProbe(svc.kafka, settings.group_id, settings.actions_topic): (
                self.metrics.consumer_lag
            ),
            LagProbe(svc.kafka, None, settings.dlq_topic): self.metrics.dlq_messages,
        }
        self._tasks = [asyncio.create_task(watch_lag(gauges), name="lag")]
        bot_token = settings.telegram_bot_token.get_secret_value()
        if bot_token and settings.telegram_updates_poll > 0:
            linker = ChatLinker(
                connect=connector(settings, "telegram"),
                session=self._session,
                policy=self.policy,
                api_base=settings.telegram_api_base,
                bot_token=bot_token,
                poll_seconds=settings.telegram_updates_poll,
                metrics=self.metrics,
            )
            self._tasks.append(asyncio.create_task(linker.run(), name="telegram-links"))

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        assert self._producer is not None
        await (await self._producer.send(topic, value=value, key=key))

    async def stop(self, _svc: StreamService) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.drain(self.settings.shutdown_timeout / 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._renderer is not None:
            await asyncio.to_thread(self._renderer.close)
        if self._producer is not None:
            await stop_producer(self._producer)


def create_app(settings: DispatcherSettings) -> FastStream:
    kafka = KafkaAccess.from_settings(settings)
    broker = new_broker(settings, kafka)
    service = StreamService(settings=settings, broker=broker, kafka=kafka)
    runtime = DispatcherRuntime(settings, DispatcherMetrics.create(service.registry))

    # A batch ends by batch_deadline (guard copies cover what is still running); a
    # retry batch holding jobs not yet due puts them back on the topic as soon as a
    # hand-over begins (Handoff.revoking), then ends like any other. On the actions
    # topic the next batch begins while one batch ends (overlap): its attempts keep
    # the destinations busy while the batch before commits, instead of the
    # dispatcher waiting idle between batches (docs/performance.md).
    handoffs: list[Handoff] = []
    for topic, group, from_retry in (
        (settings.actions_topic, settings.group_id, False),
        (settings.retry_topic, f"{settings.group_id}.retry", True),
    ):
        handoff = Handoff(
            f"dispatcher:{topic}",
            limit=settings.batch_deadline + 5.0,
            overlap=0 if from_retry else 1,
        )
        handoffs.append(handoff)
        batch_subscriber(
            broker,
            topic,
            group_id=group,
            max_records=settings.batch_max_records,
            handoff=handoff,
            handle=functools.partial(
                runtime.handler.handle, from_retry=from_retry, interrupt=handoff.revoking
            ),
            # a job reaching a partition left out of the fetch in flight waits for it
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )

    app = create_stream_app(service, on_ready=runtime.start, on_stop=runtime.stop)

    @app.on_shutdown
    async def stop_holding() -> None:
        # Before the broker stops its subscribers: a retry batch sleeping until its
        # jobs are due gives up at once (uncommitted) instead of holding shutdown.
        if runtime.dispatcher is not None:
            runtime.dispatcher.stopping.set()
        # The batches still ending commit before the consumers close, and so does one
        # begun from now on: half the shutdown time for them, half for the attempts
        # still running when the consumers have stopped (DispatcherRuntime.stop).
        budget = settings.shutdown_timeout / 2
        closed = await asyncio.gather(*(h.close(budget) for h in handoffs))
        if not all(closed):
            log.warning("batches still ending at shutdown are left to be redone")

    return app
