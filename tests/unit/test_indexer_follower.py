"""The follower against a chain kept in memory, for what a local node cannot be made
to do: a provider's node that lags (null for the newest block, a range answered in
part), a checkpoint whose hash ingest no longer knows, an endpoint of another chain.
The real node's cases (reorgs, faults, kills) are in tests/connected/test_indexer.py."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.indexer.abi import EVENTS, event_from_log
from services.indexer.follower import Follower, WrongChainError
from services.indexer.ingest_client import Checkpoint
from services.indexer.metrics import IndexerMetrics
from services.indexer.rpc import Block
from services.indexer.settings import ChainConfig
from shared.contract.events import Registry
from shared.platform.metrics import new_registry

pytestmark = pytest.mark.unit

CHAIN = 8453
REPUTATION = "0x" + "8004" * 10
REVOKED = next(e for e in EVENTS if e.event_type == "FeedbackRevoked")
NEW_FEEDBACK = next(e for e in EVENTS if e.event_type == "NewFeedback")


def digest(*parts: object) -> str:
    return "0x" + hashlib.sha256(repr(parts).encode()).hexdigest()


@dataclass
class FakeNode:
    """A chain of blocks; ``branch`` names the fork a block belongs to (a reorg
    changes it from some height on). ``lag`` hides the newest blocks from
    eth_getBlockByNumber and range queries, as a node behind its provider's others."""

    height: int
    events_at: set[int] = field(default_factory=set)
    branch: dict[int, str] = field(default_factory=dict)
    lag: int = 0
    #: Newest blocks a range query leaves out (a log index trailing the block feed).
    log_lag: int = 0
    #: Blocks with a registry log whose data does not decode.
    bad_at: set[int] = field(default_factory=set)
    chain_id_served: int = CHAIN

    def hash_of(self, n: int) -> str:
        return digest(n, self.branch.get(n, "a"))

    def header(self, n: int) -> dict[str, Any] | None:
        if n > self.height - self.lag or n < 0:
            return None
        parent = self.hash_of(n - 1) if n else "0x" + "00" * 32
        return {
            "number": hex(n),
            "hash": self.hash_of(n),
            "parentHash": parent,
            "timestamp": hex(1_760_000_000 + 12 * n),
        }

    def logs_of(self, n: int) -> list[dict[str, Any]]:
        bad = [
            {
                "address": REPUTATION,
                "topics": [
                    NEW_FEEDBACK.topic0,
                    "0x" + "00" * 32,
                    "0x" + "00" * 32,
                    "0x" + "11" * 32,
                ],
                "data": "0x1234",
                "blockNumber": hex(n),
                "blockHash": self.hash_of(n),
                "transactionHash": digest("bad", n),
                "logIndex": "0x5",
                "removed": False,
            }
        ]
        if n not in self.events_at:
            return bad if n in self.bad_at else []
        return (bad if n in self.bad_at else []) + [
            {
                "address": REPUTATION,
                "topics": [
                    REVOKED.topic0,
                    "0x" + "00" * 31 + "07",
                    "0x" + "00" * 12 + "ab" * 20,
                    "0x" + "00" * 31 + "01",
                ],
                "data": "0x",
                "blockNumber": hex(n),
                "blockHash": self.hash_of(n),
                "transactionHash": digest("tx", n),
                "logIndex": "0x0",
                "removed": False,
            }
        ]

    # the JsonRpc interface the follower uses

    async def chain_id(self) -> int:
        return self.chain_id_served

    async def head(self) -> int:
        return self.height - self.lag

    async def block(self, number: int) -> Block | None:
        raw = self.header(number)
        if raw is None:
            return None
        return Block(number, raw["hash"], raw["parentHash"], int(raw["timestamp"], 16))

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        return (await self.batch(method, [params]))[0]

    async def batch(self, method: str, params: Sequence[Sequence[Any]]) -> list[Any]:
        if method == "eth_getBlockByNumber":
            return [self.header(int(p[0], 16)) for p in params]
        assert method == "eth_getLogs"
        found = []
        for (query,) in params:
            number = next(
                n for n in range(self.height + 1) if self.hash_of(n) == query["blockHash"]
            )
            found.append(self.logs_of(number))
        return found

    async def logs(
        self, addresses: Sequence[str], topic0s: Sequence[str], first: int, last: int
    ) -> list[dict[str, Any]]:
        return [
            e for n in range(first, min(last, self.height - self.lag) + 1) for e in self.logs_of(n)
        ]


