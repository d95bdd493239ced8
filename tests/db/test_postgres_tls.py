"""PostgreSQL over TLS against the local cluster, which deploy/local/postgres.sh
starts with TLS on (the server certificate signed by the local CA of
deploy/local/tls.sh): ``sslmode=verify-full`` with that CA connects, encrypted,
for the services' pools and for tools.migrate (dbmate) alike; a server the CA did
not sign, or a name the certificate does not hold, is refused."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.platform.db import create_pool
from tests.conftest import ENV, ROOT
from tools.benchdb import scratch_database
from tools.migrate import dbmate_url

pytestmark = [
    pytest.mark.db,
    pytest.mark.skipif(
        os.environ.get("LOCAL_DB", "1") != "1",
        reason="needs the local cluster, which runs with the local CA's certificate",
    ),
]

CA = ROOT / ".run" / "tls" / "ca.pem"


def with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query)) | params
    return parts._replace(query=urllib.parse.urlencode(query)).geturl()


def with_host(url: str, host: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{netloc[0]}@{host}:{parts.port}").geturl()


async def tls_of(conn: asyncpg.Connection) -> tuple[bool, str | None]:
    row = await conn.fetchrow("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert row is not None
    return bool(row["ssl"]), row["version"]


@pytest.fixture
def verify_full(database_url: str) -> str:
    return with_query(database_url, sslmode="verify-full", sslrootcert=str(CA))


async def test_verify_full_with_the_ca_connects_encrypted(verify_full: str) -> None:
    conn = await asyncpg.connect(verify_full)
    try:
        on, version = await tls_of(conn)
    finally:
        await conn.close()
    assert on
    assert version in ("TLSv1.2", "TLSv1.3")


async def test_a_services_pool_connects_over_tls(verify_full: str) -> None:
    """shared.platform.db.create_pool, which every service opens from DATABASE_URL."""
    pool = await create_pool(verify_full, application_name="tls-test", min_size=3, max_size=3)
    try:
        results = await asyncio.gather(*(pool.fetchval("SELECT 1") for _ in range(6)))
        assert results == [1] * 6
        rows = await pool.fetch(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'tls-test'"
        )
    finally:
        await pool.close()
    assert len(rows) == 3
    assert all(r["ssl"] for r in rows)


def other_ca(path: Path) -> Path:
    """A CA of the test's own, which signed nothing the server holds."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the local CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def test_a_server_another_ca_signed_is_refused(database_url: str, tmp_path: Path) -> None:
    url = with_query(
        database_url, sslmode="verify-full", sslrootcert=str(other_ca(tmp_path / "ca.pem"))
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(url)


async def test_verify_full_takes_each_name_the_certificate_holds(database_url: str) -> None:
    """The server certificate names 127.0.0.1 and localhost (and ::1, where the local
    cluster does not listen): verify-full connects by either name."""
    local = with_query(database_url, sslmode="verify-full", sslrootcert=str(CA))
    for host in ("127.0.0.1", "localhost"):
        conn = await asyncpg.connect(with_host(local, host))
        try:
            assert (await tls_of(conn))[0]
        finally:
            await conn.close()


@pytest.fixture
async def empty_database(admin_url: str) -> AsyncIterator[str]:
    name = f"erc8004_tls_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urllib.parse.urlsplit(admin_url)._replace(path=f"/{name}").geturl()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def migrate(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.migrate", *args],
        env={**os.environ, **ENV, "DATABASE_URL": url, "MIGRATE_WAIT_TIMEOUT": "2"},
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def migrations_written() -> int:
    return len(list((ROOT / "db" / "migrations").glob("*.sql")))


async def migrations_applied(url: str) -> int:
    """The migrations the database at ``url`` records as applied."""
    conn = await asyncpg.connect(url)
    try:
        applied: int = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    return applied


async def test_tools_migrate_applies_the_migrations_over_verify_full(
    empty_database: str, tmp_path: Path
) -> None:
    url = with_query(empty_database, sslmode="verify-full", sslrootcert=str(CA))
    done = await asyncio.to_thread(migrate, url, "up", "--no-topics")
    assert done.returncode == 0, done.stderr[-3000:]
    assert await migrations_applied(url) == migrations_written()
    # dbmate checks the certificate too: another CA fails, and no password is printed
    bad = with_query(
        empty_database, sslmode="verify-full", sslrootcert=str(other_ca(tmp_path / "x.pem"))
    )
    refused = await asyncio.to_thread(migrate, bad, "status")
    assert refused.returncode != 0
    assert "dbmate status failed" in refused.stderr
    password = urllib.parse.urlsplit(empty_database).password
    assert password
    assert password not in refused.stdout + refused.stderr


@pytest.mark.unit
def test_dbmate_gets_an_sslmode_it_knows() -> None:
    """dbmate's driver has no prefer/allow: they become what they would mean."""
    base = "postgresql://u:p@127.0.0.1:5432/d"

    def mode(url: str, server_tls: bool | None = None) -> dict[str, str]:
        built = dbmate_url(url, server_tls=server_tls)
        assert built.startswith("postgres://u:p@127.0.0.1:5432/d")
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(built).query))

    assert mode(base, server_tls=True) == {"sslmode": "require"}
    assert mode(base, server_tls=False) == {"sslmode": "disable"}
    assert mode(base + "?sslmode=allow", server_tls=True) == {"sslmode": "require"}
    full = mode(base + "?sslmode=verify-full&sslrootcert=/ca.pem")
    assert full == {"sslmode": "verify-full", "sslrootcert": "/ca.pem"}
    assert mode(base + "?sslmode=disable") == {"sslmode": "disable"}
    with pytest.raises(SystemExit, match="unknown sslmode"):
        dbmate_url(base + "?sslmode=sometimes")


async def test_a_database_is_migrated_from_inside_an_event_loop(admin_url: str) -> None:
    """The benchmarks and chaos runs migrate their scratch databases from inside one
    (tools.benchdb): the sslmode probe then runs in a thread of its own."""
    async with scratch_database(admin_url, "tls_loop") as url:
        assert await migrations_applied(url) == migrations_written()
