"""Scratch databases and topics (benchmarks and tests): named by uuid, dropped after."""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tools.migrate import run_dbmate


def with_database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, prefix: str = "bench") -> AsyncIterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(admin_url, name)
        run_dbmate(url, "up")
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def scratch_topic(
    bootstrap: str, partitions: int = 12, *, prefix: str = "bench"
) -> AsyncIterator[str]:
    """A topic of its own, deleted afterwards."""
    name = f"{prefix}.{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()
