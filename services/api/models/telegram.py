"""The Telegram models: a link code and the chats a user linked with one."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from services.api.models._shared import _Out


class LinkCodeOut(_Out):
    #: The one-time code (shown once, stored only as a hash).
    code: str
    expires_at: datetime
    #: What to send to the bot in the chat to link: in a private chat with the bot,
    #: in a group as one of its administrators, or as a post of a channel the bot
    #: administers.
    command: str
    #: t.me links that send the command for you (null when TELEGRAM_BOT_USERNAME is
    #: not configured): ``private`` opens a chat with the bot, ``group`` asks which
    #: group to add it to.
    links: dict[Literal["private", "group"], str] | None


class TelegramChatOut(_Out):
    chat_id: str
    chat_type: Literal["private", "group", "supergroup", "channel"]
    title: str | None
    #: The chat's public username when it was linked (without the @); an action may
    #: name the chat as ``@username`` too, and is sent to the numeric id.
    username: str | None
    linked_at: datetime
