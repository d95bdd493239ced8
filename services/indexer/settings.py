"""Indexer settings (docs/indexer.md has the table). The chains are one JSON setting,
``INDEXER_CHAINS``, kept in a Secret: RPC URLs often carry an API key."""

from __future__ import annotations

from typing import Annotated, ClassVar, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.contract.event_fields import INT32_MAX, Address
from shared.contract.events import Registry
from shared.platform.settings import ServiceSettings


class Deployment(BaseModel):
    """One deployment of the registries: its contracts' addresses (a Reputation or
    Validation registry is bound to the Identity registry of its deployment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    identity_registry: Address | None = None
    reputation_registry: Address | None = None
    validation_registry: Address | None = None

    @property
    def contracts(self) -> dict[str, tuple[Registry, str | None]]:
        """Contract address → (registry, the Identity registry its agents belong to)."""
        found = {
            Registry.identity: self.identity_registry,
            Registry.reputation: self.reputation_registry,
            Registry.validation: self.validation_registry,
        }
        return {
            address: (registry, self.identity_registry)
            for registry, address in found.items()
            if address
        }


class ChainConfig(BaseModel):
    """One chain the indexer follows: the registries' addresses of one deployment,
    and in ``deployments`` those of others on the same chain (an older and a newer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chain_id: Annotated[int, Field(ge=1, le=INT32_MAX)]
    #: The EVM node's JSON-RPC endpoint over HTTP(S) (may carry an API key).
    rpc_url: SecretStr
    identity_registry: Address | None = None
    reputation_registry: Address | None = None
    validation_registry: Address | None = None
    #: First block to read when ingest has no checkpoint of this chain yet (the
    #: registries' deployment block saves reading the chain's history before it).
    start_block: Annotated[int, Field(ge=0)] = 0
    #: Blocks behind the head that may still be replaced: the indexer keeps their
    #: hashes and announces a reorg when one changes. Deeper reorgs are not seen.
    confirmations: Annotated[int, Field(ge=0, le=10_000)] = 64
    #: Largest eth_getLogs range, in blocks; halved while the provider refuses a range
    #: (too many results, response size, timeout) and grown back on success.
    max_block_range: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    #: Further deployments of the registries on this chain.
    deployments: tuple[Deployment, ...] = ()

    @model_validator(mode="after")
    def _some_registry(self) -> Self:
        if not self.contracts:
            raise ValueError("name at least one registry address")
        addresses = [a for d in self._all_deployments() for a in d.contracts]
        if len(addresses) != len(set(addresses)):
            raise ValueError("an address is named twice")
        return self

    def _all_deployments(self) -> list[Deployment]:
        first = Deployment(
            identity_registry=self.identity_registry,
            reputation_registry=self.reputation_registry,
            validation_registry=self.validation_registry,
        )
        return [first, *self.deployments]

    @property
    def contracts(self) -> dict[str, tuple[Registry, str | None]]:
        """Every contract address (lower case) → (registry, the Identity registry of its
        deployment: the one its agents belong to, None when not configured)."""
        found: dict[str, tuple[Registry, str | None]] = {}
        for deployment in self._all_deployments():
            found.update(deployment.contracts)
        return found


class IndexerSettings(ServiceSettings):
    service_name: ClassVar[str] = "indexer"

    http_port: int = Field(default=9103, ge=0, le=65535, validation_alias="HTTP_PORT")
    #: Ingest's base URL and one of its INGEST_TOKENS.
    ingest_url: str = Field(default="http://127.0.0.1:8081", validation_alias="INGEST_URL")
    ingest_token: SecretStr = Field(validation_alias="INGEST_TOKEN")
    #: A JSON list of chains, each as ChainConfig (docs/indexer.md).
    chains: Annotated[tuple[ChainConfig, ...], NoDecode] = Field(
        validation_alias="INDEXER_CHAINS", min_length=1
    )
    #: Seconds between polls of a chain's head once caught up.
    poll_interval: float = Field(default=2.0, gt=0, le=300, validation_alias="POLL_INTERVAL")
    #: Seconds an RPC call may take (an eth_getLogs that times out shrinks its range).
    rpc_timeout: float = Field(default=20.0, gt=0, le=300, validation_alias="RPC_TIMEOUT")
    #: Block headers asked for in one JSON-RPC batch.
    rpc_batch_size: int = Field(default=100, ge=1, le=1000, validation_alias="RPC_BATCH_SIZE")
    #: Seconds of block time between heartbeats while blocks bring no registry event.
    heartbeat_interval: float = Field(
        default=10.0, ge=0, le=86_400, validation_alias="HEARTBEAT_INTERVAL"
    )
    #: Seconds a standby replica waits before trying a chain's lock again.
    standby_interval: float = Field(default=5.0, gt=0, le=300, validation_alias="STANDBY_INTERVAL")

    @field_validator("chains", mode="before")
    @classmethod
    def _parse_chains(cls, value: object) -> object:
        if isinstance(value, str | bytes):
            return orjson.loads(value)
        return value

    @model_validator(mode="after")
    def _distinct_chains(self) -> Self:
        ids = [c.chain_id for c in self.chains]
        if len(ids) != len(set(ids)):
            raise ValueError("INDEXER_CHAINS names a chain twice")
        return self
