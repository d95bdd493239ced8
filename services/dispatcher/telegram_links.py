"""Telegram chats linked by their owners: the bot's updates read with getUpdates
(Telegram's long polling) by one dispatcher replica at a time.

A user's link code (``POST /v1/telegram/link-codes``, only its SHA-256 stored) is
sent to the bot in the chat as ``/start <code>`` (or ``/link <code>``):

- in a private chat with the bot: links that chat;
- in a group or supergroup: only from one of its administrators (``getChatMember``
  says creator or administrator; an anonymous administrator posts as the group
  itself), so a member cannot open a group to someone else's alerts;
- as a post of a channel where the bot is an administrator (only administrators
  post in a channel).

Each update is applied in one transaction with the next offset (``telegram_updates``),
so an update is applied once even when the replica dies mid-way; the bot then answers
in the chat (best effort, after the commit). A chat the bot was removed from is
unlinked for every user; a group upgraded to a supergroup keeps its links under the
new id. The replica that holds the advisory lock ``LOCK_KEY`` on a connection of its
own polls; the others try again every ``STANDBY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import structlog

from services.dispatcher.kinds.base import short
from services.dispatcher.metrics import DispatcherMetrics, TelegramLinkOutcome
from shared.outbound.client import fetch
from shared.outbound.policy import OutboundPolicy

log = structlog.get_logger(__name__)

#: pg_advisory_lock key of the one replica reading the bot's updates.
LOCK_KEY = 0x65726338_74676C6B  # "erc8" "tglk"
STANDBY_SECONDS = 15.0
UPDATES_PER_CALL = 20
COMMAND = re.compile(r"^/(?:start|link)(?:@[A-Za-z0-9_]{1,64})?\s+([A-Za-z0-9_-]{8,64})\s*$")
ADMINISTRATORS = frozenset({"creator", "administrator"})
GONE = frozenset({"left", "kicked"})

LINKED = "Linked: alerts of this account's triggers may now be posted in this chat."
NOT_ADMIN = "Only an administrator of this group can link it."
INVALID_CODE = "This link code is unknown, used or expired: create a new one."

#: A code spent on this chat, its user returned (None: unknown, used or expired).
SPEND_CODE = """
UPDATE telegram_link_codes SET used_at = now(), used_in_chat = $2
WHERE code_sha256 = sha256(convert_to($1, 'UTF8')) AND used_at IS NULL AND expires_at > now()
RETURNING user_id
"""
LINK_CHAT = """
INSERT INTO telegram_chats (user_id, chat_id, chat_type, title, username, linked_by)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (user_id, chat_id) DO UPDATE SET
    chat_type = EXCLUDED.chat_type, title = EXCLUDED.title, username = EXCLUDED.username,
    linked_by = EXCLUDED.linked_by, linked_at = now()
