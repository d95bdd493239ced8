"""The migrations in db/migrations on the real PostgreSQL: up and down, notifications,
append-only events, roles, row-level security, partitions and the global uniqueness
of event ids.

Standalone: needs only asyncpg, dbmate and the cluster of DATABASE_URL (default: the
local stack's). Every database used here is a uuid-named scratch database, dropped
afterwards; db/schema.sql is never rewritten (dbmate runs with --no-dump-schema).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from tools.benchdb import with_database
from tools.migrate import dbmate_binary

pytestmark = [pytest.mark.db, pytest.mark.xdist_group("migrations")]

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "db" / "migrations"
DEFAULT_URL = "postgresql://erc8004:erc8004-dev@127.0.0.1:5432/erc8004_backend"
ROLES = ("erc8004_ingest", "erc8004_matcher", "erc8004_dispatcher", "erc8004_api")
NOTIFY_WAIT = 5.0  # seconds to wait for a notification that should come
NOTIFY_SETTLE = 0.3  # seconds to wait for notifications that should NOT come


# --------------------------------------------------------------------------- helpers


def admin_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_URL


def dbmate(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.setdefault("sslmode", "disable")
    dbmate_url = urllib.parse.urlunsplit(
        ("postgres", parts.netloc, parts.path, urllib.parse.urlencode(query), "")
    )
    cmd = [
        dbmate_binary(),
        "--url",
        dbmate_url,
        "--migrations-dir",
        str(MIGRATIONS),
        "--no-dump-schema",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"dbmate {' '.join(args)} failed:\n{result.stderr}"
    return result


async def _admin_execute(sql: str) -> None:
    conn = await asyncpg.connect(admin_url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database() -> tuple[str, str]:
    name = f"erc8004_migtest_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    return name, with_database(admin_url(), name)


def drop_database(name: str) -> None:
    asyncio.run(_drop(name))


async def _drop(name: str, patience: float = 20.0) -> None:
    """DROP ... WITH (FORCE), again while it is refused for a backend that the admin
    may not end: a closed connection's backend still exiting (seen once under two
    test workers). Beyond ``patience`` the refusal is raised with who is connected."""
    conn = await asyncpg.connect(admin_url())
    try:
        give_up = time.monotonic() + patience
        while True:
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except asyncpg.InsufficientPrivilegeError as exc:
                if time.monotonic() > give_up:
                    rows = await conn.fetch(
                        "SELECT pid, usename, application_name, backend_type, state "
                        "FROM pg_stat_activity WHERE datname = $1",
                        name,
                    )
                    raise AssertionError(f"{exc}; connected: {[dict(r) for r in rows]}") from exc
                await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def insert_events(
    conn: asyncpg.Connection, rows: list[tuple[str, int]], *, chain_id: int = 1
) -> int:
    """Insert events (id, unix timestamp) the way ingest does, in ONE statement:
    register the ids in event_ids, store only the new ones. Returns how many stored."""
    status = await conn.execute(
        """
        WITH input AS (
            SELECT * FROM unnest($1::text[], $2::bigint[]) AS r(id, ts)
        ), new_ids AS (
            INSERT INTO event_ids (id, block_time)
            SELECT id, to_timestamp(ts) FROM input
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        )
        INSERT INTO events (id, chain_id, block_number, block_hash, transaction_hash,
                            log_index, registry, event_type, agent_id, "timestamp",
                            block_time)
        SELECT i.id, $3, 1, '0x' || repeat('a', 64), '0x' || repeat('b', 64), 0,
               'identity', 'Registered', 42, i.ts, to_timestamp(i.ts)
        FROM input i JOIN new_ids USING (id)
        """,
        [r[0] for r in rows],
        [r[1] for r in rows],
        chain_id,
    )
    return int(status.split()[-1])


async def public_objects(conn: asyncpg.Connection) -> dict[str, set[str]]:
    relations = await conn.fetch(
        """
        SELECT c.relname, c.relkind::text AS relkind FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'i', 'I', 'S')
        """
    )
    functions = await conn.fetch(
        """
        SELECT p.oid::regprocedure::text AS name FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        LEFT JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
        WHERE n.nspname = 'public' AND d.objid IS NULL
        """
    )
    triggers = await conn.fetch(
        "SELECT tgrelid::regclass::text || '.' || tgname AS name FROM pg_trigger"
        " WHERE NOT tgisinternal"
    )
    policies = await conn.fetch("SELECT tablename || '.' || policyname AS name FROM pg_policies")
    return {
        "tables": {r["relname"] for r in relations if r["relkind"] in ("r", "p")},
        "views": {r["relname"] for r in relations if r["relkind"] in ("v", "m")},
        "indexes": {r["relname"] for r in relations if r["relkind"] in ("i", "I")},
        "sequences": {r["relname"] for r in relations if r["relkind"] == "S"},
        "functions": {r["name"] for r in functions},
        "triggers": {r["name"] for r in triggers},
        "policies": {r["name"] for r in policies},
    }


class Listener:
    """Notifications of one channel, collected in a queue."""

    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def _on(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.queue.put_nowait(str(payload))

    async def __aenter__(self) -> Listener:
        await self.conn.add_listener(self.channel, self._on)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.conn.remove_listener(self.channel, self._on)

    async def next(self) -> str:
        async with asyncio.timeout(NOTIFY_WAIT):
            return await self.queue.get()

    async def rest(self) -> list[str]:
        """Whatever else arrives within NOTIFY_SETTLE seconds."""
        await asyncio.sleep(NOTIFY_SETTLE)
        extra = []
        while not self.queue.empty():
            extra.append(self.queue.get_nowait())
        return extra


async def as_role(conn: asyncpg.Connection, role: str, sql: str, *args: object) -> str:
    """Run one statement as ``role`` (SET LOCAL ROLE in a transaction of its own)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        return await conn.execute(sql, *args)


