"""The REST webhook action: one HTTP request to the URL the trigger's author set
(rendered from its template), signed the Standard Webhooks way when the action has a
signing secret, with the action's encrypted secret headers."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from services.dispatcher.kinds.base import (
    USER_AGENT,
    ActionRow,
    Deferral,
    Exchange,
    Outcome,
    Target,
    exception_outcome,
    http_outcome,
    job_timeout,
    mask,
    scrub,
)
from services.dispatcher.renderer import Renderer, RendererBusyError, has_templates
from services.dispatcher.templates import (
    TemplateRenderError,
    context_of,
    one_job,
    render_text,
    render_tree,
)
from shared.contract.actions import ActionConfig, RestConfig, is_reserved_header
from shared.contract.jobs import ActionJob
from shared.outbound.client import fetch
from shared.outbound.policy import OutboundPolicy, origin
from shared.platform.secrets import SecretBox, SecretDecryptError

#: Longest URL a request is sent to.
MAX_URL_CHARS = 2048


def _valid_http_url(url: str) -> str | None:
    """Why a rendered URL is unusable, or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"rendered URL is invalid: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "rendered URL is not an http(s) URL with a host"
    if len(url) > MAX_URL_CHARS or any(c.isspace() or ord(c) < 32 for c in url):
        return "rendered URL is too long or holds whitespace"
    return None


#: The check of an action's own URL when it has nothing to render (asked at each
#: attempt): kept for the last ones. Rendered URLs are checked afresh, so that no
#: template's output fills the cache (a template worker's memory is capped).
_configured_url_refusal = functools.lru_cache(maxsize=1024)(_valid_http_url)


def signing_key(secret: str) -> bytes:
    """The HMAC key of a signing secret: a ``whsec_`` secret is base64 of the key
    bytes, any other secret is used as its UTF-8 bytes. TemplateRenderError for a
    ``whsec_`` secret that is not base64."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise TemplateRenderError("the signing secret is whsec_ but not base64") from None
    return secret.encode()


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` of
    ``{id}.{timestamp}.{body}`` under :func:`signing_key` of ``secret``."""
    return _signature(signing_key(secret), msg_id, timestamp, body)


def _default_body(job: ActionJob, event: dict[str, Any] | orjson.Fragment) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "attempt": job.attempt,
        "fired_at": job.created_at.isoformat(),
        "trigger": {"id": job.trigger_id, "name": job.trigger_name},
        "event": event,
        "explain": job.explain,
    }


@dataclass(frozen=True)
class RestRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


#: Longest rendered header value (as a clear header value may be).
MAX_HEADER_CHARS = 8192


@dataclass(frozen=True)
class RenderedRest:
    """What a REST action's templates render to."""

    url: str
    headers: dict[str, str]
    body: bytes | None
    content_type: str


def render_rest(
    url_template: str,
    header_templates: dict[str, str],
    body_template: str | dict[str, Any] | None,
    default_body: dict[str, Any] | None,
    ctx: dict[str, Any],
) -> RenderedRest:
    """The URL, headers and body of a REST action rendered (TemplateRenderError when a
    template fails); ``default_body`` is sent when there is no body template. Pure
    and picklable: the renderer's workers run it. The URL, headers and body share one
    output budget."""
    with one_job():
        url = render_text(url_template, ctx)
        untemplated = url is url_template and len(url) <= MAX_URL_CHARS
        check = _configured_url_refusal if untemplated else _valid_http_url
        if (why := check(url)) is not None:
            raise TemplateRenderError(why)
        headers = {name: render_text(value, ctx) for name, value in header_templates.items()}
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise TemplateRenderError(f"header {name}: rendered value holds a line break")
            if len(value) > MAX_HEADER_CHARS:
                raise TemplateRenderError(
                    f"header {name}: rendered value exceeds {MAX_HEADER_CHARS} characters"
                )
        body: bytes | None = None
        content_type = "application/json"
        if body_template is None:
            if default_body is not None:
                body = orjson.dumps(default_body, default=str)
        elif isinstance(body_template, dict):
            body = orjson.dumps(render_tree(body_template, ctx), default=str)
        else:
            text = render_text(body_template, ctx)
            body = text.encode()
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                content_type = "text/plain; charset=utf-8"
        return RenderedRest(url, headers, body, content_type)


