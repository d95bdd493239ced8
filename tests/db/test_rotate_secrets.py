"""tools.rotate_secrets against PostgreSQL, run as the operator runs it (a process
with SECRETS_KEY="new,old"): every stored secret ends up under the new key alone,
bound to its own row; --check tells when the old key can go; a ciphertext no key
opens is named and fails the run without stopping the others; no secret is ever
printed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from cryptography.fernet import Fernet

from shared.contract.actions import mcp_token_context
from shared.platform.secrets import SecretBox, SecretDecryptError
from tests.matcherutil import insert_trigger, insert_user
from tools.rotate_secrets import APPLICATION_NAME, COLUMNS

pytestmark = [pytest.mark.db]

ROOT = Path(__file__).resolve().parents[2]
CHAIN = 84532
REGISTRY = "0x" + "02" * 20
OWNER = "0x" + "a1" * 20
NEW, OLD, LOST = (Fernet.generate_key().decode() for _ in range(3))
#: bytea columns that hold no SECRETS_KEY ciphertext
NOT_CIPHERTEXT = {"event_outbox.payload", "telegram_link_codes.code_sha256"}


@dataclass
class Run:
    returncode: int
    out: str

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of ``event``."""
        lines = (orjson.loads(line) for line in self.out.splitlines() if line.startswith("{"))
        return [entry for entry in lines if entry.get("event") == event]

    def unreadable(self) -> set[tuple[str, str, str]]:
        """(table, column, primary key as JSON) of each ciphertext logged as not
        decrypting."""
        return {
            (e["table"], e["column"], orjson.dumps(e["row"], option=orjson.OPT_SORT_KEYS).decode())
            for e in self.logged("ciphertext does not decrypt")
        }


def tool_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "SECRETS_KEY": f"{NEW},{OLD}"}


def rotate_secrets(database_url: str, *args: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "tools.rotate_secrets", *args],
        cwd=ROOT,
        env=tool_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Run(done.returncode, done.stdout + done.stderr)


def key_json(**key: Any) -> str:
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()


async def action(db: asyncpg.Connection) -> int:
    trigger = await insert_trigger(
        db,
        user_id=await insert_user(db),
        chain_id=CHAIN,
        conditions=[{"condition_type": "event_type_equals", "operator": "=", "value": "X"}],
        actions=[{"action_type": "rest", "config": {"url": "https://a.example/h"}}],
    )
    action_id: int = await db.fetchval(
        "SELECT id FROM trigger_actions WHERE trigger_id = $1", trigger
    )
    return action_id


async def set_secret(
    db: asyncpg.Connection, action_id: int, column: str, value: bytes | None
) -> None:
    assert column in ("secret_ciphertext", "secret_headers_ciphertext")
    await db.execute(f"UPDATE trigger_actions SET {column} = $2 WHERE id = $1", action_id, value)


def signing(action_id: int) -> str:
    return f"trigger_actions:{action_id}"


def headers(action_id: int) -> str:
    return f"trigger_actions:{action_id}:headers"


async def insert_token(
    db: asyncpg.Connection, agent_id: int, registry: str, ciphertext: bytes
) -> None:
    await db.execute(
        "INSERT INTO agent_mcp_tokens (chain_id, agent_id, agent_registry, token_ciphertext,"
        " owner_address) VALUES ($1, $2, $3, $4, $5)",
        CHAIN,
        agent_id,
        registry,
        ciphertext,
        OWNER,
    )


