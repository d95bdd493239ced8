"""Overlapping batches (shared.platform.stream.Handoff with ``overlap``), against real
Kafka: the next batch begins while the one before it ends, and still no offset is
committed past a record whose batch has not ended well.

One partition, batches of 10 records (A = 0..9, B = 10..19, C = 20..29). Each batch's
handler returns what is left of the batch as an awaitable the test controls; the
group's committed offset is read with an admin client (not a member: reading it does
not rebalance the group).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from shared.platform.stream import Handoff, batch_subscriber

pytestmark = [pytest.mark.kafka]

BATCH = 10


@dataclass
class Scene:
    """What the handler saw, and the ends of the batches the test holds."""

    #: the first record of each batch begun, in order
    begun: list[int] = field(default_factory=list)
    #: each batch's end (by its first record): the test sets or fails it
    ends: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    #: batches (by first record) whose end the test holds; the others end at once
    held: set[int] = field(default_factory=set)

    async def handle(self, bodies: list[bytes]) -> Awaitable[None]:
        first = int(bodies[0])
        self.begun.append(first)
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if first in self.held:
            self.ends[first] = end
        else:
            end.set_result(None)
        return end

    async def begun_count(self, n: int) -> None:
        async with asyncio.timeout(30):
            while len(self.begun) < n:
                await asyncio.sleep(0.02)


async def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, str(i).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(topic, 0))
    return None if meta is None or meta.offset < 0 else meta.offset


async def committed_becomes(bootstrap: str, group: str, topic: str, want: int) -> None:
    async with asyncio.timeout(30):
        while await committed(bootstrap, group, topic) != want:
            await asyncio.sleep(0.1)


@asynccontextmanager
async def consuming(bootstrap: str, topic: str, scene: Scene) -> AsyncIterator[str]:
    group = f"{topic}.overlap"
    broker = KafkaBroker(bootstrap, graceful_timeout=10)
    batch_subscriber(
        broker,
        topic,
        group_id=group,
        max_records=BATCH,
        handoff=Handoff("overlap", limit=15.0, overlap=1),
        handle=scene.handle,
        fetch_max_wait_ms=25,
    )
    await broker.start()
    try:
        yield group
    finally:
        for end in scene.ends.values():  # nothing left waiting at the broker's stop
            if not end.done():
                end.set_result(None)
        await broker.stop()


async def test_the_next_batch_begins_while_one_ends_and_commits_wait_for_it(
    kafka_bootstrap: str, topic: str
) -> None:
    scene = Scene(held={0, 10})
    await produce(kafka_bootstrap, topic, 3 * BATCH)
    async with consuming(kafka_bootstrap, topic, scene) as group:
        await scene.begun_count(2)
        # B began while A was still ending; C waits: one batch ends at a time beside it
        await asyncio.sleep(0.5)
        assert scene.begun == [0, 10]
        assert await committed(kafka_bootstrap, group, topic) is None
        # B ends first: nothing is committed past A, which has not ended
        scene.ends[10].set_result(None)
        await asyncio.sleep(0.5)
        assert await committed(kafka_bootstrap, group, topic) is None
        scene.ends[0].set_result(None)
        await committed_becomes(kafka_bootstrap, group, topic, 3 * BATCH)
        assert scene.begun == [0, 10, 20]


async def test_a_batch_that_fails_while_the_next_one_runs_is_fetched_again_with_it(
    kafka_bootstrap: str, topic: str
) -> None:
    scene = Scene(held={0})
    await produce(kafka_bootstrap, topic, 3 * BATCH)
    async with consuming(kafka_bootstrap, topic, scene) as group:
        await scene.begun_count(2)
        await asyncio.sleep(0.3)
        assert scene.begun == [0, 10]
        # B ended well, but A fails: neither is committed, both are fetched again
        first_a = scene.ends[0]
        first_a.set_exception(ConnectionError("database away"))
        await scene.begun_count(4)
        await asyncio.sleep(0.5)
        assert scene.begun == [0, 10, 0, 10]  # A again (held), then B again beside it
        assert await committed(kafka_bootstrap, group, topic) is None
        scene.ends[0].set_result(None)
        await committed_becomes(kafka_bootstrap, group, topic, 3 * BATCH)
        assert scene.begun == [0, 10, 0, 10, 20]