@dataclass
class FakeIngest:
    stored: dict[str, str] = field(default_factory=dict)
    reorgs: list[int] = field(default_factory=list)
    heartbeats: list[int] = field(default_factory=list)
    checkpoint_at: Checkpoint | None = None

    async def checkpoint(self, chain_id: int) -> Checkpoint | None:
        return self.checkpoint_at

    async def post_events(self, events: Sequence[dict[str, Any]]) -> tuple[int, int]:
        for e in events:
            self.stored[f"{e['block_number']}-{e['log_index']}"] = e["block_hash"]
        return len(events), 0

    async def heartbeat(
        self, chain_id: int, block_number: int, block_hash: str, timestamp: int
    ) -> None:
        self.heartbeats.append(block_number)

    async def reorg(self, chain_id: int, from_block: int, reason: str) -> list[str]:
        self.reorgs.append(from_block)
        return []


def follower(node: FakeNode, ingest: FakeIngest, **chain: Any) -> Follower:
    async def no_wait(_seconds: float) -> None:
        return None

    config = ChainConfig.model_validate(
        {
            "chain_id": CHAIN,
            "rpc_url": "http://node.invalid",
            "reputation_registry": REPUTATION,
            "confirmations": 10,
        }
        | chain
    )
    return Follower(
        config,
        rpc=node,  # type: ignore[arg-type]
        ingest=ingest,  # type: ignore[arg-type]
        metrics=IndexerMetrics.create(new_registry(), (CHAIN,)),
        heartbeat_interval=0,
        sleep=no_wait,
    )


async def caught_up(f: Follower) -> None:
    for _ in range(1000):
        if await f.step():
            return
    raise AssertionError("never caught up")


async def test_a_node_behind_its_provider_neither_loses_events_nor_fakes_a_reorg() -> None:
    node = FakeNode(height=100, events_at={40, 98, 100})
    ingest = FakeIngest()
    f = follower(node, ingest)
    await f.resume()
    await caught_up(f)
    assert sorted(ingest.stored) == ["100-0", "40-0", "98-0"]
    node.lag = 2  # null for blocks 99 and 100 now: behind, not replaced
    await f.step()
    await f.step()
    assert ingest.reorgs == []
    node.lag = 0
    node.log_lag = 3
    node.height = 103
    node.events_at.add(103)
    # a range query served by a node whose log index trails: by-hash reads near the head
    await caught_up(f)
    assert "103-0" in ingest.stored
    assert ingest.reorgs == []


async def test_a_shallow_reorg_at_the_head_is_announced_from_its_fork() -> None:
    node = FakeNode(height=500, events_at={499})
    ingest = FakeIngest()
    f = follower(node, ingest, max_block_range=1000)
    await f.resume()
    await caught_up(f)
    node.branch.update({498: "b", 499: "b", 500: "b", 501: "b"})  # 498.. replaced
    node.events_at = {498, 501}  # the feedback of 499 moved to 498 on the new branch
    node.height = 501
    await caught_up(f)
    assert ingest.reorgs == [498]
    assert ingest.stored["499-0"] == digest(499, "a")  # the replaced branch's, released
    assert ingest.stored["498-0"] == node.hash_of(498)  # read again from the fork
    assert ingest.stored["501-0"] == node.hash_of(501)


async def test_a_checkpoint_without_a_hash_resumes_there_without_announcing() -> None:
    node = FakeNode(height=60, events_at={55})
    ingest = FakeIngest(checkpoint_at=Checkpoint(50, ""))
    f = follower(node, ingest)
    assert await f.resume() == 50
    await caught_up(f)
    assert ingest.reorgs == []
    assert list(ingest.stored) == ["55-0"]


async def test_a_replaced_checkpoint_announces_the_window_before_it() -> None:
    node = FakeNode(height=60)
    ingest = FakeIngest(checkpoint_at=Checkpoint(50, digest("gone")))
    f = follower(node, ingest)
    assert await f.resume() == 40
    assert ingest.reorgs == [40]


async def test_an_endpoint_of_another_chain_is_refused() -> None:
    node = FakeNode(height=10, chain_id_served=1)
    with pytest.raises(WrongChainError, match="serves chain 1"):
        await follower(node, FakeIngest()).resume()


def test_the_fake_log_decodes_as_a_registry_event() -> None:
    entry = FakeNode(height=1, events_at={1}).logs_of(1)[0]
    event = event_from_log(
        entry, chain_id=CHAIN, registry=Registry.reputation, timestamp=1_760_000_000
    )
    assert event is not None
    assert event["event_type"] == "FeedbackRevoked"


async def test_a_log_that_does_not_decode_is_skipped_and_counted_not_blocking_its_chain() -> None:
    node = FakeNode(height=40, events_at={20, 30}, bad_at={20, 25})
    ingest = FakeIngest()
    f = follower(node, ingest)
    await f.resume()
    await caught_up(f)
    assert sorted(ingest.stored) == ["20-0", "30-0"]
    skipped = f.metrics.skipped.labels(str(CHAIN), "undecodable")._value.get()
    assert skipped == 2
