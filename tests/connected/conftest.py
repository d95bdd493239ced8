"""Fixtures of the connected tests: the matcher under test (tests.matcherutil.Matching),
ingest in process (tests.ingestutil), a chain of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.conftest import StartService
from tests.dispatcherutil import Dispatch
from tests.ingestutil import Client, ingest_client, settings_for
from tests.matcherutil import Matching, random_chain


@pytest.fixture
def matcher_env(
    env: dict[str, str], database_url: str, topic: str, actions_topic: str
) -> dict[str, str]:
    """A matcher's environment: this test's database, ``topic`` for events,
    ``actions_topic`` for jobs, a consumer group of its own."""
    return {
        **env,
        "DATABASE_URL": database_url,
        "EVENTS_TOPIC": topic,
        "ACTIONS_TOPIC": actions_topic,
        "MATCHER_GROUP": f"matcher-{uuid.uuid4().hex[:8]}",
        "MATCHER_BATCH_MAX_RECORDS": "50",
    }


@pytest.fixture
def stack_env(
    env: dict[str, str],
    database_url: str,
    topic: str,
    actions_topic: str,
    retry_topic: str,
    dlq_topic: str,
) -> dict[str, str]:
    """The environment of a matcher and a dispatcher of this test's own: its
    database, its four topics, consumer groups of its own and no Telegram polling
    (another test may run a matcher or a dispatcher at the same time)."""
    run = uuid.uuid4().hex[:8]
    return {
        **env,
        "DATABASE_URL": database_url,
        "EVENTS_TOPIC": topic,
        "ACTIONS_TOPIC": actions_topic,
        "ACTIONS_RETRY_TOPIC": retry_topic,
        "ACTIONS_DLQ_TOPIC": dlq_topic,
        "TELEGRAM_UPDATES_POLL": "0",
        "MATCHER_GROUP": f"matcher-{run}",
        "DISPATCHER_GROUP": f"dispatcher-{run}",
    }


@pytest.fixture
def matcher(
    matcher_env: dict[str, str], kafka_bootstrap: str, start_service: StartService
) -> Matching:
    return Matching(matcher_env, kafka_bootstrap, start_service)


@pytest.fixture
def chain() -> int:
    """A chain id of this test alone."""
    return random_chain(10_000_000)


@pytest.fixture
async def ingest(database_url: str, kafka_bootstrap: str, topic: str) -> AsyncIterator[Client]:
    """Ingest in process (tests.ingestutil.settings_for: relaying to ``topic``), and a
    client of it."""
    async with ingest_client(settings_for(database_url, kafka_bootstrap, topic)) as client:
        yield client


@pytest.fixture
def dispatcher_env(
    env: dict[str, str],
    database_url: str,
    actions_topic: str,
    retry_topic: str,
    dlq_topic: str,
) -> dict[str, str]:
    return {
        **env,
        "DATABASE_URL": database_url,
        "ACTIONS_TOPIC": actions_topic,
        "ACTIONS_RETRY_TOPIC": retry_topic,
        "ACTIONS_DLQ_TOPIC": dlq_topic,
        "DISPATCHER_GROUP": f"dispatcher-{uuid.uuid4().hex[:8]}",
        "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_CAP": "1",
        "BREAKER_THRESHOLD": "50",
        # The bot's updates are read only by the tests of chat linking.
        "TELEGRAM_UPDATES_POLL": "0",
    }


@pytest.fixture
def dispatcher(
    dispatcher_env: dict[str, str], kafka_bootstrap: str, start_service: StartService
) -> Dispatch:
    return Dispatch(dispatcher_env, kafka_bootstrap, start_service)
