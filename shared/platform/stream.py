"""The frame of a Kafka-consuming service (matcher, dispatcher): a FastStream
app whose lifespan owns the database pool and serves the operational endpoints
on the service's port, and its batch subscribers, each handing its partitions
over between batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage as CurrentMessage
from faststream.kafka.message import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.message import StreamMessage
from prometheus_client import CollectorRegistry

from shared.contract.topics import MAX_MESSAGE_BYTES
from shared.platform.db import check_db, close_pool, pool_from_settings
from shared.platform.kafka import until_kafka_answers
from shared.platform.kafka_access import KafkaAccess
from shared.platform.metrics import new_registry
from shared.platform.ops import add_ops_routes, start_site
from shared.platform.settings import ServiceSettings

log = structlog.get_logger(__name__)


@dataclass
class StreamService:
    """What a consuming service's handlers need, filled in by the lifespan."""

    settings: ServiceSettings
    broker: KafkaBroker
    #: How every Kafka client of the service connects (the broker's consumers too).
    kafka: KafkaAccess
    registry: CollectorRegistry = field(default_factory=new_registry)
    pool: asyncpg.Pool | None = None

    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("the database pool is not open (service not started)")
        return self.pool


#: How long a batch subscriber's poll waits for records when none are there (during
#: a rebalance it waits for the new assignment, however long). The poll returns as
#: soon as records arrive, so this sets only how often an idle consumer's loop wakes
#: (10 times a second; aiokafka's fetcher asks the broker on its own, every
#: ``fetch_max_wait_ms``); see :func:`_poll_without_nap`.
IDLE_POLL_MS = 100

#: How long the broker may hold a fetch that finds no new record (aiokafka's default
#: is 500 ms). A consumer has one fetch in flight per broker, and aiokafka leaves
#: out of it the partitions whose records are still buffered: with the busy
#: partition's records being handled, the fetch in flight asks only for the idle
#: partitions and the broker holds it the whole wait, while the busy partition,
#: drained meanwhile, waits behind it. With `erc8004.events` keyed by chain (one
#: busy partition, the others idle) this stalled the matcher ~400 ms per megabyte
#: fetched (measured: 100,000 triggers, 3,600 events/s; 25 ms: see
#: docs/performance.md). An idle consumer then asks the broker 40 times a second.
FETCH_MAX_WAIT_MS = 25