async def ciphertexts(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return [
        *await db.fetch(
            "SELECT id, secret_ciphertext, secret_headers_ciphertext FROM trigger_actions"
            " ORDER BY id"
        ),
        *await db.fetch(
            "SELECT chain_id, agent_registry, agent_id, token_ciphertext FROM agent_mcp_tokens"
            " ORDER BY chain_id, agent_registry, agent_id"
        ),
    ]


async def test_every_ciphertext_column_of_the_schema_is_rotated(db: asyncpg.Connection) -> None:
    """A new column of ciphertexts joins tools.rotate_secrets.COLUMNS (or, holding
    no ciphertext, NOT_CIPHERTEXT here)."""
    rows = await db.fetch(
        """SELECT c.table_name || '.' || c.column_name AS name
           FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
             AND c.data_type = 'bytea'"""
    )
    assert {r["name"] for r in rows} == {c.name for c in COLUMNS} | NOT_CIPHERTEXT


async def test_every_secret_moves_under_the_new_key_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    old, new = SecretBox(OLD), SecretBox(NEW)
    plain: dict[tuple[str, Any], str] = {}  # (context, column) -> secret

    actions = [await action(db) for _ in range(5)]
    a0, a1, a2, a3, a4 = actions
    for action_id, column, context, box in [
        (a0, "secret_ciphertext", signing(a0), old),
        (a0, "secret_headers_ciphertext", headers(a0), old),
        (a1, "secret_ciphertext", signing(a1), old),
        (a2, "secret_headers_ciphertext", headers(a2), new),  # under the new key already
        (a4, "secret_ciphertext", signing(a4), old),
    ]:
        secret = f"s3cr3t-{column}-{action_id}-{os.urandom(4).hex()}"
        plain[(context, column)] = secret
        await set_secret(db, action_id, column, box.encrypt(secret, context=context))
    for agent_id, registry in [(5, ""), (5, REGISTRY), (6, "")]:
        context = mcp_token_context(CHAIN, agent_id, registry)
        secret = f"mcp-token-{agent_id}-{registry}-{os.urandom(4).hex()}"
        plain[(context, "token_ciphertext")] = secret
        await insert_token(db, agent_id, registry, old.encrypt(secret, context=context))
    seeded = await ciphertexts(db)
    already = seeded[actions.index(a2)]["secret_headers_ciphertext"]

    before = rotate_secrets(database_url, "--check")
    assert before.returncode == 1
    assert "7 ciphertext(s) still need an older key" in before.out

    dry = rotate_secrets(database_url, "--dry-run")
    assert dry.returncode == 0, dry.out
    assert await ciphertexts(db) == seeded
    assert "trigger_actions.secret_ciphertext: 3 ciphertext(s), 3 under an older key" in dry.out
    assert (
        "trigger_actions.secret_headers_ciphertext: 2 ciphertext(s), 1 under an older key,"
        " 1 under the newest key already, 0 not decrypting"
    ) in dry.out

    done = rotate_secrets(database_url, "--batch", "2")
    assert done.returncode == 0, done.out
    assert "agent_mcp_tokens.token_ciphertext: 3 ciphertext(s), 3 re-encrypted" in done.out
    progress = [
        (e["table"], e["column"], e["done"], e["total"]) for e in done.logged("re-encrypting")
    ]
    assert progress[:2] == [
        ("trigger_actions", "secret_ciphertext", 2, 3),
        ("trigger_actions", "secret_ciphertext", 3, 3),
    ]
    rotated = await ciphertexts(db)
    opened: dict[tuple[str, Any], str] = {}
    for row in rotated:
        if "id" in row:
            for column, context in [
                ("secret_ciphertext", signing(row["id"])),
                ("secret_headers_ciphertext", headers(row["id"])),
            ]:
                if row[column] is not None:
                    opened[(context, column)] = new.decrypt(row[column], context=context)
        else:
            context = mcp_token_context(row["chain_id"], row["agent_id"], row["agent_registry"])
            opened[(context, "token_ciphertext")] = new.decrypt(
                row["token_ciphertext"], context=context
            )
    assert opened == plain
    assert rotated[actions.index(a3)]["secret_ciphertext"] is None
    assert rotated[actions.index(a2)]["secret_headers_ciphertext"] == already  # left alone
    with pytest.raises(SecretDecryptError):
        old.decrypt(rotated[0]["secret_ciphertext"], context=signing(a0))

    after = rotate_secrets(database_url, "--check")
    assert after.returncode == 0, after.out
    again = rotate_secrets(database_url)
    assert again.returncode == 0, again.out
    assert await ciphertexts(db) == rotated  # nothing re-encrypted twice

    for run in (before, dry, done, after, again):
        assert not [s for s in plain.values() if s in run.out]


async def test_a_ciphertext_no_key_opens_is_named_and_the_others_still_rotate(
    db: asyncpg.Connection, database_url: str
) -> None:
    old = SecretBox(OLD)
    lost, copied, fine = [await action(db) for _ in range(3)]
    await set_secret(
        db, lost, "secret_ciphertext", SecretBox(LOST).encrypt("lost-s3cr3t", context=signing(lost))
    )
    # a ciphertext of another row: decrypts, but is not this row's
    await set_secret(
        db,
        copied,
        "secret_headers_ciphertext",
        old.encrypt('{"authorization":"copied-s3cr3t"}', context=headers(fine)),
    )
    await set_secret(
        db, fine, "secret_ciphertext", old.encrypt("fine-s3cr3t", context=signing(fine))
    )
    await insert_token(db, 7, "", b"not a fernet token")
    token = mcp_token_context(CHAIN, 8, REGISTRY)
    await insert_token(db, 8, REGISTRY, old.encrypt("token-s3cr3t", context=token))
    seeded = await ciphertexts(db)
    bad = {
        ("trigger_actions", "secret_ciphertext", key_json(id=lost)),
        ("trigger_actions", "secret_headers_ciphertext", key_json(id=copied)),
        (
            "agent_mcp_tokens",
            "token_ciphertext",
            key_json(chain_id=CHAIN, agent_registry="", agent_id=7),
        ),
    }

    dry = rotate_secrets(database_url, "--dry-run")
    assert dry.returncode == 1
    assert dry.unreadable() == bad
    assert await ciphertexts(db) == seeded

    done = rotate_secrets(database_url, "--batch", "1")
    assert done.returncode == 1
    assert done.unreadable() == bad
    assert "3 ciphertext(s) decrypt with no key of SECRETS_KEY" in done.out
    new = SecretBox(NEW)
    stored = await db.fetchval("SELECT secret_ciphertext FROM trigger_actions WHERE id = $1", fine)
    assert new.decrypt(stored, context=signing(fine)) == "fine-s3cr3t"
    stored = await db.fetchval(
        "SELECT token_ciphertext FROM agent_mcp_tokens WHERE agent_id = 8 AND agent_registry = $1",
        REGISTRY,
    )
    assert new.decrypt(stored, context=token) == "token-s3cr3t"
    untouched = {r["id"]: r for r in seeded if "id" in r}
    now = {r["id"]: r for r in await ciphertexts(db) if "id" in r}
    assert now[lost]["secret_ciphertext"] == untouched[lost]["secret_ciphertext"]
    assert (
        now[copied]["secret_headers_ciphertext"] == untouched[copied]["secret_headers_ciphertext"]
    )

    check = rotate_secrets(database_url, "--check")
    assert check.returncode == 1
    await set_secret(db, lost, "secret_ciphertext", None)
    await set_secret(db, copied, "secret_headers_ciphertext", None)
    await db.execute("DELETE FROM agent_mcp_tokens WHERE agent_id = 7")
    assert rotate_secrets(database_url, "--check").returncode == 0

    for run in (dry, done, check):
        assert "s3cr3t" not in run.out


async def test_a_row_the_api_changes_meanwhile_keeps_its_new_secret(
    db: asyncpg.Connection, database_url: str
) -> None:
    """The API replaces a secret while the tool is at that row: the tool waits for
    it and re-encrypts the new secret, never the one it would have read before."""
    old = SecretBox(OLD)
    action_id = await action(db)
    await set_secret(
        db, action_id, "secret_ciphertext", old.encrypt("first", context=signing(action_id))
    )
    api = await asyncpg.connect(database_url)
    try:
        async with api.transaction():
            await api.execute(
                "UPDATE trigger_actions SET secret_ciphertext = $2 WHERE id = $1",
                action_id,
                old.encrypt("second", context=signing(action_id)),
            )
            tool = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tools.rotate_secrets",
                cwd=ROOT,
                env=tool_env(database_url),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            deadline = time.monotonic() + 30
            while not await db.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = $1 AND wait_event_type = 'Lock'
                     AND datname = current_database()""",
                APPLICATION_NAME,
            ):
                assert tool.returncode is None, "the tool ended without waiting for the row"
                assert time.monotonic() < deadline, "the tool never waited for the locked row"
                await asyncio.sleep(0.05)
        out, _ = await asyncio.wait_for(tool.communicate(), timeout=60)
    finally:
        await api.close()
    assert tool.returncode == 0, out.decode()
    stored = await db.fetchval(
        "SELECT secret_ciphertext FROM trigger_actions WHERE id = $1", action_id
    )
    assert SecretBox(NEW).decrypt(stored, context=signing(action_id)) == "second"
