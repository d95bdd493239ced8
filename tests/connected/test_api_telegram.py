"""The Telegram resource against the API in process: link codes (one-time, stored as
a hash, limited per user), the chats a user linked (listed and removed by that user
only), and triggers refused (422, nothing written) when a Telegram action names a
chat its user did not link (issue 14, item 4: a user made the shared bot post into
another tenant's chat)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.apiutil import (
    REST_ACTION,
    TELEGRAM_ACTION,
    Client,
    a_trigger,
    api_client,
    link_chat,
    signup,
    user_of,
)

pytestmark = [pytest.mark.db, pytest.mark.kafka]

CHAIN = 84532


@pytest.fixture
async def client(database_url: str, kafka_bootstrap: str) -> AsyncIterator[Client]:
    async with api_client(
        database_url, kafka_bootstrap, telegram_bot_username="Erc8004AlertsBot"
    ) as client:
        yield client


def telegram(chat_id: str) -> dict[str, object]:
    return {"action_type": "telegram", "config": {"chat_id": chat_id, "message_template": "hi"}}


async def test_a_link_code_is_shown_once_stored_as_a_hash_and_limited_per_user(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    resp = await client.post("/v1/telegram/link-codes", headers=auth)
    assert resp.status == 201, await resp.text()
    out = await resp.json()
    code = out["code"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", code)
    assert out["command"] == f"/start {code}"
    assert out["links"] == {
        "private": f"https://t.me/Erc8004AlertsBot?start={code}",
        "group": f"https://t.me/Erc8004AlertsBot?startgroup={code}",
    }
    expires = datetime.fromisoformat(out["expires_at"])
    assert timedelta(minutes=14) < expires - datetime.now(UTC) <= timedelta(minutes=15)
    (row,) = await db.fetch("SELECT * FROM telegram_link_codes")
    assert row["code_sha256"] == hashlib.sha256(code.encode()).digest()
    assert row["user_id"] == user_of(auth)
    assert code not in str(dict(row))

    # Ten unused codes at a time (MAX_LINK_CODES_PER_USER), another user unaffected.
    for _ in range(9):
        assert (await client.post("/v1/telegram/link-codes", headers=auth)).status == 201
    refused = await client.post("/v1/telegram/link-codes", headers=auth)
    assert refused.status == 409
    assert "10 link codes" in (await refused.json())["error"]
    other = await signup(client)
    assert (await client.post("/v1/telegram/link-codes", headers=other)).status == 201
    # A spent code frees its place (and is cleared out with the next one).
    await db.execute(
        "UPDATE telegram_link_codes SET used_at = now() WHERE code_sha256 = $1",
        hashlib.sha256(code.encode()).digest(),
    )
    assert (await client.post("/v1/telegram/link-codes", headers=auth)).status == 201
    assert (
        await db.fetchval("SELECT count(*) FROM telegram_link_codes WHERE used_at IS NOT NULL") == 0
    )
    # Without a login, nothing.
    assert (await client.post("/v1/telegram/link-codes")).status == 401


async def test_a_trigger_may_name_only_a_chat_its_user_linked(
    client: Client, db: asyncpg.Connection
) -> None:
    alice, mallory = await signup(client), await signup(client)
    await link_chat(db, alice, "-1001234567890", chat_type="channel", username="alicealerts")

    # The attack: Mallory names Alice's channel (by id or by name), or any other chat.
    for chat in ("-1001234567890", "@alicealerts", "@AliceAlerts", "42"):
        body = a_trigger(CHAIN, actions=[REST_ACTION, telegram(chat)])
        resp = await client.post("/v1/triggers", json=body, headers=mallory)
        assert resp.status == 422, (chat, await resp.text())
        (error,) = (await resp.json())["details"]
        assert error["loc"] == ["body", "actions", 1, "config", "chat_id"]
        assert "not linked" in error["message"]
        assert "/v1/telegram/link-codes" in error["message"]
    assert await db.fetchval("SELECT count(*) FROM triggers") == 0

    # Alice may, by id or by the @username the channel had when linked (any case).
    for chat in ("-1001234567890", "@alicealerts", "@AliceAlerts"):
        body = a_trigger(CHAIN, actions=[telegram(chat)])
        resp = await client.post("/v1/triggers", json=body, headers=alice)
        assert resp.status == 201, (chat, await resp.text())
    trigger = await resp.json()

    # A PATCH of the actions is checked the same way; other changes are not.
    patch = {"actions": [telegram("42")]}
    resp = await client.patch(f"/v1/triggers/{trigger['id']}", json=patch, headers=alice)
    assert resp.status == 422
    assert (await resp.json())["details"][0]["loc"] == ["body", "actions", 0, "config", "chat_id"]
    stored = await db.fetchval(
        "SELECT config->>'chat_id' FROM trigger_actions WHERE trigger_id = $1", trigger["id"]
    )
    assert stored == "@AliceAlerts"
    resp = await client.patch(
        f"/v1/triggers/{trigger['id']}", json={"enabled": False}, headers=alice
    )
    assert resp.status == 200


async def test_linked_chats_are_listed_and_removed_by_their_user_only(
    client: Client, db: asyncpg.Connection
) -> None:
    alice, bob = await signup(client), await signup(client)
    await link_chat(db, alice, "42", chat_type="private")
    await link_chat(db, alice, "-100777", chat_type="supergroup", username="team")
    await link_chat(db, bob, "42", chat_type="private")

    listed = await (await client.get("/v1/telegram/chats", headers=alice)).json()
    assert {(c["chat_id"], c["chat_type"], c["username"]) for c in listed["items"]} == {
        ("42", "private", None),
        ("-100777", "supergroup", "team"),
    }
    page = await (await client.get("/v1/telegram/chats?limit=1", headers=alice)).json()
    assert len(page["items"]) == 1
    assert page["next_cursor"]
    rest = await client.get(
        "/v1/telegram/chats", params={"limit": "1", "cursor": page["next_cursor"]}, headers=alice
    )
    assert [c["chat_id"] for c in (await rest.json())["items"]] == [
        c["chat_id"] for c in listed["items"][1:]
    ]

    # Bob unlinks his own chat 42; Alice's link of the same chat stays.
    assert (await client.delete("/v1/telegram/chats/42", headers=bob)).status == 204
    assert (await client.delete("/v1/telegram/chats/42", headers=bob)).status == 404
    # Bob cannot remove (or see) Alice's other link.
    assert (await client.delete("/v1/telegram/chats/-100777", headers=bob)).status == 404
    assert (await (await client.get("/v1/telegram/chats", headers=bob)).json())["items"] == []
    assert await db.fetchval("SELECT count(*) FROM telegram_chats") == 2

    # Once unlinked, a trigger can no longer name it.
    assert (await client.delete("/v1/telegram/chats/42", headers=alice)).status == 204
    body = a_trigger(CHAIN, actions=[TELEGRAM_ACTION])
    assert (await client.post("/v1/triggers", json=body, headers=alice)).status == 422
