"""Dispatcher benchmark: REST actions/s against a local receiver, and the delay from
a job produced to its request received.

    python -m tools.bench_dispatcher [--jobs 10000] [--rate 500] [--seconds 10]

1. Throughput: ``--jobs`` REST jobs are put on a fresh actions topic, then the real
   dispatcher process starts; actions/s is measured from the first request the
   receiver gets to the last (every job recorded in action_results). Also printed:
   the cores each process kept busy, the dispatcher's CPU per action (all its
   threads) and its event loop's (its main thread's: running, waiting for a core,
   idle), from the first request's arrival to the last; and
   ``ratio_to_raw_post_at_one_full_core``: what the loop's running time per action
   would allow on a core of its own, never idle or waiting, against the same raw
   POSTs.
2. Delay: with the dispatcher running, jobs are produced at ``--rate`` per second
   for ``--seconds``; each job's delay is its request's arrival at the receiver
   minus the moment it was produced (one clock: receiver and producer share this
   process). p50 / p95 / p99 are printed. Then, the dispatcher idle, 20 jobs one
   at a time half a second apart: the delay an idle dispatcher adds.
3. Baselines in the same run: a raw aiokafka produce + consume of the same
   messages, and raw aiohttp POSTs of the same bodies to the same receiver with the
   dispatcher's per-destination concurrency, before the dispatcher starts and right
   after its throughput phase; the ratio is to their mean. After the dispatcher
   stopped, the least a dispatcher can do (tools/raw_dispatch.py, a process of its
   own: consume, POST, record each outcome with COPY, commit) on ``--jobs`` jobs of
   the same topic: its actions/s, its ratio to raw POSTs, and the dispatcher's ratio
   to it (``ratio_to_raw_dispatch``) say how much of the gap to raw POSTs any
   dispatcher that records what it did would keep.

The receiver is an aiohttp server in this process answering 200 at once. Prints the
figures and writes bench-results/dispatcher-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.contract.actions import ActionType
from shared.contract.events import Event
from shared.contract.jobs import ActionJob, job_id
from shared.contract.topics import MAX_MESSAGE_BYTES
from shared.platform.entrypoint import cli_parser
from shared.platform.stream import FETCH_MAX_WAIT_MS
from tools.bench_matcher import peak_rss_mib, raw_consume
from tools.benchdb import scratch_database, scratch_topic
from tools.benchkit import (
    BenchService,
    bench_py_args,
    cpu_seconds,
    cpu_split,
    insert_user,
    main_thread_schedule,
    pct,
    save,
    schedule_split,
    service,
    stack,
)
from tools.eventgen import make_event
from tools.localnet import Receiver, Seen, empty_ok

#: Requests of each raw POST baseline.
RAW_POSTS = 8000


def say(msg: str) -> None:
    print(f"[bench-dispatcher] {msg}", flush=True)  # noqa: T201


def arrivals_receiver(arrivals: dict[str, float]) -> Receiver:
    """Answers 200 at once; the first arrival of each Idempotency-Key (wall clock)
    goes into ``arrivals``, nothing else is kept."""

    def arrived(seen: Seen) -> None:
        key = seen.headers.get("Idempotency-Key")
        if key is not None:
            arrivals.setdefault(key, seen.wall)

    return Receiver(respond=empty_ok, keep=False, on_request=arrived)


async def make_trigger(url: str, hook: str) -> Target:
    config = {"url": hook, "timeout_ms": 5000}
    conn = await asyncpg.connect(url)
    try:
        user = await insert_user(conn, "bench")
        trigger = await conn.fetchval(
            "INSERT INTO triggers (user_id, name, chain_id, registry) "
            "VALUES ($1, 'bench', 8453, 'reputation') RETURNING id",
            user,
        )
        action = await conn.fetchval(
            "INSERT INTO trigger_actions (trigger_id, action_type, config) "
            "VALUES ($1, 'rest', $2::jsonb) RETURNING id",
            trigger,
            json.dumps(config),
        )
    finally:
        await conn.close()
    return Target(user, trigger, action, config)


@dataclass(frozen=True)
class Target:
    user: str
    trigger: str
    action: int
    config: dict[str, Any]


def jobs_for(n: int, offset: int, t: Target) -> list[ActionJob]:
    rng = random.Random(offset)
    now = datetime.now(UTC)
    out = []
    for i in range(offset, offset + n):
        event = Event.model_validate(
            make_event(rng, chain_id=8453, block_number=1_000_000 + i, log_index=i % 50)
        )
        out.append(
            ActionJob(
                job_id=job_id(t.trigger, event.id, t.action),
                trigger_id=t.trigger,
                trigger_name="bench",
                user_id=t.user,
                action_id=t.action,
                action_type=ActionType.rest,
                config=t.config,
                event=event,
                explain={"bench": True},
                created_at=now,
            )
        )
    return out


async def produce_all(bootstrap: str, topic: str, jobs: list[ActionJob]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, j.dump(), key=j.trigger_id.encode()) for j in jobs]
        await asyncio.gather(*futures)
        return len(jobs) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_posts(hook: str, bodies: list[bytes], concurrency: int) -> float:
    queue = list(reversed(bodies))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                async with session.post(
                    hook, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - started)


async def raw_dispatch(
    bootstrap: str, topic: str, url: str, jobs: int, concurrency: int
) -> dict[str, float]:
    """tools/raw_dispatch.py in a process of its own (as the dispatcher runs), on
    ``jobs`` of the topic's jobs from its beginning: the least a dispatcher can do."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.raw_dispatch", "--bootstrap", bootstrap, "--topic", topic,
        "--database", url, "--jobs", str(jobs), "--concurrency", str(concurrency),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SystemExit("tools.raw_dispatch did not finish within 600 s") from None
    if proc.returncode != 0:
        raise SystemExit(f"tools.raw_dispatch exited with {proc.returncode}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def count_success(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM action_results WHERE status = 'success'")
        )
    finally:
        await conn.close()


