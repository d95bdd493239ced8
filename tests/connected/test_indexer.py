"""The indexer against a real EVM (Hardhat's node, tools.evmnode) and a real ingest:
every event of every layout stored once, a real reorg, a provider that fails,
kill -9 mid-backfill over 10,000 blocks, and two replicas of one chain."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from services.indexer.metrics import IndexerMetrics
from shared.contract.event_fields import NUL_STAND_IN
from shared.platform.metrics import new_registry
from tests.conftest import StartService
from tests.evm_fixtures import evm, evm_node  # noqa: F401 (fixtures)
from tests.indexerutil import (
    DATA_URI,
    LONG_TAG,
    ZERO,
    chain_config,
    deploy,
    drive_every_event,
    follow_until_caught_up,
    indexer_env,
    registry_logs,
    stored,
)
from tests.ingestutil import Client
from tests.matcherutil import EMA_BELOW_40, Matching, ema_of, insert_trigger
from tests.procs import ServiceProcess
from tests.rpcproxy import FaultPlan, rpc_proxy
from tools.evmnode import CHAIN_ID, Chain

pytestmark = [pytest.mark.db, pytest.mark.kafka, pytest.mark.xdist_group("evm")]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def base(ingest: Client) -> str:
    return str(ingest.make_url("")).rstrip("/")


async def test_every_registry_event_of_every_layout_is_stored_once_as_the_chain_has_it(
    evm: Chain,  # noqa: F811 (fixture)
    evm_node: object,  # noqa: F811 (fixture)
    ingest: Client,
    db: asyncpg.Connection,
    session: aiohttp.ClientSession,
) -> None:
    registries = await deploy(evm)
    receipts = await drive_every_event(evm, registries)
    expected = registry_logs(receipts, registries)
    config = chain_config(evm.url, registries)
    await follow_until_caught_up(session, base(ingest), config)

    rows = await stored(db)
    assert {(r["block_number"], r["log_index"]) for r in rows} == expected
    assert len(rows) == len(expected), "an event was stored twice"
    by_type: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_type.setdefault(row["event_type"], []).append(row)
    assert sorted(by_type) == sorted(
        [
            "FeedbackRevoked",
            "MetadataSet",
            "MetadataUpdate",
            "NewFeedback",
            "Registered",
            "ResponseAppended",
            "Transfer",
            "URIUpdated",
            "ValidationRequest",
            "ValidationResponse",
        ]
    )
    registered = by_type["Registered"]
    assert [r["token_uri"] for r in registered] == ["ipfs://agent-0", DATA_URI]
    assert {r["token_uri"] for r in by_type["URIUpdated"]} == {
        "https://agent.example/0.json",
        "ipfs://old-layout",
    }
    metadata = {r["metadata_key"]: r["metadata_value"] for r in by_type["MetadataSet"]}
    assert metadata["name"] == "0x" + b"Ada".hex()
    assert metadata["role"] == "0x" + b"oracle".hex()  # the v1.1 string value
    assert metadata["k" * 1025] == "0x0001"
    assert metadata["agentWallet"] in ("0x", "0x" + evm.accounts[0].address[2:].lower())
    transfer = by_type["Transfer"][-1]
    assert (transfer["agent_id"], transfer["owner"]) == (1, evm.accounts[1].address.lower())

    feedback = by_type["NewFeedback"]
    current = [f for f in feedback if f["value_decimals"] is not None]
    assert current[0]["value"] == Decimal(10**38 - 1)  # int128, exact
    assert current[0]["score"] == Decimal("99999999999999999999.999999999999999999")
    assert current[0]["tag1"] == LONG_TAG
    assert current[0]["endpoint"] == f"https://agent.example/{NUL_STAND_IN}mcp"
    assert (current[1]["value"], current[1]["score"]) == (Decimal(-9977), Decimal("-99.77"))
    legacy = {
        f["score"]: f
        for f in feedback
        if f["value_decimals"] is None or f["score"] in (87, 50, 60, 70)
    }
    assert (legacy[87]["tag1"], legacy[87]["tag2"]) == ("starred", "day")  # v1.0 bytes32 tags
    assert legacy[50]["tag1"] is None
    assert legacy[50]["tag2"] == "week"
    assert legacy[60]["feedback_index"] == 3
    assert legacy[60]["endpoint"] == "https://e"
    assert (legacy[70]["tag1"], legacy[70]["feedback_index"]) == ("uptime", 4)
    responses = {r["response"]: r["tag"] for r in by_type["ValidationResponse"]}
    assert responses == {100: "final", 40: "soft"}

    # A second indexer resuming from ingest's checkpoint posts nothing again.
    again = await follow_until_caught_up(session, base(ingest), config)
    assert again.state is not None
    assert again.state.next_block == await evm.head() + 1
    assert len(await stored(db)) == len(rows)


async def canonical_hashes(node: Chain, numbers: set[int]) -> dict[int, str]:
    return {n: (await node.block(n))["hash"].to_0x_hex() for n in numbers}


async def test_a_reorg_on_the_node_leaves_only_the_canonical_events_claimed(
    evm: Chain,  # noqa: F811 (fixture)
    ingest: Client,
    db: asyncpg.Connection,
    session: aiohttp.ClientSession,
) -> None:
    registries = await deploy(evm)
    rep = registries.reputation.functions
    client = evm.accounts[1].key
    await evm.transact(registries.identity.functions.register("ipfs://a", [], []))
    config = chain_config(evm.url, registries)
    follower = await follow_until_caught_up(session, base(ingest), config)
    fork = await evm.snapshot()
    replaced = await evm.transact(
        rep.giveFeedback(0, 10, 0, "x", "", "", "", b"\0" * 32), sender_key=client
    )
    await evm.mine(2)
    while not await follower.step():
        pass
    assert len(await stored(db)) == 4  # Transfer, Registered, agentWallet, feedback

    await evm.revert(fork)  # the other branch: another feedback in the same block, and longer
    await evm.mine_block(int((await evm.block("latest"))["timestamp"]) + 100)
    canonical = await evm.transact(
        rep.giveFeedback(0, 90, 0, "y", "", "", "", b"\0" * 32), sender_key=client
    )
    await evm.mine(4)
    assert (
        canonical["blockNumber"] != replaced["blockNumber"]
        or canonical["blockHash"] != replaced["blockHash"]
    )
    while not await follower.step():
        pass
    while not await follower.step():  # at the head: the tip check finds the fork
        pass

    reorgs = await db.fetch("SELECT from_block FROM reorgs WHERE chain_id = $1", CHAIN_ID)
    assert [r["from_block"] for r in reorgs] == [replaced["blockNumber"]]
    rows = await stored(db)
    truth = await canonical_hashes(evm, {r["block_number"] for r in rows})
    claimed = {r["id"] for r in await db.fetch("SELECT id FROM event_ids")}
    live = [r for r in rows if r["block_hash"] == truth[r["block_number"]]]
    stale = [r for r in rows if r["block_hash"] != truth[r["block_number"]]]
    assert [r["value"] for r in live if r["event_type"] == "NewFeedback"] == [Decimal(90)]
    assert [r["value"] for r in stale] == [Decimal(10)]
    assert {r["id"] for r in live} == claimed


async def test_a_failing_rate_limited_and_slow_provider_loses_nothing(
    evm: Chain,  # noqa: F811 (fixture)
    ingest: Client,
    db: asyncpg.Connection,
    session: aiohttp.ClientSession,
) -> None:
    registries = await deploy(evm)
    receipts = await drive_every_event(evm, registries)
    for _ in range(5):  # ranges over more blocks than the proxy lets through
        await evm.mine(40)
        receipts.append(
            await evm.transact(
                registries.reputation.functions.bulkFeedback(0, 20, 7),
                sender_key=evm.accounts[1].key,
            )
        )
    expected = registry_logs(receipts, registries)
    plan = FaultPlan(rate=0.25, max_range=50, hang_seconds=1.5)
    metrics = IndexerMetrics.create(new_registry(), (CHAIN_ID,))

    async def quick(_seconds: float) -> None:
        await asyncio.sleep(0.01)

    async with rpc_proxy(evm.url, plan) as proxied:
        config = chain_config(proxied, registries, max_block_range=400)
        await asyncio.wait_for(
            follow_until_caught_up(
                session, base(ingest), config, rpc_timeout=0.5, metrics=metrics, sleep=quick
            ),
            120,
        )
    rows = await stored(db)
    assert {(r["block_number"], r["log_index"]) for r in rows} == expected
    assert len(rows) == len(expected)
    assert set(plan.served) == {"http_500", "hang", "http_429", "rate_error", "too_many_results"}
    errors = {
        kind: metrics.rpc_errors.labels(str(CHAIN_ID), kind)._value.get()
        for kind in ("too_large", "rate_limited", "timeout", "server")
    }
    assert all(count > 0 for count in errors.values()), errors


async def metric(proc: ServiceProcess, name: str) -> float:
    text = (await asyncio.to_thread(proc.wait_http, "/metrics")).decode()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not served")


async def wait_for_rows(db: asyncpg.Connection, count: int, *, within: float) -> int:
    deadline = time.monotonic() + within
    found = 0
    while time.monotonic() < deadline:
        found = await db.fetchval("SELECT count(*) FROM events WHERE chain_id = $1", CHAIN_ID)
        if found >= count:
            return int(found)
        await asyncio.sleep(0.2)
    return int(found)


@pytest.mark.slow
async def test_a_backfill_of_10000_blocks_killed_mid_way_resumes_and_stores_every_event_once(
    evm: Chain,  # noqa: F811 (fixture)
    ingest: Client,
    db: asyncpg.Connection,
    env: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    registries = await deploy(evm)
    await evm.transact(registries.identity.functions.register("ipfs://a", [], []))
    receipts = []
    while await evm.head() < registries.deployed_at + 10_000:
        await evm.mine(240)
        receipts.append(
            await evm.transact(
                registries.reputation.functions.bulkFeedback(0, 50, 1),
                sender_key=evm.accounts[1].key,
            )
        )
    expected = registry_logs(receipts, registries)
    assert len(expected) >= 2000
    config = chain_config(evm.url, registries, max_block_range=100)
    proc_env = {
        **os.environ,
        **indexer_env(env, database_url=database_url, ingest_url=base(ingest), chain=config),
    }
    log_path = tmp_path / "backfill.log"
    command = [
        "-m",
        "services.indexer",
        "backfill",
        "--chain-id",
        str(CHAIN_ID),
        "--progress",
    ]
    with log_path.open("wb") as out:
        first = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=proc_env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
        try:
            stored_before = await wait_for_rows(db, 600, within=60)
            assert stored_before >= 600, log_path.read_text()
            os.kill(first.pid, signal.SIGKILL)  # mid-way, by its own pid
            await asyncio.wait_for(first.wait(), 10)
        finally:
            if first.returncode is None:
                first.kill()
    partial = await db.fetchval("SELECT count(*) FROM events WHERE chain_id = $1", CHAIN_ID)
    assert partial < len(expected) + 3, "the first run was not cut short"

    second = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        env=proc_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    raw, _ = await asyncio.wait_for(second.communicate(), 180)
    output = raw.decode(errors="replace")
    assert second.returncode == 0, output[-3000:]
    rows = await stored(db)
    feedback = {
        (r["block_number"], r["log_index"]) for r in rows if r["event_type"] == "NewFeedback"
    }
    assert feedback == expected
    assert len(rows) == len(expected) + 3  # and the registration's three
    assert "blocks/s" in output
    assert "ETA" in output
    assert "backfill done" in output


@pytest.mark.slow
async def test_two_replicas_follow_a_chain_one_at_a_time_and_hand_over_on_kill(
    evm: Chain,  # noqa: F811 (fixture)
    ingest: Client,
    db: asyncpg.Connection,
    env: dict[str, str],
    database_url: str,
    start_service: StartService,
) -> None:
    registries = await deploy(evm)
    config = chain_config(evm.url, registries)
    service_env = indexer_env(env, database_url=database_url, ingest_url=base(ingest), chain=config)
    # In threads: ingest answers from this test's event loop meanwhile.
    replicas = [await asyncio.to_thread(start_service, "indexer", service_env) for _ in range(2)]
    rep = registries.reputation.functions
    client = evm.accounts[1].key
    await evm.transact(registries.identity.functions.register("ipfs://a", [], []))
    for n in range(5):
        await evm.transact(
            rep.giveFeedback(0, n, 0, "a", "", "", "", b"\0" * 32), sender_key=client
        )
    assert await wait_for_rows(db, 8, within=30) == 8
    leaders = [await metric(p, "erc8004_indexer_leader") for p in replicas]
    assert sorted(leaders) == [0.0, 1.0], leaders
    leader = replicas[leaders.index(1.0)]
    standby = replicas[leaders.index(0.0)]
    os.kill(leader.pid, signal.SIGKILL)
    for n in range(5, 10):
        await evm.transact(
            rep.giveFeedback(0, n, 0, "a", "", "", "", b"\0" * 32), sender_key=client
        )
    assert await wait_for_rows(db, 13, within=30) == 13
    assert await metric(standby, "erc8004_indexer_leader") == 1.0
    rows = await stored(db)
    assert len({(r["block_number"], r["log_index"]) for r in rows}) == len(rows) == 13


async def wait_ema(db: asyncpg.Connection, trigger: str, value: Decimal, *, within: float) -> None:
    deadline = time.monotonic() + within
    while (found := await ema_of(db, trigger)) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"EMA {found}, not {value}")
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_triggers_fire_on_chain_made_events_and_a_real_reorg_corrects_their_state(
    evm: Chain,  # noqa: F811 (fixture)
    ingest: Client,
    db: asyncpg.Connection,
    session: aiohttp.ClientSession,
    matcher: Matching,
) -> None:
    """Chain → indexer → ingest → Kafka → matcher, on feedback of both layouts. The
    replaced branch's low feedback fires; the reorg takes it out of the EMA, and the
    canonical branch's feedbacks give the EMA a replay of the canonical chain gives."""
    registries = await deploy(evm)
    rep = registries.reputation.functions
    client = evm.accounts[1].key
    await evm.transact(registries.identity.functions.register("ipfs://a", [], []))
    trigger = await insert_trigger(db, chain_id=CHAIN_ID, conditions=EMA_BELOW_40)
    await asyncio.to_thread(matcher.start)
    await evm.transact(rep.giveFeedback(0, 60, 0, "", "", "", "", ZERO), sender_key=client)
    fork = await evm.snapshot()
    low = await evm.transact(rep.legacyFeedbackV10(0, 10, ZERO, ZERO, "", ZERO), sender_key=client)
    config = chain_config(evm.url, registries)
    follower = await follow_until_caught_up(session, base(ingest), config)
    fired = await matcher.jobs(expect=1)
    assert [j.event.block_hash for j in fired] == [low["blockHash"].to_0x_hex()]
    await wait_ema(db, trigger, Decimal(35), within=30)  # 60, then 10

    await evm.revert(fork)
    await evm.mine_block(int((await evm.block("latest"))["timestamp"]) + 100)
    await evm.transact(rep.giveFeedback(0, 9000, 2, "", "", "", "", ZERO), sender_key=client)
    zero = await evm.transact(rep.legacyFeedbackV11(0, 0, "", "", "", ZERO), sender_key=client)
    while not await follower.step():
        pass
    await follower.step()  # the tip check, had the ranges not seen the fork already
    jobs = await matcher.jobs(expect=2)
    assert [j.event.block_hash for j in jobs] == [
        low["blockHash"].to_0x_hex(),
        zero["blockHash"].to_0x_hex(),
    ]
    await wait_ema(db, trigger, Decimal("37.5"), within=30)  # 60, 90, then 0


