"""The agents' models: an MCP token set or removed with the owner's signature."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, SecretStr, Strict, StringConstraints

from services.api.models._shared import _Body, _Out
from shared.contract.event_fields import (
    INT63_MAX,
)


class McpTokenRemovalIn(_Body):
    """The owner's EIP-191 signature of
    :func:`services.api.signatures.mcp_token_removal_message`."""

    nonce: Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
    expires_at: Annotated[int, Strict(), Field(ge=0, le=INT63_MAX)]
    signature: Annotated[str, Strict(), StringConstraints(pattern=r"^0x[0-9a-fA-F]{130}$")]


class McpTokenIn(McpTokenRemovalIn):
    """The agent's MCP bearer token with the owner's EIP-191 signature of
    :func:`services.api.signatures.mcp_token_message`."""

    token: Annotated[SecretStr, Field(min_length=1, max_length=4096)]


class McpTokenOut(_Out):
    chain_id: int
    agent_id: int
    owner_address: str
    updated_at: datetime | None
