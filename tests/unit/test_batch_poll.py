"""The batch subscribers' poll (shared.platform.stream.batch_subscriber): it waits in
aiokafka's ``getmany`` only, never naps after an empty poll (FastStream's own poll
sleeps ``batch_timeout_ms`` again, which delayed a record reaching an idle consumer),
and hands on every record it got, partition by partition as ``getmany`` returned
them. Also through FastStream's own consume loop, so that a renamed call there
cannot bring the nap back unseen."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError
from faststream.kafka import KafkaBroker

from shared.platform import stream
from shared.platform.stream import IDLE_POLL_MS, Handoff, batch_subscriber

pytestmark = pytest.mark.unit


class FakeConsumer:
    """``getmany`` as aiokafka's: what is buffered, or nothing once the wait is over
    (here at once: the test must not depend on the clock)."""

    def __init__(self, batches: list[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]]):
        self.batches = batches
        self.calls: list[dict[str, Any]] = []

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        self.calls.append(kwargs)
        return self.batches.pop(0) if self.batches else {}


def record(partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        "t", partition, offset, 0, 0, None, f"{partition}:{offset}".encode(), None, 0, 0, []
    )


def subscriber(max_records: int = 7) -> Any:
    broker = KafkaBroker("127.0.0.1:1")

    async def handle(bodies: list[bytes]) -> None:
        return None

    batch_subscriber(
        broker,
        "t",
        group_id="g",
        max_records=max_records,
        handoff=Handoff("test", limit=5.0),
        handle=handle,
    )
    (sub,) = broker.subscribers
    return sub


async def test_an_empty_poll_does_not_nap(monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []

    async def nap(seconds: float) -> None:
        naps.append(seconds)

    # FastStream's own poll naps with anyio.sleep after an empty getmany.
    monkeypatch.setattr(anyio, "sleep", nap)
    monkeypatch.setattr(asyncio, "sleep", nap)
    consumer = FakeConsumer([])
    sub = subscriber(max_records=7)
    for _ in range(3):
        assert await sub.get_msg(consumer) == ()
    assert naps == []
    assert consumer.calls == [{"timeout_ms": IDLE_POLL_MS, "max_records": 7}] * 3


async def test_every_record_of_a_poll_is_handed_on_as_getmany_returned_it() -> None:
    first = {
        TopicPartition("t", 0): [record(0, 5), record(0, 6)],
        TopicPartition("t", 2): [record(2, 1)],
    }
    second = {TopicPartition("t", 1): [record(1, 9)]}
    consumer = FakeConsumer([first, {}, second])
    sub = subscriber()
    got = [await sub.get_msg(consumer) for _ in range(3)]
    assert [[r.value for r in batch] for batch in got] == [
        [b"0:5", b"0:6", b"2:1"],
        [],
        [b"1:9"],
    ]


def test_a_subscriber_of_another_shape_is_refused_at_start() -> None:
    broker = KafkaBroker("127.0.0.1:1")
    single = broker.subscriber("t", group_id="g")  # one record at a time, not batches
    with pytest.raises(TypeError, match="batch subscriber"):
        stream._poll_without_nap(single, 10)


class StoppingConsumer(FakeConsumer):
    """Stops (as a stopped aiokafka consumer does) once its batches are used up."""

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        if not self.batches:
            raise ConsumerStoppedError
        return await super().getmany(**kwargs)


async def test_faststreams_consume_loop_polls_without_napping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    naps: list[float] = []

    async def nap(seconds: float) -> None:
        naps.append(seconds)

    monkeypatch.setattr(anyio, "sleep", nap)
    monkeypatch.setattr(asyncio, "sleep", nap)
    consumer = StoppingConsumer([{}, {}, {TopicPartition("t", 0): [record(0, 1)]}, {}])
    sub = subscriber()
    handed: list[tuple[Any, ...]] = []

    async def consume_one(msg: tuple[Any, ...]) -> None:
        handed.append(msg)

    sub.consume_one = consume_one
    sub.running = True
    async with asyncio.timeout(5):
        await sub._run_consume_loop(consumer)  # returns when the consumer stops
    assert [[r.value for r in batch] for batch in handed] == [[b"0:1"]]
    assert naps == []
    assert len(consumer.calls) == 4
