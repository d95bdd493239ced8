"""Helpers for tests of ingest in process: its settings against the test's database
and topic, an indexer's token, a test client of the app (the relay runs in it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings

TOKEN = "test-indexer-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[web.Request, web.Application]


def settings_for(database_url: str, bootstrap: str, topic: str) -> IngestSettings:
    return IngestSettings(
        database_url=SecretStr(database_url),
        kafka_bootstrap_servers=bootstrap,
        ingest_tokens=(SecretStr("other-token"), SecretStr(TOKEN)),
        events_topic=topic,
        relay_poll_interval=0.2,
        ops_port=0,
    )


@asynccontextmanager
async def ingest_client(settings: IngestSettings) -> AsyncIterator[Client]:
    """Ingest with these settings on a local port, and a client of it."""
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as client:
        yield client
