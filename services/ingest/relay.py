"""The outbox relay: moves committed outbox rows to Kafka, at least once.

It wakes on the per-statement ``pg_notify('outbox')`` and also polls (a LISTEN
loses every notification sent while nobody listens). A batch is taken in
``seq`` order under a transaction-level advisory lock, produced with an
idempotent ``acks=all`` producer, and deleted only after every message of it
was acknowledged; any failure rolls the batch back to be produced again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from services.ingest import queries
from services.ingest.metrics import IngestMetrics
from shared.platform import kafka
from shared.platform.db import keep_listening
from shared.platform.kafka_access import KafkaAccess

log = structlog.get_logger(__name__)

ProducerFactory = Callable[[], AIOKafkaProducer]
Connect = Callable[[], Awaitable[asyncpg.Connection]]


def new_producer(access: KafkaAccess | str) -> ProducerFactory:
    def make() -> AIOKafkaProducer:
        return kafka.new_producer(
            access,
            "erc8004-ingest-relay",
            max_batch_size=512 * 1024,
            request_timeout_ms=10_000,
        )

    return make


class Relay:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        connect: Connect,
        producer_factory: ProducerFactory,
        metrics: IngestMetrics,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        stats_interval: float = 1.0,
    ) -> None:
        self._pool = pool
        self._connect = connect
        self._producer_factory = producer_factory
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._stats_interval = stats_interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._key_partition: dict[bytes, int] = {}

    def stop(self) -> None:
        """Ask ``run`` to return after the step it is in (a batch, a producer start):
        cancelling it mid-start would leak the producer's bootstrap connection."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Relay until ``stop`` (or cancellation)."""
        listener = asyncio.create_task(self._listen(), name="relay-listen")
        stats = asyncio.create_task(self._stats(), name="relay-stats")
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                # Cleared before the batch, so a NOTIFY arriving during it is kept.
                self._wake.clear()
                try:
                    producer = await self._ensure_producer()
                    moved = await self._relay_batch(producer)
                except Exception as exc:  # noqa: BLE001 (Kafka, PostgreSQL, anything: retry)
                    self._metrics.relay_errors.labels(type(exc).__name__).inc()
                    log.warning("relay batch failed; retrying", error=repr(exc), backoff=backoff)
                    await self._drop_producer()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(backoff):
                            await self._stopping.wait()
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                if moved is not None and moved >= self._batch_size:
                    continue  # more waiting: no pause
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await self._wake.wait()
        finally:
            listener.cancel()
            stats.cancel()
            await asyncio.gather(listener, stats, return_exceptions=True)
            await self._drop_producer()

    async def _relay_batch(self, producer: AIOKafkaProducer) -> int | None:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await queries.lock_outbox_batch(conn, self._batch_size)
            if not rows:
                return None if rows is None else 0
            futures = await self._produce(producer, rows)
            async with asyncio.timeout(30):
                await asyncio.gather(*futures)
            await queries.delete_outbox(conn, [r.seq for r in rows])
        self._metrics.relay_batch.observe(len(rows))
        self._metrics.relayed.inc(len(rows))
        return len(rows)

    async def _produce(
        self, producer: AIOKafkaProducer, rows: list[queries.OutboxRow]
    ) -> list[asyncio.Future[object]]:
        """Rows grouped into record batches per partition, in seq order within each
        (a future per batch, not per message). The partition of a key is the
        client's default (murmur2, as Java's), cached per key; a broadcast row
        goes to every partition."""
        per_partition: dict[tuple[str, int], list[queries.OutboxRow]] = {}
        for row in rows:
            partitions = await self._partitions_of(producer, row.topic)
            targets = partitions if row.broadcast else [self._partition(row.key, partitions)]
            for partition in targets:
                per_partition.setdefault((row.topic, partition), []).append(row)
        futures: list[asyncio.Future[object]] = []
        for (topic, partition), items in per_partition.items():
            batch = producer.create_batch()
            for row in items:
                if batch.append(key=row.key, value=row.payload, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=row.key, value=row.payload, timestamp=None) is None:
                        raise KafkaError(f"outbox row {row.seq} does not fit in a record batch")
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    def _partition(self, key: bytes, partitions: list[int]) -> int:
        cached = self._key_partition.get(key)
        if cached is None:
            if len(self._key_partition) > 200_000:
                self._key_partition.clear()
            cached = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            self._key_partition[key] = cached
        return cached

    async def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        if topic not in self._partitions:
            found = await producer.partitions_for(topic)
            if not found:
                raise KafkaError(f"no partitions known for {topic}")
            self._partitions[topic] = sorted(found)
        return self._partitions[topic]

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._producer_factory()
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
            log.info("relay connected to Kafka")
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._partitions.clear()
        self._key_partition.clear()
        if producer is not None:
            await kafka.stop_producer(producer)

    async def _listen(self) -> None:
        async def catch_up() -> None:
            self._wake.set()  # anything committed while we were not listening

        await keep_listening(
            self._connect, "outbox", lambda _payload: self._wake.set(), on_listening=catch_up
        )

    async def _stats(self) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    depth, lag = await queries.outbox_stats(conn)
                self._metrics.outbox_depth.set(depth)
                self._metrics.relay_lag.set(lag)
            except Exception as exc:  # noqa: BLE001 (stats are best effort)
                log.debug("outbox stats unavailable", error=repr(exc))
            await asyncio.sleep(self._stats_interval)
