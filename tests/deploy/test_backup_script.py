"""deploy/k8s/backup/backup.sh, what the backup CronJob and the restore pod run
(busybox sh in the postgres image), run here with /bin/sh against the real
PostgreSQL: a dump is verified before it counts and old ones are pruned only
then; the password reaches libpq through PGPASSWORD only (pg_dump, pg_restore
and psql are wrapped to record their command lines); a restore creates a new
database and never touches an existing one."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.deploy.tools import ROOT
from tools.benchdb import drop_database, with_database

pytestmark = pytest.mark.db

SCRIPT = ROOT / "deploy" / "k8s" / "backup" / "backup.sh"
RETENTION_DAYS = 3
DAY = 86400


def sql(url: str, *statements: str) -> Any:
    """Run the statements on one connection; the last one's first value."""

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            for statement in statements[:-1]:
                await conn.execute(statement)
            return await conn.fetchval(statements[-1])
        finally:
            await conn.close()

    return asyncio.run(run())


def database_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/")


def age(path: Path, days: float) -> Path:
    path.touch()
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


@dataclass
class Backup:
    """backup.sh with the CronJob's environment, pointed at a directory of its
    own; every pg_dump / pg_restore / psql command line is recorded."""

    bindir: Path
    backups: Path
    commands: Path
    env: dict[str, str]

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(SCRIPT), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def wrap(self, program: str, before: str = "") -> None:
        real = shutil.which(program)
        assert real, f"{program} is missing: PostgreSQL's client programs are needed"
        script = self.bindir / program
        script.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "{program} $*" >> "{self.commands}"\n'
            f'{before}\nexec "{real}" "$@"\n'
        )
        script.chmod(0o755)

    def dumps(self) -> set[str]:
        return {p.name for p in self.backups.iterdir()}


@pytest.fixture
def backup(tmp_path: Path, database_url: str) -> Backup:
    bindir, backups, scratch = tmp_path / "bin", tmp_path / "backups", tmp_path / "tmp"
    for directory in (bindir, backups, scratch):
        directory.mkdir()
    runner = Backup(
        bindir=bindir,
        backups=backups,
        commands=tmp_path / "commands.log",
        env={
            "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "LC_ALL": "C",
            "DATABASE_URL": database_url,
            "BACKUP_DIR": str(backups),
            "BACKUP_RETENTION_DAYS": str(RETENTION_DAYS),
        },
    )
    for program in ("pg_dump", "pg_restore", "psql"):
        runner.wrap(program)
    sql(
        database_url, "CREATE TABLE backup_probe AS SELECT generate_series(1, 500) AS n", "SELECT 1"
    )
    return runner


def assert_no_password_on_a_command_line(backup: Backup, *passwords: str) -> None:
    commands = backup.commands.read_text()
    assert "pg_dump " in commands or "pg_restore " in commands
    for password in passwords:
        assert password not in commands