def month_start(dt: datetime, shift: int) -> datetime:
    index = dt.year * 12 + dt.month - 1 + shift
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def migrated_url() -> Iterator[str]:
    """One database with every migration applied, for the tests of this module that
    do not roll back (each uses its own ids and users)."""
    name, url = create_database()
    try:
        dbmate(url, "up")
        yield url
    finally:
        drop_database(name)


@pytest.fixture
def fresh_url() -> Iterator[str]:
    """An empty database of the test's own."""
    name, url = create_database()
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture
async def db(migrated_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the schema owner."""
    conn = await asyncpg.connect(migrated_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def db2(migrated_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A second connection as the schema owner (the listener side)."""
    conn = await asyncpg.connect(migrated_url)
    try:
        yield conn
    finally:
        await conn.close()


# --------------------------------------------------------------------------- (a) up/down


async def test_up_rollback_to_nothing_and_up_again(fresh_url: str) -> None:
    conn = await asyncpg.connect(fresh_url)
    try:
        extensions_sql = "SELECT array_agg(extname ORDER BY extname) FROM pg_extension"
        extensions_before = await conn.fetchval(extensions_sql)
        dbmate(fresh_url, "up")
        first = await public_objects(conn)
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert applied == len(list(MIGRATIONS.glob("*.sql")))
        assert {
            "users", "api_keys", "triggers", "trigger_conditions", "trigger_actions",
            "trigger_state", "trigger_evaluations", "events", "events_default", "event_ids",
            "event_outbox", "reorgs", "checkpoints", "action_results", "agent_mcp_tokens",
        } <= first["tables"]  # fmt: skip
        assert {"events_hourly", "action_metrics_hourly"} <= first["views"]

        for _ in range(applied + 1):
            if await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0:
                break
            dbmate(fresh_url, "rollback")
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
        empty = await public_objects(conn)
        assert empty["tables"] == {"schema_migrations"}
        assert empty["views"] == empty["functions"] == empty["policies"] == set()
        assert empty["sequences"] == set()
        assert await conn.fetchval(extensions_sql) == extensions_before

        dbmate(fresh_url, "up")
        assert await public_objects(conn) == first
    finally:
        await conn.close()


async def test_roles_exist_and_the_owner_may_set_each(db: asyncpg.Connection) -> None:
    for role in ROLES:
        assert (
            await db.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", role) is False
        )
        async with db.transaction():
            await db.execute(f"SET LOCAL ROLE {role}")
            assert await db.fetchval("SELECT current_user") == role


# --------------------------------------------------------------------------- (b) new_event


async def test_one_insert_statement_of_100_events_sends_one_notification(
    db: asyncpg.Connection, db2: asyncpg.Connection
) -> None:
    prefix = uuid.uuid4().hex[:8]
    now = int(datetime.now(UTC).timestamp())
    async with Listener(db2, "new_event") as listener:
        stored = await insert_events(db, [(f"{prefix}-{i}-0", now - i) for i in range(100)])
        assert stored == 100
        assert await listener.next() == ""
        assert await listener.rest() == []


async def test_outbox_insert_statement_notifies_once(
    db: asyncpg.Connection, db2: asyncpg.Connection
) -> None:
    async with Listener(db2, "outbox") as listener:
        await db.execute(
            "INSERT INTO event_outbox (msg_key, payload)"
            " SELECT '1:' || g, convert_to('{}', 'UTF8') FROM generate_series(1, 10) g"
        )
        assert await listener.next() == ""
        assert await listener.rest() == []
    async with db.transaction():
        await db.execute("SET LOCAL ROLE erc8004_ingest")
        claimed = await db.fetch(
            "SELECT seq, topic FROM event_outbox ORDER BY seq LIMIT 5 FOR UPDATE SKIP LOCKED"
        )
        assert len(claimed) == 5
        assert {r["topic"] for r in claimed} == {"erc8004.events"}
        await db.execute(
            "DELETE FROM event_outbox WHERE seq = any($1::bigint[])", [r["seq"] for r in claimed]
        )


async def _emptied_then_vacuumed(db: asyncpg.Connection, table: str) -> tuple[int, int]:
    """The table's file size with 20,000 rows just deleted, and after a VACUUM."""
    await db.execute(
        f"INSERT INTO {table} (msg_key, payload)"
        " SELECT 'vacuum:' || g, convert_to(repeat('x', 200), 'UTF8')"
        " FROM generate_series(1, 20000) g"
    )
    await db.execute(f"DELETE FROM {table} WHERE msg_key LIKE 'vacuum:%'")
    before: int = await db.fetchval("SELECT pg_relation_size($1::regclass)", table)
    await db.execute(f"VACUUM {table}")
    after: int = await db.fetchval("SELECT pg_relation_size($1::regclass)", table)
    return before, after


async def test_vacuum_never_truncates_the_outbox(db: asyncpg.Connection) -> None:
    # Truncating takes an ACCESS EXCLUSIVE lock that ingest's inserts and the relay's
    # reads would queue behind, after every burst.
    before, after = await _emptied_then_vacuumed(db, "event_outbox")
    assert before > 8192 * 100
    assert after == before
    # The same table without the setting is truncated by the same VACUUM: the check
    # above could fail.
    await db.execute("CREATE TABLE outbox_copy (LIKE event_outbox INCLUDING ALL)")
    try:
        before, after = await _emptied_then_vacuumed(db, "outbox_copy")
        assert after < before
    finally:
        await db.execute("DROP TABLE outbox_copy")


# --------------------------------------------------------------------------- (c) trigger_changed


async def make_user(conn: asyncpg.Connection) -> str:
    tag = uuid.uuid4().hex[:10]
    user_id: str = await conn.fetchval(
        "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x') RETURNING id",
        f"user-{tag}",
        f"{tag}@example.org",
    )
    return user_id


async def make_trigger(conn: asyncpg.Connection, user_id: str, name: str = "t") -> str:
    trigger_id: str = await conn.fetchval(
        "INSERT INTO triggers (user_id, name, chain_id, registry) VALUES ($1, $2, 1, 'reputation')"
        " RETURNING id",
        user_id,
        name,
    )
    return trigger_id


async def test_changes_of_triggers_conditions_actions_notify_trigger_changed(
    db: asyncpg.Connection, db2: asyncpg.Connection
) -> None:
    user_id = await make_user(db)
    async with Listener(db2, "trigger_changed") as listener:

        async def expect(sql: str, *args: object) -> None:
            await db.execute(sql, *args)
            assert await listener.next() == trigger_id, sql
            assert set(await listener.rest()) <= {trigger_id}, sql

        trigger_id = await make_trigger(db, user_id)
        assert await listener.next() == trigger_id
        await expect("UPDATE triggers SET name = 'renamed' WHERE id = $1", trigger_id)

        await expect(
            "INSERT INTO trigger_conditions (trigger_id, condition_type, field, operator, value)"
            " VALUES ($1, 'score_threshold', 'score', '<', '50')",
            trigger_id,
        )
        await expect("UPDATE trigger_conditions SET value = '40' WHERE trigger_id = $1", trigger_id)
        await expect("DELETE FROM trigger_conditions WHERE trigger_id = $1", trigger_id)

        await expect(
            "INSERT INTO trigger_actions (trigger_id, action_type, config)"
            " VALUES ($1, 'rest', '{\"url\": \"http://127.0.0.1/\"}')",
            trigger_id,
        )
        await expect("UPDATE trigger_actions SET priority = 2 WHERE trigger_id = $1", trigger_id)
        await expect("DELETE FROM trigger_actions WHERE trigger_id = $1", trigger_id)

        await expect("DELETE FROM triggers WHERE id = $1", trigger_id)


async def test_enabled_at_moves_when_a_trigger_is_enabled_again(db: asyncpg.Connection) -> None:
    trigger_id = await make_trigger(db, await make_user(db))
    created = await db.fetchval("SELECT enabled_at FROM triggers WHERE id = $1", trigger_id)
    await db.execute("UPDATE triggers SET enabled = false WHERE id = $1", trigger_id)
    assert await db.fetchval("SELECT enabled_at FROM triggers WHERE id = $1", trigger_id) == created
    await db.execute("UPDATE triggers SET enabled = true WHERE id = $1", trigger_id)
    assert await db.fetchval("SELECT enabled_at FROM triggers WHERE id = $1", trigger_id) > created
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE triggers SET cooldown_seconds = -1 WHERE id = $1", trigger_id)


async def test_version_moves_once_per_transaction_with_what_the_matcher_reads(
    db: asyncpg.Connection,
) -> None:
    user_id = await make_user(db)
    insert_condition = (
        "INSERT INTO trigger_conditions (trigger_id, condition_type, field, operator, value)"
        " VALUES ($1, 'score_threshold', 'score', '>', $2)"
    )

    async def version() -> int:
        value: int = await db.fetchval("SELECT version FROM triggers WHERE id = $1", trigger_id)
        return value

    # Created with its conditions and actions in one transaction: version 1.
    async with db.transaction():
        trigger_id = await make_trigger(db, user_id)
        for value in ("10", "20"):
            await db.execute(insert_condition, trigger_id, value)
        await db.execute(
            "INSERT INTO trigger_actions (trigger_id, action_type, config)"
            " VALUES ($1, 'telegram', '{\"chat_id\": \"1\"}')",
            trigger_id,
        )
    assert await version() == 1

    # What a PATCH does, as the API does it (its role, row-level security): the row
    # rewritten, the conditions replaced one statement each, an action changed. One
    # version, not one per statement or row.
    async with db.transaction():
        await db.execute("SET LOCAL ROLE erc8004_api")
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", user_id)
        await db.execute(
            "UPDATE triggers SET name = 'patched', description = 'd' WHERE id = $1", trigger_id
        )
        await db.execute("DELETE FROM trigger_conditions WHERE trigger_id = $1", trigger_id)
        for value in ("1", "2", "3", "4", "5"):
            await db.execute(insert_condition, trigger_id, value)
        await db.execute(
            "UPDATE trigger_actions SET priority = 2 WHERE trigger_id = $1", trigger_id
        )
    assert await version() == 2
    # ... also when the row itself is not changed: the conditions alone move it once
    async with db.transaction():
        await db.execute("DELETE FROM trigger_conditions WHERE trigger_id = $1", trigger_id)
        for value in ("6", "7", "8"):
            await db.execute(insert_condition, trigger_id, value)
    assert await version() == 3

    # Plain SQL, one statement each: every change the matcher reads moves it.
    await db.execute("UPDATE triggers SET name = 'renamed' WHERE id = $1", trigger_id)
    assert await version() == 4
    await db.execute("UPDATE triggers SET enabled = false WHERE id = $1", trigger_id)
    assert await version() == 5
    await db.execute(
        "UPDATE trigger_conditions SET value = '9' WHERE trigger_id = $1 AND value = '8'",
        trigger_id,
    )
    assert await version() == 6
    await db.execute(
        'UPDATE trigger_actions SET config = \'{"chat_id": "2"}\' WHERE trigger_id = $1',
        trigger_id,
    )
    assert await version() == 7
    await db.execute("DELETE FROM trigger_actions WHERE trigger_id = $1", trigger_id)
    assert await version() == 8

    # What the matcher does not read, and changes that change nothing, do not.
    await db.execute("UPDATE triggers SET description = 'about' WHERE id = $1", trigger_id)
    await db.execute("UPDATE triggers SET name = name, enabled = enabled WHERE id = $1", trigger_id)
    await db.execute(
        "UPDATE trigger_conditions SET value = value WHERE trigger_id = $1", trigger_id
    )
    assert await version() == 8

    # A bump undone with its savepoint is not remembered as done.
    async with db.transaction():
        savepoint = db.transaction()
        await savepoint.start()
        await db.execute("UPDATE triggers SET name = 'x' WHERE id = $1", trigger_id)
        await savepoint.rollback()
        await db.execute(insert_condition, trigger_id, "10")
    assert await version() == 9

    # Another trigger's changes leave this one alone.
    other = await make_trigger(db, user_id, name="other")
    await db.execute(insert_condition, other, "1")
    assert await version() == 9
    assert await db.fetchval("SELECT version FROM triggers WHERE id = $1", other) == 2


# --------------------------------------------------------------------------- (d) append-only


async def test_events_are_append_only_for_the_owner_and_the_ingest_role(
    db: asyncpg.Connection,
) -> None:
    event_id = f"{uuid.uuid4().hex[:8]}-1-0"
    assert await insert_events(db, [(event_id, 1_700_000_000)]) == 1

    for sql in (
        "UPDATE events SET tag = 'x' WHERE id = $1",
        "DELETE FROM events WHERE id = $1",
    ):
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await db.execute(sql, event_id)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_role(db, "erc8004_ingest", sql, event_id)
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await db.execute("TRUNCATE events")
    assert await db.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id) == 1

    for role in ROLES:
        for privilege in ("UPDATE", "DELETE", "TRUNCATE"):
            assert not await db.fetchval(
                "SELECT has_table_privilege($1, 'events', $2)", role, privilege
            ), (role, privilege)
    assert await db.fetchval("SELECT has_table_privilege('erc8004_ingest', 'events', 'INSERT')")


