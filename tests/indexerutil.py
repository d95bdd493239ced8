"""Helpers of the indexer's tests on a real local EVM (tools.evmnode): the registry
mocks deployed, every registry event of every layout driven by signed transactions,
the indexer's settings, and the events as ingest stored them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
from pydantic import SecretStr
from web3.contract import AsyncContract
from web3.types import TxReceipt

from services.indexer.follower import Follower
from services.indexer.ingest_client import IngestClient
from services.indexer.metrics import IndexerMetrics
from services.indexer.rpc import JsonRpc
from services.indexer.settings import ChainConfig, IndexerSettings
from shared.platform.metrics import new_registry
from tests.ingestutil import TOKEN
from tools.evmnode import CHAIN_ID, Chain

ZERO = b"\0" * 32
#: Texts the chain takes and a strict contract would not: long, with a NUL.
LONG_TAG = "t" * 300
NUL_ENDPOINT = "https://agent.example/\x00mcp"
DATA_URI = "data:application/json;base64," + "A" * 12 * 1024


@dataclass
class Registries:
    identity: AsyncContract
    reputation: AsyncContract
    validation: AsyncContract
    noise: AsyncContract
    deployed_at: int

    @property
    def addresses(self) -> dict[str, str]:
        return {
            "identity_registry": self.identity.address.lower(),
            "reputation_registry": self.reputation.address.lower(),
            "validation_registry": self.validation.address.lower(),
        }


async def deploy(evm: Chain) -> Registries:
    identity = await evm.deploy("IdentityRegistryMock")
    first = await evm.head()
    return Registries(
        identity=identity,
        reputation=await evm.deploy("ReputationRegistryMock"),
        validation=await evm.deploy("ValidationRegistryMock"),
        noise=await evm.deploy("Noise"),
        deployed_at=first,
    )


async def drive_every_event(evm: Chain, r: Registries) -> list[TxReceipt]:
    """One call of every function of the mocks (every event, every layout), as three
    accounts: the agent's owner, a client, a validator."""
    owner, client, validator = evm.accounts[0], evm.accounts[1], evm.accounts[2]
    i, rep, val = r.identity.functions, r.reputation.functions, r.validation.functions
    request = b"\x42" * 32
    calls: list[tuple[Any, str]] = [
        (i.register("ipfs://agent-0", ["name"], [b"Ada"]), owner.key),
        (i.register(DATA_URI, [], []), owner.key),
        (i.setAgentURI(0, "https://agent.example/0.json"), owner.key),
        (i.setMetadata(0, "k" * 1025, b"\x00\x01"), owner.key),
        (i.touch(0), owner.key),
        (i.legacySetUri(0, "ipfs://old-layout"), owner.key),
        (i.legacySetMetadataString(0, "role", "oracle"), owner.key),
        (i.transferFrom(owner.address, client.address, 1), owner.key),
        (
            rep.giveFeedback(0, 10**38 - 1, 18, LONG_TAG, "week", NUL_ENDPOINT, "ipfs://f", ZERO),
            client.key,
        ),
        (rep.giveFeedback(0, -9977, 2, "uptime", "", "", "", b"\x01" * 32), client.key),
        (rep.revokeFeedback(0, 1), client.key),
        (rep.appendResponse(0, client.address, 2, "ipfs://response", b"\x02" * 32), owner.key),
        (
            rep.legacyFeedbackV10(
                0, 87, b"starred".ljust(32, b"\0"), b"day".ljust(32, b"\0"), "", ZERO
            ),
            client.key,
        ),
        (rep.legacyFeedbackV11(0, 50, "starred", "week", "ipfs://v11", ZERO), client.key),
        (rep.legacyFeedbackV11Index(0, 60, "reachable", "", "https://e", "", ZERO), client.key),
        (rep.legacyFeedbackV11Tag(0, 70, "uptime", "day", "", "", ZERO), client.key),
        (val.validationRequest(validator.address, 0, "ipfs://request", request), owner.key),
        (
            val.validationResponse(request, 0, 100, "ipfs://answer", b"\x03" * 32, "final"),
            validator.key,
        ),
        (
            val.legacyValidationResponse(request, 0, 40, "", ZERO, b"soft".ljust(32, b"\0")),
            validator.key,
        ),
        (r.noise.functions.transfer(client.address, 5), owner.key),
        (r.noise.functions.ping(1, "not a registry"), owner.key),
    ]
    return [await evm.transact(call, sender_key=key) for call, key in calls]


def registry_logs(receipts: list[TxReceipt], r: Registries) -> set[tuple[int, int]]:
    """(block, log index) of every log the registries' addresses emitted."""
    addresses = set(r.addresses.values())
    return {
        (int(entry["blockNumber"]), int(entry["logIndex"]))
        for receipt in receipts
        for entry in receipt["logs"]
        if entry["address"].lower() in addresses
    }


def chain_config(url: str, r: Registries, **extra: Any) -> ChainConfig:
    return ChainConfig.model_validate(
        {
            "chain_id": CHAIN_ID,
            "rpc_url": url,
            "start_block": r.deployed_at,
            "confirmations": 12,
            **r.addresses,
            **extra,
        }
    )


def indexer_env(
    env: dict[str, str], *, database_url: str, ingest_url: str, chain: ChainConfig
) -> dict[str, str]:
    """The environment of an indexer process following ``chain``."""
    config = chain.model_dump(mode="json") | {"rpc_url": chain.rpc_url.get_secret_value()}
    return {
        **env,
        "DATABASE_URL": database_url,
        "INGEST_URL": ingest_url,
        "INGEST_TOKEN": TOKEN,
        "INDEXER_CHAINS": orjson.dumps([config]).decode(),
        "POLL_INTERVAL": "0.2",
        "STANDBY_INTERVAL": "0.3",
        "HEARTBEAT_INTERVAL": "0",
        "RPC_TIMEOUT": "2",
    }


async def follow_until_caught_up(
    session: aiohttp.ClientSession,
    ingest_url: str,
    chain: ChainConfig,
    *,
    rpc_timeout: float = 5.0,
    metrics: IndexerMetrics | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> Follower:
    """An indexer's follower in this process, from ingest's checkpoint to the head."""

    metrics = metrics or IndexerMetrics.create(new_registry(), (chain.chain_id,))
    follower = Follower(
        chain,
        rpc=JsonRpc(session, chain.rpc_url.get_secret_value(), timeout=rpc_timeout),
        ingest=IngestClient(session, ingest_url, TOKEN),
        metrics=metrics,
        heartbeat_interval=0,
        sleep=sleep or asyncio.sleep,
    )
    await follower.resume()
    while not await follower.step():
        pass
    return follower


def settings_of(env: dict[str, str]) -> IndexerSettings:
    return IndexerSettings.model_validate(
        {k: SecretStr(v) if k == "INGEST_TOKEN" else v for k, v in env.items()}
    )


async def stored(db: asyncpg.Connection, chain_id: int = CHAIN_ID) -> list[asyncpg.Record]:
    """Every stored event version of the chain, in chain order."""
    return await db.fetch(
        "SELECT * FROM events WHERE chain_id = $1 ORDER BY block_number, log_index, block_hash",
        chain_id,
    )
