"""Logical backups of the database: pg_dump in the custom format, pg_restore into a
database of its own.

    python -m tools.backup dump [--dir .run/backups]             # make backup
    python -m tools.backup restore FILE [--database NAME]         # make restore

Reads DATABASE_URL (the schema owner's login: the dump holds every table, the
restore creates the objects as that owner). The password goes to pg_dump and
pg_restore through PGPASSWORD, never on their command line. A restore never
touches an existing database: it creates NAME (default erc8004_restore_<UTC
time>) and fails if it exists. The roles erc8004_* are cluster-wide and not in
the dump: on a new cluster, run the migrations once on an empty database first
(they create the roles), or create them by hand. For point-in-time recovery see
deploy/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from shared.platform.entrypoint import cli_parser
from shared.platform.logging import redact_value
from tools.benchdb import drop_database, with_database

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".run" / "backups"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install PostgreSQL's client programs")
    return found


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that carries it."""
    parts = urllib.parse.urlsplit(database_url)
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts), env


def database_name(database_url: str) -> str:
    return urllib.parse.urlsplit(database_url).path.lstrip("/")


def dump(database_url: str, out_dir: Path = DEFAULT_DIR) -> Path:
    """pg_dump -Fc of the URL's database into ``out_dir``; returns the file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = out_dir / f"{database_name(database_url)}-{stamp}.dump"
    url, env = _libpq(database_url)
    partial = target.with_suffix(".dump.partial")
    subprocess.run(
        [_binary("pg_dump"), "--format=custom", "--compress=6", f"--file={partial}", url],
        env=env,
        check=True,
    )
    partial.rename(target)  # a file named .dump is always complete
    return target


#: Extensions a dump may carry that only a superuser can create and the schema
#: does not depend on: skipped (with a note) when the restoring login may not.
_LIST_EXTENSION = re.compile(r"^\d+; \d+ \d+ (?:EXTENSION - |COMMENT - EXTENSION )(\S+)")


async def creatable_extensions(conn: asyncpg.Connection) -> set[str] | None:
    """Extensions this login may create (None: all of them, a superuser)."""
    if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return None
    rows = await conn.fetch(
        "SELECT DISTINCT name FROM pg_available_extension_versions WHERE trusted"
    )
    return {r["name"] for r in rows}


def restore_list(listing: str, creatable: set[str] | None) -> tuple[str, set[str]]:
    """pg_restore's table of contents without the extensions the login cannot
    create (their COMMENT entries too)."""
    kept, skipped = [], set()
    for line in listing.splitlines():
        match = _LIST_EXTENSION.match(line)
        if match and creatable is not None and match.group(1) not in creatable:
            if match.group(1) == "timescaledb":
                raise SystemExit(
                    "a TimescaleDB dump: restore it as a superuser following TimescaleDB's"
                    " procedure (timescaledb_pre_restore / timescaledb_post_restore)"
                )
            skipped.add(match.group(1))
            continue
        kept.append(line)
    return "\n".join(kept) + "\n", skipped


async def restore(database_url: str, dump_file: Path, name: str) -> str:
    """Create database ``name`` and pg_restore ``dump_file`` into it, in one
    transaction (all or nothing: on failure the new database is dropped again);
    returns the new database's URL."""
    if not _NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r}")
    if not await asyncio.to_thread(dump_file.is_file):
        raise FileNotFoundError(dump_file)
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')  # fails if it exists
        creatable = await creatable_extensions(admin)
    finally:
        await admin.close()
    target = with_database(database_url, name)
    url, env = _libpq(target)
    listing = await asyncio.to_thread(
        subprocess.run,
        [_binary("pg_restore"), "--list", str(dump_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    entries, skipped = restore_list(listing.stdout, creatable)
    if skipped:
        print(  # noqa: T201
            "[backup] not restored (needs a superuser; monitoring only): "
            + ", ".join(sorted(skipped)),
            flush=True,
        )
    list_file = dump_file.with_name(f".{name}.list")
    await asyncio.to_thread(list_file.write_text, entries)
    cmd = [
        _binary("pg_restore"),
        "--exit-on-error",
        "--single-transaction",
        "--no-owner",  # objects belong to the restoring owner
        f"--use-list={list_file}",
        f"--dbname={url}",
        str(dump_file),
    ]
    try:
        result = await asyncio.to_thread(
            subprocess.run, cmd, env=env, capture_output=True, text=True, check=False
        )
    finally:
        await asyncio.to_thread(list_file.unlink)
    if result.returncode != 0:
        await drop_database(database_url, name)  # ours, and empty: nothing half-restored stays
        raise RuntimeError(f"pg_restore failed ({result.returncode}): {result.stderr[-2000:]}")
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "tools.backup",
        "Logical backups of DATABASE_URL's database (the schema owner's login): pg_dump"
        " in the custom format, pg_restore into a new database of its own.",
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    d = sub.add_parser(
        "dump",
        help="pg_dump -Fc into a directory",
        description="Dump the database into DIR as <database>-<UTC time>.dump and verify it.",
        formatter_class=parser.formatter_class,
    )
    d.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the dump is written")
    r = sub.add_parser(
        "restore",
        help="pg_restore into a new database",
        description="Restore a dump into a database created for it (never an existing one),"
        " in one transaction; the new database is dropped again if the restore fails.",
        formatter_class=parser.formatter_class,
    )
    r.add_argument("file", type=Path, help="the dump to restore (pg_dump -Fc)")
    r.add_argument(
        "--database",
        default="",
        help="name of the new database ('': erc8004_restore_<UTC time>)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        parser.error("DATABASE_URL is not set")
    if args.command == "dump":
        print(f"[backup] dumping {redact_value(database_url)}", flush=True)  # noqa: T201
        path = dump(database_url, args.dir)
        size = path.stat().st_size
        print(f"[backup] wrote {path} ({size} bytes)", flush=True)  # noqa: T201
    else:
        name = args.database or f"erc8004_restore_{datetime.now(UTC):%Y%m%d%H%M%S}"
        url = asyncio.run(restore(database_url, args.file, name))
        print(f"[backup] restored {args.file} into {redact_value(url)}", flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
