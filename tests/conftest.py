"""Test harness: the real PostgreSQL and Kafka of the local stack (or those named by
DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS), a fresh database per test cloned from a
migrated template, and a uuid topic per test.

make test runs the tests two at a time (pytest-xdist workers), then those marked
``serial`` one at a time: nothing here may assume it is the only test running."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import hypothesis
import pytest

from shared.platform import frozen_heap
from shared.platform.db import register_codecs
from shared.platform.kafka import ensure_topics
from tests.procs import ServiceProcess
from tools import localnet
from tools.benchdb import drop_database, scratch_topic, with_database
from tools.migrate import MIGRATIONS, run_dbmate

ROOT = Path(__file__).resolve().parent.parent
DEV_ENV = ROOT / "deploy" / "local" / "dev.env"


def dev_env() -> dict[str, str]:
    """deploy/local/dev.env, with the process environment winning."""
    values: dict[str, str] = {}
    for line in DEV_ENV.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    values.update({k: v for k, v in os.environ.items() if k in values})
    return values


ENV = dev_env()

# Under pytest-xdist each worker hands out ports from a share of its own: a port one
# worker picked for a service not started yet is never another's pick. (A worker
# that replaces a crashed one is numbered on, gw2, gw3...: it takes gw0's or gw1's.)
if (_worker := os.environ.get("PYTEST_XDIST_WORKER", "")).startswith("gw"):
    _slots = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    localnet.PORT_SLOT = (int(_worker[2:]) % _slots, _slots)

# No per-example time limit: a test sharing the cores with another (make test runs
# two at a time) may take longer than Hypothesis's 200 ms on any one example; what
# the tests assert does not depend on it.
hypothesis.settings.register_profile("suite", deadline=None)
hypothesis.settings.load_profile("suite")


def migrations_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    return dict(ENV)


@pytest.fixture(scope="session")
def admin_url() -> str:
    return ENV["DATABASE_URL"]


async def create_dated_database(
    conn: asyncpg.Connection, name: str, *, sweep: str, template: str | None = None
) -> None:
    """Create database ``name`` (a copy of ``template`` when given), its creation
    time in its comment; first drop the databases named ``sweep``… whose comment
    dates them more than a day back (another run may still use a newer one)."""
    for old in await conn.fetch(
        """SELECT datname FROM pg_database
           WHERE datname LIKE $1 || '%'
             AND coalesce(substring(shobj_description(oid, 'pg_database')
                                    FROM '^created ([0-9]+)$')::bigint, 0)
                 < extract(epoch FROM now()) - 86400""",
        sweep,
    ):
        await conn.execute(f'DROP DATABASE IF EXISTS "{old["datname"]}" WITH (FORCE)')
    copy = f' TEMPLATE "{template}"' if template is not None else ""
    await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    await conn.execute(f"COMMENT ON DATABASE \"{name}\" IS 'created {int(time.time())}'")


@pytest.fixture(scope="session")
def template_db(admin_url: str) -> str:
    """A database with every migration applied, named by the migrations' digest,
    so it is built once and rebuilt only when a migration changes."""
    name = f"erc8004_tmpl_{migrations_digest()}"

    async def prepare() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            # One builder at a time (make test's workers start together): the others
            # wait here, then find it built. A clone of a template being migrated
            # would fail or copy half of it.
            await conn.execute("SELECT pg_advisory_lock(hashtext($1))", name)
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists:
                return
            # Built under another name and renamed once migrated: a build cut short
            # (a failure, Ctrl-C, a kill) never leaves a half-migrated template
            # behind under the name the next run would clone. Its leftover is
            # dropped here, under the lock.
            building = f"{name}_wip"
            await conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
            # Templates of other migration sets are dropped once a day old: another
            # checkout (a branch with one more migration) may be testing with one now.
            await create_dated_database(conn, building, sweep="erc8004_tmpl_")
            run_dbmate(with_database(admin_url, building), "up")
            await conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            await conn.close()  # and with it the lock

    asyncio.run(prepare())
    return name


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Nothing frozen from the cyclic GC's sight before the test, nor after it (a
    test of gc.freeze starts from, and leaves, the process as pytest made it; the
    services' own count of it, shared.platform.frozen_heap, with it)."""
    frozen_heap.unfreeze()
    yield
    frozen_heap.unfreeze()


@pytest.fixture
def database_url(admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test (a clone of the template: cheap).
    Tests never see each other's rows, outbox messages or trigger state."""
    name = f"erc8004_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        finally:
            await conn.close()

    asyncio.run(create())
    yield with_database(admin_url, name)
    asyncio.run(drop_database(admin_url, name))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the schema owner to this test's database (JSON decoded, as
    the services' pools do)."""
    conn = await asyncpg.connect(database_url)
    await register_codecs(conn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = ENV["KAFKA_BOOTSTRAP_SERVERS"]
    asyncio.run(ensure_topics(bootstrap))
    return bootstrap


def topic_fixture(name: str, doc: str, prefix: str, partitions: int = 3) -> Any:
    """A fixture ``name``: a fresh topic of the test's own (``prefix``.<uuid>,
    ``partitions``), deleted afterwards."""

    async def fixture(kafka_bootstrap: str) -> AsyncIterator[str]:
        async with scratch_topic(kafka_bootstrap, partitions, prefix=prefix) as created:
            yield created

    fixture.__doc__ = doc
    return pytest.fixture(name=name)(fixture)


topic = topic_fixture("topic", "A fresh topic with 3 partitions, deleted afterwards.", "test")
actions_topic = topic_fixture(
    "actions_topic", "Another one, for what a service under test produces.", "test.actions"
)
retry_topic = topic_fixture("retry_topic", "The dispatcher's retry topic.", "test.retry")
dlq_topic = topic_fixture(
    "dlq_topic", "The dispatcher's dead-letter topic (1 partition).", "test.dlq", partitions=1
)


@pytest.fixture
def procs() -> Iterator[list[ServiceProcess]]:
    """The service processes a test started: killed after it (those still running)."""
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop()


#: ``start_service(name, env)``: see the fixture.
StartService = Callable[[str, dict[str, str]], ServiceProcess]


@pytest.fixture
def start_service(tmp_path: Path, procs: list[ServiceProcess]) -> StartService:
    """Starts ``python -m services.<name>`` with that environment (its log in the
    test's tmp_path) and waits up to 60 s for its /readyz; killed after the test."""

    def start(name: str, env: dict[str, str]) -> ServiceProcess:
        proc = ServiceProcess(name, env, tmp_path).start()
        procs.append(proc)
        proc.wait_http("/readyz", timeout=60)
        return proc

    return start


@dataclass
class UnderTest:
    """A service under test: its environment, processes of it started on demand
    (start_service), the Kafka it reads and writes."""

    #: which (services.<name>)
    name: ClassVar[str]
    env: dict[str, str]
    bootstrap: str
    start_service: StartService

    def start(self, **extra: str) -> ServiceProcess:
        """A process of it with ``extra`` over its environment, once ready."""
        return self.start_service(self.name, {**self.env, **extra})
