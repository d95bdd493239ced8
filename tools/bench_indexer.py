"""Indexer backfill benchmark: blocks/s and events/s end to end (a local chain's
history read by ``python -m services.indexer backfill``, decoded, posted to a real
ingest and committed), against a raw ``eth_getLogs`` read of the same range in the
same run (and that read plus the headers of the blocks with logs, the least an
indexer needs for events' timestamps).

    python -m tools.bench_indexer [--blocks 20000] [--events 10000] [--range 2000]

Needs PostgreSQL and Kafka (make bench-indexer starts them) and the local EVM
(make evm-deps). Runs Hardhat's node, the real ingest process against a scratch
database and topic, and the backfill command; prints the figures and writes them
to bench-results/indexer-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import orjson

from shared.platform.entrypoint import cli_parser
from tools.bench_ingest import drain_seconds, wait_ready
from tools.benchdb import scratch_database, scratch_topic
from tools.benchkit import ROOT, save, service, stack
from tools.evmnode import CHAIN_ID, Chain, HardhatNode
from tools.localnet import free_port

PER_TX = 50


def say(text: str) -> None:
    print(f"[bench-indexer] {text}", flush=True)  # noqa: T201 (a benchmark's report)


async def build_history(evm: Chain, blocks: int, events: int) -> tuple[dict[str, str], int, int]:
    """The registries deployed, then ``events`` feedback events spread over ``blocks``
    blocks; (addresses, first block, last block)."""
    identity = await evm.deploy("IdentityRegistryMock")
    first = await evm.head()
    reputation = await evm.deploy("ReputationRegistryMock")
    await evm.transact(identity.functions.register("ipfs://bench", [], []))
    transactions = max(1, events // PER_TX)
    gap = max(1, blocks // transactions)
    client = evm.accounts[1].key
    for n in range(transactions):
        await evm.mine(gap - 1)
        await evm.transact(reputation.functions.bulkFeedback(0, PER_TX, n + 1), sender_key=client)
        if (n + 1) % 50 == 0:
            say(f"history: {n + 1}/{transactions} transactions, block {await evm.head()}")
    last = await evm.head()
    addresses = {
        "identity_registry": identity.address.lower(),
        "reputation_registry": reputation.address.lower(),
    }
    return addresses, first, last


async def raw_read(
    url: str, addresses: list[str], first: int, last: int, step: int, *, headers: bool
) -> tuple[float, int]:
    """eth_getLogs over the range in ``step``-block calls (and, with ``headers``, the
    headers of the blocks with logs, batched by 100): (seconds, logs)."""
    count = 0
    async with aiohttp.ClientSession() as session:

        async def rpc(body: Any) -> Any:
            async with session.post(url, data=orjson.dumps(body)) as response:
                return orjson.loads(await response.read())

        started = time.perf_counter()
        for low in range(first, last + 1, step):
            high = min(last, low + step - 1)
            query = {"address": addresses, "fromBlock": hex(low), "toBlock": hex(high)}
            answer = await rpc(
                {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [query]}
            )
            logs = answer["result"]
            count += len(logs)
            if headers:
                numbers = sorted({int(entry["blockNumber"], 16) for entry in logs})
                for at in range(0, len(numbers), 100):
                    batch = [
                        {
                            "jsonrpc": "2.0",
                            "id": i,
                            "method": "eth_getBlockByNumber",
                            "params": [hex(n), False],
                        }
                        for i, n in enumerate(numbers[at : at + 100])
                    ]
                    await rpc(batch)
        return time.perf_counter() - started, count


async def backfill(
    env: dict[str, str], last: int
) -> tuple[float, dict[str, Any], subprocess.CompletedProcess[bytes]]:
    """The backfill command to ``last``: (wall seconds, its "backfill done" line)."""
    started = time.perf_counter()
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.indexer",
            "backfill",
            "--chain-id",
            str(CHAIN_ID),
            "--to",
            str(last),
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=1800,
        check=False,
    )
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {}
    for line in done.stdout.splitlines() + done.stderr.splitlines():
        if b'"backfill done"' in line:
            summary = orjson.loads(line)
    return seconds, summary, done


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url, bootstrap = stack()
    token = os.environ.get("INGEST_TOKENS", "dev-indexer-token").split(",")[0]
    with HardhatNode() as node:
        async with Chain(node.url) as evm:
            say(f"building a history of {args.blocks} blocks with {args.events} events")
            t0 = time.perf_counter()
            addresses, first, last = await build_history(evm, args.blocks, args.events)
            say(f"history built in {time.perf_counter() - t0:.1f} s: blocks {first}..{last}")
        blocks = last - first + 1
        say(f"raw eth_getLogs of blocks {first}..{last} in {args.range}-block calls")
        raw_s, raw_logs = await raw_read(
            node.url, list(addresses.values()), first, last, args.range, headers=False
        )
        raw_h_s, _ = await raw_read(
            node.url, list(addresses.values()), first, last, args.range, headers=True
        )
        async with (
            scratch_database(admin_url, "bench_indexer") as url,
            scratch_topic(bootstrap) as topic,
        ):
            port = free_port()
            ingest_env = {
                **os.environ,
                "DATABASE_URL": url,
                "EVENTS_TOPIC": topic,
                "HTTP_PORT": str(port),
                "LOG_LEVEL": "WARNING",
                "MAINTENANCE_ENABLED": "false",
            }
            with service("ingest", ingest_env, stop_within=15) as ingest:
                base = f"http://127.0.0.1:{port}"
                await wait_ready(base, ingest.proc)
                chain = {
                    "chain_id": CHAIN_ID,
                    "rpc_url": node.url,
                    "start_block": first,
                    "confirmations": args.confirmations,
                    "max_block_range": args.range,
                    **addresses,
                }
                env = {
                    **os.environ,
                    "DATABASE_URL": url,
                    "INGEST_URL": base,
                    "INGEST_TOKEN": token,
                    "INDEXER_CHAINS": orjson.dumps([chain]).decode(),
                    "LOG_LEVEL": "INFO",
                }
                say("backfill through ingest (python -m services.indexer backfill)")
                wall_s, summary, done = await backfill(env, last)
                if done.returncode != 0:
                    raise SystemExit(
                        f"backfill failed:\n{(done.stdout + done.stderr).decode()[-3000:]}"
                    )
                drain = await drain_seconds(url, topic)
                conn = await asyncpg.connect(url)
                try:
                    stored = await conn.fetchval("SELECT count(*) FROM events")
                finally:
                    await conn.close()
    if stored != raw_logs:
        raise SystemExit(f"ingest stored {stored} events, the chain has {raw_logs}")
    inner_s = float(summary.get("seconds", wall_s))
    return {
        "blocks": blocks,
        "events": raw_logs,
        "range": args.range,
        "confirmations": args.confirmations,
        "raw_getlogs": {
            "seconds": raw_s,
            "blocks_per_s": blocks / raw_s,
            "events_per_s": raw_logs / raw_s,
        },
        "raw_getlogs_and_headers": {
            "seconds": raw_h_s,
            "blocks_per_s": blocks / raw_h_s,
            "events_per_s": raw_logs / raw_h_s,
        },
        "backfill": {
            "seconds": inner_s,
            "wall_seconds_with_start": wall_s,
            "blocks_per_s": blocks / inner_s,
            "events_per_s": raw_logs / inner_s,
            "relay_drain_seconds": drain,
        },
        "ratio_to_raw_getlogs": raw_s / inner_s,
        "ratio_to_raw_getlogs_and_headers": raw_h_s / inner_s,
    }


def report(r: dict[str, Any]) -> None:
    say(f"{r['blocks']:,} blocks, {r['events']:,} events, ranges of {r['range']} blocks")
    for name in ("raw_getlogs", "raw_getlogs_and_headers", "backfill"):
        x = r[name]
        rates = f"{x['blocks_per_s']:>10,.0f} blocks/s  {x['events_per_s']:>8,.0f} events/s"
        say(f"  {name:<24} {x['seconds']:7.2f} s  {rates}")
    say(f"  backfill / raw eth_getLogs:             {r['ratio_to_raw_getlogs']:.2f}")
    say(f"  backfill / raw eth_getLogs + headers:   {r['ratio_to_raw_getlogs_and_headers']:.2f}")
    say(f"  relay drain after the backfill:         {r['backfill']['relay_drain_seconds']:.2f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.bench_indexer", __doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=20_000, help="blocks of history")
    parser.add_argument("--events", type=int, default=10_000, help="feedback events in it")
    parser.add_argument("--range", type=int, default=2000, help="blocks per eth_getLogs")
    parser.add_argument(
        "--confirmations", type=int, default=64, help="the indexer's confirmation window"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    report(result)
    say(f"saved {save('indexer', result)}")


if __name__ == "__main__":
    main()
