"""The frame of a Kafka-consuming service (matcher, dispatcher): a FastStream
app whose lifespan owns the database pool and serves the operational endpoints
on the service's port, and its batch subscribers, each handing its partitions
over between batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
)
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

    With ``overlap`` > 0 (:meth:`begin`), a batch's handler may return before the
    batch is done, with what is left of it (an awaitable): the next batch begins
    while up to ``overlap`` earlier ones finish, so that the consumer's work between
    batches (its commit, the next poll, the next batch's reads) does not leave the
    service idle. Each finishing batch commits its own offsets, in batch order, only
    once it and every earlier batch are done; one that fails rewinds its partitions,
    and no batch begun before that commits (those holding later records of the same
    partitions are fetched again with it). A hand-over waits for the batches finishing
    too.
    """

    #: How late after a rebalance starts a member may learn of it (heartbeat interval)
    #: plus the time to rejoin: the rebalance timeout is the limit and this.
    MARGIN = 15.0

    def __init__(self, name: str, *, limit: float, overlap: int = 0) -> None:
        self.name = name
        self.limit = limit
        self.overlap = overlap
        self.rebalance_timeout_ms = int((limit + self.MARGIN) * 1000)
        self.revoking = asyncio.Event()
        self._busy = asyncio.Lock()
        self.stale_batches = 0
        #: The batches begun and not yet committed or rewound, oldest first: each one's
        #: finishing task (overlap mode).
        self._finishing: deque[asyncio.Task[None]] = deque()
        #: Moves on when a finishing batch fails: batches begun before that are
        #: neither committed nor left where they are, but fetched again.
        self._generation = 0
        #: Set by :meth:`close` when the service stops: a batch begun from then on is
        #: ended and committed before its handler returns (the consumer is about to
        #: close), by the loop time ``_close_by``.
        self.closing = False
        self._close_by = 0.0

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        self.revoking.set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.limit):
                await self._busy.acquire()
        except TimeoutError:
            self._outlasted()
            return
        try:
            # the batches still finishing commit (or rewind) before the partitions go
            if not await self.settle(self.limit - (loop.time() - started)):
                self._outlasted()
                return
        finally:
            self._busy.release()
        waited = loop.time() - started
        log.info("partitions handed over", consumer=self.name, waited_s=round(waited, 3))

    def _outlasted(self) -> None:
        log.warning(
            "a batch outlasted the partition hand-over; the next owner may redo it",
            consumer=self.name,
            limit_s=self.limit,
        )

    async def close(self, seconds: float) -> bool:
        """The service is stopping: the batches still ending, and any begun from now
        on, get ``seconds`` in all to end and commit; True when none was left."""
        self.closing = True
        self._close_by = asyncio.get_running_loop().time() + seconds
        return await self.settle(seconds)

    async def settle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every batch still finishing to be committed or
        rewound; True when none is left."""
        pending = [task for task in self._finishing if not task.done()]
        if not pending:
            return True
        _, left = await asyncio.wait(pending, timeout=max(seconds, 0.0))
        return not left

    async def begin(
        self, message: KafkaMessage, start: Callable[[], Awaitable[Awaitable[None] | None]]
    ) -> None:
        """Overlap mode: begin one batch under the hand-over lock (skipped when stale,
        rewound when ``start`` raises) and leave what ``start`` returns (the rest of the
        batch) to finish while the next batch begins; at most ``overlap`` batches
        finish at once. See the class's description."""
        while len(self._finishing) > self.overlap:
            await asyncio.wait({self._finishing[0]})
        async with self._busy:
            if self.revoking.is_set():
                self.stale_batches += 1
                log.info("batch from before a rebalance skipped", consumer=self.name)
                return
            if not await self._current(message):
                # Fetched before a rebalance restarted its partitions from their
                # committed offsets, or before a failed batch's rewind went back into
                # it (it waited for room meanwhile): skipped, and rewound, so that the
                # part of it before where the consumer now stands is fetched again
                # (rewinds only go back: at worst records are handled twice).
                self.stale_batches += 1
                log.info("batch fetched before a rewind skipped", consumer=self.name)
                _rewind(message.consumer, _offsets(message)[0])
                return
            generation = self._generation
            try:
                rest = await start()
            except BaseException:
                # (not FastStream's nack: that would go forward past the records of an
                # earlier batch that failed meanwhile and was rewound)
                _rewind(message.consumer, _offsets(message)[0])
                raise
            previous = self._finishing[-1] if self._finishing else None
            task = asyncio.create_task(
                self._finish(message, rest, previous, generation), name=f"{self.name}:finish"
            )
            self._finishing.append(task)
            task.add_done_callback(self._finished)
        if self.closing:
            left = self._close_by - asyncio.get_running_loop().time()
            await asyncio.wait({task}, timeout=max(left, 0.0))

    def _finished(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._finishing.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ending a batch failed", consumer=self.name, error=repr(task.exception()))

    async def _finish(
        self,
        message: KafkaMessage,
        rest: Awaitable[None] | None,
        previous: asyncio.Task[None] | None,
        generation: int,
    ) -> None:
        """The end of one batch: its rest awaited, then (after every earlier batch) its
        offsets committed. A batch that failed moves the generation on and rewinds its
        partitions: it is fetched again, and the batches begun before that are not
        committed (they may hold later records of the same partitions). Never raises:
        the handler logged what went wrong."""
        failed = False
        try:
            if rest is not None:
                await rest
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # this task is cancelled (the loop is closing), not the rest: no batch
                # after this one may commit past it
                self._generation += 1
                raise
            failed = True
        except Exception as exc:  # noqa: BLE001 (the batch is fetched again)
            failed = True
            log.info("batch failed; fetched again", consumer=self.name, error=repr(exc)[:200])
        if previous is not None:
            await asyncio.wait({previous})
        consumer: Any = message.consumer  # aiokafka's
        if failed:
            self._generation += 1
            _rewind(consumer, _offsets(message)[0])
            return
        if generation != self._generation:
            return  # an earlier batch failed: fetched again from before this one
        assigned = consumer.assignment()
        offsets = {tp: n for tp, n in _offsets(message)[1].items() if tp in assigned}
        try:
            if offsets:
                await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The batch's effects are durable and idempotent: a later commit covers
            # its partitions, or their next owner redoes it.
            log.warning("batch done but not committed", consumer=self.name, error=repr(exc)[:200])

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
        consumer = message.consumer
        assigned = consumer.assignment()  # type: ignore[attr-defined]
        for tp, after_last in _offsets(message)[1].items():
            if tp not in assigned:
                return False
            try:
                if await consumer.position(tp) < after_last:  # type: ignore[attr-defined]
                    return False
            except IllegalStateError:
                return False
        return True


def _records(message: KafkaMessage) -> tuple[ConsumerRecord[Any, Any], ...]:
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


def _offsets(
    message: KafkaMessage,
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Per partition of the batch: its first record's offset, and the offset after its
    last (what a commit of the batch names)."""
    firsts: dict[TopicPartition, int] = {}
    nexts: dict[TopicPartition, int] = {}
    for record in _records(message):
        tp = TopicPartition(record.topic, record.partition)
        firsts[tp] = min(firsts.get(tp, record.offset), record.offset)
        nexts[tp] = max(nexts.get(tp, 0), record.offset + 1)
    return firsts, nexts


def _rewind(consumer: Any, firsts: dict[TopicPartition, int]) -> None:
    """Fetch the batch again: each of its partitions still ours goes back to the
    batch's first record, unless the consumer is already at or before it (an earlier
    batch's rewind went further back: going forward would skip its records). At
    once, without yielding to the loop, so that no batch begins in between."""
    assignment = consumer.assignment()
    for tp, first in firsts.items():
        if tp not in assignment:
            continue  # partition gone meanwhile: its next owner starts from the commit
        position = _position(consumer, tp)
        # (no known position: it is being reset to the committed offset, which is
        # before every record not committed)
        if position is not None and first < position:
            consumer.seek(tp, first)


def _position(consumer: Any, tp: TopicPartition) -> int | None:
    """The consumer's position on ``tp`` as aiokafka's ``position()`` returns it when
    known, read without awaiting (that coroutine only yields when the position is
    unknown); None when unknown."""
    state = consumer._subscription.subscription.assignment.state_value(tp)
    return state.position if state.has_valid_position else None


#: A batch handler: the records' bytes (``raw_values``), in offset order per partition;
#: returns None when the batch is done, or what is left of it (overlap mode: awaited
#: while the next batch begins).
BatchHandler = Callable[[list[bytes]], Awaitable[Awaitable[None] | None]]


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
        if handoff.overlap > 0:
            await handoff.begin(batch, lambda: handle(bodies))
            return
        async with handoff.batch(batch) as current:
            if current:
                rest = await handle(bodies)
                if rest is not None:
                    await rest

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
