"""Ingest benchmark: accepted events/s for batch and single-event posting, request
latency, relay drain time, and the ratio to a raw asyncpg COPY of the same rows
measured in the same run.

    python -m tools.bench_ingest [--events 100000] [--single 5000]

Needs PostgreSQL and Kafka (make bench-ingest starts them). Runs the real
ingest process against a scratch database and topic; prints the figures and
writes them to bench-results/ingest-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from shared.contract.event_rows import (
    EVENT_COLUMNS,
    event_row,
)
from shared.contract.events import (
    parse_events,
)
from shared.platform.entrypoint import cli_parser
from tools.benchdb import scratch_database, scratch_topic
from tools.benchkit import bench_py_args, pct, save, service, stack
from tools.eventgen import stream, take


async def wait_ready(base: str, proc: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"ingest exited with {proc.returncode}")
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("ingest not ready")


async def post_all(
    base: str, token: str, bodies: list[Any], concurrency: int
) -> tuple[float, list[float]]:
    """Post every body with ``concurrency`` workers; (seconds, per-request latencies)."""
    latencies: list[float] = []
    queue = list(reversed(bodies))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                async with session.post(f"{base}/v1/events", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"ingest answered {resp.status}")
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


async def drain_seconds(url: str, topic: str, within: float = 120) -> float:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < within:
            if await conn.fetchval("SELECT count(*) FROM event_outbox WHERE topic=$1", topic) == 0:
                return time.perf_counter() - started
            await asyncio.sleep(0.02)
        return float("inf")
    finally:
        await conn.close()


async def raw_copy(admin_url: str, rows: list[tuple[object, ...]], chunk: int) -> float:
    """A raw asyncpg COPY of the same rows into a fresh events table."""
    async with scratch_database(admin_url, "bench_raw") as url:
        conn = await asyncpg.connect(url)
        try:
            started = time.perf_counter()
            for i in range(0, len(rows), chunk):
                await conn.copy_records_to_table(
                    "events", records=rows[i : i + chunk], columns=list(EVENT_COLUMNS)
                )
            return time.perf_counter() - started
        finally:
            await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url, bootstrap = stack()
    token = os.environ.get("INGEST_TOKENS", "dev-indexer-token").split(",")[0]
    rng = random.Random(42)
    batch_events = take(stream(rng, chain_id=8453), args.events)
    single_events = take(stream(rng, chain_id=84532), args.single)
    parsed, errors = parse_events(list(batch_events))
    assert not errors, errors[:3]
    rows = [event_row(e) for e in parsed]
    batch_bodies = [
        json.dumps(batch_events[i : i + args.batch]).encode()
        for i in range(0, len(batch_events), args.batch)
    ]
    single_bodies = [json.dumps(e).encode() for e in single_events]

    async with scratch_database(admin_url) as url, scratch_topic(bootstrap) as topic:
        port = 18081
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "EVENTS_TOPIC": topic,
            "HTTP_PORT": str(port),
            "OPS_PORT": "0",
            "LOG_LEVEL": "WARNING",
            # Periodic maintenance (view refreshes over the events) is not intake.
            "MAINTENANCE_ENABLED": "false",
        }
        # Popen only forks: nothing here blocks the loop for long.
        with service("ingest", env, py_args=bench_py_args(), stop_within=15) as ingest:
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base, ingest.proc)
            print(  # noqa: T201
                f"[bench-ingest] batch phase: {args.events} events, batches of {args.batch}"
            )
            batch_s, batch_lat = await post_all(base, token, batch_bodies, args.concurrency)
            batch_drain = await drain_seconds(url, topic)
            print(f"[bench-ingest] single phase: {args.single} events, one per request")  # noqa: T201
            single_s, single_lat = await post_all(base, token, single_bodies, 32)
            single_drain = await drain_seconds(url, topic)
    print("[bench-ingest] raw COPY baseline of the same rows")  # noqa: T201
    raw_s = await raw_copy(admin_url, rows, chunk=args.batch)
    batch_rate = args.events / batch_s
    raw_rate = len(rows) / raw_s
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "events_batched": args.events,
        "batch_size": args.batch,
        "batch_concurrency": args.concurrency,
        "batched_events_per_s": round(batch_rate),
        "batched_request_p50_ms": round(pct(batch_lat, 0.5) * 1000, 1),
        "batched_request_p99_ms": round(pct(batch_lat, 0.99) * 1000, 1),
        "single_events_per_s": round(args.single / single_s),
        "single_request_p50_ms": round(pct(single_lat, 0.5) * 1000, 2),
        "single_request_p99_ms": round(pct(single_lat, 0.99) * 1000, 2),
        "single_request_mean_ms": round(statistics.mean(single_lat) * 1000, 2),
        "outbox_drain_after_batched_s": round(batch_drain, 3),
        "outbox_drain_after_single_s": round(single_drain, 3),
        "raw_copy_events_per_s": round(raw_rate),
        "batched_to_raw_copy_ratio": round(batch_rate / raw_rate, 3),
        "target_ratio": 0.30,
        "target_drain_s": 1.0,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.bench_ingest", __doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events of the batch phase")
    parser.add_argument(
        "--single", type=int, default=5_000, help="events of the single phase, one per request"
    )
    parser.add_argument("--batch", type=int, default=1000, help="events per batch request")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="batch requests in flight at once"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    path = save("ingest", result)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")  # noqa: T201
    print(f"[bench-ingest] written to {path}")  # noqa: T201


if __name__ == "__main__":
    main()
