"""Reading a topic back in tests: every partition from the start, no consumer group."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.contract.topics import MAX_MESSAGE_BYTES


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, within: float = 30.0, settle: float = 1.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Records of ``topic`` until ``expect`` arrived (or ``within`` seconds passed),
    then ``settle`` seconds more, so that extra (duplicate) records show too."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + within
        while not partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} has no partitions")
            await asyncio.sleep(0.1)
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if settle_until is None and (len(records) >= expect or now > deadline):
                settle_until = now + settle
            if settle_until is not None and now > settle_until:
                return records
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