async def test_grants_are_least_privilege(db: asyncpg.Connection) -> None:
    expected = {
        ("erc8004_ingest", "checkpoints", "UPDATE"): True,
        ("erc8004_ingest", "triggers", "SELECT"): False,
        ("erc8004_ingest", "event_outbox", "DELETE"): True,
        ("erc8004_matcher", "trigger_state", "UPDATE"): True,
        ("erc8004_matcher", "triggers", "UPDATE"): False,
        ("erc8004_matcher", "events", "INSERT"): False,
        ("erc8004_dispatcher", "action_results", "INSERT"): True,
        ("erc8004_dispatcher", "action_results", "UPDATE"): False,
        ("erc8004_dispatcher", "users", "SELECT"): False,
        ("erc8004_api", "triggers", "DELETE"): True,
        ("erc8004_api", "action_results", "INSERT"): False,
        ("erc8004_api", "events_hourly", "SELECT"): True,
        ("erc8004_api", "event_outbox", "SELECT"): False,
        ("erc8004_api", "telegram_chats", "INSERT"): False,
        ("erc8004_api", "telegram_chats", "DELETE"): True,
        ("erc8004_api", "telegram_updates", "SELECT"): False,
        ("erc8004_dispatcher", "telegram_link_codes", "INSERT"): False,
        ("erc8004_dispatcher", "telegram_updates", "UPDATE"): True,
        ("erc8004_matcher", "telegram_chats", "SELECT"): False,
    }
    for (role, table, privilege), allowed in expected.items():
        got = await db.fetchval("SELECT has_table_privilege($1, $2, $3)", role, table, privilege)
        assert got is allowed, (role, table, privilege)
    for role in ROLES:
        assert not await db.fetchval(
            "SELECT has_function_privilege($1, 'ensure_event_partitions(integer, integer)',"
            " 'EXECUTE')",
            role,
        )


