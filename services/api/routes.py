"""The API's routes (DESIGN.md "Interfaces"): handlers and the route table that
both registers them and generates the OpenAPI document."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError

from services.api import queries
from services.api.auth import PasswordsBusyError, new_api_key
from services.api.backtest import run_backtest, unsaved_spec
from services.api.common import (
    BACKTESTS,
    LIMITER,
    METRICS,
    PASSWORDS,
    POOL,
    PROXIES,
    REGISTRATIONS,
    SECRETS,
    SETTINGS,
    TOKENS,
    VIA,
    ApiError,
    SlotsBusyError,
    client_address,
    cursor_datetime,
    cursor_time,
    decode_cursor,
    detail,
    encode_cursor,
    invalid,
    json_ok,
    not_found,
    parse_body,
    parse_query,
    path_id,
    path_int,
    read_json,
    user_id,
)
from services.api.jobs import JobProducer, KafkaUnavailableError
from services.api.models import (
    ActionStatOut,
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    BacktestIn,
    BacktestOut,
    BacktestTriggerIn,
    EventsQuery,
    EventStatOut,
    LoginIn,
    McpTokenIn,
    McpTokenOut,
    McpTokenRemovalIn,
    Page,
    PageQuery,
    RegisterIn,
    ResultOut,
    ResultsQuery,
    RetryOut,
    StateItem,
    StatePage,
    StatsActionsQuery,
    StatsEventsQuery,
    TokenOut,
    TriggerOut,
    TriggerPatch,
    UserOut,
)
from services.api.openapi import PathParam, Route, build_document
from services.api.signatures import (
    mcp_token_message,
    mcp_token_removal_message,
    recover_signer,
)
from shared.evaluate import TriggerSpec, evaluate
from shared.events import EVENT_COLUMNS, INT32_MAX, INT63_MAX, Event, event_from_row, event_key
from shared.jobs import ActionJob, job_id
from shared.outbound import origin
from shared.replay import compile_trigger
from shared.triggers import CREDENTIAL_HEADERS, TriggerCreate

log = structlog.get_logger(__name__)
T = TypeVar("T")

PRODUCER = web.AppKey("producer", JobProducer)
DOCUMENT = web.AppKey("document", dict)
#: How far ahead an MCP token signature may expire (it is accepted once anyway).
MAX_SIGNATURE_VALIDITY = 3600


def _page(items: list[Any], limit: int, key: Any) -> tuple[list[Any], str | None]:
    """The first ``limit`` rows and the cursor after them (None on the last page)."""
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, encode_cursor(key(items[-1]))


def _iso(value: datetime | None) -> str:
    return "-infinity" if value is None else value.isoformat()


# --- accounts ------------------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    body = await parse_body(request, RegisterIn)
    # Bounds account creation, and what the 409 below tells about taken names.
    wait = request.app[REGISTRATIONS].take([("addr", _client_address(request))])
    if wait:
        raise ApiError(
            429, "too many registrations from this address", headers={"Retry-After": str(wait)}
        )
    password_hash = await _hashing(request.app[PASSWORDS].hash(body.password.get_secret_value()))
    async with request.app[POOL].acquire() as conn:
        row = await queries.insert_user(
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
    async with app[POOL].acquire() as conn:
        row = await queries.get_login(conn, body.username)
    stored = row["password_hash"] if row is not None else None
    ok = await _hashing(passwords.verify(stored, password))
    if not ok or row is None or not row["active"]:
        app[METRICS].login_failures.inc()
        log.info("login refused")
        raise ApiError(401, "invalid username or password")
    rehash = stored is not None and passwords.needs_rehash(stored)
    new_hash = await _hashing(passwords.hash(password)) if rehash else None
    async with app[POOL].acquire() as conn:
        await queries.record_login(conn, row["id"], new_hash)
    limiter.succeeded(body.username)
    settings = app[SETTINGS]
    token = app[TOKENS].issue(row["id"])
    log.info("login", login_user_id=row["id"])
    return json_ok(TokenOut(access_token=token, expires_in=settings.access_token_ttl))


def _password_login_only(request: web.Request, what: str = "API keys are managed") -> None:
    """Keys (and sessions) are managed with a password login's token: a leaked key
    cannot mint replacements that outlive its revocation."""
    if request[VIA] != "jwt":
        raise ApiError(403, f"{what} with a login's access token, not an API key")


async def logout_everywhere(request: web.Request) -> web.Response:
    """Every access token of the user issued so far stops working (API keys are
    revoked one by one)."""
    _password_login_only(request, "sessions are ended")
    async with request.app[POOL].acquire() as conn:
        await queries.revoke_tokens(conn, user_id(request), time.time())
    log.info("access tokens revoked")
    return web.Response(status=204)


async def _within_quota(request: web.Request, conn: Any, what: str) -> None:
    settings = request.app[SETTINGS]
    limit = {
        "triggers": settings.max_triggers_per_user,
        "api_keys": settings.max_api_keys_per_user,
    }[what]
    if await queries.count_for_quota(conn, what, user_id(request)) >= limit:
        log.info("quota reached", quota=what, limit=limit)
        raise ApiError(409, f"quota reached: at most {limit} {what.replace('_', ' ')} per user")


async def create_api_key(request: web.Request) -> web.Response:
    _password_login_only(request)
    body = await parse_body(request, ApiKeyIn)
    key, prefix, key_hash = new_api_key()
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        await _within_quota(request, conn, "api_keys")
        row = await queries.insert_api_key(
            conn, user_id=user_id(request), name=body.name, prefix=prefix, key_hash=key_hash
        )
    log.info("api key created", api_key_id=row["id"])
    return json_ok(ApiKeyCreated(**dict(row), key=key), status=201)


async def list_api_keys(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    after = decode_cursor(query.cursor, (str, str))
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        rows = await queries.list_api_keys(
            conn,
            after=None if after is None else (cursor_datetime(after[0]), after[1]),
            limit=query.limit,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [r["created_at"].isoformat(), r["id"]])
    return json_ok(Page[ApiKeyOut](items=[ApiKeyOut(**dict(r)) for r in rows], next_cursor=cursor))


async def revoke_api_key(request: web.Request) -> web.Response:
    _password_login_only(request)
    key_id = path_id(request, "key_id")
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        row = await queries.revoke_api_key(conn, key_id)
    if row is None:
        raise not_found("no such API key")
    log.info("api key revoked", api_key_id=key_id)
    return json_ok(ApiKeyOut(**dict(row)))


# --- triggers ------------------------------------------------------------------------------


def _trigger_out(row: asyncpg.Record) -> TriggerOut:
    return TriggerOut.model_validate(dict(row))


def _stored_form(row: asyncpg.Record) -> dict[str, Any]:
    """A stored trigger in the shape of a TriggerCreate body (secrets are not there)."""
    return {
        "name": row["name"],
        "description": row["description"],
        "chain_id": row["chain_id"],
        "registry": row["registry"],
        "enabled": row["enabled"],
        "cooldown_seconds": row["cooldown_seconds"],
        "conditions": [
            {k: c[k] for k in ("condition_type", "field", "operator", "value", "config")}
            for c in row["conditions"]
        ],
        "actions": [
            {"action_type": a["action_type"], "priority": a["priority"], "config": a["config"]}
            for a in row["actions"]
        ],
    }


def _spec(row: asyncpg.Record) -> TriggerSpec | None:
    """A stored trigger in the evaluator's form, as the matcher compiles it."""
    form = dict(row)
    form["conditions"] = [{k: v for k, v in c.items() if k != "id"} for c in row["conditions"]]
    return compile_trigger(form)


