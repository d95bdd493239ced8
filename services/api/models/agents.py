"""The agents' models: an MCP token set or removed with the owner's signature."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, Strict, StringConstraints

from services.api.models._shared import _Body, _Out
from shared.contract.event_fields import (
    INT63_MAX,
    Address,
)


class McpTokenRemovalIn(_Body):
    """The owner's EIP-191 signature of
    :func:`services.api.signatures.mcp_token_removal_message`."""

    nonce: Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
    expires_at: Annotated[int, Strict(), Field(ge=0, le=INT63_MAX)]
    signature: Annotated[str, Strict(), StringConstraints(pattern=r"^0x[0-9a-fA-F]{130}$")]


ToolName = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9_./-]{1,128}$")]
UserId = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class McpTokenIn(McpTokenRemovalIn):
    """The agent's MCP bearer token with the owner's EIP-191 signature of
    :func:`services.api.signatures.mcp_token_message`: which tools a call with it
    may name and whose triggers may send it (``"*"``: any)."""

    token: Annotated[SecretStr, Field(min_length=1, max_length=4096)]
    allowed_tools: Annotated[list[ToolName], Field(min_length=1, max_length=100)] | Literal["*"]
    allowed_users: Annotated[list[UserId], Field(min_length=1, max_length=100)] | Literal["*"]


class McpTokenOut(_Out):
    chain_id: int
    agent_id: int
    #: The Identity registry the token's agent belongs to ('' : not named).
    agent_registry: str
    owner_address: str
    #: None: every tool / every user ("*" in the signed message).
    allowed_tools: list[str] | None
    allowed_users: list[str] | None
    updated_at: datetime | None


class AgentQuery(BaseModel):
    """Which deployment's agent: its Identity registry's address, needed where two
    registries of the chain hold an agent of this id (and signed as ``registry:``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    registry: Address | None = None


class SigningDomainOut(_Out):
    #: The ``deployment:`` line's value in the messages an agent's owner signs.
    deployment: str
