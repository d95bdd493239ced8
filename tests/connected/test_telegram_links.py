"""Telegram chats linked by their owners (issue 14, item 4), against the dispatcher
process and a local stand-in of the Bot API that answers getUpdates (long polling),
getChatMember and sendMessage as Telegram does: a chat is linked only by a valid code
sent from the chat by whoever may speak for it, the bot's updates are read once by
one replica and resumed after a restart, and a job whose chat its trigger's owner did
not link is refused without a call to Telegram."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.telegram_links import INVALID_CODE, LINKED, NOT_ADMIN, ChatLinker
from shared.contract.jobs import ActionJob
from shared.outbound.client import new_session
from shared.outbound.policy import OutboundPolicy
from tests.dispatcherutil import (
    Dispatch,
    feedback_trigger,
    has_status,
    link_chat,
    metric_value,
    results,
    wait_for,
)
from tests.matcherutil import insert_user
from tools.localnet import Receiver, serve

pytestmark = [pytest.mark.db, pytest.mark.kafka]

TOKEN = "123456:link-test-token"


@dataclass
class BotApi:
    """The Bot API methods the dispatcher calls, with a queue of updates."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    admins: set[tuple[int, int]] = field(default_factory=set)
    sent: list[dict[str, Any]] = field(default_factory=list)
    #: (bot token, offset) of every getUpdates call
    polls: list[tuple[str, int]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        token, method = request.path.removeprefix("/bot").split("/")
        body = await request.json()
        if method == "getUpdates":
            self.polls.append((token, body["offset"]))
            assert set(body["allowed_updates"]) == {"message", "channel_post", "my_chat_member"}
            pending = [u for u in self.updates if u["update_id"] >= body["offset"]]
            if not pending:
                await asyncio.sleep(min(body["timeout"], 0.3))
            return web.json_response({"ok": True, "result": pending[: body["limit"]]})
        if method == "getChatMember":
            admin = (body["chat_id"], body["user_id"]) in self.admins
            status = "administrator" if admin else "member"
            return web.json_response({"ok": True, "result": {"status": status}})
        if method == "sendMessage":
            self.sent.append(body)
            return web.json_response({"ok": True, "result": {"message_id": len(self.sent)}})
        return web.json_response({"ok": False, "description": "Not Found"}, status=404)

    def post(self, chat: dict[str, Any], text: str, sender: int | None = None, **kw: Any) -> None:
        kind = "channel_post" if chat["type"] == "channel" else "message"
        message: dict[str, Any] = {"message_id": 1, "date": 0, "chat": chat, "text": text, **kw}
        if sender is not None:
            message["from"] = {"id": sender, "is_bot": False, "first_name": "x"}
        self.updates.append({"update_id": len(self.updates) + 1, kind: message})

    def replies(self, chat_id: int) -> list[str]:
        return [m["text"] for m in self.sent if m["chat_id"] == chat_id]


async def add_code(db: asyncpg.Connection, user: str, code: str, *, expired: bool = False) -> None:
    """A link code of the user, stored as the API stores it (its SHA-256)."""
    await db.execute(
        "INSERT INTO telegram_link_codes (code_sha256, user_id, expires_at)"
        " VALUES ($1, $2, now() + $3 * interval '1 minute')",
        hashlib.sha256(code.encode()).digest(),
        user,
        -1 if expired else 15,
    )


async def offset(db: asyncpg.Connection) -> int:
    value: int = await db.fetchval("SELECT next_offset FROM telegram_updates")
    return value


async def test_chats_are_linked_by_who_may_speak_for_them_and_only_linked_chats_get_posts(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    alice, other = await insert_user(db), await insert_user(db)
    for code in ("code-for-the-group", "code-for-the-channel"):
        await add_code(db, alice, code)
    await add_code(db, alice, "an-expired-code", expired=True)
    await link_chat(db, other, "-777", chat_type="supergroup")

    bot = BotApi(admins={(-500, 8)})
    group = {"id": -500, "type": "group", "title": "Team"}
    channel = {"id": -1001, "type": "channel", "title": "Alerts", "username": "AlertsChan"}
    # A member who is no administrator cannot link the group; an administrator can
    # (the command addressed to the bot by name, as in groups); the spent code
    # links nothing more; a channel's post links the channel; an expired code fails.
    bot.post(group, "/start code-for-the-group", sender=7)
    bot.post(group, "/start@Erc8004AlertsBot code-for-the-group", sender=8)
    bot.post({"id": 9, "type": "private"}, "/start code-for-the-group", sender=9)
    bot.post(channel, "/start code-for-the-channel")
    bot.post({"id": 10, "type": "private"}, "/link an-expired-code", sender=10)
    # The bot removed from a chat: every link of it goes.
    bot.updates.append(
        {
            "update_id": 6,
            "my_chat_member": {
                "chat": {"id": -777, "type": "supergroup"},
                "new_chat_member": {"status": "kicked", "user": {"id": 1}},
            },
        }
    )
    # The group becomes a supergroup: its links follow it.
    bot.post(group, "", migrate_to_chat_id=-1005)

    async with serve(Receiver(handler=bot.handle)) as bot_api:
        env = {
            "TELEGRAM_API_BASE": bot_api.base,
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_UPDATES_POLL": "1",
        }
        proc = dispatcher.start(**env)
        await wait_for(lambda: _at(db, 8), within=20, what="the seven updates applied")

        chats = await db.fetch(
            "SELECT user_id, chat_id, chat_type, username, linked_by FROM telegram_chats"
        )
        assert {tuple(r) for r in chats} == {
            (alice, "-1005", "supergroup", None, 8),
            (alice, "-1001", "channel", "alertschan", None),
        }
        assert bot.replies(-500) == [NOT_ADMIN, LINKED]
        assert bot.replies(-1001) == [LINKED]
        assert bot.replies(9) == [INVALID_CODE]
        assert bot.replies(10) == [INVALID_CODE]
        spent = await db.fetch(
            "SELECT used_in_chat FROM telegram_link_codes WHERE used_at IS NOT NULL"
        )
        assert sorted(r["used_in_chat"] for r in spent) == ["-1001", "-500"]
        counts = {
            outcome: metric_value(proc, "erc8004_dispatcher_telegram_links_total", outcome=outcome)
            for outcome in ("linked", "refused", "invalid_code", "bot_removed")
        }
        assert counts == {"linked": 2, "refused": 1, "invalid_code": 2, "bot_removed": 1}
        assert TOKEN.split(":")[1] not in proc.log_text()

        # Posts go only to chats the trigger's owner linked: the channel named by its
        # @username (sent to its id), the moved group; not the group's old id, not a
        # chat another user linked.
        message = {"message_template": "agent {{ event.agent_id }}"}
        by_name, moved, old_id = await feedback_trigger(
            db,
            ("telegram", {"chat_id": "@AlertsChan", **message}),
            ("telegram", {"chat_id": "-1005", **message}),
            ("telegram", {"chat_id": "-500", **message}),
        )
        # (stored as another user's trigger: re-owned by Alice)
        await db.execute("UPDATE triggers SET user_id = $1 WHERE id = $2", alice, by_name.trigger)
        (foreign,) = await feedback_trigger(db, ("telegram", {"chat_id": "-1001", **message}))
        jobs = [a.job() for a in (by_name, moved, old_id, foreign)]
        await dispatcher.produce(jobs)
        await wait_for(lambda: _all_done(db, jobs), within=30, what="the four jobs")
        ok = [await has_status(db, j.job_id, "success") for j in jobs]
        assert ok == [True, True, False, False]
        for refused in jobs[2:]:
            (row,) = await results(db, refused.job_id)
            assert row["status"] == "failed"
            assert "not linked" in row["error_message"]
        posts = [m for m in bot.sent if m["text"].startswith("agent ")]
        assert sorted(m["chat_id"] for m in posts) == ["-1001", "-1005"]

        # A restart resumes after the last update applied: none is applied twice.
        proc.terminate()
        polls_before = len(bot.polls)
        bot.post({"id": 11, "type": "private"}, "/start code-for-the-group", sender=11)
        dispatcher.start(**env)
        await wait_for(lambda: _at(db, 9), within=20, what="the new update applied")
        assert bot.polls[polls_before][1] == 8
        assert bot.replies(-500) == [NOT_ADMIN, LINKED]
        assert bot.replies(11) == [INVALID_CODE]


async def _at(db: asyncpg.Connection, next_offset: int) -> bool:
    return await offset(db) >= next_offset


async def _all_done(db: asyncpg.Connection, jobs: list[ActionJob]) -> bool:
    final = {r["job_id"] for r in await results(db) if r["status"] in ("success", "failed")}
    return final >= {j.job_id for j in jobs}


@pytest.fixture
async def linker_parts(database_url: str) -> AsyncIterator[tuple[Any, aiohttp.ClientSession]]:
    policy = OutboundPolicy.from_setting("127.0.0.0/8")
    session = new_session(policy)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database_url, server_settings={"role": "erc8004_dispatcher"})

    try:
        yield connect, session
    finally:
        await session.close()


async def test_one_replica_reads_the_updates_and_another_takes_over_when_it_stops(
    db: asyncpg.Connection, linker_parts: tuple[Any, aiohttp.ClientSession]
) -> None:
    connect, session = linker_parts
    bot = BotApi()

    def linker(token: str, base: str) -> ChatLinker:
        return ChatLinker(
            connect=connect,
            session=session,
            policy=OutboundPolicy.from_setting("127.0.0.0/8"),
            api_base=base,
            bot_token=token,
            poll_seconds=1,
            metrics=DispatcherMetrics.create(CollectorRegistry()),
            standby_seconds=0.2,
        )

    async with serve(Receiver(handler=bot.handle)) as bot_api:
        first = asyncio.create_task(linker("1:first", bot_api.base).run())
        await wait_for(lambda: _polled(bot, "1:first"), within=10, what="a first poll")
        second = asyncio.create_task(linker("1:second", bot_api.base).run())
        try:
            await asyncio.sleep(1.5)
            assert {token for token, _ in bot.polls} == {"1:first"}
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await wait_for(lambda: _polled(bot, "1:second"), within=10, what="the take-over")
        finally:
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)


async def _polled(bot: BotApi, token: str) -> bool:
    return any(t == token for t, _ in bot.polls)
