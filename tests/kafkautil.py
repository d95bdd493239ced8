"""Kafka in tests: reading a topic back (every partition from the start, no
consumer group), deleting a topic, OAUTHBEARER tokens the local broker accepts."""

from __future__ import annotations

import asyncio
import base64
import json
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

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


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


#: How many tokens :func:`unsecured_token` made (a token hook's calls, counted).
TOKENS_MADE = 0


def _b64(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def unsecured_token(subject: str = "erc8004-hook", *, scope: str = "kafka") -> str:
    """An unsigned JWT ("alg": "none") as the local broker's OAUTHBEARER listener
    takes it (Kafka's unsecured validator, requiring the scope ``kafka``): the
    stand-in for an identity provider's token. Also the token hook of the tests
    (KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER=tests.kafkautil:unsecured_token)."""
    global TOKENS_MADE  # noqa: PLW0603 (a counter the tests read)
    TOKENS_MADE += 1
    now = int(time.time())
    claims = {"sub": subject, "scope": scope, "iat": now, "exp": now + 3600}
    return f"{_b64({'alg': 'none'})}.{_b64(claims)}."