@dataclass(frozen=True)
class _Sealed:
    """A REST action's write-only parts, encrypted for storage."""

    config: dict[str, Any]  # what is stored in clear (and travels in jobs)
    secret: bytes | None  # the signing secret
    headers: bytes | None  # the secret headers, as a JSON object
    header_names: list[str] | None


def _seal(request: web.Request, action_id: int, config: dict[str, Any]) -> _Sealed:
    """The config to store without its signing secret and secret headers, and those
    encrypted (contexts ``trigger_actions:<id>`` and ``trigger_actions:<id>:headers``)."""
    config = dict(config)
    secret = config.pop("signing_secret", None)
    headers = config.pop("secret_headers", None)
    box = request.app[SECRETS]
    sealed_secret = sealed_headers = None
    if secret:
        sealed_secret = box.encrypt(str(secret), context=f"trigger_actions:{action_id}")
    if headers:
        text = orjson.dumps(headers).decode()
        sealed_headers = box.encrypt(text, context=f"trigger_actions:{action_id}:headers")
    return _Sealed(
        config=config,
        secret=sealed_secret,
        headers=sealed_headers,
        header_names=sorted(headers) if headers else None,
    )


def _no_clear_credentials(actions: list[dict[str, Any]]) -> None:
    """A credential in a REST action's clear ``headers`` would be stored, returned and
    sent through Kafka as it is: refused, with where it belongs."""
    errors = [
        detail(
            ("body", "actions", i, "config", "headers", name),
            "a credential header: give it in config.secret_headers (stored encrypted, "
            "never returned)",
        )
        for i, action in enumerate(actions)
        if action["action_type"] == "rest"
        for name in action["config"].get("headers") or {}
        if name.lower() in CREDENTIAL_HEADERS
    ]
    if errors:
        raise ApiError(422, "invalid body", errors)


