"""The MCP action: one ``tools/call`` (after ``initialize``) on the agent's own MCP
server, found in its registration file (or at a URL the trigger names); the agent's
bearer token travels only to the agent's own resolved server, over https or to an
address the operator allowed. The feedback file can be fetched, verified against
the event's hash and handed to the tool."""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
from eth_hash.auto import keccak
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from services.dispatcher.kinds.base import (
    USER_AGENT,
    ActionRow,
    AgentToken,
    Deferral,
    Exchange,
    Outcome,
    Target,
    excerpt,
    http_outcome,
    is_transient_status,
    job_timeout,
    mask,
    scrub,
    short,
)
from services.dispatcher.registration import ResolveError, Resolver
from services.dispatcher.renderer import Renderer, RendererBusyError
from services.dispatcher.templates import TemplateRenderError, context_of, render_json_object
from shared.contract.actions import ActionConfig, McpConfig, mcp_token_context
from shared.contract.jobs import ActionJob
from shared.outbound.policy import (
    OutboundError,
    OutboundPolicy,
    OutboundTimeoutError,
    RefusedDestination,
    origin,
)
from shared.outbound.transport import httpx_client_factory
from shared.platform.secrets import SecretBox

ZERO_HASH = "0x" + "0" * 64

#: (chain id, agent id) -> the agent's encrypted MCP token and its scope, while its
#: setter owns the agent.
#: (chain id, agent id, the agent's Identity registry when the event names it).
TokenLookup = Callable[[int, int, str | None], Awaitable[AgentToken | None]]


class McpKind:
    """MCP tools: the destination is the resolved server's origin; the time limit
    covers endpoint resolution, the feedback file and the call (three timeouts)."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        policy: OutboundPolicy,
        secrets: SecretBox,
        agent_token: TokenLookup,
        renderer: Renderer,
    ) -> None:
        self._renderer = renderer
        self._resolver = resolver
        self._policy = policy
        self._secrets = secrets
        self._agent_token = agent_token

    def time_limit(self, job: ActionJob) -> float:
        return 3 * job_timeout(job)

    def wait_before(self, cfg: ActionConfig, target: Target) -> Deferral | None:
        return None

    async def target(self, job: ActionJob, cfg: ActionConfig, action: ActionRow) -> Target:
        assert isinstance(cfg, McpConfig)
        try:
            return await self._target(job, cfg)
        except ResolveError as exc:
            raise ResolveError(
                f"resolving the agent's MCP endpoint: {exc}", transient=exc.transient
            ) from exc

    async def _target(self, job: ActionJob, cfg: McpConfig) -> Target:
        if not cfg.resolve_endpoint:
            # The agent's token goes only to the agent's own (resolved) server, never to
            # a URL a trigger's author typed.
            assert cfg.server_url is not None
            return Target(destination=origin(cfg.server_url), url=cfg.server_url)
        event = job.event
        if event.agent_id is None:
            raise ResolveError("the event names no agent", transient=False)
        url = await self._resolver.mcp_endpoint(
            event.chain_id,
            event.agent_id,
            time_limit=cfg.timeout_ms / 1000,
            agent_registry=event.agent_registry,
        )
        try:
            destination = origin(url)
        except ValueError:
            raise ResolveError(
                "the registration file's MCP endpoint is invalid", transient=False
            ) from None
        token = None
        if self._may_carry_token(url):
            stored = await self._agent_token(event.chain_id, event.agent_id, event.agent_registry)
            # Only on the calls its owner allowed: this user's triggers, these tools.
            if stored is not None and stored.allows(user_id=job.user_id, tool=cfg.tool_name):
                token = self._secrets.decrypt(
                    stored.ciphertext,
                    context=mcp_token_context(
                        event.chain_id, event.agent_id, stored.agent_registry
                    ),
                )
        return Target(destination=destination, url=url, secret=token)

    def _may_carry_token(self, url: str) -> bool:
        """Bearer tokens travel over https only, or over http to an address the
        operator allowed explicitly (a development setup on loopback)."""
        parts = urlsplit(url)
        if parts.scheme.lower() == "https":
            return True
        try:
            ip = ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            return False
        return self._policy.allows(ip)

    async def prepare(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Exchange:
        # The whole of run_mcp is the exchange: the tool's arguments may take in the
        # file it reads first, and its session belongs to the destination's slot.
        return functools.partial(self.attempt, job, cfg, target)

    async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome:
        assert isinstance(cfg, McpConfig)
        return await run_mcp(
            job,
            cfg,
            resolver=self._resolver,
            policy=self._policy,
            renderer=self._renderer,
            bearer_token=target.secret,
            server_url=target.url,
        )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(_leaves(inner))
        return out
    return [exc]


def _mcp_exception_outcome(exc: BaseException, what: str, secret: str | None) -> Outcome:
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
            return Outcome.transient(f"{what}: {type(leaf).__name__}: {short(leaf, secret)}")
        if isinstance(leaf, OutboundError):
            return Outcome.permanent(f"{what}: {leaf}")
    leaf = leaves[0]
    name = type(leaf).__name__
    if name in ("McpError", "MCPError") or "mcp" in type(leaf).__module__:
        return Outcome.permanent(f"{what}: {name}: {short(leaf, secret)}")
    return Outcome.transient(f"{what}: {name}: {short(leaf, secret)}")


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
    renderer: Renderer,
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
            arguments = await renderer.call(
                render_json_object,
                cfg.arguments_template,
                ctx,
                templates=(cfg.arguments_template,),
            )
    except TemplateRenderError as exc:
        return Outcome.permanent(str(exc), sent=False)
    except RendererBusyError as exc:
        return Outcome.transient(str(exc), destination_fault=False, sent=False)
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
            out = http_outcome(failed, {}, b"", None)
            out = Outcome(
                out.kind,
                error=f"{what}: HTTP {failed}",
                retry_after=out.retry_after,
                destination_fault=out.destination_fault,
            )
        else:
            out = _mcp_exception_outcome(exc, what, bearer_token)
        return scrub(out, bearer_token) if bearer_token else out
    texts = [getattr(c, "text", "") for c in (getattr(result, "content", None) or [])]
    # A tool may echo its request: the token is masked in the whole output, before
    # the excerpt, on every outcome.
    output = mask("\n".join(t for t in texts if t).encode(), [bearer_token or ""])
    response: dict[str, Any] = {"content": excerpt(output)}
    if getattr(result, "is_error", False):
        return Outcome.permanent(f"{what}: the tool reported an error", response=response)
    return Outcome.ok(response)
