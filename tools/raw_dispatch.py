"""The least a dispatcher can do, as a baseline for ``make bench-dispatcher``: consume
jobs from Kafka, POST each to its URL, record each outcome in PostgreSQL, commit the
offsets of what was recorded. Nothing else: no models, no outbound checks, no
templates, no retries, no metrics.

    python -m tools.raw_dispatch --bootstrap HOST:PORT --topic T --database URL --jobs N

Written for speed, not to be run in production: the consumer fills a queue, a fixed
number of workers POST (as many as the dispatcher's per-destination concurrency), a
recorder COPYs the outcomes every few milliseconds and then commits, per partition,
the offsets below the first one not yet recorded (at least once, as the dispatcher).
It exits once ``--jobs`` outcomes are recorded, printing one JSON line: the jobs
recorded, the POSTs made (a few more: those in flight at the end) and how many
failed, the seconds from the first POST to the last record, and its CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from collections import deque

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.platform.entrypoint import cli_parser
from shared.platform.loop import new_event_loop
from shared.platform.stream import FETCH_MAX_WAIT_MS

TABLE = "raw_dispatch_results"
Item = tuple[TopicPartition, int, bytes]


class Offsets:
    """Per partition, the offsets consumed in order and which of them are recorded: the
    offset to commit is the first one not yet recorded."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[int]] = {}
        self._recorded: dict[TopicPartition, set[int]] = {}

    def consumed(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, deque()).append(offset)
        self._recorded.setdefault(tp, set())

    def recorded(self, tp: TopicPartition, offset: int) -> None:
        self._recorded[tp].add(offset)

    def committable(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for tp, pending in self._pending.items():
            done = self._recorded[tp]
            last = None
            while pending and pending[0] in done:
                last = pending.popleft()
                done.discard(last)
            if last is not None:
                out[tp] = last + 1
        return out


class RawDispatch:
    def __init__(self, args: argparse.Namespace, pool: asyncpg.Pool) -> None:
        self.args = args
        self.pool = pool
        self.consumer = AIOKafkaConsumer(
            args.topic,
            bootstrap_servers=args.bootstrap,
            group_id=f"raw-dispatch-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=2 * args.batch)
        self.results: list[tuple[TopicPartition, int, str, int, float]] = []
        self.offsets = Offsets()
        self.recorded = 0
        self.first_post: float | None = None
        self.posts = 0
        self.failed = 0
        self.finished = asyncio.Event()

    async def consume(self) -> None:
        while not self.finished.is_set():
            batch = await self.consumer.getmany(timeout_ms=100, max_records=self.args.batch)
            for tp, records in batch.items():
                for r in records:
                    self.offsets.consumed(tp, r.offset)
                    assert r.value is not None
                    await self.queue.put((tp, r.offset, r.value))

    async def work(self, session: aiohttp.ClientSession) -> None:
        while True:
            tp, offset, value = await self.queue.get()
            job = orjson.loads(value)
            body = orjson.dumps(
                {
                    "job_id": job["job_id"],
                    "trigger_id": job["trigger_id"],
                    "event": job["event"],
                    "explain": job["explain"],
                }
            )
            started = time.perf_counter()
            if self.first_post is None:
                self.first_post = started
            self.posts += 1
            status = -1  # a failed exchange is recorded too: a worker never dies
            try:
                async with session.post(
                    job["config"]["url"],
                    data=body,
                    headers={"Content-Type": "application/json", "Idempotency-Key": job["job_id"]},
                ) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                self.failed += 1
            ms = (time.perf_counter() - started) * 1e3
            self.results.append((tp, offset, job["job_id"], status, ms))

    async def record(self) -> None:
        while self.recorded < self.args.jobs:
            await asyncio.sleep(0.005)
            if not self.results:
                continue
            done = self.results[:]
            del self.results[:]
            async with self.pool.acquire() as conn:
                await conn.copy_records_to_table(
                    TABLE, records=[r[2:] for r in done], columns=["job_id", "status", "ms"]
                )
            for tp, offset, *_ in done:
                self.offsets.recorded(tp, offset)
            commit = self.offsets.committable()
            if commit:
                await self.consumer.commit(commit)
            self.recorded += len(done)
        self.finished.set()

    async def run(self) -> None:
        await self.consumer.start()
        try:
            connector = aiohttp.TCPConnector(limit=self.args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                tasks = [asyncio.create_task(self.consume())]
                tasks += [
                    asyncio.create_task(self.work(session)) for _ in range(self.args.concurrency)
                ]
                try:
                    await self.record()
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.consumer.stop()


async def run(args: argparse.Namespace) -> dict[str, float]:
    pool = await asyncpg.create_pool(args.database, min_size=1, max_size=2)
    try:
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (job_id text, status int, ms real,"
            " recorded_at timestamptz DEFAULT now())"
        )
        raw = RawDispatch(args, pool)
        before = resource.getrusage(resource.RUSAGE_SELF)
        await raw.run()
        ended = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await pool.close()
    assert raw.first_post is not None
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "jobs": raw.recorded,
        "posts": raw.posts,
        "failed": raw.failed,
        "seconds": ended - raw.first_post,
        "cpu_seconds": cpu,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.raw_dispatch", __doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka's bootstrap servers")
    parser.add_argument("--topic", required=True, help="the topic of the jobs, read from its start")
    parser.add_argument(
        "--database", required=True, help="PostgreSQL URL; the outcomes go into " + TABLE
    )
    parser.add_argument("--jobs", type=int, required=True, help="outcomes to record, then exit")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="POSTs at a time (default: %(default)s)"
    )
    parser.add_argument(
        "--batch", type=int, default=200, help="records per fetch (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # the services' event loop (uvloop), as the dispatcher measured beside it
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        print(json.dumps(runner.run(run(args))), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
