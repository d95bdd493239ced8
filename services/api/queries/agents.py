"""The agents' SQL: an agent's owner, the signed messages' nonces, and its MCP token."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.contract.sql import AGENT_OWNER
from shared.platform.db import Conn


async def agent_owner(conn: Conn, chain_id: int, agent_id: int, registry: str) -> str | None:
    """The owner named by the agent's latest canonical Registered or Transfer event (of
    that Identity registry; '' any)."""
    value: str | None = await conn.fetchval(AGENT_OWNER, chain_id, agent_id, registry or None)
    return value


async def identity_registries(conn: Conn, chain_id: int, agent_id: int) -> int:
    """How many Identity registries of the chain have an agent of this id (events that
    name their registry; 0 when none does)."""
    value: int = await conn.fetchval(
        """SELECT count(DISTINCT e.agent_registry) FROM events e
           WHERE e.chain_id = $1 AND e.agent_id = $2 AND e.registry = 'identity'
             AND e.event_type = 'Registered' AND e.agent_registry IS NOT NULL""",
        chain_id,
        agent_id,
    )
    return value


async def use_nonce(
    conn: Conn, chain_id: int, agent_id: int, *, registry: str, nonce: str, expires_at: datetime
) -> bool:
    """Record a signature's nonce; False when it was used before. Expired nonces
    are forgotten (their messages are refused by their expiry anyway)."""
    await conn.execute("DELETE FROM agent_mcp_token_nonces WHERE expires_at < now()")
    inserted = await conn.fetchval(
        """INSERT INTO agent_mcp_token_nonces (chain_id, agent_id, nonce, expires_at,
                                              agent_registry)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true""",
        chain_id,
        agent_id,
        nonce,
        expires_at,
        registry,
    )
    return inserted is True


async def upsert_mcp_token(
    conn: Conn,
    chain_id: int,
    agent_id: int,
    *,
    registry: str,
    ciphertext: bytes,
    owner: str,
    allowed_tools: list[str] | None,
    allowed_users: list[str] | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO agent_mcp_tokens (chain_id, agent_id, token_ciphertext, owner_address,
                                        allowed_tools, allowed_users, agent_registry)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (chain_id, agent_registry, agent_id) DO UPDATE
           SET token_ciphertext = excluded.token_ciphertext,
               owner_address = excluded.owner_address,
               allowed_tools = excluded.allowed_tools,
               allowed_users = excluded.allowed_users
           RETURNING chain_id, agent_id, agent_registry, owner_address, allowed_tools,
                     allowed_users, updated_at""",
        chain_id,
        agent_id,
        ciphertext,
        owner,
        allowed_tools,
        allowed_users,
        registry,
    )
    assert row is not None
    return row


async def delete_mcp_token(conn: Conn, chain_id: int, agent_id: int, registry: str) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM agent_mcp_tokens WHERE chain_id = $1 AND agent_id = $2"
        " AND agent_registry = $3 RETURNING true",
        chain_id,
        agent_id,
        registry,
    )
    return deleted is True