@pytest.mark.slow
async def test_two_deployments_on_one_chain_keep_their_agents_apart(
    evm: Chain,  # noqa: F811 (fixture)
    ingest: Client,
    db: asyncpg.Connection,
    session: aiohttp.ClientSession,
    matcher: Matching,
) -> None:
    """Issue 15: agent 0 of an old and of a new deployment on one chain are two agents:
    each event names its contract and its agent's Identity registry, an agent-scoped
    EMA keeps a state per registry, and a revocation in one Reputation registry
    leaves the same client's feedback of the same index in the other alone."""
    old, new = await deploy(evm), await deploy(evm)
    client = evm.accounts[1].key
    for r in (old, new):
        await evm.transact(r.identity.functions.register("ipfs://a", [], []))
    ema = [{**EMA_BELOW_40[0], "config": {"alpha": "0.5", "scope": "agent"}}]
    trigger = await insert_trigger(db, chain_id=CHAIN_ID, conditions=ema)
    await asyncio.to_thread(matcher.start)
    feedback = old.reputation.functions.giveFeedback(0, 10, 0, "", "", "", "", ZERO)
    await evm.transact(feedback, sender_key=client)
    feedback = new.reputation.functions.giveFeedback(0, 90, 0, "", "", "", "", ZERO)
    await evm.transact(feedback, sender_key=client)
    await evm.transact(new.reputation.functions.revokeFeedback(0, 1), sender_key=client)
    config = chain_config(evm.url, old, deployments=[new.addresses])
    await follow_until_caught_up(session, base(ingest), config)

    rows = await stored(db)
    for r in (old, new):
        identity = r.identity.address.lower()
        mine = [row for row in rows if row["agent_registry"] == identity]
        assert sorted(row["registry_address"] for row in mine) == sorted(
            [identity] * 3 + [r.reputation.address.lower()] * (1 if r is old else 2)
        )
    old_scope = f"{old.identity.address.lower()}/0"
    new_scope = f"{new.identity.address.lower()}/0"
    jobs = await matcher.jobs(expect=1)
    assert [j.event.agent_registry for j in jobs] == [old.identity.address.lower()]
    deadline = time.monotonic() + 30
    while await ema_of(db, trigger, old_scope) != 10:
        assert time.monotonic() < deadline, "the old deployment's agent has no EMA of 10"
        await asyncio.sleep(0.2)
    evaluated = 0
    while evaluated < 3:  # two feedbacks and the revocation
        assert time.monotonic() < deadline, f"{evaluated} of 3 evaluations"
        evaluated = await db.fetchval("SELECT count(*) FROM trigger_evaluations")
        await asyncio.sleep(0.2)
    assert await ema_of(db, trigger, new_scope) is None  # its only feedback revoked
    assert await ema_of(db, trigger, old_scope) == 10  # the same client and index, kept