# --------------------------------------------------------------------------- (e) RLS


async def test_row_level_security_scopes_the_api_role_by_user(db: asyncpg.Connection) -> None:
    user_a, user_b = await make_user(db), await make_user(db)
    ids: dict[str, str] = {}
    for user, label in ((user_a, "a"), (user_b, "b")):
        trigger_id = await make_trigger(db, user, name=f"trigger-{label}")
        ids[label] = trigger_id
        await db.execute(
            "INSERT INTO trigger_conditions (trigger_id, condition_type, field, operator, value)"
            " VALUES ($1, 'agent_id_equals', 'agent_id', '=', '1')",
            trigger_id,
        )
        await db.execute(
            "INSERT INTO trigger_actions (trigger_id, action_type, config)"
            " VALUES ($1, 'telegram', '{}')",
            trigger_id,
        )
        await db.execute(
            "INSERT INTO action_results (job_id, trigger_id, user_id, action_type, status)"
            " VALUES ('job-' || $1, $1, $2, 'telegram', 'success')",
            trigger_id,
            user,
        )
        await db.execute(
            "INSERT INTO telegram_chats (user_id, chat_id, chat_type) VALUES ($1, '42', 'group')",
            user,
        )
        await db.execute(
            "INSERT INTO telegram_link_codes (code_sha256, user_id, expires_at)"
            " VALUES (sha256(convert_to($1, 'UTF8')), $1, now())",
            user,
        )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM triggers WHERE id = any($1::text[])", list(ids.values())
        )
        == 2
    )

    # As the API role without app.current_user_id: nothing at all.
    async with db.transaction():
        await db.execute("SET LOCAL ROLE erc8004_api")
        for table in (
            "triggers",
            "trigger_conditions",
            "trigger_actions",
            "action_results",
            "api_keys",
            "telegram_chats",
            "telegram_link_codes",
        ):
            assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table

    # With user A's id: only A's rows; B's trigger cannot be changed nor created.
    async with db.transaction():
        await db.execute("SET LOCAL ROLE erc8004_api")
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", user_a)
        assert [r["id"] for r in await db.fetch("SELECT id FROM triggers")] == [ids["a"]]
        assert {
            r["trigger_id"] for r in await db.fetch("SELECT trigger_id FROM trigger_conditions")
        } == {ids["a"]}
        assert {
            r["trigger_id"] for r in await db.fetch("SELECT trigger_id FROM trigger_actions")
        } == {ids["a"]}
        assert {r["user_id"] for r in await db.fetch("SELECT user_id FROM action_results")} == {
            user_a
        }
        for table in ("telegram_chats", "telegram_link_codes"):
            rows = await db.fetch(f"SELECT user_id FROM {table}")
            assert [r["user_id"] for r in rows] == [user_a], table
        assert (
            await db.execute("DELETE FROM telegram_chats WHERE user_id = $1", user_b) == "DELETE 0"
        )
        assert (
            await db.execute("UPDATE triggers SET name = 'stolen' WHERE id = $1", ids["b"])
            == "UPDATE 0"
        )
        assert (
            await db.execute("DELETE FROM trigger_actions WHERE trigger_id = $1", ids["b"])
            == "DELETE 0"
        )
        assert (
            await db.execute("UPDATE triggers SET name = 'mine' WHERE id = $1", ids["a"])
            == "UPDATE 1"
        )
    async with db.transaction():
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", user_a)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await as_role(
                db,
                "erc8004_api",
                "INSERT INTO trigger_conditions"
                " (trigger_id, condition_type, field, operator, value)"
                " VALUES ($1, 'agent_id_equals', 'agent_id', '=', '2')",
                ids["b"],
            )

    # After a transaction that set it, the setting reads '' (not NULL): still nothing.
    async with db.transaction():
        await db.execute("SET LOCAL ROLE erc8004_api")
        assert await db.fetchval("SELECT current_setting('app.current_user_id', true)") == ""
        assert await db.fetchval("SELECT count(*) FROM triggers") == 0

    assert await db.fetchval("SELECT name FROM triggers WHERE id = $1", ids["b"]) == "trigger-b"

    # The matcher serves every user.
    async with db.transaction():
        await db.execute("SET LOCAL ROLE erc8004_matcher")
        assert (
            await db.fetchval(
                "SELECT count(*) FROM triggers WHERE id = any($1::text[])", list(ids.values())
            )
            == 2
        )


