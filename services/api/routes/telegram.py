"""The Telegram resource: link codes, and the chats a user linked with one. The
operator's bot posts only into chats whose owner linked them to the trigger's user:
a code from ``POST /v1/telegram/link-codes`` sent to the bot in the chat as
``/start <code>`` (the dispatcher reads the bot's updates and records the link).
Triggers may name only linked chats (:func:`refuse_unlinked_chats`)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from aiohttp import web

from services.api.common import (
    POOL,
    SETTINGS,
    ApiError,
    cursor_datetime,
    decode_cursor,
    detail,
    json_ok,
    not_found,
    parse_query,
    path_id,
    user_id,
)
from services.api.models import LinkCodeOut, Page, PageQuery, TelegramChatOut
from services.api.queries import as_user
from services.api.queries import telegram as telegram_sql
from services.api.routes._shared import _page, _within_quota, log
from shared.platform.db import Conn

#: What to do with an unlinked chat, in every refusal.
HOW_TO_LINK = (
    "create a link code (POST /v1/telegram/link-codes) and send /start <code> to the "
    "bot in that chat"
)


def code_sha256(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


async def create_link_code(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    # 96 random bits in Telegram's deep-link alphabet (A-Z a-z 0-9 _ -).
    code = secrets.token_urlsafe(12)
    async with as_user(request.app[POOL], user_id(request)) as conn:
        await _within_quota(request, conn, "link_codes")
        expires_at = await telegram_sql.insert_link_code(
            conn,
            user_id=user_id(request),
            code_sha256=code_sha256(code),
            ttl_seconds=settings.telegram_link_code_ttl,
        )
    bot = settings.telegram_bot_username
    links = (
        {
            "private": f"https://t.me/{bot}?start={code}",
            "group": f"https://t.me/{bot}?startgroup={code}",
        }
        if bot
        else None
    )
    log.info("telegram link code created")
    out = LinkCodeOut(code=code, expires_at=expires_at, command=f"/start {code}", links=links)
    return json_ok(out, status=201)


async def list_chats(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    after = decode_cursor(query.cursor, (str, str))
    async with as_user(request.app[POOL], user_id(request)) as conn:
        rows = await telegram_sql.list_chats(
            conn,
            after=None if after is None else (cursor_datetime(after[0]), after[1]),
            limit=query.limit,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [r["linked_at"].isoformat(), r["chat_id"]])
    return json_ok(
        Page[TelegramChatOut](items=[TelegramChatOut(**dict(r)) for r in rows], next_cursor=cursor)
    )


async def unlink_chat(request: web.Request) -> web.Response:
    chat_id = path_id(request, "chat_id")
    async with as_user(request.app[POOL], user_id(request)) as conn:
        deleted = await telegram_sql.delete_chat(conn, chat_id)
    if not deleted:
        raise not_found("no such linked chat")
    log.info("telegram chat unlinked", chat_id=chat_id)
    return web.Response(status=204)


async def refuse_unlinked_chats(conn: Conn, actions: list[dict[str, Any]]) -> None:
    """422 naming every Telegram action whose chat (numeric id, or the @username it
    had when linked) is not one the user linked."""
    wanted = [
        (i, str(a["config"]["chat_id"]))
        for i, a in enumerate(actions)
        if a["action_type"] == "telegram"
    ]
    if not wanted:
        return
    ids: set[str] = set()
    names: set[str] = set()
    for row in await telegram_sql.linked_chats(conn):
        ids.add(row["chat_id"])
        if row["username"]:
            names.add("@" + row["username"])
    errors = [
        detail(
            ("body", "actions", i, "config", "chat_id"),
            f"this chat is not linked to your account: {HOW_TO_LINK}",
        )
        for i, chat in wanted
        if chat not in ids and chat.lower() not in names
    ]
    if errors:
        raise ApiError(422, "invalid body", errors)
