"""The accounts resource: registering, logging in, changing the password, logging
out everywhere, and a user's API keys (created, listed and revoked with a login's access token)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from services.api.auth import PasswordsBusyError, new_api_key
from services.api.common import (
    LIMITER,
    METRICS,
    PASSWORDS,
    POOL,
    PROXIES,
    REGISTRATIONS,
    SETTINGS,
    TOKENS,
    VIA,
    ApiError,
    client_address,
    cursor_datetime,
    decode_cursor,
    json_ok,
    not_found,
    parse_body,
    parse_query,
    path_id,
    user_id,
)
from services.api.models import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    LogoutQuery,
    Page,
    PageQuery,
    PasswordChangeIn,
    RegisterIn,
    TokenOut,
    UserOut,
)
from services.api.queries import ACQUIRE_SECONDS, as_user
from services.api.queries import accounts as account_sql
from services.api.routes._shared import _page, _within_quota, log

T = TypeVar("T")


async def register(request: web.Request) -> web.Response:
    body = await parse_body(request, RegisterIn)
    # Bounds account creation, and what the 409 below tells about taken names.
    wait = request.app[REGISTRATIONS].take([("addr", _client_address(request))])
    if wait:
        raise ApiError(
            429, "too many registrations from this address", headers={"Retry-After": str(wait)}
        )
    password_hash = await _hashing(request.app[PASSWORDS].hash(body.password.get_secret_value()))
    async with request.app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn:
        row = await account_sql.insert_user(
            conn, username=body.username, email=body.email, password_hash=password_hash
        )
    if row is None:
        raise ApiError(409, "registration refused: the username or e-mail is not available")
    request.app[METRICS].registrations.inc()
    log.info("user registered", new_user_id=row["id"])
    return json_ok(UserOut(**dict(row)), status=201)


async def _hashing(work: Awaitable[T]) -> T:
    try:
        return await work
    except PasswordsBusyError:
        raise ApiError(
            503, "too many logins at once; try again shortly", headers={"Retry-After": "1"}
        ) from None


def _client_address(request: web.Request) -> str:
    return client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), request.app[PROXIES]
    )


async def login(request: web.Request) -> web.Response:
    body = await parse_body(request, LoginIn)
    app = request.app
    limiter, address = app[LIMITER], _client_address(request)
    wait = limiter.reserve(body.username, address)
    if wait:
        app[METRICS].logins_limited.inc()
        raise ApiError(
            429, "too many failed logins; try again later", headers={"Retry-After": str(wait)}
        )
    passwords = app[PASSWORDS]
    password = body.password.get_secret_value()
    # No pool connection is held while hashing: a login flood must not starve the pool.
    async with app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn:
        row = await account_sql.get_login(conn, body.username)
    stored = row["password_hash"] if row is not None else None
    ok = await _hashing(passwords.verify(stored, password))
    if not ok or row is None or not row["active"]:
        app[METRICS].login_failures.inc()
        log.info("login refused")
        raise ApiError(401, "invalid username or password")
    rehash = stored is not None and passwords.needs_rehash(stored)
    new_hash = await _hashing(passwords.hash(password)) if rehash else None
    # The token is dated before the login is recorded, and the login recorded only
    # if the password checked is still the stored one: a password change or a
    # logout-all that commits meanwhile either refuses this login or revokes its
    # token (it revokes every token dated up to its own moment).
    issued = time.time()
    async with app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn:
        recorded = await account_sql.record_login(conn, row["id"], row["password_hash"], new_hash)
    if not recorded:
        log.info("login refused: the password changed meanwhile")
        raise ApiError(401, "invalid username or password")
    limiter.succeeded(body.username)
    settings = app[SETTINGS]
    token = app[TOKENS].issue(row["id"], now=issued)
    log.info("login", login_user_id=row["id"])
    return json_ok(TokenOut(access_token=token, expires_in=settings.access_token_ttl))


def _password_login_only(request: web.Request, what: str = "API keys are managed") -> None:
    """Keys (and sessions) are managed with a password login's token: a leaked key
    cannot mint replacements that outlive its revocation."""
    if request[VIA] != "jwt":
        raise ApiError(403, f"{what} with a login's access token, not an API key")


async def logout_everywhere(request: web.Request) -> web.Response:
    """Every access token of the user issued so far stops working; with
    ``?api_keys=true`` every API key too."""
    _password_login_only(request, "sessions are ended")
    query = parse_query(request, LogoutQuery)
    async with as_user(request.app[POOL], user_id(request)) as conn:
        await account_sql.revoke_tokens(conn, user_id(request), time.time())
        keys = await account_sql.revoke_all_api_keys(conn) if query.api_keys else 0
    log.info("access tokens revoked", api_keys_revoked=keys)
    return web.Response(status=204)


async def change_password(request: web.Request) -> web.Response:
    """The current password checked (failures count as failed logins), the new one
    stored; every access token issued before stops working (optionally every API key
    too) and a fresh one is returned."""
    _password_login_only(request, "the password is changed")
    body = await parse_body(request, PasswordChangeIn)
    app, uid = request.app, user_id(request)
    async with app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn:
        row = await account_sql.get_password(conn, uid)
    if row is None:
        raise ApiError(401, "invalid or expired token")
    limiter, address = app[LIMITER], _client_address(request)
    wait = limiter.reserve(row["username"], address)
    if wait:
        raise ApiError(
            429, "too many failed attempts; try again later", headers={"Retry-After": str(wait)}
        )
    passwords = app[PASSWORDS]
    if not await _hashing(
        passwords.verify(row["password_hash"], body.current_password.get_secret_value())
    ):
        app[METRICS].login_failures.inc()
        log.info("password change refused")
        raise ApiError(403, "the current password is wrong")
    limiter.succeeded(row["username"])
    new_hash = await _hashing(passwords.hash(body.new_password.get_secret_value()))
    now = time.time()
    async with as_user(app[POOL], uid) as conn:
        if not await account_sql.set_password(conn, uid, row["password_hash"], new_hash, now):
            raise ApiError(409, "the password was changed meanwhile; try again")
        keys = await account_sql.revoke_all_api_keys(conn) if body.revoke_api_keys else 0
    # The next whole second: after the revocation (which covers up to `now`), and
    # within the few seconds of leeway a token's "not before" is checked with.
    token = app[TOKENS].issue(uid, now=math.floor(now) + 1)
    log.info("password changed; access tokens revoked", api_keys_revoked=keys)
    return json_ok(TokenOut(access_token=token, expires_in=app[SETTINGS].access_token_ttl))


async def create_api_key(request: web.Request) -> web.Response:
    _password_login_only(request)
    body = await parse_body(request, ApiKeyIn)
    key, prefix, key_hash = new_api_key()
    async with as_user(request.app[POOL], user_id(request)) as conn:
        await _within_quota(request, conn, "api_keys")
        row = await account_sql.insert_api_key(
            conn, user_id=user_id(request), name=body.name, prefix=prefix, key_hash=key_hash
        )
    log.info("api key created", api_key_id=row["id"])
    return json_ok(ApiKeyCreated(**dict(row), key=key), status=201)


async def list_api_keys(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    after = decode_cursor(query.cursor, (str, str))
    async with as_user(request.app[POOL], user_id(request)) as conn:
        rows = await account_sql.list_api_keys(
            conn,
            after=None if after is None else (cursor_datetime(after[0]), after[1]),
            limit=query.limit,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [r["created_at"].isoformat(), r["id"]])
    return json_ok(Page[ApiKeyOut](items=[ApiKeyOut(**dict(r)) for r in rows], next_cursor=cursor))


async def revoke_api_key(request: web.Request) -> web.Response:
    _password_login_only(request)
    key_id = path_id(request, "key_id")
    async with as_user(request.app[POOL], user_id(request)) as conn:
        row = await account_sql.revoke_api_key(conn, key_id)
    if row is None:
        raise not_found("no such API key")
    log.info("api key revoked", api_key_id=key_id)
    return json_ok(ApiKeyOut(**dict(row)))
