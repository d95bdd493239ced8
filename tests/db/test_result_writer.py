"""The dispatcher's ResultWriter across a PostgreSQL crash: an attempt already made is
recorded once the database is back, instead of failing its batch (which would be
redelivered and the attempt made again)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid

import asyncpg
import pytest

from services.dispatcher.results import ResultWriter
from shared.platform.db import create_pool, register_codecs
from tests.matcherutil import insert_user
from tests.procs import ROOT

pytestmark = [
    pytest.mark.serial,
    pytest.mark.db,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("LOCAL_DB", "1" if "DATABASE_URL" not in os.environ else "0") != "1",
        reason="crashes the local cluster; an external one is not ours",
    ),
]

POSTGRES = ROOT / "deploy" / "local" / "postgres.sh"


def row(job: str, user: str) -> tuple[object, ...]:
    return (
        job, None, "8453-1-0", user, "rest", "success", 12, None, None, 0, 1, None,
        f"8453-1-0@0x{'a' * 64}", 3,
    )  # fmt: skip


async def test_a_result_written_during_a_crash_is_recorded_when_the_database_is_back(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    user = await insert_user(conn)
    await conn.close()
    pool = await create_pool(database_url, application_name="test-writer", min_size=1)
    writer = ResultWriter(pool, patience=30.0)
    job = uuid.uuid4().hex
    stop_env = {**os.environ, "PG_STOP_MODE": "immediate"}
    await asyncio.to_thread(subprocess.run, [str(POSTGRES), "stop"], check=True, env=stop_env)
    try:
        writing = asyncio.create_task(writer.write(row(job, user)))
        await asyncio.sleep(2.0)
        assert not writing.done(), "the write gave up while the database was down"
    finally:
        await asyncio.to_thread(subprocess.run, [str(POSTGRES), "start"], check=True)
    try:
        async with asyncio.timeout(30):
            await writing
        conn = await asyncpg.connect(database_url)
        await register_codecs(conn)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM action_results WHERE job_id = $1", job
            )
        finally:
            await conn.close()
        assert count == 1

        # out of patience: the waiter learns of the failure
        impatient = ResultWriter(pool, patience=0.5)
        await asyncio.to_thread(subprocess.run, [str(POSTGRES), "stop"], check=True, env=stop_env)
        try:
            with pytest.raises(Exception) as info:  # noqa: PT011 (whatever the driver raises)
                await impatient.write(row(uuid.uuid4().hex, user))
            assert not isinstance(info.value, AssertionError)
        finally:
            await asyncio.to_thread(subprocess.run, [str(POSTGRES), "start"], check=True)
    finally:
        await pool.close()
