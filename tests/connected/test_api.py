"""The API in-process (aiohttp's test server, real sockets) against the real
PostgreSQL, connected as erc8004_api: accounts, triggers, history, isolation."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from eth_keys.datatypes import PrivateKey

from services.api.app import create_app
from services.api.auth import Tokens
from services.api.queries import accounts as account_sql
from services.api.signatures import (
    eip191_digest,
    mcp_token_message,
    mcp_token_removal_message,
)
from shared.contract.events import version_key
from shared.contract.jobs import ActionJob, job_id
from shared.platform.secrets import SecretBox, SecretDecryptError
from tests.apiutil import (
    JWT_SECRET,
    REST_ACTION,
    SECRETS_KEY,
    TELEGRAM_ACTION,
    Client,
    a_trigger,
    an_event,
    api_client,
    api_settings,
    cheap_passwords,
    link_chat,
    signup,
    store_events,
)
from tests.kafkautil import read_topic
from tests.matcherutil import random_chain
from tests.procs import ops_get

# Kafka: the kafka_bootstrap fixture creates the topics, and redrives produce jobs.
pytestmark = [pytest.mark.db, pytest.mark.kafka]

CHAIN = 84532
#: What agents' owners sign as ``deployment:`` for the API under test.
DEPLOYMENT = api_settings("postgresql://unused", "unused:9092", "unused").deployment()
OTHER_SECRET = "another-secret-0123456789abcdefghijkl"


@pytest.fixture
async def client(database_url: str, kafka_bootstrap: str) -> AsyncIterator[Client]:
    async with api_client(database_url, kafka_bootstrap) as client:
        yield client


async def json_of(resp: Any) -> Any:
    return await resp.json()


# --------------------------------------------------------------------------- accounts


async def test_register_login_uniform_errors_and_tokens(
    client: Client, db: asyncpg.Connection
) -> None:
    body = {"username": "alice", "email": "alice@example.org", "password": "correct horse 1"}
    resp = await client.post("/v1/auth/register", json=body)
    assert resp.status == 201
    user = await resp.json()
    assert set(user) == {"id", "username", "email", "created_at"}
    stored = await db.fetchval("SELECT password_hash FROM users WHERE id = $1", user["id"])
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored

    again = await client.post("/v1/auth/register", json={**body, "username": "alice2"})
    assert again.status == 409  # the e-mail is taken (case-insensitively too)
    assert (
        await client.post(
            "/v1/auth/register", json={**body, "email": "ALICE@example.org", "username": "x-y"}
        )
    ).status == 409

    wrong_password = await client.post(
        "/v1/auth/login", json={"username": "alice", "password": "nope"}
    )
    no_such_user = await client.post("/v1/auth/login", json={"username": "bob", "password": "x"})
    assert wrong_password.status == no_such_user.status == 401
    assert await wrong_password.json() == await no_such_user.json()

    ok = await client.post(
        "/v1/auth/login", json={"username": "alice", "password": "correct horse 1"}
    )
    assert ok.status == 200
    token = await ok.json()
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == 3600
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert (await client.get("/v1/triggers", headers=auth)).status == 200

    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic YWxpY2U6eA=="},
        {"Authorization": f"Bearer {token['access_token']}x"},
        # signed with another secret, and one expired an hour ago
        {"Authorization": "Bearer " + Tokens(OTHER_SECRET, 60).issue(user["id"])},
        {"Authorization": "Bearer "
         + Tokens(JWT_SECRET, 60).issue(user["id"], now=time.time() - 3600)},
    ):  # fmt: skip
        resp = await client.get("/v1/triggers", headers=headers)
        assert resp.status == 401, headers
        assert (await resp.json())["error"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_failed_logins_are_limited_whether_or_not_the_user_exists(client: Client) -> None:
    await signup(client, "carol")
    for name in ("carol", "nobody-here"):
        for _ in range(5):
            resp = await client.post("/v1/auth/login", json={"username": name, "password": "bad"})
            assert resp.status == 401
        limited = await client.post("/v1/auth/login", json={"username": name, "password": "bad"})
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) > 0
    _, text = await ops_get(client, "/metrics")
    assert "erc8004_api_login_failures_total 10.0" in text
    assert "erc8004_api_login_limited_total 2.0" in text
    assert (
        'erc8004_api_requests_total{method="POST",route="/v1/auth/login",status="429"} 2.0' in text
    )


@pytest.mark.parametrize("trusted", ["127.0.0.0/8", ""])
async def test_the_login_limit_per_address_sees_clients_behind_a_trusted_proxy(
    database_url: str, kafka_bootstrap: str, trusted: str
) -> None:
    """Behind a trusted proxy each client has its own address bucket (X-Forwarded-For
    read from the right, so a client cannot pick its own); without TRUSTED_PROXIES
    the header is ignored and everyone behind the proxy shares the proxy's bucket."""
    settings = api_settings(database_url, kafka_bootstrap, "erc8004.actions.unused")
    settings = settings.model_copy(update={"trusted_proxies": trusted, "login_max_failures": 1})
    app = create_app(settings, passwords=cheap_passwords())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:

        async def guess(i: int, forwarded: str) -> int:
            resp = await client.post(
                "/v1/auth/login",
                json={"username": f"user{i}", "password": "bad"},
                headers={"X-Forwarded-For": forwarded},
            )
            return resp.status

        # 10 failures (LOGIN_MAX_FAILURES x 10) from one address, each on its own user
        assert [await guess(i, "203.0.113.5") for i in range(10)] == [401] * 10
        assert await guess(10, "203.0.113.5") == 429
        # the client cannot escape its bucket by writing an address of its own in front
        assert await guess(11, "198.51.100.7, 203.0.113.5") == 429
        other = await guess(12, "203.0.113.6")
        assert other == (401 if trusted else 429)


async def test_registrations_are_limited_per_client_address(
    database_url: str, kafka_bootstrap: str, db: asyncpg.Connection
) -> None:
    settings = api_settings(database_url, kafka_bootstrap, "erc8004.actions.unused")
    settings = settings.model_copy(
        update={"register_max_per_address": 2, "trusted_proxies": "127.0.0.1"}
    )
    app = create_app(settings, passwords=cheap_passwords())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:

        async def register(name: str, address: str) -> Any:
            body = {"username": name, "email": f"{name}@example.org", "password": "pw-123456789"}
            return await client.post(
                "/v1/auth/register", json=body, headers={"X-Forwarded-For": address}
            )

        assert (await register("reg1", "203.0.113.5")).status == 201
        assert (await register("reg1", "203.0.113.5")).status == 409  # taken: counts too
        limited = await register("reg2", "203.0.113.5")
        assert limited.status == 429
        assert 0 < int(limited.headers["Retry-After"]) <= 3600
        assert (await register("reg3", "203.0.113.6")).status == 201
    assert await db.fetchval("SELECT count(*) FROM users WHERE username LIKE 'reg%'") == 2


async def test_concurrent_guesses_cannot_pass_the_login_limit(client: Client) -> None:
    """Attempts are counted before the password is checked: 30 guesses at once get
    at most LOGIN_MAX_FAILURES (5) verifications, the others 429 (or 503: busy)."""
    await signup(client, "dave")
    answers = await asyncio.gather(
        *(
            client.post("/v1/auth/login", json={"username": "dave", "password": f"guess{i}"})
            for i in range(30)
        )
    )
    statuses = sorted(r.status for r in answers)
    assert statuses.count(401) <= 5
    assert set(statuses) <= {401, 429, 503}
    assert statuses.count(429) >= 20


