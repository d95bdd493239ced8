"""tools.migrate's topics against the real broker: missing topics are created with
their configs, and an existing topic's configs are set to the listed ones (how an
upgrade's larger max.message.bytes reaches topics created by an earlier release)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.contract.topics import TopicSpec
from shared.platform.kafka import ensure_topics

pytestmark = [pytest.mark.kafka]


async def topic_configs(bootstrap: str, name: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (answer,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, None)]
        )
        (resource,) = answer.resources
        return {entry[0]: entry[1] for entry in resource[4]}
    finally:
        await admin.close()


async def test_topics_are_created_and_their_configs_kept_in_line(kafka_bootstrap: str) -> None:
    name = f"test.topics.{uuid.uuid4().hex}"
    old = TopicSpec(name, 2, (("retention.ms", "3600000"),))
    assert await ensure_topics(kafka_bootstrap, topics=(old,)) == [name]
    before = await topic_configs(kafka_bootstrap, name)
    assert before["retention.ms"] == "3600000"
    assert before["max.message.bytes"] != "8388608"

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # An operator's own settings of the topic.
        own = {"retention.ms": "5400000", "segment.bytes": "104857600"}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, own)])
        new = TopicSpec(
            name,
            2,
            (
                ("retention.ms", "7200000"),
                ("max.message.bytes", "8388608"),
                ("cleanup.policy", "delete"),
            ),
        )
        assert await ensure_topics(kafka_bootstrap, topics=(new,)) == []  # none created
        after = await topic_configs(kafka_bootstrap, name)
        assert after["max.message.bytes"] == "8388608"  # raised to the release's size
        assert after["cleanup.policy"] == "delete"  # not set before: set
        assert after["retention.ms"] == "5400000"  # the operator's choices stay
        assert after["segment.bytes"] == "104857600"
        # A larger size chosen by the operator is not lowered.
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, name, {**own, "max.message.bytes": "16777216"}
                )
            ]
        )
        await ensure_topics(kafka_bootstrap, topics=(new,))
        assert (await topic_configs(kafka_bootstrap, name))["max.message.bytes"] == "16777216"
    finally:
        await admin.delete_topics([name])
        await admin.close()