"""
MIGRATE_CHAT = """
WITH moved AS (DELETE FROM telegram_chats WHERE chat_id = $1 RETURNING *)
INSERT INTO telegram_chats (user_id, chat_id, chat_type, title, username, linked_by, linked_at)
SELECT user_id, $2, 'supergroup', title, username, linked_by, linked_at FROM moved
ON CONFLICT (user_id, chat_id) DO NOTHING
"""


class BotApiError(Exception):
    """The Bot API said no. ``lasting``: the same call would fail again (a 4xx other
    than 409 and 429)."""

    def __init__(self, method: str, status: int, description: str) -> None:
        super().__init__(f"telegram {method}: HTTP {status}: {description}")
        self.lasting = 400 <= status < 500 and status not in (409, 429)


@dataclass(frozen=True)
class Command:
    """A link command read from an update: the code, the chat, who sent it."""

    code: str
    chat_id: int
    chat_type: str
    title: str | None
    username: str | None
    sender: int | None  # the Telegram user; None for a channel's or a group's own post
    anonymous_admin: bool


def parse_command(update: dict[str, Any]) -> Command | None:
    message = update.get("message") or update.get("channel_post")
    if not isinstance(message, dict):
        return None
    text = message.get("text")
    chat = message.get("chat")
    if not isinstance(text, str) or not isinstance(chat, dict):
        return None
    match = COMMAND.fullmatch(text.strip())
    chat_id, chat_type = chat.get("id"), chat.get("type")
    if match is None or type(chat_id) is not int:
        return None
    if chat_type not in ("private", "group", "supergroup", "channel"):
        return None
    sender = message.get("from")
    sender_chat = message.get("sender_chat")
    username = chat.get("username")
    title = chat.get("title")
    return Command(
        code=match.group(1),
        chat_id=chat_id,
        chat_type=chat_type,
        title=str(title)[:256] if title is not None else None,
        username=username.lower() if isinstance(username, str) else None,
        sender=sender.get("id")
        if isinstance(sender, dict) and type(sender.get("id")) is int
        else None,
        anonymous_admin=isinstance(sender_chat, dict) and sender_chat.get("id") == chat_id,
    )


class ChatLinker:
    """Reads the bot's updates and records the chats linked through them."""

    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        session: aiohttp.ClientSession,
        policy: OutboundPolicy,
        api_base: str,
        bot_token: str,
        poll_seconds: float,
        metrics: DispatcherMetrics,
        standby_seconds: float = STANDBY_SECONDS,
    ) -> None:
        self._connect = connect
        self._session = session
        self._policy = policy
        self._base = f"{api_base.rstrip('/')}/bot{bot_token}"
        self._token = bot_token
        self._poll = poll_seconds
        self._metrics = metrics
        self._standby = standby_seconds
        self._last_error = ""

    async def run(self) -> None:
        """Until cancelled: hold the lock and poll, or stand by."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    log.info("reading the telegram bot's updates")
                    while True:
                        await self.poll_once(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (database or Bot API trouble: again later)
                error = short(exc, self._token)
                # Said once while it lasts, not every STANDBY_SECONDS.
                report = log.warning if error != self._last_error else log.debug
                report("telegram updates not read", error=error)
                self._last_error = error
            finally:
                if conn is not None:
                    conn.terminate()  # the lock goes with the session
            await asyncio.sleep(self._standby)

    async def poll_once(self, conn: asyncpg.Connection) -> None:
        offset = await conn.fetchval("SELECT next_offset FROM telegram_updates WHERE id = 1")
        answer = await self._call(
            "getUpdates",
            {
                "offset": offset,
                "timeout": int(self._poll),
                "limit": UPDATES_PER_CALL,
                "allowed_updates": ["message", "channel_post", "my_chat_member"],
            },
            seconds=self._poll + 10,
        )
        updates = answer.get("result")
        if not isinstance(updates, list):
            raise RuntimeError("getUpdates answered without a list of updates")
        for update in updates:
            update_id = update.get("update_id") if isinstance(update, dict) else None
            if type(update_id) is not int:
                raise RuntimeError("an update without an update_id")
            await self._apply(conn, update, update_id)

    async def _apply(
        self, conn: asyncpg.Connection, update: dict[str, Any], update_id: int
    ) -> None:
        command = parse_command(update)
        allowed = command is not None and await self._may_link(command)
        reply: str | None = None
        async with conn.transaction():
            if command is not None and not allowed:
                reply = NOT_ADMIN
                self._count("refused")
            elif command is not None:
                reply = await self._link(conn, command)
            else:
                await self._follow_chat(conn, update)
            await conn.execute(
                "UPDATE telegram_updates SET next_offset = $1, polled_at = now() WHERE id = 1",
                update_id + 1,
            )
        if reply is not None and command is not None:
            try:
                await self._call(
                    "sendMessage", {"chat_id": command.chat_id, "text": reply}, seconds=10
                )
            except Exception as exc:  # noqa: BLE001 (the link stands; the answer is a courtesy)
                log.info("telegram link answer not sent", error=short(exc, self._token))

    async def _may_link(self, command: Command) -> bool:
        if command.chat_type in ("private", "channel") or command.anonymous_admin:
            return True
        if command.sender is None:
            return False
        try:
            answer = await self._call(
                "getChatMember",
                {"chat_id": command.chat_id, "user_id": command.sender},
                seconds=10,
            )
        except BotApiError as exc:
            if exc.lasting:  # the chat or member is unknown to Telegram: not an admin
                return False
            raise
        result = answer.get("result")
        return isinstance(result, dict) and result.get("status") in ADMINISTRATORS

    async def _link(self, conn: asyncpg.Connection, command: Command) -> str:
        chat = str(command.chat_id)
        user_id = await conn.fetchval(SPEND_CODE, command.code, chat)
        if user_id is None:
            self._count("invalid_code")
            log.info("telegram link code refused", chat_id=chat)
            return INVALID_CODE
        await conn.execute(
            LINK_CHAT,
            user_id,
            chat,
            command.chat_type,
            command.title,
            command.username,
            command.sender,
        )
        self._count("linked")
        log.info("telegram chat linked", chat_id=chat, link_user_id=user_id)
        return LINKED

    async def _follow_chat(self, conn: asyncpg.Connection, update: dict[str, Any]) -> None:
        """The bot removed from a chat: its links go. A group become a supergroup: its
        links follow it to the new id."""
        member = update.get("my_chat_member")
        if isinstance(member, dict):
            chat = member.get("chat") or {}
            status = (member.get("new_chat_member") or {}).get("status")
            if type(chat.get("id")) is int and status in GONE:
                result = await conn.execute(
                    "DELETE FROM telegram_chats WHERE chat_id = $1", str(chat["id"])
                )
                if result != "DELETE 0":
                    self._count("bot_removed")
                    log.info("telegram chat unlinked: the bot left it", chat_id=str(chat["id"]))
            return
        message = update.get("message")
        if isinstance(message, dict):
            old = (message.get("chat") or {}).get("id")
            new = message.get("migrate_to_chat_id")
            if type(old) is int and type(new) is int:
                await conn.execute(MIGRATE_CHAT, str(old), str(new))
                log.info("telegram chat moved", chat_id=str(old), to_chat_id=str(new))

    async def _call(
        self, method: str, payload: dict[str, Any], *, seconds: float
    ) -> dict[str, Any]:
        """One Bot API call; its answer when ``ok``, else an exception naming why (the
        bot token masked)."""
        resp = await fetch(
            self._session,
            "POST",
            f"{self._base}/{method}",
            policy=self._policy.within(seconds),
            json=payload,
        )
        try:
            answer = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            answer = None
        if resp.status != 200 or not isinstance(answer, dict) or answer.get("ok") is not True:
            description = answer.get("description") if isinstance(answer, dict) else None
            if resp.status == 409:
                # A webhook is set on the bot, or another program polls it.
                description = f"{description} (the bot must be this service's alone)"
            raise BotApiError(method, resp.status, str(description)[:200])
        return answer

    def _count(self, outcome: TelegramLinkOutcome) -> None:
        self._metrics.telegram_links.labels(outcome).inc()
