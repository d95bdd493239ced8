"""The three action types: one attempt each, returning an :class:`Outcome`.

Nothing here logs or raises for a destination's behaviour: every failure becomes an
Outcome whose error text is free of secrets (bot tokens, bearer tokens, signing
secrets, URL credentials and queries).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx2
import orjson
from eth_hash.auto import keccak
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from services.dispatcher.policy import (
    Outcome,
    RateLimiter,
    is_transient_status,
    parse_retry_after,
)
from services.dispatcher.registration import ResolveError, Resolver
from services.dispatcher.templates import (
    TemplateRenderError,
    context_of,
    render_json_object,
    render_text,
    render_tree,
)
from shared.contract.jobs import ActionJob
from shared.contract.triggers import McpConfig, RestConfig, TelegramConfig, is_reserved_header
from shared.outbound.client import fetch
from shared.outbound.policy import (
    OutboundError,
    OutboundPolicy,
    OutboundTimeoutError,
    RefusedDestination,
    origin,
)
from shared.outbound.transport import httpx_client_factory

EXCERPT_CHARS = 500
TELEGRAM_MAX_CHARS = 4096
TELEGRAM_MAX_PARTS = 4
#: Longest wait for a chat's turn, and time limit of one sendMessage.
TELEGRAM_LIMITER_WAIT = 3.0
TELEGRAM_PART_SECONDS = 10.0
USER_AGENT = "erc8004-backend-dispatcher/1"
ZERO_HASH = "0x" + "0" * 64


def excerpt(body: bytes, limit: int = EXCERPT_CHARS) -> str:
    text = body[: limit * 4].decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"


def _valid_http_url(url: str) -> str | None:
    """Why a rendered URL is unusable, or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"rendered URL is invalid: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "rendered URL is not an http(s) URL with a host"
    if len(url) > 2048 or any(c.isspace() or ord(c) < 32 for c in url):
        return "rendered URL is too long or holds whitespace"
    return None


# --------------------------------------------------------------------------- rest


def webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` of
    ``{id}.{timestamp}.{body}``; a ``whsec_`` secret is base64 of the key bytes (any
    other secret is used as its UTF-8 bytes). TemplateRenderError for a ``whsec_``
    secret that is not base64."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise TemplateRenderError("the signing secret is whsec_ but not base64") from None
    else:
        key = secret.encode()
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _default_body(job: ActionJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "attempt": job.attempt,
        "fired_at": job.created_at.isoformat(),
        "trigger": {"id": job.trigger_id, "name": job.trigger_name},
        "event": job.event.model_dump(mode="json"),
        "explain": job.explain,
    }


@dataclass(frozen=True)
class RestRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


def build_rest_request(
    job: ActionJob,
    cfg: RestConfig,
    *,
    secret: str | None,
    secret_headers: dict[str, str] | None = None,
) -> RestRequest:
    """The request an attempt sends (TemplateRenderError when a template fails).
    ``secret_headers`` (decrypted) are sent as they are: values, not templates."""
    ctx = context_of(job)
    url = render_text(cfg.url, ctx)
    if (why := _valid_http_url(url)) is not None:
        raise TemplateRenderError(why)
    headers = {name: render_text(value, ctx) for name, value in cfg.headers.items()}
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise TemplateRenderError(f"header {name}: rendered value holds a line break")
    body: bytes | None = None
    content_type = "application/json"
    if cfg.body_template is None:
        if cfg.method not in ("GET", "DELETE"):
            body = orjson.dumps(_default_body(job), default=str)
    elif isinstance(cfg.body_template, dict):
        body = orjson.dumps(render_tree(cfg.body_template, ctx), default=str)
    else:
        text = render_text(cfg.body_template, ctx)
        body = text.encode()
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            content_type = "text/plain; charset=utf-8"
    if secret_headers:
        # names ignore case: a secret header replaces a clear one of the same name
        secret_names = {k.lower() for k in secret_headers}
        headers = {k: v for k, v in headers.items() if k.lower() not in secret_names}
        headers.update(secret_headers)
    lower = {k.lower() for k in headers}
    out = {
        k: v for k, v in headers.items() if not is_reserved_header(k) and k.lower() != "user-agent"
    }
    if body is not None and "content-type" not in lower:
        out["Content-Type"] = content_type
    out["User-Agent"] = USER_AGENT
    out["Idempotency-Key"] = job.job_id
    if secret is not None:
        ts = int(time.time())
        out["webhook-id"] = job.job_id
        out["webhook-timestamp"] = str(ts)
        out["webhook-signature"] = webhook_signature(secret, job.job_id, ts, body or b"")
    return RestRequest(cfg.method, url, out, body)


def _http_outcome(
    status: int, headers: dict[str, str], body: bytes, ok: Iterable[int] | None
) -> Outcome:
    response = {"status": status, "body": excerpt(body)}
    success = status in ok if ok is not None else 200 <= status < 300
    if success:
        return Outcome.ok(response)
    if is_transient_status(status):
        return Outcome.transient(
            f"HTTP {status}",
            response=response,
            retry_after=parse_retry_after(headers.get("retry-after")),
            destination_fault=status != 429,
        )
    return Outcome.permanent(f"HTTP {status}", response=response)


def _exception_outcome(exc: BaseException, what: str) -> Outcome:
    if isinstance(exc, RefusedDestination):
        where = f" {exc.address}" if exc.address else ""
        return Outcome.permanent(f"{what}: refused{where}: {exc.reason}", sent=False)
    if isinstance(exc, OutboundTimeoutError | TimeoutError):
        return Outcome.transient(f"{what}: timeout")
    if isinstance(exc, OutboundError):
        return Outcome.permanent(f"{what}: {exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Outcome.transient(f"{what}: {type(exc).__name__}: {_short(exc)}")
    return Outcome.transient(f"{what}: {type(exc).__name__}")


def _short(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:200]


async def run_rest(
    job: ActionJob,
    cfg: RestConfig,
    *,
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    secret: str | None,
    secret_headers: dict[str, str] | None = None,
) -> Outcome:
    try:
        req = build_rest_request(job, cfg, secret=secret, secret_headers=secret_headers)
    except TemplateRenderError as exc:
        return Outcome.permanent(str(exc), sent=False)
    # The origin only: webhook URLs often carry their token in the path (Slack, Discord).
    what = f"{req.method} {origin(req.url)}"
    try:
        resp = await fetch(
            session,
            req.method,
            req.url,
            policy=policy.within(cfg.timeout_ms / 1000),
            headers=req.headers,
            data=req.body,
        )
    except Exception as exc:  # noqa: BLE001 (every failure becomes an Outcome)
        return _scrub(_exception_outcome(exc, what), *(secret_headers or {}).values())
    # A receiver that echoes the request (many test endpoints do) must not put the
    # credentials into action_results: masked in the whole body, before the excerpt.
    body = _mask(resp.body, (secret_headers or {}).values())
    return _http_outcome(resp.status, resp.headers, body, cfg.expected_status)


def _mask(body: bytes, secrets: Iterable[str]) -> bytes:
    """``body`` with each secret masked, as it is and as a JSON string escapes it."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        body = body.replace(secret.encode(), b"***")
        body = body.replace(orjson.dumps(secret)[1:-1], b"***")
    return body


# --------------------------------------------------------------------------- telegram


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


async def run_telegram(
    job: ActionJob,
    cfg: TelegramConfig,
    *,
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    api_base: str,
    bot_token: str,
    limiter: RateLimiter,
    part_seconds: float = TELEGRAM_PART_SECONDS,
) -> Outcome:
    parse_mode = cfg.parse_mode
    try:
        text = render_text(cfg.message_template, context_of(job), parse_mode=parse_mode)
        if parse_mode is not None and len(text) > TELEGRAM_MAX_CHARS:
            # Markup cut in two would not parse (Telegram answers 400): a message too
            # long for one part goes as plain text, split at line ends.
            parse_mode = None
            text = render_text(cfg.message_template, context_of(job))
    except TemplateRenderError as exc:
        return Outcome.permanent(str(exc), sent=False)
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
        sent,
        cfg=cfg,
        parse_mode=parse_mode,
        url=url,
        session=session,
        policy=policy,
        limiter=limiter,
        part_seconds=part_seconds,
    )
    outcome = _scrub(outcome, bot_token)
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
    sent: list[int | None],
    *,
    cfg: TelegramConfig,
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
        wait = await limiter.acquire(cfg.chat_id, max_wait=TELEGRAM_LIMITER_WAIT)
        if wait is not None:
            return Outcome.transient(
                f"telegram rate limit for chat {cfg.chat_id}: {wait:.1f}s to wait",
                retry_after=wait,
                destination_fault=False,
                response={"sent_parts": len(sent)} if sent else None,
                sent=bool(sent),
            )
        payload: dict[str, Any] = {"chat_id": cfg.chat_id, "text": part}
        if parse_mode is not None:
            payload["parse_mode"] = parse_mode
        try:
            resp = await fetch(
                session, "POST", url, policy=policy.within(part_seconds), json=payload
            )
        except Exception as exc:  # noqa: BLE001
            return _exception_outcome(exc, "telegram sendMessage")
        failed = _telegram_answer(resp.status, resp.body, sent, cfg.chat_id, limiter)
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


def _scrub(outcome: Outcome, *secrets: str) -> Outcome:
    """The outcome with every occurrence of each secret masked, as it is and as JSON
    escapes it (the bot token sits in the URL path, which redact_url keeps; a REST
    receiver may echo the request's headers)."""
    secrets = tuple(s for s in secrets if s)
    if not secrets:
        return outcome
    error = outcome.error
    if error:
        for secret in sorted(secrets, key=len, reverse=True):
            error = error.replace(secret, "***")
    response = outcome.response
    if response:
        response = orjson.loads(_mask(orjson.dumps(response), secrets))
    return Outcome(
        outcome.kind,
        error=error,
        response=response,
        retry_after=outcome.retry_after,
        destination_fault=outcome.destination_fault,
    )


# --------------------------------------------------------------------------- mcp


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(_leaves(inner))
        return out
    return [exc]


def _mcp_exception_outcome(exc: BaseException, what: str) -> Outcome:
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, RefusedDestination):
            where = f" {leaf.address}" if leaf.address else ""
            return Outcome.permanent(f"{what}: refused{where}: {leaf.reason}", sent=False)
        if isinstance(leaf, httpx2.HTTPStatusError):
            status = leaf.response.status_code
            if is_transient_status(status):
                return Outcome.transient(f"{what}: HTTP {status}", destination_fault=status != 429)
            return Outcome.permanent(f"{what}: HTTP {status}")
    for leaf in leaves:
        if isinstance(leaf, TimeoutError | httpx2.TimeoutException | OutboundTimeoutError):
            return Outcome.transient(f"{what}: timeout")
        if isinstance(leaf, httpx2.TransportError | OSError):
            return Outcome.transient(f"{what}: {type(leaf).__name__}: {_short(leaf)}")
        if isinstance(leaf, OutboundError):
            return Outcome.permanent(f"{what}: {leaf}")
    leaf = leaves[0]
    name = type(leaf).__name__
    if name in ("McpError", "MCPError") or "mcp" in type(leaf).__module__:
        return Outcome.permanent(f"{what}: {name}: {_short(leaf)}")
    return Outcome.transient(f"{what}: {name}: {_short(leaf)}")


def _file_view(content: bytes) -> Any:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(content).decode()}
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


async def _feedback_file(
    job: ActionJob, cfg: McpConfig, resolver: Resolver, time_limit: float
) -> tuple[dict[str, Any] | None, Outcome | None]:
    """The feedback file (verified when asked), or the Outcome that ends the job."""
    event = job.event
    if not (cfg.verify_file_hash or cfg.include_file_content):
        return None, None
    if not event.file_uri:
        return None, Outcome.permanent("the event has no file_uri to fetch")
    try:
        content = await resolver.fetch_uri(event.file_uri, time_limit=time_limit)
    except ResolveError as exc:
        what = f"feedback file: {exc}"
        return None, Outcome.transient(what) if exc.transient else Outcome.permanent(what)
    digest = "0x" + keccak(content).hex()
    if cfg.verify_file_hash:
        expected = (event.file_hash or "").lower()
        is_ipfs = event.file_uri.lower().startswith("ipfs://")
        if not expected or expected == ZERO_HASH:
            if not is_ipfs:
                return None, Outcome.permanent(
                    "verify_file_hash: the event carries no file_hash (only IPFS files may omit it)"
                )
        elif digest != expected:
            return None, Outcome.permanent(
                f"feedback file hash mismatch: keccak-256 of {len(content)} bytes at "
                f"{event.file_uri[:200]} is {digest}, the event says {expected}",
                response={"computed_hash": digest, "expected_hash": expected},
            )
    view = {"uri": event.file_uri, "hash": digest, "size": len(content)}
    if cfg.include_file_content:
        view["content"] = _file_view(content)
    return view, None


async def run_mcp(
    job: ActionJob,
    cfg: McpConfig,
    *,
    resolver: Resolver,
    policy: OutboundPolicy,
    bearer_token: str | None,
    server_url: str | None = None,
) -> Outcome:
    """One ``tools/call`` (after ``initialize``) on the agent's MCP server. The server
    is ``server_url`` when given (resolved by the caller), else ``cfg.server_url``."""
    timeout = cfg.timeout_ms / 1000
    url = server_url or cfg.server_url
    if url is None:
        return Outcome.permanent("no MCP server URL")
    deadline = asyncio.get_running_loop().time() + timeout
    file_view, stop = await _feedback_file(job, cfg, resolver, timeout)
    if stop is not None:
        return stop
    ctx = context_of(job, file=file_view)
    try:
        if cfg.arguments_template is None:
            arguments: dict[str, Any] = {
                "event": ctx["event"],
                "trigger": ctx["trigger"],
                "explain": job.explain,
                "job_id": job.job_id,
            }
        else:
            arguments = render_json_object(cfg.arguments_template, ctx)
    except TemplateRenderError as exc:
        return Outcome.permanent(str(exc), sent=False)
    if cfg.include_file_content and file_view is not None and "file" not in arguments:
        arguments["file"] = file_view
    headers = {"Idempotency-Key": job.job_id, "User-Agent": USER_AGENT}
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    remaining = max(0.1, deadline - asyncio.get_running_loop().time())
    factory = httpx_client_factory(policy.within(remaining))
    what = f"MCP tools/call {cfg.tool_name} at {origin(url)}"
    statuses: list[int] = []

    async def note_status(response: httpx2.Response) -> None:
        # The mcp client turns an HTTP error into a JSON-RPC error: keep the status.
        statuses.append(response.status_code)

    try:
        async with asyncio.timeout(remaining):
            client = factory(headers=headers)
            client.event_hooks["response"].append(note_status)
            async with (
                client,
                streamable_http_client(url, http_client=client) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool(cfg.tool_name, arguments)
    except Exception as exc:  # noqa: BLE001 (every failure becomes an Outcome)
        failed = next((s for s in reversed(statuses) if s >= 400), None)
        if failed is not None:
            out = _http_outcome(failed, {}, b"", None)
            out = Outcome(
                out.kind,
                error=f"{what}: HTTP {failed}",
                retry_after=out.retry_after,
                destination_fault=out.destination_fault,
            )
        else:
            out = _mcp_exception_outcome(exc, what)
        return _scrub(out, bearer_token) if bearer_token else out
    texts = [getattr(c, "text", "") for c in (getattr(result, "content", None) or [])]
    response: dict[str, Any] = {"content": excerpt("\n".join(t for t in texts if t).encode())}
    if getattr(result, "is_error", False):
        return Outcome.permanent(f"{what}: the tool reported an error", response=response)
    return Outcome.ok(response)
