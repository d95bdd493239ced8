"""Re-encrypt every stored secret under the newest key of ``SECRETS_KEY``, so an
older key can be removed.

    python -m tools.rotate_secrets [--batch 500]    # re-encrypt
    python -m tools.rotate_secrets --dry-run        # count what would change, change nothing
    python -m tools.rotate_secrets --check          # exit 0 only when nothing is left to do

``SECRETS_KEY`` lists Fernet keys, newest first (``new,old``): the first encrypts,
all decrypt (shared/platform/secrets.py). This walks every ciphertext column
(:data:`COLUMNS`) in primary-key order, a batch of rows per transaction, each row
locked (``FOR UPDATE``), so the API changing the same row waits or is waited for
and never has its new value overwritten with a stale one. A ciphertext that the
newest key alone decrypts is left as it is, so running it again changes nothing.
Every ciphertext must decrypt for its own row (its context); one that does not is
reported by table, column and primary key (never its content), left as it is, and
makes the exit status 1, while the others are still re-encrypted. ``--check``
exits 1 as well while any ciphertext still needs an older key.

Reads DATABASE_URL (the schema owner's login: row-level security does not hide
other users' rows from it) and SECRETS_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from shared.contract.actions import mcp_token_context
from shared.platform.entrypoint import cli_parser
from shared.platform.logging import configure_logging
from shared.platform.secrets import SecretBox, SecretDecryptError, SecretsKeyError

log = structlog.get_logger(__name__)

APPLICATION_NAME = "erc8004-rotate-secrets"


@dataclass(frozen=True)
class Column:
    """A column of ciphertexts: its table's primary key (in the key's order) and
    the context each row's ciphertext is bound to (what the API encrypts with)."""

    table: str
    column: str
    key: tuple[str, ...]
    context: Callable[[asyncpg.Record], str]

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


def _signing_secret(row: asyncpg.Record) -> str:
    return f"trigger_actions:{row['id']}"


def _secret_headers(row: asyncpg.Record) -> str:
    return f"trigger_actions:{row['id']}:headers"


def _mcp_token(row: asyncpg.Record) -> str:
    return mcp_token_context(row["chain_id"], row["agent_id"], row["agent_registry"])


#: Every column that holds a SECRETS_KEY ciphertext (tests/db/test_rotate_secrets.py
#: compares this with the bytea columns of the schema).
COLUMNS = (
    Column("trigger_actions", "secret_ciphertext", ("id",), _signing_secret),
    Column("trigger_actions", "secret_headers_ciphertext", ("id",), _secret_headers),
    Column(
        "agent_mcp_tokens",
        "token_ciphertext",
        ("chain_id", "agent_registry", "agent_id"),
        _mcp_token,
    ),
)


@dataclass
class ColumnReport:
    column: Column
    total: int = 0
    #: rows looked at (the progress towards ``total``)
    done: int = 0
    #: under an older key: re-encrypted (or, dry, would be)
    older: int = 0
    #: under the newest key already
    newest: int = 0
    #: primary keys of the rows whose ciphertext does not decrypt for them
    unreadable: list[dict[str, Any]] = field(default_factory=list)


def _select(col: Column, *, after: bool, lock: bool) -> str:
    """The next batch of non-null ciphertexts in primary-key order: after the key
    given as the first parameters (when ``after``), the batch size last."""
    keys = ", ".join(col.key)
    where = f"{col.column} IS NOT NULL"
    n = len(col.key) if after else 0
    if after:
        where += f" AND ({keys}) > ({', '.join(f'${i}' for i in range(1, n + 1))})"
    return (
        f"SELECT {keys}, {col.column} AS ciphertext FROM {col.table}"  # noqa: S608 (names from COLUMNS)
        f" WHERE {where} ORDER BY {keys} LIMIT ${n + 1}" + (" FOR UPDATE" if lock else "")
    )


def _update(col: Column) -> str:
    match = " AND ".join(f"{k} = ${i}" for i, k in enumerate(col.key, start=2))
    return f"UPDATE {col.table} SET {col.column} = $1 WHERE {match}"  # noqa: S608 (names from COLUMNS)


