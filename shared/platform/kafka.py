"""Kafka plumbing shared by the services: the producer, topic creation, the
readiness check and the lag gauges. Each takes a
:class:`~shared.platform.kafka_access.KafkaAccess` (the brokers and the
connection's security), or a bootstrap string for a plaintext broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from prometheus_client import Gauge

from shared.contract.topics import MAX_MESSAGE_BYTES, TOPICS, TopicSpec
from shared.platform.kafka_access import KafkaAccess, kafka_access

log = structlog.get_logger(__name__)


def new_producer(
    kafka: KafkaAccess | str,
    client_id: str,
    *,
    linger_ms: int = 2,
    request_timeout_ms: int = 40_000,
    max_batch_size: int = 16_384,
) -> AIOKafkaProducer:
    """The one producer every service builds (not started): idempotent, ``acks=all``,
    so an acknowledged message is on every in-sync replica and a retried send is
    never written twice."""
    return AIOKafkaProducer(
        **kafka_access(kafka).client_options(),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        request_timeout_ms=request_timeout_ms,
        max_batch_size=max_batch_size,
        max_request_size=MAX_MESSAGE_BYTES,
    )


async def started_producer(
    kafka: KafkaAccess | str, client_id: str, *, linger_ms: int = 2
) -> AIOKafkaProducer:
    """A :func:`new_producer` started, waiting for Kafka while it does not answer (a
    producer whose start failed is closed and a new one made)."""
    while True:
        producer = new_producer(kafka, client_id, linger_ms=linger_ms)
        try:
            await producer.start()
            return producer
        except KafkaConnectionError:
            await stop_producer(producer)
            await until_kafka_answers(kafka, what=client_id)


async def stop_producer(producer: AIOKafkaProducer, *, within: float = 3.0) -> None:
    """Stop the producer, bounded: with Kafka away, ``stop()`` would wait out its
    request timeouts. Whatever it fails on is ignored (shutting down, or replacing
    a producer that failed)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within):
            await producer.stop()


async def ensure_topics(
    kafka: KafkaAccess | str,
    *,
    topics: tuple[TopicSpec, ...] = TOPICS,
    replication_factor: int = 1,
    within: float = 60.0,
) -> list[str]:
    """Create the topics that do not exist yet (return their names), and bring the
    configs of those that do in line without undoing an operator's choices: a
    listed config the topic has no setting of is set, ``max.message.bytes`` is
    raised to at least the listed size, and every other setting of the topic stays."""
    admin = AIOKafkaAdminClient(**kafka_access(kafka).client_options(), request_timeout_ms=10_000)
    async with asyncio.timeout(within):
        await _start_with_retry(admin)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        present = [t for t in topics if t.name in existing]
        if present:
            await _bring_configs_in_line(admin, present)
        if missing:
            # Another process may create them in between: that is the goal too.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            name=t.name,
                            num_partitions=t.partitions,
                            replication_factor=replication_factor,
                            topic_configs=dict(t.configs),
                        )
                        for t in missing
                    ]
                )
        return [t.name for t in missing]
    finally:
        await admin.close()


async def _bring_configs_in_line(admin: AIOKafkaAdminClient, topics: list[TopicSpec]) -> None:
    (answer,) = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t.name, None) for t in topics]
    )
    current: dict[str, dict[str, str]] = {}
    for resource in answer.resources:
        code, message, _kind, name, entries = resource[:5]
        if code:
            raise RuntimeError(f"topic {name}: configs not read: {message} ({code})")
        current[name] = {e[0]: e[1] for e in entries if _set_on_topic(e)}
    changes = []
    for spec in topics:
        wanted = dict(current[spec.name])
        for key, value in spec.configs:
            if key == "max.message.bytes":
                wanted[key] = str(max(int(wanted.get(key, "0")), int(value)))
            else:
                wanted.setdefault(key, value)
        if wanted != current[spec.name]:
            # AlterConfigs replaces a topic's settings: every one it has goes along.
            changes.append(ConfigResource(ConfigResourceType.TOPIC, spec.name, wanted))
            log.info("topic configs set", topic=spec.name, configs=wanted)
    if changes:
        for reply in await admin.alter_configs(changes):
            for code, message, _kind, name in reply.resources:
                if code:
                    raise RuntimeError(f"topic {name}: configs not set: {message} ({code})")


def _set_on_topic(entry: tuple[Any, ...]) -> bool:
    """Whether a DescribeConfigs entry is a setting of the topic itself (v0 says
    is_default; later versions name the source, 1 = the topic's own). A sensitive
    one, whose value is not shown, cannot be carried along: none of a topic's are."""
    if entry[1] is None:
        return False
    if len(entry) == 5:
        return not entry[3]
    return bool(entry[3] == 1)