def new_broker(settings: ServiceSettings, kafka: KafkaAccess) -> KafkaBroker:
    return KafkaBroker(
        # A list: FastStream takes a comma-separated string for one host.
        kafka.servers(),
        **kafka.broker_options(),
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

    _start_until_connected(service.broker, service.kafka)
    return FastStream(service.broker, lifespan=lifespan)


def _start_until_connected(broker: KafkaBroker, kafka: KafkaAccess) -> None:
    """The broker's start tried again while Kafka does not answer: a service started
    while Kafka is away (a node restart, a broker rolling) waits for it, not ready
    meanwhile, rather than exit. (The services' own producers, started in
    ``on_ready``, wait the same way: shared.platform.kafka.started_producer.)"""
    start = broker.start

    async def start_until_connected() -> None:
        while True:
            try:
                await start()
                return
            except KafkaConnectionError:
                await until_kafka_answers(kafka, what="consumers")

    broker.start = start_until_connected  # type: ignore[method-assign]


class Handoff(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions change hands between batches, never in the middle of one.

    The group rebalances whenever a replica joins or leaves (a deploy, the
    autoscaler). aiokafka calls ``on_partitions_revoked`` before it gives the
    partitions up and waits for it; this one waits (at most ``limit`` seconds)
    until the batch being handled is done and its offsets committed, so the next
    owner starts after that batch instead of handling it again. Handling it twice
    would be harmless to the results (they are idempotent) but would produce its
    jobs twice. A batch fetched before a rebalance and not yet started is dropped:
    its records are fetched again from the committed offset by whoever owns them now.

    Subscribers using it run with ``AckPolicy.MANUAL`` and handle each batch inside
    ``async with handoff.batch(message)``, which commits on success and rewinds on
    failure (what ``NACK_ON_ERROR`` does), under the lock the revocation waits for,
    and pass ``rebalance_timeout_ms``: the broker waits that long for the members to
    rejoin (aiokafka's default is the 10 s session timeout, too short for the wait).
    ``revoking`` is set while a hand-over waits: a batch that would wait on its own
    (jobs not yet due) ends early on it.
    """

    #: How late after a rebalance starts a member may learn of it (heartbeat interval)
    #: plus the time to rejoin: the rebalance timeout is the limit and this.
    MARGIN = 15.0

    def __init__(self, name: str, *, limit: float) -> None:
        self.name = name
        self.limit = limit
        self.rebalance_timeout_ms = int((limit + self.MARGIN) * 1000)
        self.revoking = asyncio.Event()
        self._busy = asyncio.Lock()
        self.stale_batches = 0

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        self.revoking.set()
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.limit):
                await self._busy.acquire()
        except TimeoutError:
            log.warning(
                "a batch outlasted the partition hand-over; the next owner may redo it",
                consumer=self.name,
                limit_s=self.limit,
            )
            return
        self._busy.release()
        waited = asyncio.get_running_loop().time() - started
        log.info("partitions handed over", consumer=self.name, waited_s=round(waited, 3))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.revoking.clear()

    @asynccontextmanager
    async def batch(self, message: KafkaMessage) -> AsyncIterator[bool]:
        """Run one batch under the hand-over lock; yields False (and commits nothing)
        when the batch went stale in a rebalance: the handler must then skip it."""
        async with self._busy:
            # While a hand-over is under way, a batch fetched before it is stale too.
            if self.revoking.is_set() or not await self._current(message):
                self.stale_batches += 1
                log.info("batch from before a rebalance skipped", consumer=self.name)
                yield False
                return
            try:
                yield True
            except BaseException:
                with contextlib.suppress(IllegalStateError):  # partition gone meanwhile
                    await message.nack()
                raise
            try:
                await message.ack()
            except CommitFailedError:
                # The hand-over timed out and the group moved on: the batch's effects
                # are durable and idempotent; its next owner redoes it.
                log.warning("batch done but not committed (rebalanced)", consumer=self.name)

    @staticmethod
    async def _current(message: KafkaMessage) -> bool:
        """True while every record of the batch is still ours and ahead of the
        committed point: after a rebalance a kept partition restarts from its
        committed offset, so a batch fetched before it would be handled twice."""
        records = (
            message.raw_message
            if isinstance(message.raw_message, tuple)
            else (message.raw_message,)
        )
        consumer = message.consumer
        assigned = consumer.assignment()  # type: ignore[attr-defined]
        last: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            last[tp] = max(last.get(tp, -1), record.offset)
        for tp, offset in last.items():
            if tp not in assigned:
                return False
            try:
                if await consumer.position(tp) <= offset:  # type: ignore[attr-defined]
                    return False
            except IllegalStateError:
                return False
        return True


#: A batch handler: the records' bytes (``raw_values``), in offset order per partition.
BatchHandler = Callable[[list[bytes]], Awaitable[None]]


def batch_subscriber(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str,
    max_records: int,
    handoff: Handoff,
    handle: BatchHandler,
    fetch_max_wait_ms: int = 500,
) -> None:
    """Subscribe ``handle`` to batches of ``topic`` (at most ``max_records`` records,
    their bytes) in consumer group ``group_id``, from the earliest offset when the
    group has none. Each batch runs inside ``handoff.batch``: committed when
    ``handle`` returns, rewound (redelivered) when it raises, skipped when it went
    stale in a rebalance. A handoff serves one subscriber. ``fetch_max_wait_ms``:
    aiokafka's default unless the caller needs less (FETCH_MAX_WAIT_MS)."""

    async def on_batch(bodies: list[Any], batch: CurrentMessage) -> None:
        async with handoff.batch(batch) as current:
            if current:
                await handle(bodies)

    subscriber = broker.subscriber(
        topic,
        group_id=group_id,
        batch=True,
        max_records=max_records,
        # Unused by the poll that replaces FastStream's (_poll_without_nap).
        batch_timeout_ms=IDLE_POLL_MS,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,  # committed by the handoff, after the batch
        listener=handoff,
        rebalance_timeout_ms=handoff.rebalance_timeout_ms,
        decoder=raw_values,
    )
    subscriber(on_batch)
    _poll_without_nap(subscriber, max_records)


def _poll_without_nap(subscriber: object, max_records: int) -> None:
    """Replace FastStream's batch poll with one that does not nap.

    FastStream's poll asks aiokafka for records and, when none came within
    ``batch_timeout_ms``, sleeps as long again before the next poll. aiokafka's
    ``getmany`` already waits its whole timeout on an empty topic (it cannot spin),
    so the nap only delays a record that arrives during it: up to the poll's
    length at each hop (the matcher, then the dispatcher), about 10 ms on an idle
    dispatcher's median with 10 ms polls (docs/performance.md). Without the nap the
    poll can wait long (IDLE_POLL_MS) and still return each record on arrival.
    Fails at start, not silently, if FastStream's batch subscriber changes shape."""
    if not isinstance(subscriber, BatchSubscriber) or not callable(
        getattr(subscriber, "get_msg", None)
    ):
        raise TypeError(f"not FastStream's Kafka batch subscriber: {type(subscriber)!r}")

    async def get_msg(consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        records = await consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=max_records)
        return tuple(chain.from_iterable(records.values()))

    subscriber.get_msg = get_msg  # type: ignore[method-assign]


async def raw_values(msg: StreamMessage[Any]) -> list[bytes]:
    """The records' own bytes, as the batch handler's body: FastStream's default
    decoder would build a message object and json.loads every record first, only
    for us to parse the same bytes into our models again."""
    records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
    return [record.value for record in records]


async def with_backoff(attempt: int) -> None:
    """Pause before a failed batch is redelivered, so a database outage is not hammered."""
    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
