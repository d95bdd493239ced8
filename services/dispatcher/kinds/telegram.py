"""The Telegram action: the rendered message sent by the operator's bot, split into
parts at Telegram's 4,096-character limit, each part waiting its turn in the bot's
rate limiter (globally and per chat); a retry resumes after the parts delivered."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from typing import Any

import aiohttp
import orjson

from services.dispatcher.kinds.base import (
    ActionRow,
    Deferral,
    Exchange,
    Outcome,
    Target,
    exception_outcome,
    scrub,
)
from services.dispatcher.policy import RateLimiter
from services.dispatcher.registration import ResolveError
from services.dispatcher.renderer import Renderer, RendererBusyError
from services.dispatcher.templates import TemplateRenderError, context_of, one_job, render_text
from shared.contract.actions import ActionConfig, TelegramConfig
from shared.contract.jobs import ActionJob
from shared.outbound.client import fetch
from shared.outbound.policy import OutboundPolicy, origin

TELEGRAM_MAX_CHARS = 4096
TELEGRAM_MAX_PARTS = 4
#: Longest wait for a chat's turn, and time limit of one sendMessage.
TELEGRAM_LIMITER_WAIT = 3.0
TELEGRAM_PART_SECONDS = 10.0


def split_message(
    text: str, limit: int = TELEGRAM_MAX_CHARS, max_parts: int = TELEGRAM_MAX_PARTS
) -> list[str]:
    """Telegram's 4,096-character limit: split at line ends (else at the limit), at
    most ``max_parts`` messages, the last one truncated with an ellipsis."""
    parts: list[str] = []
    rest = text
    while rest and len(parts) < max_parts:
        if len(rest) <= limit:
            parts.append(rest)
            rest = ""
            break
        cut = rest.rfind("\n", 0, limit)
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    if rest:
        last = parts[-1]
        parts[-1] = last[: limit - 1] + "…"
    return parts or [""]


def render_message(
    template: str, parse_mode: str | None, ctx: dict[str, Any]
) -> tuple[str, str | None]:
    """The message's text and the parse mode it goes with. Pure and picklable: the
    renderer's workers run it."""
    with one_job():
        text = render_text(template, ctx, parse_mode=parse_mode)
    if parse_mode is not None and len(text) > TELEGRAM_MAX_CHARS:
        # Markup cut in two would not parse (Telegram answers 400): a message too
        # long for one part goes as plain text, split at line ends.
        with one_job():
            return render_text(template, ctx), None
    return text, parse_mode


async def run_telegram(
    job: ActionJob,
    cfg: TelegramConfig,
    *,
    chat_id: str,
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    renderer: Renderer,
    api_base: str,
    bot_token: str,
    limiter: RateLimiter,
    part_seconds: float = TELEGRAM_PART_SECONDS,
) -> Outcome:
    try:
        text, parse_mode = await renderer.call(
            render_message,
            cfg.message_template,
            cfg.parse_mode,
            context_of(job),
            templates=(cfg.message_template,),
        )
    except TemplateRenderError as exc:
        return Outcome.permanent(str(exc), sent=False)
    except RendererBusyError as exc:
        return Outcome.transient(str(exc), destination_fault=False, sent=False)
    if not text.strip():
        return Outcome.permanent("message template rendered an empty message", sent=False)
    if not bot_token:
        return Outcome.permanent("TELEGRAM_BOT_TOKEN is not set", sent=False)
    url = f"{api_base.rstrip('/')}/bot{bot_token}/sendMessage"
    parts = split_message(text)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    # Parts an earlier attempt delivered are not sent again, if they were cut from
    # the same text.
    done = min(job.parts_sent, len(parts)) if job.parts_digest == digest else 0
    sent: list[int | None] = []
    outcome = await _send_parts(
        parts[done:],
        bot_token,
        sent,
        chat_id=chat_id,
        parse_mode=parse_mode,
        url=url,
        session=session,
        policy=policy,
        limiter=limiter,
        part_seconds=part_seconds,
    )
    outcome = scrub(outcome, bot_token)
    if outcome.kind == "transient":
        return replace(outcome, parts=(done + len(sent), digest))
    if outcome.kind == "success":
        response = {"message_ids": sent, "parts": len(parts)}
        if done:
            response["resumed_at_part"] = done + 1
        return Outcome.ok(response)
    return outcome