async def test_api_keys_are_found_by_hash_before_the_user_is_known(db: asyncpg.Connection) -> None:
    user_id = await make_user(db)
    key_hash = uuid.uuid4().hex
    key_id = await db.fetchval(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'k', 'ek_1', $2)"
        " RETURNING id",
        user_id,
        key_hash,
    )
    async with db.transaction():
        await db.execute("SET LOCAL ROLE erc8004_api")
        assert await db.fetchval("SELECT count(*) FROM api_keys") == 0
        found = await db.fetch("SELECT * FROM authenticate_api_key($1)", key_hash)
        assert [(r["api_key_id"], r["user_id"]) for r in found] == [(key_id, user_id)]
        assert await db.fetch("SELECT * FROM authenticate_api_key('nope')") == []
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key_id)
    assert await db.fetch("SELECT * FROM authenticate_api_key($1)", key_hash) == []


# --------------------------------------------------------------------------- (f) partitions


async def event_partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
        " WHERE inhparent = 'events'::regclass"
    )
    return {r["name"] for r in rows}


async def test_monthly_partitions_default_partition_and_retention(db: asyncpg.Connection) -> None:
    now = await db.fetchval("SELECT now()")
    expected_initial = {f"events_p{month_start(now, s):%Y%m}" for s in range(-1, 4)}
    before = await event_partitions(db)
    assert expected_initial | {"events_default"} <= before

    wanted = {f"events_p{month_start(now, s):%Y%m}" for s in range(-2, 7)}
    created = await db.fetchval("SELECT ensure_event_partitions(6, 2)")
    after = await event_partitions(db)
    assert wanted <= after
    assert created == len(after - before)  # (other tests' old events may add months)
    assert await db.fetchval("SELECT ensure_event_partitions(6, 2)") == 0  # idempotent

    # Far outside the partitioned range: the DEFAULT partition takes them.
    prefix = uuid.uuid4().hex[:8]
    march = int(datetime(2016, 3, 15, 12, tzinfo=UTC).timestamp())
    april = int(datetime(2016, 4, 10, tzinfo=UTC).timestamp())
    assert await insert_events(db, [(f"{prefix}-1-0", march), (f"{prefix}-2-0", april)]) == 2
    where = await db.fetch(
        "SELECT id, tableoid::regclass::text AS part FROM events WHERE id LIKE $1 ORDER BY id",
        f"{prefix}-%",
    )
    assert [r["part"] for r in where] == ["events_default", "events_default"]

    # The next run gives those months partitions of their own and moves the rows.
    before = await event_partitions(db)
    created = await db.fetchval("SELECT ensure_event_partitions(3, 1)")
    after = await event_partitions(db)
    assert {"events_p201603", "events_p201604"} <= after - before
    assert created == len(after - before)
    where = await db.fetch(
        "SELECT id, tableoid::regclass::text AS part FROM events WHERE id LIKE $1 ORDER BY id",
        f"{prefix}-%",
    )
    assert [r["part"] for r in where] == ["events_p201603", "events_p201604"]
    assert await db.fetchval("SELECT count(*) FROM events_default") == 0
    moved = await db.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events_p201603'::regclass"
        " AND tgname = 'events_append_only'"
    )
    assert moved == 1  # the attached partition got the append-only trigger

    # Retention: only partitions entirely older than the cutoff go, with their ids.
    dropped = await db.fetchval(
        "SELECT drop_event_partitions_older_than($1)", datetime(2016, 4, 5, tzinfo=UTC)
    )
    assert dropped == 1
    partitions = await event_partitions(db)
    assert "events_p201603" not in partitions
    assert "events_p201604" in partitions
    assert wanted <= partitions
    assert [
        r["id"] for r in await db.fetch("SELECT id FROM event_ids WHERE id LIKE $1", f"{prefix}-%")
    ] == [f"{prefix}-2-0"]
    assert await db.fetchval("SELECT count(*) FROM events WHERE id LIKE $1", f"{prefix}-%") == 1