async def outcome_counts(url: str) -> dict[str, float]:
    """Rows of action_results by status, and the requests the receiver got per job."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM action_results GROUP BY 1")
        errors = await conn.fetch(
            "SELECT error_message, count(*) AS n FROM action_results "
            "WHERE error_message IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 3"
        )
    finally:
        await conn.close()
    for row in errors:
        say(f"error seen {row['n']} times: {row['error_message']}")
    return {f"rows_{r['status']}": float(r["n"]) for r in rows}


@dataclass(frozen=True)
class Throughput:
    """How the machine was shared while the dispatcher's requests arrived: from the
    first arrival seen to the last job's (the window actions/s is measured over;
    the rows still being written after it are waited for, not counted)."""

    #: cores each group kept busy (:func:`cpu_split`)
    cores: dict[str, float]
    #: the dispatcher's main thread (its event loop): running, waiting for a core,
    #: idle (:func:`schedule_split`); empty where the kernel does not say
    loop: dict[str, float]
    #: requests that arrived within the window
    actions: int
    #: CPU seconds of the dispatcher's process (all threads) within the window
    cpu_seconds: float
    #: seconds its main thread ran within the window (None: the kernel does not say)
    loop_seconds: float | None

    def cpu_us_per_action(self) -> float | None:
        """The process's CPU per action (None when nothing was measured)."""
        if self.actions <= 0 or self.cpu_seconds <= 0:
            return None
        return self.cpu_seconds / self.actions * 1e6

    def loop_us_per_action(self) -> float | None:
        """The event loop's running time per action: what one core does per action."""
        if self.actions <= 0 or not self.loop_seconds:
            return None
        return self.loop_seconds / self.actions * 1e6


async def wait_all_recorded(
    url: str, n: int, dispatcher: BenchService, arrivals: dict[str, float]
) -> Throughput:
    """Until ``n`` successes are recorded; how the machine was shared while the
    requests arrived (:class:`Throughput`)."""
    deadline = time.monotonic() + 600
    pid = dispatcher.proc.pid
    names = {pid: "dispatcher"}

    def past_deadline(what: str) -> None:
        dispatcher.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"throughput phase: {what} in 600 s")

    while not arrivals:
        past_deadline("no request arrived")
        await asyncio.sleep(0.005)
    first = len(arrivals)
    before, loop_before, started = cpu_seconds(names), main_thread_schedule(pid), time.monotonic()
    while len(arrivals) < n:
        past_deadline("not every request arrived")
        await asyncio.sleep(0.005)
    after, loop_after, wall = cpu_seconds(names), main_thread_schedule(pid), time.monotonic()
    wall -= started
    loop: dict[str, float] = {}
    loop_seconds = None
    if loop_before is not None and loop_after is not None:
        loop = schedule_split(loop_before, loop_after, wall)
        loop_seconds = loop_after.running - loop_before.running
    while await count_success(url) < n:
        past_deadline("not every attempt was recorded")
        await asyncio.sleep(0.2)
    return Throughput(
        cores=cpu_split(before, after, wall),
        loop=loop,
        actions=len(arrivals) - first,
        cpu_seconds=after.get("dispatcher", 0.0) - before.get("dispatcher", 0.0),
        loop_seconds=loop_seconds,
    )