def _same_origin(rendered: str, configured: str) -> bool:
    try:
        return origin(rendered) == origin(configured)
    except ValueError:
        return False


def rest_sources(cfg: RestConfig) -> tuple[Any, ...]:
    """The action's template sources: whether any has something to render decides
    where it is rendered (here or in a template worker)."""
    return (cfg.url, cfg.headers, cfg.body_template)


def rest_templates(job: ActionJob, cfg: RestConfig) -> tuple[Any, ...]:
    """render_rest's arguments for this job: the template context only when a
    template has something to render (the event dumped once, for both)."""
    default = None
    templated = has_templates(*rest_sources(cfg))
    wants_default = cfg.body_template is None and cfg.method not in ("GET", "DELETE")
    if templated:
        event = job.event.model_dump(mode="json")
        ctx = context_of(job, event=event)
        if wants_default:
            default = _default_body(job, event)
    else:
        # Rendered here, not in a worker (Renderer.call takes the same rest_sources:
        # nothing to render): the event goes into the body as pydantic writes it, the
        # same JSON as its dump written by orjson, in a third of the time (a Fragment
        # cannot be pickled to a worker).
        ctx = {}
        if wants_default:
            default = _default_body(job, orjson.Fragment(job.event.model_dump_json()))
    return (cfg.url, dict(cfg.headers), cfg.body_template, default, ctx)


def _unsigned_request(
    job: ActionJob,
    cfg: RestConfig,
    *,
    secret: str | None,
    secret_headers: dict[str, str] | None,
    rendered: RenderedRest,
) -> RestRequest:
    """The request without its signature headers (TemplateRenderError when the
    secrets may not go where the rendered URL points)."""
    if (secret is not None or secret_headers) and not _same_origin(rendered.url, cfg.url):
        # A trigger written before templates were kept out of the host (or a bug):
        # its secrets go only where the trigger's own URL points.
        raise TemplateRenderError(
            "the rendered URL's origin differs from the action's URL: "
            "its signing secret and secret headers are not sent there"
        )
    headers, body = rendered.headers, rendered.body
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
        out["Content-Type"] = rendered.content_type
    out["User-Agent"] = USER_AGENT
    out["Idempotency-Key"] = job.job_id
    return RestRequest(cfg.method, rendered.url, out, body)


def signed(req: RestRequest, msg_id: str, key: bytes | None) -> RestRequest:
    """``req`` with its Standard Webhooks headers, signed now (None: no signing key,
    ``req`` itself)."""
    if key is None:
        return req
    ts = int(time.time())
    headers = {
        **req.headers,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": _signature(key, msg_id, ts, req.body or b""),
    }
    return RestRequest(req.method, req.url, headers, req.body)


def build_rest_request(
    job: ActionJob,
    cfg: RestConfig,
    *,
    secret: str | None,
    secret_headers: dict[str, str] | None = None,
    rendered: RenderedRest | None = None,
) -> RestRequest:
    """The request an attempt sends, from its ``rendered`` templates (rendered here
    when not given; TemplateRenderError when a template fails), signed now.
    ``secret_headers`` (decrypted) are sent as they are: values, not templates."""
    if rendered is None:
        rendered = render_rest(*rest_templates(job, cfg))
    req = _unsigned_request(
        job, cfg, secret=secret, secret_headers=secret_headers, rendered=rendered
    )
    return signed(req, job.job_id, None if secret is None else signing_key(secret))


async def prepare_rest(
    job: ActionJob,
    cfg: RestConfig,
    *,
    renderer: Renderer,
    secret: str | None,
    secret_headers: dict[str, str] | None = None,
) -> tuple[RestRequest, bytes | None] | Outcome:
    """The request, not signed yet, and its signing key; an Outcome when the attempt
    ends here (a template error, no template worker free). RestKind.prepare calls it
    before the destination's slot for an action with nothing to render; run_rest,
    within the slot, for one with templates."""
    try:
        rendered = await renderer.call(
            render_rest,
            *rest_templates(job, cfg),
            templates=rest_sources(cfg),
        )
        req = _unsigned_request(
            job, cfg, secret=secret, secret_headers=secret_headers, rendered=rendered
        )
        key = None if secret is None else signing_key(secret)
    except TemplateRenderError as exc:
        return Outcome.permanent(str(exc), sent=False)
    except RendererBusyError as exc:
        return Outcome.transient(str(exc), destination_fault=False, sent=False)
    return req, key


