"""Partitions change hands between batches (shared.platform.stream.Handoff), against real Kafka.

A consumer is in the middle of a slow batch when a second one joins its group: the
first must finish and commit that batch before giving partitions up, so no record
is handled by both. The same scene without the hand-over is run as a control: it
must show the double handling, or the test proves nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.platform.stream import Handoff

pytestmark = [pytest.mark.kafka, pytest.mark.serial]

RECORDS = 60


async def produce(bootstrap: str, topic: str, start: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(start, start + RECORDS):
            await producer.send(topic, str(i).encode(), partition=i % 3)
        await producer.flush()
    finally:
        await producer.stop()


def member(
    bootstrap: str,
    topic: str,
    group: str,
    seen: list[tuple[str, int]],
    name: str,
    handoff: Handoff | None,
    slow: asyncio.Event,
    in_slow_batch: asyncio.Event,
) -> KafkaBroker:
    broker = KafkaBroker(bootstrap, graceful_timeout=10)

    async def work(bodies: list[bytes]) -> None:
        if slow.is_set() and name == "one":
            in_slow_batch.set()
            await asyncio.sleep(4.0)  # the second member joins meanwhile
            slow.clear()
        seen.extend((name, int(b)) for b in bodies)

    @broker.subscriber(
        topic,
        group_id=group,
        batch=True,
        max_records=RECORDS,
        batch_timeout_ms=25,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=300,
        decoder=raw,
        ack_policy=AckPolicy.MANUAL if handoff is not None else AckPolicy.NACK_ON_ERROR,
        listener=handoff,
    )
    async def on_batch(bodies: list[bytes], batch: KafkaMessage) -> None:
        if handoff is None:
            await work(bodies)
            return
        async with handoff.batch(batch) as current:
            if current:
                await work(bodies)

    return broker


async def raw(msg: Any) -> list[bytes]:
    records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
    return [r.value for r in records]


async def scene(bootstrap: str, topic: str, *, handed_over: bool) -> list[tuple[str, int]]:
    group = f"{topic}.group"
    seen: list[tuple[str, int]] = []
    slow, in_slow_batch = asyncio.Event(), asyncio.Event()
    handoffs = [Handoff(n, limit=15.0) if handed_over else None for n in ("one", "two")]
    one = member(bootstrap, topic, group, seen, "one", handoffs[0], slow, in_slow_batch)
    two = member(bootstrap, topic, group, seen, "two", handoffs[1], slow, in_slow_batch)
    await one.start()
    try:
        await produce(bootstrap, topic, 0)
        async with asyncio.timeout(30):
            while len(seen) < RECORDS:
                await asyncio.sleep(0.05)
        slow.set()
        await produce(bootstrap, topic, RECORDS)
        async with asyncio.timeout(30):
            await in_slow_batch.wait()
        await two.start()
        async with asyncio.timeout(60):
            while len({i for _, i in seen}) < 2 * RECORDS:
                await asyncio.sleep(0.05)
        # A third round after the rebalance: both members own partitions now.
        await produce(bootstrap, topic, 2 * RECORDS)
        async with asyncio.timeout(60):
            while len({i for _, i in seen}) < 3 * RECORDS:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # whatever else either would handle
    finally:
        await two.stop()
        await one.stop()
    return seen


def handled_twice(seen: list[tuple[str, int]]) -> list[int]:
    """The records handled more than once (each one is handled at least once)."""
    handled = [i for _, i in seen]
    assert sorted(set(handled)) == list(range(3 * RECORDS)), "a record was never handled"
    return sorted(i for i in set(handled) if handled.count(i) > 1)


@pytest.mark.slow
async def test_a_batch_in_flight_is_finished_before_its_partitions_move(
    kafka_bootstrap: str, topic: str
) -> None:
    seen = await scene(kafka_bootstrap, topic, handed_over=True)
    twice = handled_twice(seen)
    assert twice == [], f"handled twice across the rebalance: {twice}"
    assert {n for n, _ in seen} == {"one", "two"}, "the second member never got a partition"


@pytest.mark.slow
async def test_control_without_the_handoff_the_batch_is_handled_twice(
    kafka_bootstrap: str, topic: str
) -> None:
    seen = await scene(kafka_bootstrap, topic, handed_over=False)
    assert handled_twice(seen), (
        "the control shows no double handling: the scene does not test the hand-over"
    )