async def _send_parts(
    parts: list[str],
    bot_token: str,
    sent: list[int | None],
    *,
    chat_id: str,
    parse_mode: str | None,
    url: str,
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    limiter: RateLimiter,
    part_seconds: float,
) -> Outcome:
    """Send ``parts`` in order, the message id of each delivered one appended to
    ``sent``; stops at the first failure."""
    for part in parts:
        wait = await limiter.acquire(chat_id, max_wait=TELEGRAM_LIMITER_WAIT)
        if wait is not None:
            return Outcome.transient(
                f"telegram rate limit for chat {chat_id}: {wait:.1f}s to wait",
                retry_after=wait,
                destination_fault=False,
                response={"sent_parts": len(sent)} if sent else None,
                sent=bool(sent),
            )
        payload: dict[str, Any] = {"chat_id": chat_id, "text": part}
        if parse_mode is not None:
            payload["parse_mode"] = parse_mode
        try:
            resp = await fetch(
                session, "POST", url, policy=policy.within(part_seconds), json=payload
            )
        except Exception as exc:  # noqa: BLE001
            return exception_outcome(exc, "telegram sendMessage", bot_token)
        failed = _telegram_answer(resp.status, resp.body, sent, chat_id, limiter)
        if failed is not None:
            return failed
    return Outcome.ok()


def _telegram_answer(
    status: int, body: bytes, sent: list[int | None], chat_id: str, limiter: RateLimiter
) -> Outcome | None:
    """None when the part was sent (its message id, or None when the answer names
    none, appended to ``sent``), else the attempt's outcome."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if status == 200 and answer.get("ok") is True:
        result = answer.get("result")
        message_id = result.get("message_id") if isinstance(result, dict) else None
        sent.append(message_id if isinstance(message_id, int) else None)
        return None
    description = str(answer.get("description", ""))[:300]
    response = {"status": status, "description": description, "sent_parts": len(sent)}
    if status == 429:
        params = answer.get("parameters")
        retry_after = params.get("retry_after") if isinstance(params, dict) else None
        seconds = float(retry_after) if isinstance(retry_after, int | float) else 1.0
        limiter.pause(chat_id, seconds)
        return Outcome.transient(
            f"telegram 429: {description}",
            response=response,
            retry_after=seconds,
            destination_fault=False,
        )
    if status >= 500:
        return Outcome.transient(f"telegram HTTP {status}", response=response)
    return Outcome.permanent(f"telegram HTTP {status}: {description}", response=response)


class TelegramKind:
    """Telegram: one destination (the Bot API), its time limit every part's turn in
    the rate limiter and request; a chat whose turn is far off is deferred before the
    attempt takes one of the Bot API's slots."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        policy: OutboundPolicy,
        api_base: str,
        bot_token: str,
        limiter: RateLimiter,
        renderer: Renderer,
    ) -> None:
        self._renderer = renderer
        self._session = session
        self._policy = policy
        self._api_base = api_base
        self._bot_token = bot_token
        self.limiter = limiter

    def time_limit(self, job: ActionJob) -> float:
        return TELEGRAM_MAX_PARTS * (TELEGRAM_LIMITER_WAIT + TELEGRAM_PART_SECONDS + 1)

    def wait_before(self, cfg: ActionConfig, target: Target) -> Deferral | None:
        assert target.chat is not None
        # The chat's own turn, whichever way the action names it (id or @username).
        wait = self.limiter.wait_for(target.chat)
        # This chat's turn is far off: wait outside the shared Telegram slots.
        return Deferral(wait, "chat_rate") if wait > 1.0 else None

    async def target(self, job: ActionJob, cfg: ActionConfig, action: ActionRow) -> Target:
        assert isinstance(cfg, TelegramConfig)
        if action.telegram_chat is None:
            # Refused without a call: the bot posts only where the trigger's owner
            # linked it, and Telegram's answer would tell whether the bot is there.
            raise ResolveError(
                f"telegram chat {cfg.chat_id} is not linked to the trigger's owner: create "
                "a link code (POST /v1/telegram/link-codes) and send /start <code> to "
                "the bot in that chat",
                transient=False,
            )
        return Target(destination=f"telegram:{origin(self._api_base)}", chat=action.telegram_chat)

    async def prepare(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Exchange:
        # The whole of run_telegram is the exchange: its message is rendered within the
        # slot, and its parts wait for the bot's rate limiter there.
        return functools.partial(self.attempt, job, cfg, target)

    async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome:
        assert isinstance(cfg, TelegramConfig)
        assert target.chat is not None
        return await run_telegram(
            job,
            cfg,
            chat_id=target.chat,
            session=self._session,
            policy=self._policy,
            renderer=self._renderer,
            api_base=self._api_base,
            bot_token=self._bot_token,
            limiter=self.limiter,
        )