async def exchange_rest(
    job: ActionJob,
    cfg: RestConfig,
    req: RestRequest,
    key: bytes | None,
    *,
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    secret_headers: dict[str, str] | None = None,
) -> Outcome:
    """Sign ``req`` (its timestamp is the moment it is sent) and send it."""
    req = signed(req, job.job_id, key)
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
        secrets = (secret_headers or {}).values()
        return scrub(exception_outcome(exc, what, *secrets), *secrets)
    # A receiver that echoes the request (many test endpoints do) must not put the
    # credentials into action_results: masked in the whole body, before the excerpt.
    body = mask(resp.body, (secret_headers or {}).values())
    return http_outcome(resp.status, resp.headers, body, cfg.expected_status)


async def run_rest(
    job: ActionJob,
    cfg: RestConfig,
    *,
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    renderer: Renderer,
    secret: str | None,
    secret_headers: dict[str, str] | None = None,
) -> Outcome:
    """One whole attempt: :func:`prepare_rest`, then :func:`exchange_rest`."""
    ready = await prepare_rest(
        job, cfg, renderer=renderer, secret=secret, secret_headers=secret_headers
    )
    if isinstance(ready, Outcome):
        return ready
    return await exchange_rest(
        job, cfg, *ready, session=session, policy=policy, secret_headers=secret_headers
    )


class RestKind:
    """REST webhooks: the destination is the URL's origin (unrendered: a templated
    URL is still one destination); the signing secret and the secret headers are
    decrypted for each attempt."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        policy: OutboundPolicy,
        secrets: SecretBox,
        renderer: Renderer,
    ) -> None:
        self._session = session
        self._policy = policy
        self._secrets = secrets
        self._renderer = renderer

    def time_limit(self, job: ActionJob) -> float:
        return job_timeout(job)

    def wait_before(self, cfg: ActionConfig, target: Target) -> Deferral | None:
        return None

    async def target(self, job: ActionJob, cfg: ActionConfig, action: ActionRow) -> Target:
        assert isinstance(cfg, RestConfig)
        secret = None
        if action.secret_ciphertext is not None:
            secret = self._secrets.decrypt(
                action.secret_ciphertext, context=f"trigger_actions:{job.action_id}"
            )
        elif cfg.signing_secret is not None:
            secret = cfg.signing_secret.get_secret_value()
        headers = None
        if action.headers_ciphertext is not None:
            headers = self._secret_headers(job, action.headers_ciphertext)
        return Target(destination=origin(cfg.url), secret=secret, headers=headers)

    def _secret_headers(self, job: ActionJob, ciphertext: bytes) -> dict[str, str]:
        text = self._secrets.decrypt(ciphertext, context=f"trigger_actions:{job.action_id}:headers")
        try:
            headers = orjson.loads(text)
        except orjson.JSONDecodeError:
            headers = None
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise SecretDecryptError("the action's secret headers are not a JSON object")
        return headers

    async def prepare(
        self, job: ActionJob, cfg: ActionConfig, target: Target
    ) -> Exchange | Outcome:
        """The request built now when the action has nothing to render (built here,
        in microseconds: the slot is then held for the exchange alone). An action
        with templates renders within the slot, as part of the exchange: its
        rendering goes to the shared template workers, which the destination's
        slots, its breaker and each user's fair turn keep from being flooded by one
        destination's backlog."""
        assert isinstance(cfg, RestConfig)
        if has_templates(*rest_sources(cfg)):
            return functools.partial(self.attempt, job, cfg, target)
        ready = await prepare_rest(
            job, cfg, renderer=self._renderer, secret=target.secret, secret_headers=target.headers
        )
        if isinstance(ready, Outcome):
            return ready
        return functools.partial(
            exchange_rest,
            job,
            cfg,
            *ready,
            session=self._session,
            policy=self._policy,
            secret_headers=target.headers,
        )

    async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome:
        assert isinstance(cfg, RestConfig)
        return await run_rest(
            job,
            cfg,
            session=self._session,
            policy=self._policy,
            renderer=self._renderer,
            secret=target.secret,
            secret_headers=target.headers,
        )
