"""Scratch databases and topics (benchmarks and tests): named by uuid, dropped after."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.contract.topics import MAX_MESSAGE_BYTES
from tools.migrate import run_dbmate


def with_database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


async def drop_database(admin_url: str, name: str) -> None:
    """Drop, retrying for up to a minute: FORCE terminates the database's backends,
    but a non-superuser may not terminate an autovacuum worker busy in it (a table
    of a few hundred thousand fresh rows gets one); a plain DROP then asks the
    worker to stop, and waits on nothing else once FORCE has had its way."""
    conn = await asyncpg.connect(admin_url)
    try:
        force = True
        for attempt in range(240):
            try:
                option = " WITH (FORCE)" if force else ""
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}"{option}')
            except asyncpg.InsufficientPrivilegeError:
                force = False  # an autovacuum worker: a plain DROP stops it
            except asyncpg.ObjectInUseError:
                if attempt == 239:
                    raise
                force = True
                await asyncio.sleep(0.25)
            else:
                return
        raise RuntimeError(f"database {name} could not be dropped")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, prefix: str = "bench") -> AsyncIterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        url = with_database(admin_url, name)
        run_dbmate(url, "up")
        yield url
    finally:
        await drop_database(admin_url, name)


async def _leaders_elected(admin: AIOKafkaAdminClient, name: str, partitions: int) -> None:
    """Wait (up to 10 s) until every partition of a new topic has a leader, so the
    first produce does not meet NotLeaderForPartition and skew a measurement."""
    for _ in range(100):
        (topic,) = await admin.describe_topics([name])
        parts = topic.get("partitions") or []
        if len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts):
            return
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def scratch_topic(
    bootstrap: str, partitions: int = 12, *, prefix: str = "bench"
) -> AsyncIterator[str]:
    """A topic of its own (messages as large as the project's topics take), deleted
    afterwards."""
    name = f"{prefix}.{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
                )
            ]
        )
        await _leaders_elected(admin, name, partitions)
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()
