"""tools.seal_headers against PostgreSQL: clear credential headers of stored REST
actions move into their encrypted secret headers, once."""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from shared.platform.secrets import SecretBox
from tests.conftest import ENV
from tests.matcherutil import insert_trigger, insert_user
from tools.seal_headers import seal

pytestmark = [pytest.mark.db]


async def rest_action(db: asyncpg.Connection, config: dict[str, object]) -> int:
    user = await insert_user(db)
    trigger = await insert_trigger(
        db,
        user_id=user,
        chain_id=8453,
        registry="reputation",
        conditions=[{"condition_type": "event_type_equals", "operator": "=", "value": "X"}],
        actions=[{"action_type": "rest", "config": config}],
    )
    action_id: int = await db.fetchval(
        "SELECT id FROM trigger_actions WHERE trigger_id = $1", trigger
    )
    return action_id


async def test_clear_credentials_move_into_secret_headers_once(db: asyncpg.Connection) -> None:
    box = SecretBox(ENV["SECRETS_KEY"])
    legacy = await rest_action(
        db,
        {"url": "https://a.example/h",
         "headers": {"authorization": "Bearer old-1", "X-Source": "e", "X-API-KEY": "k-1"}},
    )  # fmt: skip
    # one that has a secret header already: its secret value wins over a clear one
    mixed = await rest_action(
        db, {"url": "https://b.example/h", "headers": {"Authorization": "clear", "Cookie": "c=1"}}
    )
    context = f"trigger_actions:{mixed}:headers"
    await db.execute(
        "UPDATE trigger_actions SET secret_headers_ciphertext = $2,"
        " secret_header_names = $3 WHERE id = $1",
        mixed,
        box.encrypt(orjson.dumps({"authorization": "Bearer kept"}).decode(), context=context),
        ["authorization"],
    )
    clean = await rest_action(db, {"url": "https://c.example/h", "headers": {"X-Source": "e"}})
    before = await db.fetch("SELECT id, config FROM trigger_actions ORDER BY id")

    dry = await seal(db, box, dry_run=True)
    assert (dry.actions, dry.headers) == (2, 4)
    assert await db.fetch("SELECT id, config FROM trigger_actions ORDER BY id") == before

    done = await seal(db, box, batch=1)
    assert (done.actions, done.headers) == (2, 4)
    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, config, secret_headers_ciphertext, secret_header_names FROM trigger_actions"
        )
    }
    assert rows[legacy]["config"]["headers"] == {"X-Source": "e"}
    assert rows[legacy]["secret_header_names"] == ["X-API-KEY", "authorization"]
    secret = box.decrypt(
        rows[legacy]["secret_headers_ciphertext"], context=f"trigger_actions:{legacy}:headers"
    )
    assert orjson.loads(secret) == {"authorization": "Bearer old-1", "X-API-KEY": "k-1"}
    assert rows[mixed]["config"]["headers"] == {}
    secret = box.decrypt(rows[mixed]["secret_headers_ciphertext"], context=context)
    assert orjson.loads(secret) == {"authorization": "Bearer kept", "Cookie": "c=1"}
    assert rows[clean]["secret_headers_ciphertext"] is None
    assert rows[clean]["config"]["headers"] == {"X-Source": "e"}

    again = await seal(db, box)
    assert (again.actions, again.headers) == (0, 0)