async def paced(
    bootstrap: str, topic: str, jobs: list[ActionJob], rate: float, arrivals: dict[str, float]
) -> list[float]:
    """Produce ``jobs`` at ``rate``/s; the delays (ms) from produced to received."""
    produced: dict[str, float] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        start = time.perf_counter()
        pending = []
        for i, job in enumerate(jobs):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            stamped = job.model_copy(update={"created_at": datetime.now(UTC)})
            produced[job.job_id] = time.time()
            pending.append(await producer.send(topic, stamped.dump(), key=job.trigger_id.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    deadline = time.monotonic() + 120
    while not all(k in arrivals for k in produced):
        if time.monotonic() > deadline:
            raise SystemExit("delay phase: not every job arrived in 120 s")
        await asyncio.sleep(0.1)
    return [(arrivals[k] - t) * 1000 for k, t in produced.items()]


async def raw_idle_delays(bootstrap: str, topic: str, jobs: list[ActionJob]) -> list[float]:
    """The idle phase's baseline: the same jobs, paced the same, to a bare aiokafka
    consumer with the dispatcher's fetch settings; the delays (ms) from produced to
    consumed. What an idle dispatcher adds beyond it is its own work per job."""
    consumed: dict[str, float] = {}
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-idle-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )
    await consumer.start()

    async def consume() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=100, max_records=200)).values():
                now = time.time()
                for r in records:
                    consumed.setdefault(json.loads(r.value)["job_id"], now)

    task = asyncio.create_task(consume())
    try:
        for _ in range(600):  # the group's first join: at most 30 s
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # settled: its fetches waiting on an empty topic
        return await paced(bootstrap, topic, jobs, IDLE_RATE, consumed)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


