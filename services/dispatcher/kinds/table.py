"""The dispatcher's table of action kinds."""

from __future__ import annotations

import aiohttp

from services.dispatcher.kinds.base import ActionKind
from services.dispatcher.kinds.mcp import McpKind, TokenLookup
from services.dispatcher.kinds.rest import RestKind
from services.dispatcher.kinds.telegram import TelegramKind
from services.dispatcher.policy import RateLimiter
from services.dispatcher.registration import Resolver
from services.dispatcher.renderer import Renderer
from services.dispatcher.settings import DispatcherSettings
from shared.contract.actions import ActionType
from shared.outbound.policy import OutboundPolicy
from shared.platform.secrets import SecretBox


def build_kinds(
    settings: DispatcherSettings,
    *,
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    resolver: Resolver,
    secrets: SecretBox,
    agent_token: TokenLookup,
    renderer: Renderer,
) -> dict[ActionType, ActionKind]:
    limiter = RateLimiter(
        rate=settings.telegram_rate,
        burst=max(1, int(settings.telegram_rate)),
        per_key_interval=settings.telegram_chat_interval,
    )
    return {
        ActionType.rest: RestKind(
            session=session, policy=policy, secrets=secrets, renderer=renderer
        ),
        ActionType.telegram: TelegramKind(
            session=session,
            policy=policy,
            api_base=settings.telegram_api_base,
            bot_token=settings.telegram_bot_token.get_secret_value(),
            limiter=limiter,
            renderer=renderer,
        ),
        ActionType.mcp: McpKind(
            resolver=resolver,
            policy=policy,
            secrets=secrets,
            agent_token=agent_token,
            renderer=renderer,
        ),
    }
