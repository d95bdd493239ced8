"""Move credential headers that REST actions hold in the clear into their encrypted
``secret_headers`` (once, after upgrading to the release that has them).

    python -m tools.seal_headers [--dry-run] [--batch 500]

Before secret headers existed, an ``Authorization`` or ``X-Api-Key`` header could only
be given in a REST action's ``headers``: stored in ``trigger_actions.config`` as it
is, returned by the API, carried in every job on Kafka. This finds such headers
(the names in ``shared.contract.actions.CREDENTIAL_HEADERS``, any case), encrypts them with
``SECRETS_KEY`` into ``secret_headers_ciphertext`` (merged with secret headers the
action has already) and removes them from ``config``: one transaction per batch,
each row locked, so the API editing the same action waits or is waited for. Running
it again finds nothing. Reads DATABASE_URL (the schema owner's login: row-level
security does not hide other users' actions from it) and SECRETS_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog

from shared.contract.actions import CREDENTIAL_HEADERS
from shared.platform.db import register_codecs
from shared.platform.entrypoint import cli_parser
from shared.platform.logging import configure_logging
from shared.platform.secrets import SecretBox

log = structlog.get_logger(__name__)

#: REST actions whose clear headers name a credential (any case).
CANDIDATES = """
SELECT a.id FROM trigger_actions a
WHERE a.action_type = 'rest' AND a.id > $1
  AND EXISTS (SELECT 1 FROM jsonb_object_keys(coalesce(a.config -> 'headers', '{}')) k
              WHERE lower(k) = any($2::text[]))
ORDER BY a.id LIMIT $3
"""


@dataclass
class Report:
    actions: int = 0
    headers: int = 0


async def seal(
    conn: asyncpg.Connection, box: SecretBox, *, batch: int = 500, dry_run: bool = False
) -> Report:
    report = Report()
    names = sorted(CREDENTIAL_HEADERS)
    after = 0
    while True:
        ids = [r["id"] for r in await conn.fetch(CANDIDATES, after, names, batch)]
        if not ids:
            return report
        after = ids[-1]
        async with conn.transaction():
            rows = await conn.fetch(
                """SELECT id, config, secret_headers_ciphertext FROM trigger_actions
                   WHERE id = any($1::int[]) FOR UPDATE""",
                ids,
            )
            for row in rows:
                moved = await _seal_row(conn, box, row, dry_run=dry_run)
                if moved:
                    report.actions += 1
                    report.headers += moved
        log.info("sealing credential headers", actions=report.actions, headers=report.headers)


async def _seal_row(
    conn: asyncpg.Connection, box: SecretBox, row: asyncpg.Record, *, dry_run: bool
) -> int:
    config: dict[str, Any] = dict(row["config"])
    clear: dict[str, str] = dict(config.get("headers") or {})
    credentials = {k: v for k, v in clear.items() if k.lower() in CREDENTIAL_HEADERS}
    if not credentials:
        return 0  # changed since it was found
    context = f"trigger_actions:{row['id']}:headers"
    secret: dict[str, str] = {}
    if row["secret_headers_ciphertext"] is not None:
        secret = orjson.loads(box.decrypt(row["secret_headers_ciphertext"], context=context))
    # A name already among the secret headers keeps its secret value.
    taken = {k.lower() for k in secret}
    secret.update({k: v for k, v in credentials.items() if k.lower() not in taken})
    config["headers"] = {k: v for k, v in clear.items() if k not in credentials}
    if dry_run:
        log.info("would seal", action_id=row["id"], headers=sorted(credentials))
        return len(credentials)
    await conn.execute(
        """UPDATE trigger_actions
           SET config = $2, secret_headers_ciphertext = $3, secret_header_names = $4
           WHERE id = $1""",
        row["id"],
        config,
        box.encrypt(orjson.dumps(secret).decode(), context=context),
        sorted(secret),
    )
    return len(credentials)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "tools.seal_headers",
        "Move credential headers that REST actions hold in the clear into their encrypted"
        " secret_headers (once, after upgrading to the release that has them). Reads"
        " DATABASE_URL (the schema owner's login) and SECRETS_KEY.",
    )
    parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
    parser.add_argument("--batch", type=int, default=500, help="actions per transaction")
    return parser


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(build_parser().parse_args(argv)))


async def run(args: argparse.Namespace) -> None:
    configure_logging(service="seal-headers")
    box = SecretBox(os.environ["SECRETS_KEY"])
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await register_codecs(conn)
        report = await seal(conn, box, batch=max(1, args.batch), dry_run=args.dry_run)
    finally:
        await conn.close()
    verb = "would move" if args.dry_run else "moved"
    print(f"{verb} {report.headers} credential header(s) of {report.actions} action(s)")  # noqa: T201


if __name__ == "__main__":
    main()