async def test_stats_views_refresh_concurrently(db: asyncpg.Connection) -> None:
    chain_id = 900_000 + int(uuid.uuid4().int % 1000)
    now = int(datetime.now(UTC).timestamp())
    prefix = uuid.uuid4().hex[:8]
    await insert_events(db, [(f"{prefix}-{i}-0", now) for i in range(3)], chain_id=chain_id)
    await db.execute("SELECT refresh_stats_views()")
    assert (
        await db.fetchval(
            "SELECT sum(event_count) FROM events_hourly WHERE chain_id = $1", chain_id
        )
        == 3
    )


# --------------------------------------------------------------------------- (g) uniqueness


async def test_event_ids_make_ids_unique_across_partitions(db: asyncpg.Connection) -> None:
    event_id = f"{uuid.uuid4().hex[:8]}-7-3"
    ts = 1_700_000_000
    assert await insert_events(db, [(event_id, ts)]) == 1
    assert await insert_events(db, [(event_id, ts)]) == 0  # a duplicate, deduplicated
    assert await insert_events(db, [(event_id, ts + 86_400 * 40)]) == 0  # other partition too

    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO event_ids (id, block_time) VALUES ($1, to_timestamp($2::bigint))",
            event_id,
            ts + 1,
        )
    # A reorg releases the id (ingest deletes it from event_ids); the canonical
    # event at the same position, same block time, other block hash, then stores
    # beside the replaced one: the table stays append-only.
    await db.execute("DELETE FROM event_ids WHERE id = $1", event_id)
    await db.execute(
        """INSERT INTO event_ids (id, block_time) VALUES ($1, to_timestamp($2::bigint));
           INSERT INTO events (id, chain_id, block_number, block_hash, transaction_hash,
                               log_index, registry, event_type, "timestamp", block_time)
           VALUES ($1, 1, 7, 'h2', 't', 3, 'identity', 'Registered', $2,
                   to_timestamp($2::bigint))""".replace("$1", f"'{event_id}'").replace(
            "$2", str(ts)
        )
    )
    stored = await db.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id)
    assert stored == 2
    pk = await db.fetch(
        """
        SELECT a.attname FROM pg_constraint c
        JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) ON true
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.conrelid = 'events'::regclass AND c.contype = 'p'
        ORDER BY k.n
        """
    )
    assert [r["attname"] for r in pk] == ["id", "block_time", "block_hash"]
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            """INSERT INTO event_ids (id, block_time) VALUES ('bad-1-0', to_timestamp(1700000000));
               INSERT INTO events (id, chain_id, block_number, block_hash, transaction_hash,
                                   log_index, registry, event_type, "timestamp", block_time)
               VALUES ('bad-1-0', 1, 1, 'h', 't', 0, 'identity', 'Registered', 1700000001,
                       to_timestamp(1700000000))"""
        )


async def test_stored_and_reorg_times_are_taken_at_the_insert_not_the_transaction_start(
    db: asyncpg.Connection,
) -> None:
    """Ingest inserts events and reorgs after taking the chain's lock: with the insert's
    clock (not the transaction's start) their times follow the lock order, so a store
    that began before a reorg but waited for its lock is not judged replaced by it."""
    event_id = f"{uuid.uuid4().hex[:8]}-9-1"
    async with db.transaction():
        began = await db.fetchval("SELECT now()")
        await asyncio.sleep(0.05)
        assert await insert_events(db, [(event_id, 1_700_000_000)]) == 1
        stored = await db.fetchval("SELECT created_at FROM events WHERE id = $1", event_id)
        reorg = await db.fetchval(
            "INSERT INTO reorgs (chain_id, from_block) VALUES (1, 9) RETURNING created_at"
        )
    assert began < stored < reorg