#: The idle phase: jobs produced one at a time, this many per second.
IDLE_JOBS = 20
IDLE_RATE = 2.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url, bootstrap = stack()
    arrivals: dict[str, float] = {}
    receiver = await arrivals_receiver(arrivals).start()
    hook = receiver.url("/hook")
    figures: dict[str, float] = {}
    try:
        async with (
            scratch_database(admin_url, "bench_dispatcher") as url,
            scratch_topic(bootstrap, 12) as actions,
            scratch_topic(bootstrap, 12) as retry,
            scratch_topic(bootstrap, 3) as dlq,
            scratch_topic(bootstrap, 12) as idle_topic,
        ):
            target = await make_trigger(url, hook)
            say(f"throughput: producing {args.jobs} jobs")
            jobs = jobs_for(args.jobs, 0, target)
            figures["raw_produce_per_s"] = await produce_all(bootstrap, actions, jobs)
            figures["raw_consume_per_s"] = await raw_consume(bootstrap, actions, len(jobs))
            say("raw baseline: aiohttp POSTs to the receiver")
            bodies = [j.dump() for j in jobs[:RAW_POSTS]]
            figures["raw_post_per_s_before"] = await raw_posts(hook, bodies, args.concurrency)
            arrivals.clear()
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "ACTIONS_TOPIC": actions,
                "ACTIONS_RETRY_TOPIC": retry,
                "ACTIONS_DLQ_TOPIC": dlq,
                "DISPATCHER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
                "DISPATCHER_DESTINATION_CONCURRENCY": str(args.concurrency),
                "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
                "HTTP_PORT": "19102",
                "LOG_LEVEL": "WARNING",
            }
            with service("dispatcher", env, py_args=bench_py_args()) as dispatcher:
                say("throughput: dispatcher started")
                shared = await wait_all_recorded(url, len(jobs), dispatcher, arrivals)
                cores = shared.cores
                times = sorted(arrivals.values())
                figures["actions_per_s"] = (len(times) - 1) / (times[-1] - times[0])
                for name, us in (
                    ("dispatcher_cpu_us_per_action", shared.cpu_us_per_action()),
                    ("dispatcher_loop_us_per_action", shared.loop_us_per_action()),
                ):
                    if us is not None:
                        figures[name] = us
                say(f"throughput: {figures['actions_per_s']:.0f} actions/s; cores busy {cores}")
                say(f"throughput: the dispatcher's event loop {shared.loop}")
                # The baseline again right after (the dispatcher idle): this machine's
                # speed drifts within a run, and the ratio takes the mean of the two.
                say("raw baseline again: aiohttp POSTs to the receiver")
                # (its requests carry no Idempotency-Key: nothing goes into arrivals)
                figures["raw_post_per_s_after"] = await raw_posts(hook, bodies, args.concurrency)
                figures["raw_post_per_s"] = (
                    figures["raw_post_per_s_before"] + figures["raw_post_per_s_after"]
                ) / 2
                total = int(args.rate * args.seconds)
                say(f"delay: {total} jobs at {args.rate:g}/s")
                delays = await paced(
                    bootstrap, actions, jobs_for(total, args.jobs, target), args.rate, arrivals
                )
                # An idle dispatcher receiving one job at a time: no extra delay for
                # being idle (its polls and fetches waiting on an empty topic).
                await asyncio.sleep(2)
                say(f"idle: {IDLE_JOBS} jobs one at a time, {1 / IDLE_RATE:g} s apart")
                idle = await paced(
                    bootstrap,
                    actions,
                    jobs_for(IDLE_JOBS, args.jobs + total, target),
                    IDLE_RATE,
                    arrivals,
                )
                figures["dispatcher_peak_rss_mib"] = peak_rss_mib(dispatcher.proc.pid)
            say(f"raw dispatch loop: {args.jobs} jobs consumed, posted, recorded, committed")
            skeleton = await raw_dispatch(bootstrap, actions, url, args.jobs, args.concurrency)
            if skeleton["failed"]:
                raise SystemExit(f"raw dispatch loop: {skeleton['failed']:.0f} POSTs failed")
            # from its first POST to its last record (the recording included)
            figures["raw_dispatch_per_s"] = skeleton["jobs"] / skeleton["seconds"]
            figures["raw_dispatch_cpu_us_per_action"] = (
                skeleton["cpu_seconds"] / skeleton["posts"] * 1e6
            )
            say(f"raw dispatch loop: {figures['raw_dispatch_per_s']:.0f} actions/s")
            say(f"raw baseline: {IDLE_JOBS} jobs one at a time to an idle aiokafka consumer")
            raw_idle = await raw_idle_delays(
                bootstrap, idle_topic, jobs_for(IDLE_JOBS, args.jobs + total + IDLE_JOBS, target)
            )
            figures.update(await outcome_counts(url))
    finally:
        await receiver.stop()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, shared by receiver, producer, dispatcher, "
        "PostgreSQL and Kafka",
        "concurrency_per_destination": args.concurrency,
        "jobs": args.jobs,
        **{k: round(v, 1) for k, v in figures.items()},
        "cores_busy_throughput": cores,
        "dispatcher_loop_throughput": shared.loop,
        "ratio_to_raw_post": round(figures["actions_per_s"] / figures["raw_post_per_s"], 3),
        # What its event loop's time per action would allow on a core of its own,
        # never idle or waiting (at the same time per action).
        **(
            {
                "ratio_to_raw_post_at_one_full_core": round(
                    1e6 / figures["dispatcher_loop_us_per_action"] / figures["raw_post_per_s"], 3
                )
            }
            if "dispatcher_loop_us_per_action" in figures
            else {}
        ),
        "ratio_to_raw_consume": round(figures["actions_per_s"] / figures["raw_consume_per_s"], 4),
        "raw_dispatch_ratio_to_raw_post": round(
            figures["raw_dispatch_per_s"] / figures["raw_post_per_s"], 3
        ),
        "ratio_to_raw_dispatch": round(figures["actions_per_s"] / figures["raw_dispatch_per_s"], 3),
        "paced_rate_per_s": args.rate,
        "paced_jobs": len(delays),
        "delay_ms_p50": round(pct(delays, 0.50), 1),
        "delay_ms_p95": round(pct(delays, 0.95), 1),
        "delay_ms_p99": round(pct(delays, 0.99), 1),
        "delay_ms_max": round(max(delays), 1),
        "idle_jobs": len(idle),
        "idle_delay_ms_p50": round(pct(idle, 0.50), 1),
        "idle_delay_ms_max": round(max(idle), 1),
        "raw_idle_consume_delay_ms_p50": round(pct(raw_idle, 0.50), 1),
        "raw_idle_consume_delay_ms_max": round(max(raw_idle), 1),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.bench_dispatcher", (__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=10_000, help="REST jobs of the throughput phase"
    )
    parser.add_argument(
        "--rate", type=float, default=500.0, help="jobs/s produced in the delay phase"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the delay phase")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="the dispatcher's attempts at once per destination, and the raw POSTs' concurrency",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    path = save("dispatcher", result)
    print(json.dumps(result, indent=2))  # noqa: T201
    say(f"written to {path}")


if __name__ == "__main__":
    main()
