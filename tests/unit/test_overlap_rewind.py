"""Overlapping batches' rewinds (shared.platform.stream.Handoff with ``overlap``), on a
stand-in for aiokafka's consumer that keeps only positions, so that an interleaving
that real Kafka shows only by chance is played exactly: two batches failing one after
the other, with a batch fetched in between waiting for room. (The same mode against
real Kafka: tests/connected/test_overlap.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka.message import KafkaMessage

from shared.platform.stream import Handoff

pytestmark = pytest.mark.unit

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


class Positions:
    """What Handoff reads of aiokafka's consumer: the assignment, each partition's
    consumed position (also through its subscription state, read without awaiting),
    seek and commit."""

    def __init__(self, positions: dict[TopicPartition, int]) -> None:
        self.positions = positions
        self.commits: list[dict[TopicPartition, int]] = []
        state = SimpleNamespace(state_value=self._state)
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=state))

    def _state(self, tp: TopicPartition) -> Any:
        return SimpleNamespace(position=self.positions[tp], has_valid_position=True)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def fetched(self, batch: KafkaMessage) -> KafkaMessage:
        """The consumer's position after ``getmany`` returned ``batch``."""
        for record in cast(tuple[ConsumerRecord[Any, Any], ...], batch.raw_message):
            tp = TopicPartition(record.topic, record.partition)
            self.positions[tp] = max(self.positions[tp], record.offset + 1)
        return batch


def batch(consumer: Positions, *ranges: tuple[TopicPartition, range]) -> KafkaMessage:
    records = tuple(
        ConsumerRecord(tp.topic, tp.partition, i, 0, 0, None, b"", None, 0, 0, [])
        for tp, offsets in ranges
        for i in offsets
    )
    return cast(KafkaMessage, SimpleNamespace(raw_message=records, consumer=consumer))


def ending(rest: asyncio.Future[None] | None, begun: list[str], name: str) -> Callable[[], Any]:
    async def start() -> Awaitable[None] | None:
        begun.append(name)
        return rest

    return start


async def settle_loop() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_batch_skipped_because_a_rewind_went_into_it_is_rewound_to_its_start() -> None:
    """W and X end together; W fails (both partitions back to 0); Y (p1 again) begins,
    Z (p0 0..9) is fetched and waits for room; then X fails and rewinds p0 to 5, into
    Z. Z is stale, but p0's records 0..4 were handled by nobody since W failed: Z's
    skip must take p0 back to 0, or they are lost when a later batch commits p0."""
    loop = asyncio.get_running_loop()
    consumer = Positions({P0: 0, P1: 0})
    handoff = Handoff("test", limit=5.0, overlap=1)
    begun: list[str] = []
    w_end, x_end = loop.create_future(), loop.create_future()
    await handoff.begin(consumer.fetched(batch(consumer, (P0, range(5)), (P1, range(5)))),
                        ending(w_end, begun, "W"))  # fmt: skip
    await handoff.begin(
        consumer.fetched(batch(consumer, (P0, range(5, 10)), (P1, range(5, 10)))),
        ending(x_end, begun, "X"),
    )
    w_end.set_exception(ConnectionError("database away"))
    await settle_loop()
    assert consumer.positions == {P0: 0, P1: 0}
    assert consumer.commits == []
    await handoff.begin(consumer.fetched(batch(consumer, (P1, range(10)))),
                        ending(None, begun, "Y"))  # fmt: skip
    z = asyncio.create_task(
        handoff.begin(consumer.fetched(batch(consumer, (P0, range(10)))), ending(None, begun, "Z"))
    )
    await settle_loop()
    assert not z.done(), "Z should wait for room: X and Y are ending"
    x_end.set_exception(ConnectionError("database away"))
    await z
    assert begun == ["W", "X", "Y"]  # Z skipped: p0 stands inside it
    assert consumer.positions[P0] == 0, "p0 records 0..4 would never be fetched again"
    assert consumer.commits == []  # nothing begun before X failed is committed


async def test_a_stale_batch_never_moves_its_partition_forward() -> None:
    """A batch fetched before its partition restarted from an earlier committed offset
    (a rebalance): skipped, and the partition stays where it restarted."""
    consumer = Positions({P0: 20})
    handoff = Handoff("test", limit=5.0, overlap=1)
    begun: list[str] = []
    stale = batch(consumer, (P0, range(20, 30)))
    consumer.positions[P0] = 12  # restarted from the committed offset
    await handoff.begin(stale, ending(None, begun, "S"))
    assert begun == []
    assert consumer.positions[P0] == 12


async def test_batches_commit_in_order_each_its_own_offsets() -> None:
    loop = asyncio.get_running_loop()
    consumer = Positions({P0: 0, P1: 0})
    handoff = Handoff("test", limit=5.0, overlap=1)
    begun: list[str] = []
    a_end = loop.create_future()
    await handoff.begin(consumer.fetched(batch(consumer, (P0, range(5)))),
                        ending(a_end, begun, "A"))  # fmt: skip
    await handoff.begin(consumer.fetched(batch(consumer, (P1, range(7)))),
                        ending(None, begun, "B"))  # fmt: skip
    await settle_loop()
    assert consumer.commits == []  # B ended, but after A, which has not
    a_end.set_result(None)
    assert await handoff.settle(5.0)
    assert consumer.commits == [{P0: 5}, {P1: 7}]