async def test_api_keys_are_shown_once_stored_hashed_usable_and_revocable(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    resp = await client.post("/v1/api-keys", json={"name": "ci"}, headers=auth)
    assert resp.status == 201
    created = await resp.json()
    key = created["key"]
    assert key.startswith("e8k_")
    assert created["prefix"] == key[:12]
    row = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
    assert row is not None
    assert key not in [str(v) for v in row.values()]

    by_key = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/triggers", headers=by_key)).status == 200
    listed = await (await client.get("/v1/api-keys", headers=by_key)).json()
    assert [k["id"] for k in listed["items"]] == [created["id"]]
    assert "key" not in listed["items"][0]
    # A key cannot mint more keys (or revoke): a leaked one could outlive its revocation.
    minted = await client.post("/v1/api-keys", json={"name": "x"}, headers=by_key)
    assert minted.status == 403
    assert (await client.delete(f"/v1/api-keys/{created['id']}", headers=by_key)).status == 403

    revoked = await client.delete(f"/v1/api-keys/{created['id']}", headers=auth)
    assert revoked.status == 200
    assert (await revoked.json())["revoked_at"] is not None
    assert (await client.get("/v1/triggers", headers=by_key)).status == 401


async def an_account(client: Client, username: str) -> dict[str, str]:
    """A registered account's credentials."""
    creds = {"username": username, "password": "pw-" + uuid.uuid4().hex}
    body = {**creds, "email": f"{username}@example.org"}
    assert (await client.post("/v1/auth/register", json=body)).status == 201
    return creds


async def log_in(client: Client, creds: dict[str, str]) -> dict[str, str]:
    resp = await client.post("/v1/auth/login", json=creds)
    assert resp.status == 200, await resp.text()
    return {"Authorization": "Bearer " + (await resp.json())["access_token"]}


async def test_logout_everywhere_revokes_every_access_token_issued_so_far(
    client: Client,
) -> None:
    creds = await an_account(client, "erin")

    async def login() -> dict[str, str]:
        return await log_in(client, creds)

    auth, second = await login(), await login()
    key = (await (await client.post("/v1/api-keys", json={}, headers=auth)).json())["key"]
    by_key = {"Authorization": f"Bearer {key}"}
    assert (await client.post("/v1/auth/logout-all", headers=by_key)).status == 403
    assert (await client.get("/v1/triggers", headers=second)).status == 200

    assert (await client.post("/v1/auth/logout-all", headers=auth)).status == 204
    for revoked in (auth, second):
        assert (await client.get("/v1/triggers", headers=revoked)).status == 401
    assert (await client.get("/v1/triggers", headers=by_key)).status == 200  # keys stay
    # iat has whole seconds: a login from the next second on is valid
    await asyncio.sleep(1.05 - time.time() % 1)
    fresh = await login()
    assert (await client.get("/v1/triggers", headers=fresh)).status == 200

    # On request, the API keys go too (issue 14, item 7).
    resp = await client.post("/v1/auth/logout-all?api_keys=maybe", headers=fresh)
    assert resp.status == 422
    assert (await client.get("/v1/triggers", headers=fresh)).status == 200
    assert (await client.post("/v1/auth/logout-all?api_keys=true", headers=fresh)).status == 204
    assert (await client.get("/v1/triggers", headers=by_key)).status == 401


async def test_a_password_change_needs_the_current_one_and_ends_every_other_session(
    client: Client, db: asyncpg.Connection
) -> None:
    """Issue 14, item 7: there was no way to change a password."""
    creds = await an_account(client, "frank")

    async def login(password: str) -> dict[str, str]:
        return await log_in(client, {**creds, "password": password})

    auth, other_session = await login(creds["password"]), await login(creds["password"])
    key = (await (await client.post("/v1/api-keys", json={}, headers=auth)).json())["key"]
    by_key = {"Authorization": f"Bearer {key}"}
    new = "a-new-password-" + uuid.uuid4().hex
    body = {"current_password": creds["password"], "new_password": new}

    # Not with an API key; not without the current password; not too short.
    assert (await client.post("/v1/auth/password", json=body, headers=by_key)).status == 403
    wrong = {**body, "current_password": "not-it-at-all"}
    resp = await client.post("/v1/auth/password", json=wrong, headers=auth)
    assert resp.status == 403
    assert "current password" in (await resp.json())["error"]
    short = {**body, "new_password": "short"}
    resp = await client.post("/v1/auth/password", json=short, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["details"][0]["loc"] == ["body", "new_password"]
    assert (await client.get("/v1/triggers", headers=other_session)).status == 200

    before = await db.fetchrow("SELECT id, password_hash FROM users WHERE username = 'frank'")
    assert before is not None
    resp = await client.post("/v1/auth/password", json=body, headers=auth)
    assert resp.status == 200, await resp.text()
    fresh = {"Authorization": "Bearer " + (await resp.json())["access_token"]}
    # A login that checked the old password while the change committed is not
    # recorded (it answers 401), nor does it put the old hash back.
    assert not await account_sql.record_login(
        db, before["id"], before["password_hash"], before["password_hash"]
    )
    assert (
        await db.fetchval("SELECT password_hash FROM users WHERE id = $1", before["id"])
        != before["password_hash"]
    )
    # The answer's token works at once; every earlier one does not; keys stay.
    assert (await client.get("/v1/triggers", headers=fresh)).status == 200
    for revoked in (auth, other_session):
        assert (await client.get("/v1/triggers", headers=revoked)).status == 401
    assert (await client.get("/v1/triggers", headers=by_key)).status == 200
    resp = await client.post("/v1/auth/login", json=creds)
    assert resp.status == 401  # the old password no longer logs in
    await asyncio.sleep(1.05 - time.time() % 1)
    fresh = await login(new)

    # Again, with the API keys revoked too.
    again = {"current_password": new, "new_password": creds["password"], "revoke_api_keys": True}
    resp = await client.post("/v1/auth/password", json=again, headers=fresh)
    assert resp.status == 200
    assert (await client.get("/v1/triggers", headers=by_key)).status == 401

    # Wrong current passwords count as failed logins: the fifth is the last.
    latest = {"Authorization": "Bearer " + (await resp.json())["access_token"]}
    statuses_seen = [
        (await client.post("/v1/auth/password", json=wrong, headers=latest)).status
        for _ in range(6)
    ]
    assert statuses_seen == [403] * 5 + [429]


async def test_quotas_hold_under_concurrent_creation(
    database_url: str, kafka_bootstrap: str, db: asyncpg.Connection
) -> None:
    settings = api_settings(database_url, kafka_bootstrap, "erc8004.actions.unused")
    settings = settings.model_copy(update={"max_triggers_per_user": 3, "max_api_keys_per_user": 2})
    app = create_app(settings, passwords=cheap_passwords())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        auth, other = await signup(client), await signup(client)
        answers = await asyncio.gather(
            *(client.post("/v1/triggers", json=a_trigger(CHAIN), headers=auth) for _ in range(8))
        )
        assert sorted(r.status for r in answers) == [201] * 3 + [409] * 5
        refused = next(r for r in answers if r.status == 409)
        assert "at most 3 triggers" in (await refused.json())["error"]
        # per user: another one has its own
        resp = await client.post("/v1/triggers", json=a_trigger(CHAIN), headers=other)
        assert resp.status == 201
        # a deleted trigger frees its place
        tid = (await answers[[r.status for r in answers].index(201)].json())["id"]
        assert (await client.delete(f"/v1/triggers/{tid}", headers=auth)).status == 204
        resp = await client.post("/v1/triggers", json=a_trigger(CHAIN), headers=auth)
        assert resp.status == 201

        keys = await asyncio.gather(
            *(client.post("/v1/api-keys", json={}, headers=auth) for _ in range(4))
        )
        assert sorted(r.status for r in keys) == [201, 201, 409, 409]
        kid = (await next(r for r in keys if r.status == 201).json())["id"]
        assert (await client.delete(f"/v1/api-keys/{kid}", headers=auth)).status == 200
        assert (await client.post("/v1/api-keys", json={}, headers=auth)).status == 201
    assert await db.fetchval("SELECT count(*) FROM triggers") == 4


# --------------------------------------------------------------------------- triggers


async def test_trigger_crud_keeps_secrets_write_only_and_notifies_the_matcher(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    await link_chat(db, auth, "42")
    notified: list[str] = []
    await db.add_listener("trigger_changed", lambda *args: notified.append(args[3]))

    body = a_trigger(CHAIN, actions=[REST_ACTION, TELEGRAM_ACTION])
    resp = await client.post("/v1/triggers", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    trigger = await resp.json()
    tid = trigger["id"]
    assert trigger["is_stateful"] is False
    assert trigger["enabled"] is True
    assert [c["condition_type"] for c in trigger["conditions"]] == [
        "event_type_equals",
        "score_threshold",
    ]
    rest = next(a for a in trigger["actions"] if a["action_type"] == "rest")
    assert rest["signing_secret_set"] is True
    assert "s3cr3t" not in await resp.text()

    # the secret is not in config but encrypted, bound to its row
    row = await db.fetchrow(
        "SELECT config, secret_ciphertext FROM trigger_actions WHERE id = $1", rest["id"]
    )
    assert row is not None
    assert "signing_secret" not in row["config"]
    assert b"s3cr3t" not in row["secret_ciphertext"]
    box = SecretBox(SECRETS_KEY)
    assert (
        box.decrypt(row["secret_ciphertext"], context=f"trigger_actions:{rest['id']}")
        == "s3cr3t-signing-key"
    )
    got = await client.get(f"/v1/triggers/{tid}", headers=auth)
    assert await got.json() == trigger
    assert "s3cr3t" not in await got.text()

    # disable: one PATCH; the matcher hears of it
    await asyncio.sleep(0.2)
    notified.clear()
    resp = await client.patch(f"/v1/triggers/{tid}", json={"enabled": False}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["enabled"] is False
    await asyncio.sleep(0.3)
    assert tid in notified

    # a GET body sent back (ids included) keeps the actions and their secret
    echoed = {"actions": trigger["actions"]}
    resp = await client.patch(f"/v1/triggers/{tid}", json=echoed, headers=auth)
    assert resp.status == 200, await resp.text()
    after = await resp.json()
    assert [a["id"] for a in after["actions"]] == [a["id"] for a in trigger["actions"]]
    assert next(a for a in after["actions"] if a["id"] == rest["id"])["signing_secret_set"]

    # replacing conditions makes it stateful; dropping the REST action deletes it
    stateful = {
        "conditions": [
            {"condition_type": "rate_limit", "operator": ">=", "value": "3",
             "config": {"time_window": "1h"}},
        ],
        "actions": [a for a in trigger["actions"] if a["action_type"] == "telegram"],
    }  # fmt: skip
    resp = await client.patch(f"/v1/triggers/{tid}", json=stateful, headers=auth)
    assert resp.status == 200, await resp.text()
    changed = await resp.json()
    assert changed["is_stateful"] is True
    assert [a["action_type"] for a in changed["actions"]] == ["telegram"]
    assert await db.fetchval("SELECT count(*) FROM trigger_actions WHERE trigger_id = $1", tid) == 1

    listed = await (await client.get("/v1/triggers", headers=auth)).json()
    assert [t["id"] for t in listed["items"]] == [tid]

    notified.clear()
    assert (await client.delete(f"/v1/triggers/{tid}", headers=auth)).status == 204
    assert (await client.get(f"/v1/triggers/{tid}", headers=auth)).status == 404
    assert (await client.delete(f"/v1/triggers/{tid}", headers=auth)).status == 404
    await asyncio.sleep(0.3)
    assert tid in notified


async def test_secret_headers_are_encrypted_write_only_and_kept_across_patches(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    token = "Bearer tok-9f2c1e7a-secret"
    rest = {
        "action_type": "rest",
        "config": {
            "url": "https://hooks.example.org/in",
            "headers": {"X-Source": "erc8004"},
            "secret_headers": {"Authorization": token, "X-Api-Key": "k-77ab"},
        },
    }
    resp = await client.post("/v1/triggers", json=a_trigger(CHAIN, actions=[rest]), headers=auth)
    assert resp.status == 201, await resp.text()
    trigger = await resp.json()
    (action,) = trigger["actions"]
    assert action["secret_headers_set"] == ["Authorization", "X-Api-Key"]
    assert action["config"]["headers"] == {"X-Source": "erc8004"}
    assert "secret_headers" not in action["config"]
    body = await resp.text()
    assert "tok-9f2c1e7a" not in body
    assert "k-77ab" not in body

    row = await db.fetchrow(
        "SELECT config, secret_headers_ciphertext, secret_header_names FROM trigger_actions"
        " WHERE id = $1",
        action["id"],
    )
    assert row is not None
    assert "secret_headers" not in row["config"]
    assert b"tok-9f2c1e7a" not in row["secret_headers_ciphertext"]
    box = SecretBox(SECRETS_KEY)
    context = f"trigger_actions:{action['id']}:headers"
    stored = json.loads(box.decrypt(row["secret_headers_ciphertext"], context=context))
    assert stored == {"Authorization": token, "X-Api-Key": "k-77ab"}
    other = f"trigger_actions:{action['id'] + 1}:headers"
    with pytest.raises(SecretDecryptError):  # bound to its row
        box.decrypt(row["secret_headers_ciphertext"], context=other)

    # a GET body sent back keeps them; naming secret_headers replaces; null removes
    tid = trigger["id"]
    resp = await client.patch(f"/v1/triggers/{tid}", json={"actions": [action]}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["actions"][0]["secret_headers_set"] == [
        "Authorization",
        "X-Api-Key",
    ]
    # the whole GET body sent back is a valid PATCH, and keeps them too
    resp = await client.patch(f"/v1/triggers/{tid}", json=await resp.json(), headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["actions"][0]["secret_headers_set"] == ["Authorization", "X-Api-Key"]
    # kept secret headers do not follow the action to another origin, nor clash
    moved = {**action, "config": {**action["config"], "url": "https://elsewhere.example.org/in"}}
    resp = await client.patch(f"/v1/triggers/{tid}", json={"actions": [moved]}, headers=auth)
    assert resp.status == 422
    (problem,) = (await resp.json())["details"]
    assert problem["loc"] == ["body", "actions", 0, "config", "secret_headers"]
    same_origin = {
        **action,
        "config": {**action["config"], "url": "https://hooks.example.org:443/b"},
    }
    resp = await client.patch(f"/v1/triggers/{tid}", json={"actions": [same_origin]}, headers=auth)
    assert resp.status == 200, await resp.text()
    clash = {**action, "config": {**action["config"], "headers": {"x-api-key": "clear"}}}
    resp = await client.patch(f"/v1/triggers/{tid}", json={"actions": [clash]}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["details"][0]["loc"][-1] == "x-api-key"
    replaced = {**action, "config": {**action["config"], "secret_headers": {"X-Api-Key": "k2"}}}
    resp = await client.patch(f"/v1/triggers/{tid}", json={"actions": [replaced]}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["actions"][0]["secret_headers_set"] == ["X-Api-Key"]
    ciphertext = await db.fetchval(
        "SELECT secret_headers_ciphertext FROM trigger_actions WHERE id = $1", action["id"]
    )
    assert json.loads(box.decrypt(ciphertext, context=context)) == {"X-Api-Key": "k2"}
    removed = {**action, "config": {**action["config"], "secret_headers": None}}
    resp = await client.patch(f"/v1/triggers/{tid}", json={"actions": [removed]}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["actions"][0]["secret_headers_set"] == []
    assert (
        await db.fetchval(
            "SELECT secret_headers_ciphertext FROM trigger_actions WHERE id = $1", action["id"]
        )
        is None
    )


async def test_credentials_in_clear_headers_are_refused_with_where_they_belong(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    clear = {
        "action_type": "rest",
        "config": {"url": "https://hooks.example.org/in", "headers": {"authorization": "x"}},
    }
    resp = await client.post("/v1/triggers", json=a_trigger(CHAIN, actions=[clear]), headers=auth)
    assert resp.status == 422
    (problem,) = (await resp.json())["details"]
    assert problem["loc"] == ["body", "actions", 0, "config", "headers", "authorization"]
    assert "secret_headers" in problem["message"]

    twice = {
        "action_type": "rest",
        "config": {
            "url": "https://hooks.example.org/in",
            "headers": {"X-Api-Key": "a"},
            "secret_headers": {"x-api-key": "b"},
        },
    }
    resp = await client.post("/v1/triggers", json=a_trigger(CHAIN, actions=[twice]), headers=auth)
    assert resp.status == 422
    assert "both" in await resp.text()
    bad = {
        "action_type": "rest",
        "config": {"url": "https://hooks.example.org/in", "secret_headers": {"Host": "x"}},
    }
    resp = await client.post("/v1/triggers", json=a_trigger(CHAIN, actions=[bad]), headers=auth)
    assert resp.status == 422
    assert "set by the dispatcher" in await resp.text()
    assert await db.fetchval("SELECT count(*) FROM triggers") == 0


async def test_bad_input_answers_with_locations_and_stores_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    bad = a_trigger(
        CHAIN,
        conditions=[
            {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"},
            {"condition_type": "score_threshold", "operator": ">", "value": "high"},
        ],
        actions=[{"action_type": "rest", "config": {"url": "ftp://x"}}],
    )
    resp = await client.post("/v1/triggers", json=bad, headers=auth)
    assert resp.status == 422
    body = await resp.json()
    locs = {tuple(d["loc"]) for d in body["details"]}
    assert ("body", "conditions", 1, "value") in locs
    assert ("body", "actions", 0, "config", "url") in locs
    assert {d["field"] for d in body["details"]} >= {"conditions.1.value", "actions.0.config.url"}
    assert await db.fetchval("SELECT count(*) FROM triggers") == 0

    resp = await client.get("/v1/events?limit=0", headers=auth)
    assert resp.status == 422
    assert (await resp.json())["details"][0]["loc"] == ["query", "limit"]
    resp = await client.get("/v1/events?cursor=bm90LWEtY3Vyc29y", headers=auth)
    assert resp.status == 422
    assert (await resp.json())["details"][0]["loc"] == ["query", "cursor"]

    not_json = await client.post("/v1/triggers", data=b"{nope", headers=auth)
    assert not_json.status == 400
    assert (await not_json.json())["error"]
    huge = await client.post(
        "/v1/triggers",
        data=b'{"name": "' + b"x" * (300 * 1024) + b'"}',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert huge.status == 413
    assert (await huge.json())["error"]
    unknown = await client.get("/v1/nothing-here", headers=auth)
    assert unknown.status == 404
    assert "error" in await unknown.json()
    assert await db.fetchval("SELECT count(*) FROM triggers") == 0


# --------------------------------------------------------------------------- isolation


RLS_TABLES = (
    "triggers",
    "trigger_conditions",
    "trigger_actions",
    "trigger_state",
    "trigger_evaluations",
    "action_results",
    "api_keys",
)


async def snapshot(db: asyncpg.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table in (*RLS_TABLES, "agent_mcp_tokens", "users"):
        rows = await db.fetch(f"SELECT t::text AS r FROM {table} t ORDER BY 1")
        out[table] = [r["r"] for r in rows]
    return out


async def seed_history(db: asyncpg.Connection, trigger_id: str, user_id: str) -> str:
    """A state row, an evaluation and a failed result of one firing."""
    event = an_event(CHAIN, 100, event_type="NewFeedback", score=90)
    await store_events(db, [event])
    action_id = await db.fetchval(
        "SELECT min(id) FROM trigger_actions WHERE trigger_id = $1", trigger_id
    )
    jid = job_id(trigger_id, version_key(event), action_id)
    await db.execute(
        "INSERT INTO trigger_state (trigger_id, scope_key, state_data) VALUES ($1, '', $2)",
        trigger_id,
        {"conditions": {}},
    )
    await db.execute(
        "INSERT INTO trigger_evaluations (trigger_id, event_id, fired, explain)"
        " VALUES ($1, $2, true, $3)",
        trigger_id,
        f"{event.id}@{event.block_hash}",
        {"fired": True, "trigger_id": trigger_id},
    )
    await db.execute(
        "INSERT INTO action_results (job_id, trigger_id, event_id, user_id, action_type, status,"
        " error_message, attempt) VALUES ($1, $2, $3, $4, 'rest', 'dead', 'HTTP 500', 5)",
        jid,
        trigger_id,
        event.id,
        user_id,
    )
    return jid


async def test_another_user_gets_404_everywhere_and_changes_nothing(
    client: Client, db: asyncpg.Connection, database_url: str
) -> None:
    alice, bob = await signup(client, "alice"), await signup(client, "bob")
    created = await (await client.post("/v1/triggers", json=a_trigger(CHAIN), headers=alice)).json()
    tid = created["id"]
    alice_id = await db.fetchval("SELECT id FROM users WHERE username = 'alice'")
    jid = await seed_history(db, tid, alice_id)
    key = await (await client.post("/v1/api-keys", json={}, headers=alice)).json()
    await db.execute("REFRESH MATERIALIZED VIEW action_metrics_hourly")
    before = await snapshot(db)
    window = {"from": "2020-01-01T00:00:00Z", "to": "2020-12-01T00:00:00Z"}

    attempts = [
        ("GET", f"/v1/triggers/{tid}", None),
        ("PATCH", f"/v1/triggers/{tid}", {"enabled": False}),
        ("PATCH", f"/v1/triggers/{tid}", {"name": "mine now"}),
        ("DELETE", f"/v1/triggers/{tid}", None),
        ("GET", f"/v1/triggers/{tid}/state", None),
        ("GET", f"/v1/triggers/{tid}/results", None),
        ("POST", f"/v1/triggers/{tid}/results/{jid}/retry", None),
        ("POST", f"/v1/triggers/{tid}/backtest", window),
        ("DELETE", f"/v1/api-keys/{key['id']}", None),
    ]
    for method, path, body in attempts:
        resp = await client.request(method, path, json=body, headers=bob)
        assert resp.status == 404, (method, path, resp.status, await resp.text())
    # lists show bob nothing of alice's
    for path in ("/v1/triggers", "/v1/api-keys", "/v1/stats/actions"):
        listed = await (await client.get(path, headers=bob)).json()
        assert listed["items"] == [], path
    assert await snapshot(db) == before
    # ... while alice sees all of it
    assert (await client.get(f"/v1/triggers/{tid}/results", headers=alice)).status == 200
    mine = await (await client.get("/v1/stats/actions", headers=alice)).json()
    assert [s["total_executions"] for s in mine["items"]] == [1]

    # The database itself refuses: as erc8004_api without a user, no rows at all
    conn = await asyncpg.connect(database_url, server_settings={"role": "erc8004_api"})
    try:
        assert await conn.fetchval("SELECT current_user") == "erc8004_api"
        for table in (*RLS_TABLES, "action_metrics_hourly_mine"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT count(*) FROM action_metrics_hourly")
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.current_user_id', $1, true)", alice_id)
            assert await conn.fetchval("SELECT count(*) FROM triggers") == 1
        assert await conn.fetchval("SELECT count(*) FROM triggers") == 0
    finally:
        await conn.close()


# --------------------------------------------------------------------------- history


async def test_results_filter_page_and_redrive_a_dead_job(
    database_url: str, db: asyncpg.Connection, kafka_bootstrap: str, actions_topic: str
) -> None:
    settings = api_settings(database_url, kafka_bootstrap, actions_topic)
    app = create_app(settings, passwords=cheap_passwords())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        auth = await signup(client, "dora")
        created = await (
            await client.post("/v1/triggers", json=a_trigger(CHAIN), headers=auth)
        ).json()
        tid = created["id"]
        user = await db.fetchval("SELECT id FROM users WHERE username = 'dora'")
        jid = await seed_history(db, tid, user)
        base = datetime(2026, 1, 1, tzinfo=UTC)
        for i in range(5):
            await db.execute(
                "INSERT INTO action_results (job_id, trigger_id, event_id, user_id, action_type,"
                " status, executed_at) VALUES ($1, $2, 'x', $3, 'telegram', $4, $5)",
                f"{i:032x}",
                tid,
                user,
                "success" if i % 2 else "failed",
                base + timedelta(minutes=i),
            )
        url = f"/v1/triggers/{tid}/results"
        everything = await (await client.get(url, headers=auth)).json()
        assert len(everything["items"]) == 6
        assert everything["next_cursor"] is None
        seen: list[str] = []
        cursor = ""
        while True:
            page = await (
                await client.get(url, params={"limit": "2", "cursor": cursor}, headers=auth)
            ).json()
            seen += [r["id"] for r in page["items"]]
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        assert seen == [r["id"] for r in everything["items"]]
        failed = await (await client.get(url, params={"status": "failed"}, headers=auth)).json()
        assert {r["status"] for r in failed["items"]} == {"failed"}
        assert len(failed["items"]) == 3
        window = {"since": (base + timedelta(minutes=1)).isoformat(),
                  "until": (base + timedelta(minutes=3)).isoformat()}  # fmt: skip
        ranged = await (await client.get(url, params=window, headers=auth)).json()
        assert len(ranged["items"]) == 2

        # Kafka unreachable: 503, and no claim is left behind to block the next try
        away = settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
        away_app = create_app(away, passwords=cheap_passwords())
        async with TestClient(TestServer(away_app, host="127.0.0.1")) as away_client:
            resp = await away_client.post(f"{url}/{jid}/retry", headers=auth)
            assert resp.status == 503, await resp.text()
        assert await db.fetchval("SELECT count(*) FROM job_redrives") == 0

        resp = await client.post(f"{url}/{jid}/retry", headers=auth)
        assert resp.status == 202, await resp.text()
        out = await resp.json()
        # the same job again at once: refused until REDRIVE_INTERVAL has passed
        again = await client.post(f"{url}/{jid}/retry", headers=auth)
        assert again.status == 429
        assert 0 < int(again.headers["Retry-After"]) <= 60
        assert out["job_id"] == jid
        assert out["attempt"] == 1
        assert out["topic"] == actions_topic
        records = await read_topic(kafka_bootstrap, actions_topic, expect=1, settle=0.5)
        assert len(records) == 1
        assert records[0].key == tid.encode()
        job = ActionJob.parse(records[0].value)
        assert job.job_id == jid
        assert job.attempt == 1
        assert job.run_id is not None  # a run of its own, recorded apart from the first
        assert job.trigger_id == tid
        rest = next(a for a in created["actions"] if a["action_type"] == "rest")
        assert job.action_id == rest["id"]
        assert job.config == rest["config"]
        assert "signing_secret" not in job.config
        assert job.explain == {"fired": True, "trigger_id": tid}  # the recorded explain
        assert job.event.id == out["event_id"]

        success, failed_elsewhere = f"{1:032x}", f"{0:032x}"
        assert (await client.post(f"{url}/{success}/retry", headers=auth)).status == 409
        # failed, but its event is stored nowhere
        resp = await client.post(f"{url}/{failed_elsewhere}/retry", headers=auth)
        assert resp.status == 409
        assert "no longer stored" in (await resp.json())["error"]
        # failed, of a stored event, but its id is no (trigger, event version, action)
        # of this trigger's actions (another action, or a version a reorg replaced)
        await db.execute(
            "UPDATE action_results SET event_id = $1 WHERE job_id = $2",
            out["event_id"],
            failed_elsewhere,
        )
        resp = await client.post(f"{url}/{failed_elsewhere}/retry", headers=auth)
        assert resp.status == 409
        assert "action" in (await resp.json())["error"]
        resp = await client.post(f"{url}/{'f' * 32}/retry", headers=auth)
        assert resp.status == 404
        await db.execute(
            "INSERT INTO action_results (job_id, trigger_id, event_id, user_id, action_type,"
            " status, attempt, executed_at) VALUES ($1, $2, $3, $4, 'rest', 'success', 1, now())",
            jid,
            tid,
            out["event_id"],
            user,
        )
        assert (await client.post(f"{url}/{jid}/retry", headers=auth)).status == 409
        # a dead job of the previous release, named after the event id (not its version)
        old_jid = job_id(tid, out["event_id"], rest["id"])
        await db.execute(
            "INSERT INTO action_results (job_id, trigger_id, event_id, user_id, action_type,"
            " status, attempt, executed_at) VALUES ($1, $2, $3, $4, 'rest', 'dead', 5, now())",
            old_jid,
            tid,
            out["event_id"],
            user,
        )
        resp = await client.post(f"{url}/{old_jid}/retry", headers=auth)
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["job_id"] == old_jid


async def seed_result(
    db: asyncpg.Connection,
    trigger_id: str,
    user_id: str,
    *,
    event_id: str,
    event_version: str | None,
    trigger_version: int | None,
) -> str:
    """One successful attempt of a job, recorded as the dispatcher records it."""
    jid = uuid.uuid4().hex
    await db.execute(
        "INSERT INTO action_results (job_id, trigger_id, event_id, user_id, action_type, status,"
        " attempt, event_version, trigger_version) VALUES ($1, $2, $3, $4, 'rest', 'success', 1,"
        " $5, $6)",
        jid,
        trigger_id,
        event_id,
        user_id,
        event_version,
        trigger_version,
    )
    return jid


async def test_state_rows_name_the_conditions_their_states_belong_to(
    client: Client, db: asyncpg.Connection
) -> None:
    """A state row keys each condition's state by the condition's identity; the page
    maps every identity to the paths of the conditions that have it (two conditions
    with one definition share one state)."""
    gina = await signup(client, "gina")
    ema = {
        "condition_type": "ema_threshold",
        "operator": "<",
        "value": "40",
        "config": {"alpha": "0.5"},
    }
    rate = {
        "condition_type": "rate_limit",
        "operator": ">=",
        "value": "3",
        "config": {"time_window": "1h"},
    }
    body = a_trigger(CHAIN, conditions=[
        ema,
        {"condition_type": "group", "operator": "any", "value": "",
         "config": {"conditions": [rate, ema]}},
    ])  # fmt: skip
    resp = await client.post("/v1/triggers", json=body, headers=gina)
    assert resp.status == 201, await resp.text()
    tid = (await resp.json())["id"]
    resp = await client.get(f"/v1/triggers/{tid}/state", headers=gina)
    assert resp.status == 200
    page = await resp.json()
    assert page["is_stateful"]
    assert page["items"] == []
    paths = sorted(page["condition_paths"].values())
    assert paths == [["0", "1.1"], ["1.0"]]
    ema_id = next(k for k, v in page["condition_paths"].items() if v == ["0", "1.1"])
    await db.execute(
        "INSERT INTO trigger_state (trigger_id, scope_key, state_data) VALUES ($1, '', $2)",
        tid,
        {"conditions": {ema_id: {"ema": "12.5", "count": 2}}},
    )
    page = await (await client.get(f"/v1/triggers/{tid}/state", headers=gina)).json()
    (row,) = page["items"]
    assert list(row["state_data"]["conditions"]) == [ema_id]


async def test_results_carry_the_firings_explain_and_the_versions(
    client: Client, db: asyncpg.Connection
) -> None:
    erin, frank = await signup(client, "erin"), await signup(client, "frank")
    user = await db.fetchval("SELECT id FROM users WHERE username = 'erin'")

    async def create(body: dict[str, Any]) -> dict[str, Any]:
        resp = await client.post("/v1/triggers", json=body, headers=erin)
        assert resp.status == 201, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out

    # A cooldown makes a trigger stateful; the default one is stateless.
    stateful = await create(a_trigger(CHAIN, name="cooled", cooldown_seconds=60))
    stateless = await create(a_trigger(CHAIN))
    assert stateful["is_stateful"]
    assert not stateless["is_stateful"]
    assert stateful["version"] == stateless["version"] == 1
    sid, tid = stateful["id"], stateless["id"]

    stored = an_event(CHAIN, 300, event_type="NewFeedback", score=95)
    await store_events(db, [stored])
    version = version_key(stored)
    never_stored = f"{stored.id}@0x{'e' * 64}"  # another version of the same position

    # Stateful: the explain the matcher recorded for the firing, joined on its version.
    recorded = {
        "trigger_id": sid,
        "trigger_version": 1,
        "event_version": version,
        "fired": True,
        "conditions": [{"path": "0", "verdict": True, "input": "NewFeedback"}],
        "state_before": {"": {"firing": {}}},
        "state_after": {"": {"firing": {"last_fired_at": 1}}},
    }
    await db.execute(
        "INSERT INTO trigger_evaluations (trigger_id, event_id, fired, explain)"
        " VALUES ($1, $2, true, $3), ($1, $4, false, $5)",
        sid,
        version,
        recorded,
        never_stored,
        {**recorded, "fired": False},
    )
    s_recorded = await seed_result(
        db, sid, user, event_id=stored.id, event_version=version, trigger_version=1
    )
    # evaluated without firing, or its record cleaned up: a stateful explain is not
    # evaluated again (it depends on the state of then), even with the event stored
    s_not_fired = await seed_result(
        db, sid, user, event_id=stored.id, event_version=never_stored, trigger_version=1
    )
    s_gone = await seed_result(
        db, sid, user, event_id=stored.id, event_version=f"{stored.id}@0x{'f' * 64}",
        trigger_version=1,
    )  # fmt: skip

    # Stateless: nothing recorded, evaluated again from the stored event version.
    t_recomputed = await seed_result(
        db, tid, user, event_id=stored.id, event_version=version, trigger_version=1
    )
    t_not_stored = await seed_result(
        db, tid, user, event_id=stored.id, event_version=never_stored, trigger_version=1
    )
    t_before = await seed_result(
        db, tid, user, event_id=stored.id, event_version=None, trigger_version=None
    )

    async def items(trigger_id: str) -> dict[str, dict[str, Any]]:
        resp = await client.get(f"/v1/triggers/{trigger_id}/results", headers=erin)
        assert resp.status == 200, await resp.text()
        return {r["job_id"]: r for r in (await resp.json())["items"]}

    got = await items(sid)
    assert got[s_recorded]["explain"] == recorded
    assert got[s_recorded]["explain_source"] == "recorded"
    assert got[s_recorded]["event_version"] == version
    assert got[s_recorded]["trigger_version"] == 1
    for jid in (s_not_fired, s_gone):
        assert got[jid]["explain"] is None, jid
        assert got[jid]["explain_source"] is None, jid

    # Absence: the firing's explain is the record of the tick that fired the silence
    # the event started (the event's own evaluation did not fire).
    silent = await create(a_trigger(CHAIN, name="silent", conditions=[
        {"condition_type": "absence", "operator": ">", "value": "1m",
         "config": {"scope": "agent"}},
    ]))  # fmt: skip
    ticked = {**recorded, "trigger_id": silent["id"], "mode": "absence", "tick": {"time": 9}}
    await db.execute(
        "INSERT INTO trigger_evaluations (trigger_id, event_id, fired, explain)"
        " VALUES ($1, $2, false, NULL), ($1, $3, true, $4)",
        silent["id"],
        version,
        f"tick:{stored.agent_id}:hb:{CHAIN}-301@0x{'a' * 64}",
        ticked,
    )
    a_silence = await seed_result(
        db, silent["id"], user, event_id=stored.id, event_version=version, trigger_version=1
    )
    got = await items(silent["id"])
    assert got[a_silence]["explain"] == ticked
    assert got[a_silence]["explain_source"] == "recorded"

    got = await items(tid)
    explain = got[t_recomputed]["explain"]
    assert got[t_recomputed]["explain_source"] == "recomputed"
    assert got[t_recomputed]["event_version"] == version
    assert got[t_recomputed]["trigger_version"] == 1
    assert explain["trigger_id"] == tid
    assert explain["trigger_version"] == 1
    assert explain["event_version"] == version
    assert explain["fired"] is True
    assert [(c["type"], c["verdict"]) for c in explain["conditions"]] == [
        ("event_type_equals", True),
        ("score_threshold", True),
    ]
    assert explain["state_before"] == explain["state_after"] == {}
    assert got[t_not_stored]["explain"] is None
    assert got[t_before]["explain"] is None
    assert got[t_before]["explain_source"] is None
    assert got[t_before]["event_version"] is None
    assert got[t_before]["trigger_version"] is None

    # An edit makes a new version: the firings of the earlier one are not explained
    # by the new definition; those of the new one are.
    patched = await client.patch(f"/v1/triggers/{tid}", json={"name": "renamed"}, headers=erin)
    assert (await patched.json())["version"] == 2
    t_new = await seed_result(
        db, tid, user, event_id=stored.id, event_version=version, trigger_version=2
    )
    got = await items(tid)
    assert got[t_recomputed]["explain"] is None
    assert got[t_recomputed]["trigger_version"] == 1
    assert got[t_new]["explain_source"] == "recomputed"
    assert got[t_new]["explain"]["trigger_version"] == 2
    # filters and the cursor still work on the joined page
    page = await (
        await client.get(
            f"/v1/triggers/{tid}/results", params={"limit": "1", "status": "success"}, headers=erin
        )
    ).json()
    assert len(page["items"]) == 1
    assert page["next_cursor"] is not None

    # Another user sees neither the results nor their explains.
    for trigger_id in (sid, tid):
        resp = await client.get(f"/v1/triggers/{trigger_id}/results", headers=frank)
        assert resp.status == 404


async def test_a_page_of_events_is_bounded_in_bytes_and_the_cursor_goes_on(
    client: Client, db: asyncpg.Connection
) -> None:
    """Texts are stored as long as the chain emits them: a page of 200 events could be
    a gigabyte. A page ends at 4 MiB of events (at least one), and its cursor leads
    to the rest, each event once."""
    auth = await signup(client)
    chain = random_chain()
    big = [
        an_event(chain, 100 + n, event_type="Registered", agent_id=n,
                 token_uri="https://x.example/" + secrets.token_hex(600_000))
        for n in range(5)
    ]  # fmt: skip
    small = [an_event(chain, 200 + n) for n in range(3)]
    await store_events(db, [*big, *small])
    seen: list[list[str]] = []
    cursor = None
    while True:
        params = {"chain_id": str(chain), "limit": "100"}
        if cursor:
            params["cursor"] = cursor
        resp = await client.get("/v1/events", params=params, headers=auth)
        assert resp.status == 200, await resp.text()
        assert len(await resp.read()) < 5 * 1024 * 1024
        page = await resp.json()
        seen.append([e["id"] for e in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    big_ids = {e.id for e in big}
    # 1.2 MB each: at most three of them fit 4 MiB; without the bound, one page.
    assert len(seen) >= 2
    assert all(sum(i in big_ids for i in p) <= 3 for p in seen)
    ids = [i for p in seen for i in p]
    assert sorted(ids) == sorted(e.id for e in [*big, *small])


async def test_events_filters_and_pages_and_hourly_stats(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    ts = int(time.time()) - 7200
    events = [
        an_event(CHAIN, 1000 + i, event_type="NewFeedback", agent_id=7 if i % 3 else 8,
                 timestamp=ts + 60 * i, score=50)
        for i in range(12)
    ] + [an_event(CHAIN + 1, 5, event_type="Registered", agent_id=7, timestamp=ts)]  # fmt: skip
    await store_events(db, events)
    everything = await (await client.get("/v1/events?limit=200", headers=auth)).json()
    assert len(everything["items"]) == 13
    assert everything["items"][0]["block_number"] == 1011  # newest first
    paged: list[str] = []
    params: dict[str, str] = {"chain_id": str(CHAIN), "limit": "5"}
    while True:
        page = await (await client.get("/v1/events", params=params, headers=auth)).json()
        paged += [e["id"] for e in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert paged == [e.id for e in sorted(events[:12], key=lambda e: -e.block_number)]
    agent = await (await client.get("/v1/events", params={"agent_id": "8"}, headers=auth)).json()
    assert {e["agent_id"] for e in agent["items"]} == {8}
    assert len(agent["items"]) == 4
    blocks = await (
        await client.get("/v1/events", params={"from_block": "1002", "to_block": "1004",
                                               "chain_id": str(CHAIN),
                                               "registry": "reputation"}, headers=auth)
    ).json()  # fmt: skip
    assert sorted(e["block_number"] for e in blocks["items"]) == [1002, 1003, 1004]
    resp = await client.get("/v1/events", params={"from_block": "1002"}, headers=auth)
    assert resp.status == 422  # a block range means something on one chain only
    assert "from_block and to_block need chain_id" in await resp.text()
    typed = await (
        await client.get("/v1/events", params={"event_type": "Registered"}, headers=auth)
    ).json()
    assert [e["chain_id"] for e in typed["items"]] == [CHAIN + 1]
    since = datetime.fromtimestamp(ts + 600, UTC).isoformat()
    timed = await (await client.get("/v1/events", params={"since": since}, headers=auth)).json()
    assert len(timed["items"]) == 2

    await db.execute("SELECT refresh_stats_views()")
    stats = await (
        await client.get("/v1/stats/events", params={"chain_id": str(CHAIN)}, headers=auth)
    ).json()
    assert sum(s["event_count"] for s in stats["items"]) == 12
    assert {s["event_type"] for s in stats["items"]} == {"NewFeedback"}


# --------------------------------------------------------------------------- MCP tokens


def sign(key: PrivateKey, message: str) -> str:
    signature = key.sign_msg_hash(eip191_digest(message))
    r, s, v = signature.r, signature.s, signature.v
    return "0x" + str(
        r.to_bytes(32, "big").hex() + s.to_bytes(32, "big").hex() + bytes([v + 27]).hex()
    )


def token_body(key: PrivateKey, agent: int, token: str, **kw: Any) -> dict[str, Any]:
    nonce = kw.pop("nonce", uuid.uuid4().hex)
    expires_at = kw.pop("expires_at", int(time.time()) + 600)
    tools, users = kw.pop("allowed_tools", "*"), kw.pop("allowed_users", "*")
    message = mcp_token_message(
        deployment=kw.pop("deployment", DEPLOYMENT),
        chain_id=CHAIN,
        agent_id=agent,
        token=token,
        allowed_tools=None if tools == "*" else tools,
        allowed_users=None if users == "*" else users,
        nonce=nonce,
        expires_at=expires_at,
        registry=kw.pop("registry", ""),
    )
    return {"token": token, "nonce": nonce, "expires_at": expires_at, "allowed_tools": tools,
            "allowed_users": users, "signature": sign(key, message)}  # fmt: skip


async def registered_agent(db: asyncpg.Connection, agent: int, *, block: int) -> PrivateKey:
    """The key of the owner of an agent its Registered event (stored) names."""
    owner = PrivateKey(b"\x33" * 32)
    address = owner.public_key.to_checksum_address()
    await store_events(
        db, [an_event(CHAIN, block, event_type="Registered", agent_id=agent, owner=address)]
    )
    return owner


async def test_signature_checks_are_limited_per_user(
    database_url: str, kafka_bootstrap: str, db: asyncpg.Connection
) -> None:
    """Issue 14, item 7: recovering a signature costs CPU; one user gets at most
    SIGNATURE_CHECKS_PER_MINUTE, another user is not held up by them."""
    owner = await registered_agent(db, 90, block=11)
    url = f"/v1/agents/{CHAIN}/90/mcp-token"
    async with api_client(database_url, kafka_bootstrap, signature_checks_per_minute=3) as client:
        mallory, alice = await signup(client), await signup(client)
        junk = {**token_body(owner, 90, "t"), "signature": "0x" + "11" * 65}
        answers = [(await client.put(url, json=junk, headers=mallory)).status for _ in range(5)]
        assert answers == [422, 422, 422, 429, 429]
        resp = await client.put(url, json=junk, headers=mallory)
        assert 55 <= int(resp.headers["Retry-After"]) <= 61
        resp = await client.put(url, json=token_body(owner, 90, "t"), headers=alice)
        assert resp.status == 200, await resp.text()


async def test_mcp_token_needs_the_current_owners_signature_once(
    client: Client, db: asyncpg.Connection
) -> None:
    auth = await signup(client)
    owner, buyer = PrivateKey(b"\x11" * 32), PrivateKey(b"\x22" * 32)
    owner_address = owner.public_key.to_checksum_address()
    agent = 77
    await store_events(
        db,
        [an_event(CHAIN, 10, event_type="Registered", agent_id=agent, owner=owner_address)],
    )
    url = f"/v1/agents/{CHAIN}/{agent}/mcp-token"
    token = "mcp-bearer-" + uuid.uuid4().hex
    body = token_body(owner, agent, token)
    resp = await client.put(url, json=body, headers=auth)
    assert resp.status == 200, await resp.text()
    out = await resp.json()
    assert out["owner_address"] == owner_address.lower()
    assert out["allowed_tools"] is None
    assert out["allowed_users"] is None
    assert token not in await resp.text()
    stored = await db.fetchval(
        "SELECT token_ciphertext FROM agent_mcp_tokens WHERE chain_id = $1 AND agent_id = $2",
        CHAIN,
        agent,
    )
    assert token.encode() not in stored
    context = f"agent_mcp_tokens:{CHAIN}:{agent}"
    assert SecretBox(SECRETS_KEY).decrypt(stored, context=context) == token

    assert (await client.put(url, json=body, headers=auth)).status == 409  # replayed
    # Signed for another deployment of the service: worth nothing here.
    elsewhere = token_body(owner, agent, "t1", deployment="erc8004-another-deployment")
    assert (await client.put(url, json=elsewhere, headers=auth)).status == 403
    domain = await (await client.get("/v1/agents/signing-domain", headers=auth)).json()
    assert domain == {"deployment": DEPLOYMENT}
    assert DEPLOYMENT.startswith("erc8004-")
    assert JWT_SECRET not in DEPLOYMENT
    assert (await client.put(url, json=token_body(buyer, agent, "t2"), headers=auth)).status == 403
    tampered = {**token_body(owner, agent, "t3"), "token": "t4"}  # signed another token
    assert (await client.put(url, json=tampered, headers=auth)).status == 403
    widened = {**token_body(owner, agent, "t3", allowed_users=["u1"]), "allowed_users": "*"}
    assert (await client.put(url, json=widened, headers=auth)).status == 403  # scope signed
    unscoped = token_body(owner, agent, "t3")
    del unscoped["allowed_tools"]
    resp = await client.put(url, json=unscoped, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["details"][0]["loc"] == ["body", "allowed_tools"]
    expired = token_body(owner, agent, "t5", expires_at=int(time.time()) - 1)
    resp = await client.put(url, json=expired, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["details"][0]["loc"] == [
        "body",
        "expires_at",
    ]
    other_agent = f"/v1/agents/{CHAIN}/78/mcp-token"
    assert (
        await client.put(other_agent, json=token_body(owner, 78, "t6"), headers=auth)
    ).status == 404
    # signed for agent 77, presented for another agent: the recovered signer differs
    await store_events(
        db, [an_event(CHAIN, 11, event_type="Registered", agent_id=78, owner=owner_address)]
    )
    assert (
        await client.put(other_agent, json=token_body(owner, 77, "t7"), headers=auth)
    ).status == 403

    # after a transfer only the new owner may set it
    await store_events(
        db,
        [an_event(CHAIN, 20, event_type="Transfer", agent_id=agent,
                  owner=buyer.public_key.to_checksum_address())],
    )  # fmt: skip
    assert (await client.put(url, json=token_body(owner, agent, "t8"), headers=auth)).status == 403
    assert (await client.put(url, json=token_body(buyer, agent, "t9"), headers=auth)).status == 200

    # removal: signed by the current owner only, once per nonce; then nothing to remove
    def removal(key: PrivateKey, agent_id: int = agent) -> dict[str, Any]:
        nonce, expires_at = uuid.uuid4().hex, int(time.time()) + 600
        message = mcp_token_removal_message(
            deployment=DEPLOYMENT,
            chain_id=CHAIN,
            agent_id=agent_id,
            nonce=nonce,
            expires_at=expires_at,
        )
        return {"nonce": nonce, "expires_at": expires_at, "signature": sign(key, message)}

    assert (await client.delete(url, json=removal(owner), headers=auth)).status == 403
    assert (await client.delete(url, json=removal(buyer, 78), headers=auth)).status == 403
    a_token_for_put = token_body(buyer, agent, "t10")  # a set-token signature is no removal
    for field in ("token", "allowed_tools", "allowed_users"):
        del a_token_for_put[field]
    assert (await client.delete(url, json=a_token_for_put, headers=auth)).status == 403
    assert await db.fetchval("SELECT count(*) FROM agent_mcp_tokens WHERE agent_id = $1", agent)
    signed = removal(buyer)
    assert (await client.delete(url, json=signed)).status == 401
    resp = await client.delete(url, json=signed, headers=auth)
    assert resp.status == 204, await resp.text()
    count = "SELECT count(*) FROM agent_mcp_tokens WHERE chain_id = $1 AND agent_id = $2"
    assert await db.fetchval(count, CHAIN, agent) == 0
    assert (await client.delete(url, json=signed, headers=auth)).status == 409  # replayed
    assert (await client.delete(url, json=removal(buyer), headers=auth)).status == 404


# --------------------------------------------------------------------------- logs


async def test_passwords_and_tokens_never_reach_the_logs(
    client: Client, db: asyncpg.Connection
) -> None:
    password = "pw-never-logged-" + uuid.uuid4().hex
    mcp_token = "mcp-never-logged-" + uuid.uuid4().hex
    owner = await registered_agent(db, 5, block=30)
    with structlog.testing.capture_logs() as logs:
        register = {"username": "erin", "email": "erin@example.org", "password": password}
        assert (await client.post("/v1/auth/register", json=register)).status == 201
        bad = {"username": "erin", "password": password + "x"}
        assert (await client.post("/v1/auth/login", json=bad)).status == 401
        resp = await client.post("/v1/auth/login", json={"username": "erin", "password": password})
        access = (await resp.json())["access_token"]
        auth = {"Authorization": f"Bearer {access}"}
        key = (await (await client.post("/v1/api-keys", json={}, headers=auth)).json())["key"]
        trigger = await client.post("/v1/triggers", json=a_trigger(CHAIN), headers=auth)
        assert trigger.status == 201
        body = token_body(owner, 5, mcp_token)
        assert (
            await client.put(f"/v1/agents/{CHAIN}/5/mcp-token", json=body, headers=auth)
        ).status == 200
    text = repr(logs)
    assert len(logs) >= 6, logs
    for secret in (password, access, key, mcp_token, REST_ACTION["config"]["signing_secret"]):
        assert secret not in text


async def test_the_api_refuses_to_start_as_a_role_that_bypasses_row_security(
    database_url: str, kafka_bootstrap: str
) -> None:
    """With DATABASE_ROLE empty the API would query as the owner login, which row-level
    security does not restrict: it must not start at all."""
    settings = api_settings(database_url, kafka_bootstrap, "erc8004.actions.unused")
    owner = settings.model_copy(update={"database_role": ""})
    app = create_app(owner, passwords=cheap_passwords())
    server = TestServer(app, host="127.0.0.1")
    try:
        with pytest.raises(RuntimeError, match="DATABASE_ROLE"):
            await server.start_server()
    finally:
        await server.close()


async def test_a_url_template_that_could_move_the_host_is_refused(
    client: Client, db: asyncpg.Connection
) -> None:
    """The review's attack: a host part whose template renders a "/" sends the
    secret headers to another origin than the one the API checked. Refused on
    creation and on a PATCH, with where and why."""
    auth = await signup(client)
    escaping = 'http://127.0.0.1:9998{{"\\x2f"}}@127.0.0.1:9999/hook'
    action = {
        "action_type": "rest",
        "config": {"url": escaping, "secret_headers": {"Authorization": "Bearer s3cr3t"}},
    }
    resp = await client.post("/v1/triggers", json=a_trigger(CHAIN, actions=[action]), headers=auth)
    assert resp.status == 422
    (problem,) = (await resp.json())["details"]
    assert problem["loc"] == ["body", "actions", 0, "config", "url"]
    assert "templates may not be in the scheme, userinfo, host or port" in problem["message"]
    assert await db.fetchval("SELECT count(*) FROM triggers") == 0

    fine = {"action_type": "rest", "config": {"url": "https://127.0.0.1:9999/{{event.agent_id}}"}}
    resp = await client.post("/v1/triggers", json=a_trigger(CHAIN, actions=[fine]), headers=auth)
    assert resp.status == 201
    trigger = await resp.json()
    moved = {"action_type": "rest", "config": {"url": "https://{{event.owner}}.example/x"}}
    resp = await client.patch(
        f"/v1/triggers/{trigger['id']}", json={"actions": [moved]}, headers=auth
    )
    assert resp.status == 422
    assert "templates may not be in the scheme" in await resp.text()


async def test_an_agent_id_of_two_identity_registries_takes_tokens_by_registry(
    client: Client, db: asyncpg.Connection
) -> None:
    """Issue 15: agent 5 of an old and of a new Identity registry on one chain are two
    agents with two owners. Without a registry the token is refused (409: which agent
    is meant); with ?registry= it is the owner of that registry's agent who signs,
    the signed message names the registry, and each agent has a token of its own."""
    auth = await signup(client)
    old, new = "0x" + "01" * 20, "0x" + "02" * 20
    alice, bob = PrivateKey(b"\x41" * 32), PrivateKey(b"\x42" * 32)
    registered = [
        an_event(
            CHAIN, block, event_type="Registered", agent_id=5,
            owner=key.public_key.to_checksum_address(), registry_address=registry,
        )
        for block, key, registry in ((20, alice, old), (21, bob, new))
    ]  # fmt: skip
    await store_events(db, registered)
    url = f"/v1/agents/{CHAIN}/5/mcp-token"
    resp = await client.put(url, json=token_body(alice, 5, "t0"), headers=auth)
    assert resp.status == 409
    assert "registry" in (await resp.json())["error"]
    # alice owns agent 5 of the old registry, not of the new one
    for_new = token_body(alice, 5, "t1", registry=new)
    assert (await client.put(f"{url}?registry={new}", json=for_new, headers=auth)).status == 403
    # a signature without the registry line does not pass for a registry
    unnamed = token_body(alice, 5, "t2")
    assert (await client.put(f"{url}?registry={old}", json=unnamed, headers=auth)).status == 403
    for key, registry, token in ((alice, old, "old-token"), (bob, new, "new-token")):
        body = token_body(key, 5, token, registry=registry)
        resp = await client.put(
            f"{url}?registry={registry.upper().replace('0X', '0x')}", json=body, headers=auth
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["agent_registry"] == registry
    rows = await db.fetch(
        "SELECT agent_registry, token_ciphertext FROM agent_mcp_tokens WHERE chain_id = $1"
        " AND agent_id = 5 ORDER BY agent_registry",
        CHAIN,
    )
    box = SecretBox(SECRETS_KEY)
    assert [
        (
            r["agent_registry"],
            box.decrypt(
                r["token_ciphertext"], context=f"agent_mcp_tokens:{CHAIN}:{r['agent_registry']}:5"
            ),
        )
        for r in rows
    ] == [(old, "old-token"), (new, "new-token")]
    bad = await client.put(f"{url}?registry=0x12", json=for_new, headers=auth)
    assert bad.status == 422
    assert (await bad.json())["details"][0]["loc"] == ["query", "registry"]
    # the events of one registry's agent
    listed = await client.get(
        f"/v1/events?chain_id={CHAIN}&agent_id=5&agent_registry={new}", headers=auth
    )
    assert [(e["block_number"], e["agent_registry"]) for e in (await listed.json())["items"]] == [
        (21, new)
    ]