async def until_kafka_answers(
    kafka: KafkaAccess | str, *, what: str, pause: float = 0.5, longest: float = 10.0
) -> None:
    """Return once the brokers answer a metadata request; until then, try
    again after a pause that grows to ``longest`` seconds, saying so in the log (a
    service started while Kafka is away waits for it rather than exiting)."""
    attempt = 0
    while True:
        client = AIOKafkaClient(**kafka_access(kafka).client_options(), request_timeout_ms=5_000)
        try:
            await client.bootstrap()
            if attempt:
                log.info("kafka answers", what=what, attempts=attempt + 1)
            return
        except KafkaError as exc:
            attempt += 1
            wait = min(pause * 2 ** (attempt - 1), longest)
            report = log.warning if attempt == 1 else log.info
            report(
                "kafka does not answer; waiting", what=what, error=repr(exc)[:200], retry_in=wait
            )
            await asyncio.sleep(wait)
        finally:
            await client.close()


async def _start_with_retry(admin: AIOKafkaAdminClient) -> None:
    delay = 0.2
    while True:
        try:
            await admin.start()
        except Exception:  # noqa: BLE001 (broker still starting: any connect error retries)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            return


class KafkaProbe:
    """A long-lived metadata client for readiness checks: made and bootstrapped on
    first use (inside the running loop), then each check is one metadata request."""

    def __init__(self, kafka: KafkaAccess | str) -> None:
        self._kafka = kafka_access(kafka)
        self._client: AIOKafkaClient | None = None

    async def check(self) -> None:
        if self._client is None:
            client = AIOKafkaClient(**self._kafka.client_options(), request_timeout_ms=3000)
            try:
                await client.bootstrap()
            except BaseException:
                await client.close()
                raise
            self._client = client
        await self._client.fetch_all_metadata()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class LagProbe:
    """Consumer lag of a group on a topic: end offsets minus committed offsets,
    summed over partitions (a partition never committed counts from its start).
    With ``group=None`` it measures how many messages the topic holds."""

    def __init__(self, kafka: KafkaAccess | str, group: str | None, topic: str) -> None:
        self._kafka = kafka_access(kafka)
        self._group = group
        self._topic = topic
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def measure(self) -> int:
        if self._admin is None or self._consumer is None:
            admin = AIOKafkaAdminClient(**self._kafka.client_options())
            consumer = AIOKafkaConsumer(**self._kafka.client_options())
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await admin.close()
                await consumer.stop()
                raise
            self._admin, self._consumer = admin, consumer
        tps = await self._partitions(self._admin, self._consumer)
        if not tps:
            return 0
        ends = await self._consumer.end_offsets(tps)
        starts = await self._consumer.beginning_offsets(tps)
        committed = (
            await self._admin.list_consumer_group_offsets(self._group, partitions=tps)
            if self._group is not None
            else {}
        )
        lag = 0
        for tp in tps:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else starts[tp]
            lag += max(0, ends[tp] - position)
        return lag

    async def _partitions(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer
    ) -> list[TopicPartition]:
        """The topic's partitions, asked of the cluster each time (a topic made or
        grown after the probe started counts). The probe's consumer is assigned them,
        paused: so its client follows their leaders (an unassigned consumer's
        metadata holds no topic at all, and every measure read 0), and fetches nothing."""
        # (A metadata request: a cluster that creates topics on demand would create a
        # missing one; ours must not, deploy/README.md. An error, such as no such
        # topic or no right to it, raises: the gauge keeps its value.)
        (topic,) = await admin.describe_topics([self._topic])
        if topic["error_code"]:
            raise RuntimeError(f"topic {self._topic}: metadata error {topic['error_code']}")
        tps = sorted(TopicPartition(self._topic, p["partition"]) for p in topic["partitions"])
        if set(tps) != consumer.assignment():
            consumer.assign(tps)
            consumer.pause(*tps)
        return tps

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._consumer is not None:
            await self._consumer.stop()
        self._admin = self._consumer = None


async def watch_lag(gauges: Mapping[LagProbe, Gauge], *, interval: float = 5.0) -> None:
    """Set each gauge to its probe's measure every ``interval`` seconds until
    cancelled (a failed measure leaves its gauge as it was), then close the probes."""
    try:
        while True:
            for probe, gauge in gauges.items():
                with contextlib.suppress(Exception):
                    gauge.set(await probe.measure())
            await asyncio.sleep(interval)
    finally:
        for probe in gauges:
            await probe.close()