async def rotate_column(
    conn: asyncpg.Connection, box: SecretBox, col: Column, *, batch: int, write: bool
) -> ColumnReport:
    """Re-encrypt ``col`` under the newest key (only count, when not ``write``)."""
    report = ColumnReport(col)
    count = f"SELECT count(*) FROM {col.table} WHERE {col.column} IS NOT NULL"  # noqa: S608 (names from COLUMNS)
    report.total = await conn.fetchval(count)
    last: tuple[Any, ...] = ()
    while True:
        async with conn.transaction(readonly=not write):
            rows = await conn.fetch(_select(col, after=bool(last), lock=write), *last, batch)
            stale = [row for row in rows if _needs_rotation(box, col, row, report)]
            if write and stale:
                await conn.executemany(
                    _update(col),
                    [(box.rotate(r["ciphertext"]), *(r[k] for k in col.key)) for r in stale],
                )
        if not rows:
            return report
        last = tuple(rows[-1][k] for k in col.key)
        report.done += len(rows)
        log.info(
            "re-encrypting" if write else "checking",
            table=col.table,
            column=col.column,
            done=report.done,
            total=report.total,
        )


def _needs_rotation(box: SecretBox, col: Column, row: asyncpg.Record, report: ColumnReport) -> bool:
    ciphertext: bytes = row["ciphertext"]
    try:
        box.decrypt(ciphertext, context=col.context(row))
    except SecretDecryptError as exc:
        key = {k: row[k] for k in col.key}
        report.unreadable.append(key)
        log.error(
            "ciphertext does not decrypt",
            table=col.table,
            column=col.column,
            row=key,
            reason=str(exc),
        )
        return False
    if box.is_newest(ciphertext):
        report.newest += 1
        return False
    report.older += 1
    return True


async def refuse_hidden_rows(conn: asyncpg.Connection) -> None:
    """Stop when row-level security would hide rows from this login: a rotation
    that cannot see every row would report success and leave old ciphertexts."""
    for table in sorted({c.table for c in COLUMNS}):
        if await conn.fetchval("SELECT row_security_active($1::regclass)", table):
            raise SystemExit(
                f"[rotate-secrets] row-level security hides rows of {table} from this"
                " login: DATABASE_URL must be the schema owner's"
            )


async def rotate(
    conn: asyncpg.Connection, box: SecretBox, *, batch: int = 500, write: bool = True
) -> list[ColumnReport]:
    await refuse_hidden_rows(conn)
    return [await rotate_column(conn, box, c, batch=batch, write=write) for c in COLUMNS]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "tools.rotate_secrets",
        "Re-encrypt every stored secret (webhook signing secrets, secret headers, agents'"
        " MCP tokens) under the first key of SECRETS_KEY, so the older keys can be"
        " removed; a ciphertext no key decrypts is reported by table, column and primary"
        " key and makes the exit status 1. Reads DATABASE_URL (the schema owner's login)"
        " and SECRETS_KEY (newest key first, comma-separated).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would be re-encrypted and check that every ciphertext decrypts;"
        " change nothing",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 0 only when every ciphertext is under the first key"
        " already (then the older keys can be removed)",
    )
    parser.add_argument(
        "--batch", type=positive, default=500, help="rows per transaction (each locked)"
    )
    return parser


def summary(reports: list[ColumnReport], *, write: bool) -> list[str]:
    verb = "re-encrypted" if write else "under an older key"
    return [
        f"{r.column.name}: {r.done} ciphertext(s), {r.older} {verb},"
        f" {r.newest} under the newest key already, {len(r.unreadable)} not decrypting"
        for r in reports
    ]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        parser.error("DATABASE_URL is not set")
    try:
        box = SecretBox(os.environ.get("SECRETS_KEY", ""))
    except SecretsKeyError as exc:
        parser.error(str(exc))
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), service="rotate-secrets")
    write = not (args.dry_run or args.check)
    reports = asyncio.run(run(database_url, box, batch=args.batch, write=write))
    for line in summary(reports, write=write):
        print(line, flush=True)  # noqa: T201
    unreadable = sum(len(r.unreadable) for r in reports)
    older = sum(r.older for r in reports)
    if unreadable:
        raise SystemExit(
            f"[rotate-secrets] {unreadable} ciphertext(s) decrypt with no key of SECRETS_KEY"
            " for their row (logged above by table, column and primary key)"
        )
    if args.check and older:
        raise SystemExit(
            f"[rotate-secrets] {older} ciphertext(s) still need an older key: run"
            " python -m tools.rotate_secrets before removing it"
        )
    if not write:
        print(  # noqa: T201
            "every ciphertext decrypts"
            + ("; every one is under the first key" if not older else ""),
            flush=True,
        )


async def run(database_url: str, box: SecretBox, *, batch: int, write: bool) -> list[ColumnReport]:
    conn = await asyncpg.connect(
        database_url, server_settings={"application_name": APPLICATION_NAME}
    )
    try:
        return await rotate(conn, box, batch=batch, write=write)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