async def _insert_actions(
    request: web.Request, conn: Any, trigger_id: str, actions: list[dict[str, Any]]
) -> None:
    for action in actions:
        action_id = await queries.next_action_id(conn)
        sealed = _seal(request, action_id, action["config"])
        await queries.insert_action(
            conn,
            action_id=action_id,
            trigger_id=trigger_id,
            action_type=action["action_type"],
            priority=action["priority"],
            config=sealed.config,
            secret=sealed.secret,
            headers=sealed.headers,
            header_names=sealed.header_names,
        )


async def list_triggers(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    after = decode_cursor(query.cursor, (str, str))
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        rows = await queries.list_triggers(
            conn,
            after=None if after is None else (cursor_datetime(after[0]), after[1]),
            limit=query.limit,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [r["created_at"].isoformat(), r["id"]])
    return json_ok(Page[TriggerOut](items=[_trigger_out(r) for r in rows], next_cursor=cursor))


async def create_trigger(request: web.Request) -> web.Response:
    body = await parse_body(request, TriggerCreate)
    storage = body.storage_dump()
    _no_clear_credentials(storage["actions"])
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        await _within_quota(request, conn, "triggers")
        trigger_id = await queries.insert_trigger(
            conn, user_id=user_id(request), data=storage, is_stateful=body.is_stateful
        )
        await queries.replace_conditions(conn, trigger_id, storage["conditions"])
        await _insert_actions(request, conn, trigger_id, storage["actions"])
        row = await queries.get_trigger(conn, trigger_id)
    assert row is not None
    log.info("trigger created", trigger_id=trigger_id)
    return json_ok(_trigger_out(row), status=201)


async def get_trigger(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        row = await queries.get_trigger(conn, trigger_id)
    if row is None:
        raise not_found("no such trigger")
    return json_ok(_trigger_out(row))


async def update_trigger(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    raw = await read_json(request)
    try:
        patch = TriggerPatch.model_validate(raw)
        update = patch.as_update()
    except ValidationError as exc:
        raise invalid("body", exc) from None
    action_ids = patch.action_ids()
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        current = await queries.get_trigger(conn, trigger_id, lock=True)
        if current is None:
            raise not_found("no such trigger")
        merged = {**_stored_form(current), **update.storage_dump()}
        try:
            new = TriggerCreate.model_validate(merged)
        except ValidationError as exc:
            raise invalid("body", exc) from None
        storage = new.storage_dump()
        if "actions" in update.model_fields_set:
            _no_clear_credentials(storage["actions"])
        await queries.update_trigger(conn, trigger_id, data=storage, is_stateful=new.is_stateful)
        if "conditions" in update.model_fields_set:
            await queries.replace_conditions(conn, trigger_id, storage["conditions"])
        if "actions" in update.model_fields_set:
            await _update_actions(
                request,
                conn,
                current=current,
                actions=storage["actions"],
                action_ids=action_ids,
                raw=raw,
            )
        row = await queries.get_trigger(conn, trigger_id)
    assert row is not None
    log.info("trigger updated", trigger_id=trigger_id, fields=sorted(update.model_fields_set))
    return json_ok(_trigger_out(row))


async def _update_actions(
    request: web.Request,
    conn: Any,
    *,
    current: asyncpg.Record,
    actions: list[dict[str, Any]],
    action_ids: list[Any],
    raw: dict[str, Any],
) -> None:
    """Actions given with the ``id`` of an existing one are changed in place (same id,
    so the same job ids; the signing secret and the secret headers stay unless the
    config names ``signing_secret`` / ``secret_headers``: a value replaces them, null
    removes them); the others are new; existing actions not given are deleted."""
    existing = {a["id"]: a for a in current["actions"]}
    errors = []
    seen: set[int] = set()
    for i, aid in enumerate(action_ids):
        if aid is None:
            continue
        if type(aid) is not int or aid not in existing or aid in seen:
            errors.append(detail(("body", "actions", i, "id"), "not an action of this trigger"))
        else:
            seen.add(aid)
    if errors:
        raise ApiError(422, "invalid body", errors)
    await queries.delete_actions_except(conn, current["id"], sorted(seen))
    for i, (action, aid) in enumerate(zip(actions, action_ids, strict=True)):
        if aid is None:
            await _insert_actions(request, conn, current["id"], [action])
            continue
        sealed = _seal(request, aid, action["config"])
        raw_config = raw["actions"][i].get("config")
        given = set(raw_config) if isinstance(raw_config, dict) else set()
        still_rest = action["action_type"] == existing[aid]["action_type"] == "rest"
        if still_rest and "secret_headers" not in given:
            _keeping_secret_headers(i, existing[aid], action["config"])
        await queries.update_action(
            conn,
            action_id=aid,
            action_type=action["action_type"],
            priority=action["priority"],
            config=sealed.config,
            secret=sealed.secret,
            keep_secret=still_rest and "signing_secret" not in given,
            headers=sealed.headers,
            header_names=sealed.header_names,
            keep_headers=still_rest and "secret_headers" not in given,
        )


def _keeping_secret_headers(i: int, before: Any, config: dict[str, Any]) -> None:
    """A REST action's secret headers stay through a PATCH that does not name them
    only while they would go where they went before (same origin) and no clear
    header now has one of their names."""
    kept = before["secret_headers_set"] or []
    if not kept:
        return
    where = ("body", "actions", i, "config")
    if _origin_of(config["url"]) != _origin_of(before["config"]["url"]):
        raise ApiError(
            422,
            "invalid body",
            [detail((*where, "secret_headers"), "the URL's origin changed: give the secret "
                    "headers again (or null to drop them)")],
        )  # fmt: skip
    clashes = {k.lower() for k in kept} & {k.lower() for k in config.get("headers") or {}}
    if clashes:
        raise ApiError(
            422,
            "invalid body",
            [detail((*where, "headers", name), "also a secret header") for name in sorted(clashes)],
        )


def _origin_of(url: str) -> str:
    try:
        return origin(url)
    except ValueError:
        return url


async def delete_trigger(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        deleted = await queries.delete_trigger(conn, trigger_id)
    if not deleted:
        raise not_found("no such trigger")
    log.info("trigger deleted", trigger_id=trigger_id)
    return web.Response(status=204)


async def get_trigger_state(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    query = parse_query(request, PageQuery)
    after = decode_cursor(query.cursor, (str,))
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        trigger = await queries.get_trigger(conn, trigger_id)
        if trigger is None:
            raise not_found("no such trigger")
        rows = await queries.list_states(
            conn, trigger_id, after=None if after is None else after[0], limit=query.limit
        )
    rows, cursor = _page(rows, query.limit, lambda r: [r["scope_key"]])
    spec = _spec(trigger)
    return json_ok(
        StatePage(
            trigger_id=trigger_id,
            is_stateful=trigger["is_stateful"],
            condition_paths=spec.condition_paths if spec is not None else {},
            items=[StateItem(**dict(r)) for r in rows],
            next_cursor=cursor,
        )
    )


async def list_trigger_results(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    query = parse_query(request, ResultsQuery)
    after = decode_cursor(query.cursor, (str, str))
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        trigger = await queries.get_trigger(conn, trigger_id)
        if trigger is None:
            raise not_found("no such trigger")
        # A stateless trigger records no evaluation: its explain is a pure function of
        # the trigger and the event, so the firings of its current version can be
        # evaluated again (an earlier version's explain would be another definition's).
        spec = _spec(trigger)
        stateless = spec if spec is not None and not spec.is_stateful else None
        rows = await queries.list_results(
            conn,
            trigger_id,
            status=query.status,
            action_type=None if query.action_type is None else query.action_type.value,
            since=query.since,
            until=query.until,
            after=None if after is None else (cursor_time(after[0]), after[1]),
            limit=query.limit,
            events_of_version=None if stateless is None else stateless.version,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [_iso(r["executed_at"]), r["id"]])
    return json_ok(
        Page[ResultOut](items=[_result_out(r, stateless) for r in rows], next_cursor=cursor)
    )


def _result_out(row: asyncpg.Record, stateless: TriggerSpec | None) -> ResultOut:
    """A result with its firing's explain: the recorded one, else (a stateless trigger
    still at the version that fired, its event version stored) the one evaluated again."""
    out = {name: row[name] for name in queries.RESULT_FIELDS}
    explain: dict[str, Any] | None = row["recorded_explain"]
    if explain is not None:
        return ResultOut(**out, explain=explain, explain_source="recorded")
    if stateless is not None and row["ev_id"] is not None:
        event = event_from_row({c: row[f"ev_{c}"] for c in EVENT_COLUMNS})
        outcome = evaluate(stateless, event, states={})
        if outcome.fired:
            return ResultOut(**out, explain=outcome.explain, explain_source="recomputed")
    return ResultOut(**out)


async def retry_result(request: web.Request) -> web.Response:
    """Produce a failed or dead-lettered job again, as attempt 1 with the same job id,
    rebuilt from the trigger's current action config and the stored event."""
    trigger_id = path_id(request, "trigger_id")
    wanted = path_id(request, "job_id")
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        trigger = await queries.get_trigger(conn, trigger_id)
        if trigger is None:
            raise not_found("no such trigger")
        result = await queries.latest_result(conn, trigger_id, wanted)
        if result is None or result["event_id"] is None:
            raise not_found("no results of this job")
        if result["status"] not in ("failed", "dead"):
            raise ApiError(
                409, f"the job's latest attempt is {result['status']}: nothing to redrive"
            )
        event_id: str = result["event_id"]
        row = await queries.get_canonical_event(conn, event_id)
        if row is None:
            raise ApiError(409, "the job's event is no longer stored")
        event = event_from_row(row)
        # Jobs of the previous release were named after the event id, not its version.
        versions = (event_key(event), event_id)
        actions = await queries.get_actions(conn, trigger_id)
        action = next(
            (a for a in actions for v in versions if job_id(trigger_id, v, a["id"]) == wanted),
            None,
        )
        if action is None:
            raise ApiError(
                409,
                "the job's action no longer exists, or a reorg replaced the job's event"
                " (the canonical event's firing is another job)",
            )
        explain = await queries.get_evaluation_explain(conn, trigger_id, event_key(event))
        if explain is None:
            # A stateless trigger records no evaluation: its explain is a pure function
            # of the trigger and the event, so evaluate again.
            spec = _spec(trigger)
            if spec is not None and not spec.is_stateful:
                explain = evaluate(spec, event, states={}).explain
        job = ActionJob(
            job_id=wanted,
            trigger_id=trigger_id,
            trigger_name=trigger["name"],
            user_id=trigger["user_id"],
            action_id=action["id"],
            action_type=action["action_type"],
            config=action["config"],
            event=event,
            explain=explain or {},
            attempt=1,
            created_at=datetime.now(UTC),
            # A run of its own: the dispatcher records (and deduplicates) attempts per
            # run, so the earlier run's rows do not make it skip this one.
            run_id=uuid.uuid4().hex,
        )
        assert job.run_id is not None
        interval = request.app[SETTINGS].redrive_interval
        wait = await queries.claim_redrive(conn, wanted, user_id(request), job.run_id, interval)
        if wait > 0:
            raise ApiError(
                429,
                f"this job was redriven less than {interval:g} s ago",
                headers={"Retry-After": str(math.ceil(wait))},
            )
    # Produced after the claim committed (no connection held while Kafka answers);
    # a failed send takes its own claim back, so the next try is not refused.
    try:
        await request.app[PRODUCER].send(job)
    except KafkaUnavailableError:
        log.warning("redrive failed: Kafka unavailable", job_id=wanted)
        async with queries.as_user(request.app[POOL], user_id(request)) as conn:
            await queries.release_redrive(conn, wanted, job.run_id)
        raise ApiError(503, "Kafka is unavailable; the job was not redriven") from None
    request.app[METRICS].jobs_redriven.labels(job.action_type.value).inc()
    log.info("job redriven", job_id=wanted, trigger_id=trigger_id, previous=result["status"])
    return json_ok(
        RetryOut(
            job_id=wanted,
            trigger_id=trigger_id,
            action_id=action["id"],
            event_id=event_id,
            attempt=1,
            topic=request.app[PRODUCER].topic,
        ),
        status=202,
    )


async def backtest_trigger(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    body = await parse_body(request, BacktestIn)
    started = time.perf_counter()
    settings = request.app[SETTINGS]
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        row = await queries.get_trigger(conn, trigger_id)
        if row is None:
            raise not_found("no such trigger")
        spec = _spec(row)
        if spec is None:
            raise ApiError(409, "the stored trigger does not validate; update it first")
    async with (
        _backtest_slot(request),
        queries.as_user(request.app[POOL], user_id(request)) as conn,
    ):
        out = await run_backtest(
            conn,
            spec,
            body,
            trigger_id=trigger_id,
            max_events=settings.backtest_max_events,
            time_limit=settings.backtest_seconds,
        )
    return _backtest_done(request, out, started)


@contextlib.asynccontextmanager
async def _backtest_slot(request: web.Request) -> AsyncIterator[None]:
    """One of BACKTEST_CONCURRENCY slots; 503 when as many wait already."""
    try:
        async with request.app[BACKTESTS].take():
            yield
    except SlotsBusyError:
        raise ApiError(
            503, "too many backtests at once; try again shortly", headers={"Retry-After": "5"}
        ) from None


async def backtest_unsaved(request: web.Request) -> web.Response:
    body = await parse_body(request, BacktestTriggerIn)
    started = time.perf_counter()
    spec = unsaved_spec(body.trigger, user_id=user_id(request))
    settings = request.app[SETTINGS]
    async with (
        _backtest_slot(request),
        queries.as_user(request.app[POOL], user_id(request)) as conn,
    ):
        out = await run_backtest(
            conn,
            spec,
            body,
            trigger_id=None,
            max_events=settings.backtest_max_events,
            time_limit=settings.backtest_seconds,
        )
    return _backtest_done(request, out, started)


def _backtest_done(request: web.Request, out: BacktestOut, started: float) -> web.Response:
    metrics = request.app[METRICS]
    metrics.backtest_events.inc(out.events_scanned)
    elapsed = time.perf_counter() - started
    metrics.backtest_seconds.observe(elapsed)
    log.info(
        "backtest",
        trigger_id=out.trigger_id,
        events=out.events_scanned,
        fired=out.fired,
        seconds=round(elapsed, 3),
    )
    return json_ok(out)


# --- events and statistics -----------------------------------------------------------------


async def list_events(request: web.Request) -> web.Response:
    query = parse_query(request, EventsQuery)
    after = decode_cursor(query.cursor, (str, str, str))
    where = queries.Where()
    for column, value in (
        ("chain_id", query.chain_id),
        ("registry", None if query.registry is None else query.registry.value),
        ("event_type", query.event_type),
        ("agent_id", query.agent_id),
    ):
        if value is not None:
            where.add(f"e.{column} = {{}}", value)
    if query.from_block is not None:
        where.add("e.block_number >= {}", query.from_block)
    if query.to_block is not None:
        where.add("e.block_number <= {}", query.to_block)
    if query.since is not None:
        where.add("e.block_time >= {}", query.since)
    if query.until is not None:
        where.add("e.block_time < {}", query.until)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_events(
            conn,
            where,
            after=None if after is None else (cursor_time(after[0]), after[1], after[2]),
            limit=query.limit,
        )
    rows, cursor = _page(
        rows, query.limit, lambda r: [r["block_time"].isoformat(), r["id"], r["block_hash"]]
    )
    return json_ok(Page[Event](items=[event_from_row(r) for r in rows], next_cursor=cursor))


async def event_stats(request: web.Request) -> web.Response:
    query = parse_query(request, StatsEventsQuery)
    after = decode_cursor(query.cursor, (str, int, str, str))
    where = queries.Where()
    for column, value in (
        ("chain_id", query.chain_id),
        ("registry", None if query.registry is None else query.registry.value),
        ("event_type", query.event_type),
    ):
        if value is not None:
            where.add(f"{column} = {{}}", value)
    if query.since is not None:
        where.add("hour >= {}", query.since)
    if query.until is not None:
        where.add("hour < {}", query.until)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_event_stats(
            conn,
            where,
            after=None if after is None else (cursor_time(after[0]), *after[1:]),
            limit=query.limit,
        )
    rows, cursor = _page(
        rows,
        query.limit,
        lambda r: [r["hour"].isoformat(), r["chain_id"], r["registry"], r["event_type"]],
    )
    return json_ok(
        Page[EventStatOut](items=[EventStatOut(**dict(r)) for r in rows], next_cursor=cursor)
    )


async def action_stats(request: web.Request) -> web.Response:
    query = parse_query(request, StatsActionsQuery)
    after = decode_cursor(query.cursor, (str, str))
    where = queries.Where()
    if query.action_type is not None:
        where.add("action_type = {}", query.action_type.value)
    if query.since is not None:
        where.add("hour >= {}", query.since)
    if query.until is not None:
        where.add("hour < {}", query.until)
    async with queries.as_user(request.app[POOL], user_id(request)) as conn:
        rows = await queries.list_action_stats(
            conn,
            where,
            after=None if after is None else (cursor_time(after[0]), after[1]),
            limit=query.limit,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [r["hour"].isoformat(), r["action_type"]])
    return json_ok(
        Page[ActionStatOut](items=[ActionStatOut(**dict(r)) for r in rows], next_cursor=cursor)
    )


# --- agents --------------------------------------------------------------------------------


def _agent_path(request: web.Request) -> tuple[int, int]:
    return (
        path_int(request, "chain_id", low=1, high=INT32_MAX),
        path_int(request, "agent_id", low=0, high=INT63_MAX),
    )


def _signer(body: McpTokenRemovalIn, message: str) -> str:
    """The address that signed ``message``, after checking the body's expiry."""
    now = time.time()
    if body.expires_at <= now:
        raise ApiError(422, "invalid body", [detail(("body", "expires_at"), "has passed")])
    if body.expires_at > now + MAX_SIGNATURE_VALIDITY:
        raise ApiError(
            422,
            "invalid body",
            [detail(("body", "expires_at"), f"at most {MAX_SIGNATURE_VALIDITY} s ahead")],
        )
    signer = recover_signer(message, body.signature)
    if signer is None:
        raise ApiError(
            422, "invalid body", [detail(("body", "signature"), "not a valid signature")]
        )
    return signer


async def _owner_check(
    conn: Any, chain_id: int, agent_id: int, signer: str, body: McpTokenRemovalIn
) -> str:
    """The agent's current owner, if it is the signer and the nonce is new."""
    owner = await queries.agent_owner(conn, chain_id, agent_id)
    if owner is None:
        raise not_found("no Registered event of this agent is known")
    if owner.lower() != signer:
        log.info("mcp token refused: not the owner", chain_id=chain_id, agent_id=agent_id)
        raise ApiError(403, "the signature is not by the agent's current owner")
    expires = datetime.fromtimestamp(body.expires_at, UTC)
    if not await queries.use_nonce(conn, chain_id, agent_id, body.nonce, expires):
        raise ApiError(409, "this signed message was used already (nonce)")
    return owner.lower()


async def put_mcp_token(request: web.Request) -> web.Response:
    chain_id, agent_id = _agent_path(request)
    body = await parse_body(request, McpTokenIn)
    token = body.token.get_secret_value()
    message = mcp_token_message(
        chain_id=chain_id,
        agent_id=agent_id,
        token=token,
        nonce=body.nonce,
        expires_at=body.expires_at,
    )
    signer = _signer(body, message)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        owner = await _owner_check(conn, chain_id, agent_id, signer, body)
        ciphertext = request.app[SECRETS].encrypt(
            token, context=f"agent_mcp_tokens:{chain_id}:{agent_id}"
        )
        row = await queries.upsert_mcp_token(
            conn, chain_id, agent_id, ciphertext=ciphertext, owner=owner
        )
    log.info("mcp token stored", chain_id=chain_id, agent_id=agent_id)
    return json_ok(McpTokenOut(**dict(row)))


async def delete_mcp_token(request: web.Request) -> web.Response:
    chain_id, agent_id = _agent_path(request)
    body = await parse_body(request, McpTokenRemovalIn)
    message = mcp_token_removal_message(
        chain_id=chain_id, agent_id=agent_id, nonce=body.nonce, expires_at=body.expires_at
    )
    signer = _signer(body, message)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _owner_check(conn, chain_id, agent_id, signer, body)
        if not await queries.delete_mcp_token(conn, chain_id, agent_id):
            raise not_found("no MCP token is stored for this agent")
    log.info("mcp token deleted", chain_id=chain_id, agent_id=agent_id)
    return web.Response(status=204)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOCUMENT])


# --- the table -----------------------------------------------------------------------------

_TRIGGER = PathParam("trigger_id", {"type": "string", "maxLength": 200}, "A trigger's id.")


def _path(name: str, description: str, **schema: Any) -> PathParam:
    return PathParam(name, {"type": "string", **schema}, description)


_AGENT = (
    _path("chain_id", "The chain id.", pattern=r"^[0-9]{1,10}$"),
    _path("agent_id", "The agent id.", pattern=r"^[0-9]{1,19}$"),
)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/auth/register", register, "Create an account", 201, UserOut, RegisterIn,
          auth=False, errors=(409, 429, 503), tag="accounts",
          description="At most REGISTER_MAX_PER_ADDRESS (20) per client address per hour."),
    Route("POST", "/v1/auth/login", login, "Log in: an access token", 200, TokenOut, LoginIn,
          auth=False, errors=(401, 429, 503), tag="accounts",
          description="Wrong username and wrong password give the same 401."),
    Route("POST", "/v1/auth/logout-all", logout_everywhere,
          "Log out everywhere: revoke every access token issued so far", 204,
          errors=(403,), tag="accounts",
          description=(
              "Needs a login's access token (an API key answers 403; keys are revoked one by "
              "one). Tokens issued up to the second of this call stop working, this one too."
          )),
    Route("POST", "/v1/api-keys", create_api_key, "Create an API key (shown once)", 201,
          ApiKeyCreated, ApiKeyIn, errors=(403, 409), tag="accounts",
          description="Needs a login's access token: an API key cannot create keys."),
    Route("GET", "/v1/api-keys", list_api_keys, "List your API keys", 200, Page[ApiKeyOut],
          query=PageQuery, tag="accounts"),
    Route("DELETE", "/v1/api-keys/{key_id}", revoke_api_key, "Revoke an API key", 200, ApiKeyOut,
          path_params=(_path("key_id", "An API key's id.", maxLength=200),), errors=(403, 404),
          tag="accounts", description="Needs a login's access token, not an API key."),
    Route("GET", "/v1/triggers", list_triggers, "List your triggers", 200, Page[TriggerOut],
          query=PageQuery, tag="triggers"),
    Route("POST", "/v1/triggers", create_trigger, "Create a trigger", 201, TriggerOut,
          TriggerCreate, errors=(409,), tag="triggers",
          description="At most MAX_TRIGGERS_PER_USER (1,000) triggers per user: 409 beyond."),
    Route("POST", "/v1/triggers/backtest", backtest_unsaved,
          "Backtest an unsaved trigger over stored events", 200, BacktestOut, BacktestTriggerIn,
          tag="triggers"),
    Route("GET", "/v1/triggers/{trigger_id}", get_trigger, "A trigger", 200, TriggerOut,
          path_params=(_TRIGGER,), errors=(404,), tag="triggers"),
    Route("PATCH", "/v1/triggers/{trigger_id}", update_trigger,
          "Change a trigger (e.g. enable or disable it)", 200, TriggerOut, TriggerPatch,
          path_params=(_TRIGGER,), errors=(404,), tag="triggers",
          description=(
              "Only the fields given change. `conditions` replace all conditions. `actions` "
              "items with the `id` of an existing action change it in place (its signing "
              "secret stays unless `config.signing_secret` is given, null removes it); items "
              "without `id` are new; existing actions not listed are deleted."
          )),
    Route("DELETE", "/v1/triggers/{trigger_id}", delete_trigger, "Delete a trigger", 204,
          path_params=(_TRIGGER,), errors=(404,), tag="triggers"),
    Route("GET", "/v1/triggers/{trigger_id}/state", get_trigger_state,
          "A trigger's stateful condition state, per scope", 200, StatePage, query=PageQuery,
          path_params=(_TRIGGER,), errors=(404,), tag="history"),
    Route("GET", "/v1/triggers/{trigger_id}/results", list_trigger_results,
          "A trigger's action results", 200, Page[ResultOut], query=ResultsQuery,
          path_params=(_TRIGGER,), errors=(404,), tag="history"),
    Route("POST", "/v1/triggers/{trigger_id}/results/{job_id}/retry", retry_result,
          "Redrive a failed or dead-lettered job", 202, RetryOut,
          path_params=(_TRIGGER, _path("job_id", "The job's id.", maxLength=200)),
          errors=(404, 409, 429, 503), tag="history",
          description="The same job is redriven at most once per REDRIVE_INTERVAL (60 s)."),
    Route("POST", "/v1/triggers/{trigger_id}/backtest", backtest_trigger,
          "Backtest a trigger over stored events", 200, BacktestOut, BacktestIn,
          path_params=(_TRIGGER,), errors=(404, 409), tag="triggers"),
    Route("GET", "/v1/events", list_events, "Stored events, newest first", 200, Page[Event],
          query=EventsQuery, tag="history"),
    Route("GET", "/v1/stats/events", event_stats, "Events per hour", 200, Page[EventStatOut],
          query=StatsEventsQuery, tag="stats"),
    Route("GET", "/v1/stats/actions", action_stats, "Your actions per hour", 200,
          Page[ActionStatOut], query=StatsActionsQuery, tag="stats"),
    Route("PUT", "/v1/agents/{chain_id}/{agent_id}/mcp-token", put_mcp_token,
          "Set an agent's MCP bearer token (signed by its owner)", 200, McpTokenOut, McpTokenIn,
          path_params=_AGENT,
          errors=(403, 404, 409), tag="agents",
          description=(
              "The body carries the token and an EIP-191 (personal_sign) signature, by the "
              "agent's current owner, of the lines `ERC-8004 MCP token`, `chain_id: <id>`, "
              "`agent_id: <id>`, `token_sha256: 0x<hex>`, `nonce: <nonce>`, "
              "`expires_at: <unix seconds>` joined by `\\n`. A nonce is accepted once; the "
              "expiry is at most an hour ahead. The token is never returned."
          )),
    Route("DELETE", "/v1/agents/{chain_id}/{agent_id}/mcp-token", delete_mcp_token,
          "Remove an agent's MCP bearer token (signed by its owner)", 204, None,
          McpTokenRemovalIn,
          path_params=_AGENT,
          errors=(403, 404, 409), tag="agents",
          description=(
              "The body carries an EIP-191 (personal_sign) signature, by the agent's "
              "current owner, of the lines `ERC-8004 MCP token removal`, `chain_id: <id>`, "
              "`agent_id: <id>`, `nonce: <nonce>`, `expires_at: <unix seconds>` joined by "
              "`\\n`; nonce and expiry as for setting it. MCP actions of the agent then "
              "call its server without a token."
          )),
    Route("GET", "/openapi.json", openapi_document, "This document", 200, auth=False,
          tag="meta"),
)  # fmt: skip


def document() -> dict[str, Any]:
    doc = build_document(ROUTES, title="erc8004-backend API", version="1.0.0")
    doc["paths"]["/openapi.json"]["get"]["responses"]["200"] = {
        "description": "OpenAPI 3.1",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    return doc


def add_routes(app: web.Application) -> None:
    app[DOCUMENT] = document()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)
