"""The triggers resource: a user's triggers listed, created, read, changed and
deleted, with their actions' write-only parts (signing secret, secret headers)
sealed for storage, and a trigger's stateful condition state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import ValidationError

from services.api.common import (
    POOL,
    SECRETS,
    ApiError,
    cursor_datetime,
    decode_cursor,
    detail,
    invalid,
    json_ok,
    not_found,
    parse_body,
    parse_query,
    path_id,
    read_json,
    user_id,
)
from services.api.models import (
    Page,
    PageQuery,
    StateItem,
    StatePage,
    TriggerOut,
    TriggerPatch,
)
from services.api.queries import as_user
from services.api.queries import triggers as trigger_sql
from services.api.routes._shared import _page, _spec, _within_quota, log
from services.api.routes.telegram import refuse_unlinked_chats
from shared.contract.actions import CREDENTIAL_HEADERS
from shared.contract.triggers import TriggerCreate
from shared.outbound.policy import origin


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
        action_id = await trigger_sql.next_action_id(conn)
        sealed = _seal(request, action_id, action["config"])
        await trigger_sql.insert_action(
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
    async with as_user(request.app[POOL], user_id(request)) as conn:
        rows = await trigger_sql.list_triggers(
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
    async with as_user(request.app[POOL], user_id(request)) as conn:
        await refuse_unlinked_chats(conn, storage["actions"])
        await _within_quota(request, conn, "triggers")
        trigger_id = await trigger_sql.insert_trigger(
            conn, user_id=user_id(request), data=storage, is_stateful=body.is_stateful
        )
        await trigger_sql.replace_conditions(conn, trigger_id, storage["conditions"])
        await _insert_actions(request, conn, trigger_id, storage["actions"])
        row = await trigger_sql.get_trigger(conn, trigger_id)
    assert row is not None
    log.info("trigger created", trigger_id=trigger_id)
    return json_ok(_trigger_out(row), status=201)


async def get_trigger(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    async with as_user(request.app[POOL], user_id(request)) as conn:
        row = await trigger_sql.get_trigger(conn, trigger_id)
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
    async with as_user(request.app[POOL], user_id(request)) as conn:
        current = await trigger_sql.get_trigger(conn, trigger_id, lock=True)
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
            await refuse_unlinked_chats(conn, storage["actions"])
        await trigger_sql.update_trigger(
            conn, trigger_id, data=storage, is_stateful=new.is_stateful
        )
        if "conditions" in update.model_fields_set:
            await trigger_sql.replace_conditions(conn, trigger_id, storage["conditions"])
        if "actions" in update.model_fields_set:
            await _update_actions(
                request,
                conn,
                current=current,
                actions=storage["actions"],
                action_ids=action_ids,
                raw=raw,
            )
        row = await trigger_sql.get_trigger(conn, trigger_id)
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
    await trigger_sql.delete_actions_except(conn, current["id"], sorted(seen))
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
        await trigger_sql.update_action(
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
    async with as_user(request.app[POOL], user_id(request)) as conn:
        deleted = await trigger_sql.delete_trigger(conn, trigger_id)
    if not deleted:
        raise not_found("no such trigger")
    log.info("trigger deleted", trigger_id=trigger_id)
    return web.Response(status=204)


async def get_trigger_state(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    query = parse_query(request, PageQuery)
    after = decode_cursor(query.cursor, (str,))
    async with as_user(request.app[POOL], user_id(request)) as conn:
        trigger = await trigger_sql.get_trigger(conn, trigger_id)
        if trigger is None:
            raise not_found("no such trigger")
        rows = await trigger_sql.list_states(
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
