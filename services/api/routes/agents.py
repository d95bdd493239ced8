"""The agents resource: an agent's MCP bearer token, set and removed with an
EIP-191 signature by the agent's current owner (expiry and single-use nonce
checked), stored encrypted."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.api.common import (
    POOL,
    SECRETS,
    SETTINGS,
    SIGNATURE_CHECKS,
    ApiError,
    detail,
    json_ok,
    not_found,
    parse_body,
    parse_query,
    path_int,
    user_id,
)
from services.api.models import (
    AgentQuery,
    McpTokenIn,
    McpTokenOut,
    McpTokenRemovalIn,
    SigningDomainOut,
)
from services.api.queries import ACQUIRE_SECONDS, STATEMENT_TIMEOUT
from services.api.queries import agents as agent_sql
from services.api.routes._shared import log
from services.api.signatures import (
    mcp_token_message,
    mcp_token_removal_message,
    recover_signer,
)
from shared.contract.actions import mcp_token_context
from shared.contract.event_fields import (
    INT32_MAX,
    INT63_MAX,
)

#: How far ahead an MCP token signature may expire (it is accepted once anyway).
MAX_SIGNATURE_VALIDITY = 3600


def _agent_path(request: web.Request) -> tuple[int, int, str]:
    """(chain id, agent id, its Identity registry from ``?registry=``; '' when not named)."""
    registry = parse_query(request, AgentQuery).registry
    return (
        path_int(request, "chain_id", low=1, high=INT32_MAX),
        path_int(request, "agent_id", low=0, high=INT63_MAX),
        registry or "",
    )


async def _signer(request: web.Request, body: McpTokenRemovalIn, message: str) -> str:
    """The address that signed ``message``, after checking the body's expiry; at most
    SIGNATURE_CHECKS_PER_MINUTE per user, recovered off the event loop."""
    now = time.time()
    if body.expires_at <= now:
        raise ApiError(422, "invalid body", [detail(("body", "expires_at"), "has passed")])
    if body.expires_at > now + MAX_SIGNATURE_VALIDITY:
        raise ApiError(
            422,
            "invalid body",
            [detail(("body", "expires_at"), f"at most {MAX_SIGNATURE_VALIDITY} s ahead")],
        )
    wait = request.app[SIGNATURE_CHECKS].take([("user", user_id(request))])
    if wait:
        raise ApiError(
            429, "too many signatures checked; try again later", headers={"Retry-After": str(wait)}
        )
    signer = await asyncio.to_thread(recover_signer, message, body.signature)
    if signer is None:
        raise ApiError(
            422, "invalid body", [detail(("body", "signature"), "not a valid signature")]
        )
    return signer


async def _owner_check(
    conn: Any, chain_id: int, agent_id: int, *, registry: str, signer: str, body: McpTokenRemovalIn
) -> str:
    """The agent's current owner, if it is the signer and the nonce is new."""
    if not registry and await agent_sql.identity_registries(conn, chain_id, agent_id) > 1:
        raise ApiError(
            409,
            f"agent {agent_id} exists in several Identity registries of chain {chain_id}: "
            "name the agent's registry (?registry=0x…, signed as `registry:`)",
        )
    owner = await agent_sql.agent_owner(conn, chain_id, agent_id, registry)
    if owner is None:
        raise not_found("no Registered event of this agent is known")
    if owner.lower() != signer:
        log.info("mcp token refused: not the owner", chain_id=chain_id, agent_id=agent_id)
        raise ApiError(403, "the signature is not by the agent's current owner")
    expires = datetime.fromtimestamp(body.expires_at, UTC)
    if not await agent_sql.use_nonce(
        conn, chain_id, agent_id, registry=registry, nonce=body.nonce, expires_at=expires
    ):
        raise ApiError(409, "this signed message was used already (nonce)")
    return owner.lower()


async def put_mcp_token(request: web.Request) -> web.Response:
    chain_id, agent_id, registry = _agent_path(request)
    body = await parse_body(request, McpTokenIn)
    token = body.token.get_secret_value()
    tools = None if body.allowed_tools == "*" else body.allowed_tools
    users = None if body.allowed_users == "*" else body.allowed_users
    message = mcp_token_message(
        deployment=request.app[SETTINGS].deployment(),
        chain_id=chain_id,
        agent_id=agent_id,
        token=token,
        allowed_tools=tools,
        allowed_users=users,
        nonce=body.nonce,
        expires_at=body.expires_at,
        registry=registry,
    )
    signer = await _signer(request, body, message)
    async with request.app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn, conn.transaction():
        await conn.execute("SELECT set_config('statement_timeout', $1, true)", STATEMENT_TIMEOUT)
        owner = await _owner_check(
            conn, chain_id, agent_id, registry=registry, signer=signer, body=body
        )
        ciphertext = request.app[SECRETS].encrypt(
            token, context=mcp_token_context(chain_id, agent_id, registry)
        )
        row = await agent_sql.upsert_mcp_token(
            conn,
            chain_id,
            agent_id,
            registry=registry,
            ciphertext=ciphertext,
            owner=owner,
            allowed_tools=tools,
            allowed_users=users,
        )
    log.info("mcp token stored", chain_id=chain_id, agent_id=agent_id)
    return json_ok(McpTokenOut(**dict(row)))


async def delete_mcp_token(request: web.Request) -> web.Response:
    chain_id, agent_id, registry = _agent_path(request)
    body = await parse_body(request, McpTokenRemovalIn)
    message = mcp_token_removal_message(
        deployment=request.app[SETTINGS].deployment(),
        chain_id=chain_id,
        agent_id=agent_id,
        nonce=body.nonce,
        expires_at=body.expires_at,
        registry=registry,
    )
    signer = await _signer(request, body, message)
    async with request.app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn, conn.transaction():
        await conn.execute("SELECT set_config('statement_timeout', $1, true)", STATEMENT_TIMEOUT)
        await _owner_check(conn, chain_id, agent_id, registry=registry, signer=signer, body=body)
        if not await agent_sql.delete_mcp_token(conn, chain_id, agent_id, registry):
            raise not_found("no MCP token is stored for this agent")
    log.info("mcp token deleted", chain_id=chain_id, agent_id=agent_id)
    return web.Response(status=204)


async def signing_domain(request: web.Request) -> web.Response:
    """What an owner signs as ``deployment:`` for this deployment."""
    return json_ok(SigningDomainOut(deployment=request.app[SETTINGS].deployment()))