def test_a_dump_is_verified_then_old_ones_are_pruned(database_url: str, backup: Backup) -> None:
    name = database_of(database_url)
    expired = age(backup.backups / f"{name}-20000101T000000Z.dump", RETENTION_DAYS + 0.1)
    kept = age(backup.backups / f"{name}-20000102T000000Z.dump", RETENTION_DAYS - 0.1)
    stale = age(backup.backups / f"{name}-20000103T000000Z.dump.partial", 1.5)
    running = age(backup.backups / f"{name}-20000104T000000Z.dump.partial", 0.1)
    other = age(backup.backups / "notes.txt", 30)

    result = backup("dump")

    assert result.returncode == 0, result.stderr
    (new,) = backup.dumps() - {kept.name, running.name, other.name}
    assert re.fullmatch(rf"{name}-\d{{8}}T\d{{6}}Z\.dump", new)
    assert not expired.exists()
    assert not stale.exists()  # a killed run's leftover
    assert (backup.backups / new).stat().st_mode & 0o077 == 0  # the owner's only
    listing = subprocess.run(
        ["pg_restore", "--list", str(backup.backups / new)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r" TABLE DATA public backup_probe ", listing)
    assert re.search(r" TABLE DATA public schema_migrations ", listing)
    password = urllib.parse.urlsplit(database_url).password
    assert password
    assert_no_password_on_a_command_line(backup, password)
    assert password not in result.stdout + result.stderr
    (dump_command,) = (c for c in backup.commands.read_text().splitlines() if c[:8] == "pg_dump ")
    assert "--format=custom" in dump_command
    assert "--dbname=postgresql://erc8004@" in dump_command


def test_a_dump_that_does_not_read_back_fails_and_prunes_nothing(
    database_url: str, backup: Backup
) -> None:
    old = age(backup.backups / f"{database_of(database_url)}-20000101T000000Z.dump", 30)
    backup.wrap("pg_restore", before='[ "$1" != --list ] || exit 1')

    result = backup("dump")

    assert result.returncode != 0
    assert "pg_restore --list cannot read the new dump" in result.stderr
    assert backup.dumps() == {old.name}  # no unverified dump, no partial file, old one kept


def test_a_wrong_password_fails_and_writes_nothing(database_url: str, backup: Backup) -> None:
    parts = urllib.parse.urlsplit(database_url)
    wrong = parts._replace(
        netloc=f"{parts.username}:not-the-password@{parts.hostname}:{parts.port}"
    )

    result = backup("dump", DATABASE_URL=wrong.geturl())

    assert result.returncode != 0
    assert "password authentication failed" in result.stderr
    assert backup.dumps() == set()


@pytest.mark.parametrize("days", ["0", "-1", "two", "1.5"])
def test_a_bad_retention_fails_before_dumping(backup: Backup, days: str) -> None:
    result = backup("dump", BACKUP_RETENTION_DAYS=days)
    assert result.returncode != 0
    assert "BACKUP_RETENTION_DAYS" in result.stderr
    assert not backup.commands.exists()


def test_the_retention_defaults_to_fourteen_days(backup: Backup) -> None:
    del backup.env["BACKUP_RETENTION_DAYS"]
    result = backup("dump")
    assert result.returncode == 0, result.stderr
    assert "(retention: 14 days)" in result.stderr


def test_a_percent_encoded_password_reaches_libpq_only(admin_url: str, backup: Backup) -> None:
    """Every character a password may hold, %-escaped in the URL, decoded by
    backup.sh into PGPASSWORD; neither form is on a command line."""
    suffix = uuid.uuid4().hex[:10]
    role, database = f"erc8004_bk_{suffix}", f"erc8004_bk_{suffix}"
    password = "p@ss:w/rd%?#&=+ é'\"$(x)`\\"
    literal = password.replace("'", "''")
    sql(admin_url, f"CREATE ROLE {role} LOGIN PASSWORD '{literal}'", "SELECT 1")
    try:
        sql(admin_url, f'CREATE DATABASE "{database}"', "SELECT 1")
        sql(
            with_database(admin_url, database),
            "CREATE TABLE probe AS SELECT 1 AS n",
            f"GRANT SELECT ON probe TO {role}",
            "SELECT 1",
        )
        parts = urllib.parse.urlsplit(admin_url)
        encoded = urllib.parse.quote(password, safe="")
        url = parts._replace(
            netloc=f"{role}:{encoded}@{parts.hostname}:{parts.port}", path=f"/{database}"
        ).geturl()

        result = backup("dump", DATABASE_URL=url)

        assert result.returncode == 0, result.stderr
        assert len(backup.dumps()) == 1
        assert_no_password_on_a_command_line(backup, password, encoded, "p@ss")
    finally:
        asyncio.run(drop_database(admin_url, database))
        sql(admin_url, f"DROP ROLE IF EXISTS {role}", "SELECT 1")


def test_a_restore_creates_a_new_database_and_never_overwrites_one(
    admin_url: str, database_url: str, backup: Backup
) -> None:
    assert backup("dump").returncode == 0
    (dump,) = backup.dumps()
    target = f"erc8004_restore_{uuid.uuid4().hex[:10]}"
    try:
        result = backup("restore", str(backup.backups / dump), target)

        assert result.returncode == 0, result.stderr
        restored = with_database(database_url, target)
        assert sql(restored, "SELECT count(*) FROM backup_probe") == 500
        migrations = "SELECT count(*) FROM schema_migrations"
        assert sql(restored, migrations) == sql(database_url, migrations) > 0
        password = urllib.parse.urlsplit(database_url).password
        assert password
        assert_no_password_on_a_command_line(backup, password)

        sql(restored, "DELETE FROM backup_probe WHERE n > 100", "SELECT 1")
        again = backup("restore", str(backup.backups / dump), target)
        assert again.returncode != 0
        assert f"cannot create database {target}" in again.stderr
        assert sql(restored, "SELECT count(*) FROM backup_probe") == 100  # untouched
    finally:
        asyncio.run(drop_database(admin_url, target))


@pytest.mark.parametrize("name", ["Bad-Name", "1st", "x; DROP DATABASE y", "a" * 64])
def test_a_restore_refuses_a_database_name_that_is_not_plain(backup: Backup, name: str) -> None:
    assert backup("dump").returncode == 0
    (dump,) = backup.dumps()
    result = backup("restore", str(backup.backups / dump), name)
    assert result.returncode != 0
    assert "database name" in result.stderr or "longer than 63" in result.stderr


def test_a_restore_leaves_out_extensions_only_a_superuser_may_create(tmp_path: Path) -> None:
    """As tools/backup.py: pg_stat_statements (monitoring) is skipped, with its
    comment, for a login that may not create it; trusted ones are restored."""
    listing = (
        ";\n; Archive created at 2026-01-01 03:17:00 UTC\n;\n"
        "2; 3079 16385 EXTENSION - pgcrypto \n"
        "3; 0 0 COMMENT - EXTENSION pgcrypto \n"
        "4; 3079 16386 EXTENSION - pg_stat_statements \n"
        "5; 0 0 COMMENT - EXTENSION pg_stat_statements \n"
        "220; 1259 16400 TABLE public events erc8004\n"
        "3001; 0 16400 TABLE DATA public events erc8004\n"
    )
    skipped = tmp_path / "skipped"

    def skip(trusted: str) -> str:
        skipped.write_text("")
        result = subprocess.run(
            ["sh", "-c", '. "$0"; skip_extensions "$1" "$2"', str(SCRIPT), trusted, str(skipped)],
            input=listing,
            env={"PATH": os.environ["PATH"], "ERC8004_BACKUP_SOURCED": "1"},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    kept = skip("pgcrypto plpgsql")
    assert "pg_stat_statements" not in kept
    assert "EXTENSION - pgcrypto" in kept
    assert "COMMENT - EXTENSION pgcrypto" in kept
    assert "TABLE DATA public events" in kept
    assert skipped.read_text().split() == ["pg_stat_statements", "pg_stat_statements"]
    assert skip("*") == listing  # a superuser restores every entry
    assert skipped.read_text() == ""
