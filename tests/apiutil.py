"""Helpers for API tests: the app in-process against the test's database, users,
events stored as ingest stores them."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from pydantic import SecretStr

from services.api.app import create_app
from services.api.auth import Passwords
from services.api.settings import ApiSettings
from shared.contract.event_rows import (
    EVENT_COLUMNS,
    event_row,
)
from shared.contract.events import (
    Event,
)
from tests import dispatcherutil
from tools.eventgen import make_event

Client = TestClient[web.Request, web.Application]
JWT_SECRET = "test-jwt-secret-0123456789abcdef"
SECRETS_KEY = "dGVzdC1zZWNyZXRzLWtleS0zMi1ieXRlcy1sb25nLTE="


def api_settings(database_url: str, bootstrap: str, actions_topic: str) -> ApiSettings:
    return ApiSettings(
        database_url=SecretStr(database_url),
        kafka_bootstrap_servers=bootstrap,
        jwt_secret=SecretStr(JWT_SECRET),
        secrets_key=SecretStr(SECRETS_KEY),
        actions_topic=actions_topic,
        ops_port=0,
    )


@asynccontextmanager
async def api_client(database_url: str, bootstrap: str, **settings: Any) -> AsyncIterator[Client]:
    """The API in process against the test's database (redrives to an unused topic)."""
    config = api_settings(database_url, bootstrap, "erc8004.actions.unused")
    if settings:
        config = config.model_copy(update=settings)
    app = create_app(config, passwords=cheap_passwords())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def cheap_passwords() -> Passwords:
    """argon2id with small parameters: the tests check behaviour, not cost."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


async def signup(client: Client, name: str | None = None) -> dict[str, str]:
    """Register and log in a new user; returns headers with its bearer token."""
    name = name or f"user{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    resp = await client.post(
        "/v1/auth/register",
        json={"username": name, "email": f"{name}@example.org", "password": password},
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post("/v1/auth/login", json={"username": name, "password": password})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def store_events(db: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Events into event_ids and events, as the owner (what ingest would have stored)."""
    async with db.transaction():
        await db.executemany(
            "INSERT INTO event_ids (id, block_time) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(e.id, e.block_time) for e in events],
        )
        await db.copy_records_to_table(
            "events", records=[event_row(e) for e in events], columns=list(EVENT_COLUMNS)
        )


def an_event(chain: int, block: int, log: int = 0, **fields: Any) -> Event:
    rng = random.Random(f"{chain}:{block}:{log}")
    legacy = fields.pop("legacy", True)
    score = fields.pop("score", None)
    raw = make_event(
        rng, chain_id=chain, block_number=block, log_index=log, legacy=legacy, **fields
    )
    if score is not None:
        raw["score"] = score
        raw.pop("value", None)
        raw.pop("value_decimals", None)
    return Event.model_validate(raw)


def user_of(auth: dict[str, str]) -> str:
    """The user id a signup's bearer token names (its ``sub``)."""
    token = auth["Authorization"].removeprefix("Bearer ")
    sub: str = jwt.decode(token, options={"verify_signature": False})["sub"]
    return sub


async def link_chat(db: asyncpg.Connection, auth: dict[str, str], chat_id: str, **kw: Any) -> None:
    """The chat linked by the signed-up user (:func:`tests.dispatcherutil.link_chat`)."""
    await dispatcherutil.link_chat(db, user_of(auth), chat_id, **kw)


REST_ACTION: dict[str, Any] = {
    "action_type": "rest",
    "config": {"url": "https://hooks.example.org/x", "signing_secret": "s3cr3t-signing-key"},
}
#: A Telegram action to chat 42 (which the user must link first: :func:`link_chat`).
TELEGRAM_ACTION: dict[str, Any] = {
    "action_type": "telegram",
    "config": {"chat_id": "42", "message_template": "hi"},
}


def a_trigger(chain: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "high scores",
        "chain_id": chain,
        "registry": "reputation",
        "conditions": [
            {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"},
            {"condition_type": "score_threshold", "operator": ">", "value": "80"},
        ],
        "actions": [REST_ACTION],
    }  # fmt: skip
    body.update(overrides)
    return body
