"""Matcher benchmark: events/s consumed and evaluated, and per-event evaluation
time, with 100, 10,000, 100,000 and 1,000,000 enabled triggers; the matcher's
peak memory and the time it takes to load its index when started again; a raw
aiokafka consume of the same messages as the baseline.

    python -m tools.bench_matcher [--events 50000] [--sizes 100,10000,100000,1000000]

For each size: a scratch database with that many triggers of a mixed kind
(agent-specific stateless and stateful conditions, plus a fixed set of 20
chain-wide ones), a fresh topic pre-filled with the same realistic event
stream, the real matcher process pinned to one core (taskset) timed from
ready to the last event evaluated, the matcher started a second time (its
index loaded, the definitions found stored, as at every later start), and an
in-process measurement of the in-memory evaluation per event (index lookup +
evaluation, no I/O) in two passes over the events: the first (``mean_us``,
``p99_us``) includes compiling each trigger at its first evaluation (a program is
built then, not at load: a million compiled programs would not fit in 2 GiB), and
at a million triggers, one per agent, most events meet a trigger not seen before
(``first_evaluations_per_event``); the second (``*_warm``), the same events again,
is the lookup and evaluation alone.
Prints the figures and writes bench-results/matcher-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.matcher import queries
from services.matcher.keeper import ProgramSettler
from services.matcher.settings import MatcherSettings
from shared.contract.events import Event, parse_events
from shared.engine.evaluate import evaluate, scope_keys
from shared.engine.replay import compile_trigger
from shared.engine.trigger_index import TriggerIndex
from shared.platform.db import register_codecs
from shared.platform.entrypoint import cli_parser
from tools.benchdb import scratch_database, scratch_topic
from tools.benchkit import pct, save, send_events, service, stack
from tools.eventgen import stream, take

CHAIN = 8453
AGENTS = 1_000_000
WILDCARDS = 20


def trigger_rows(n: int, rng: random.Random, user: str) -> tuple[list[Any], list[Any], list[Any]]:
    """(triggers, conditions, actions) rows for COPY: a mixed population."""
    triggers: list[Any] = []
    conditions: list[Any] = []
    actions: list[Any] = []
    past = datetime.now(UTC) - timedelta(days=1)
    for i in range(n + WILDCARDS):
        tid = str(uuid.uuid4())
        registry = "reputation"
        conds: list[tuple[str, str, str, str, dict[str, Any]]] = []
        agent = str(rng.randrange(1, AGENTS))
        if i >= n:  # chain-wide: every NewFeedback of the chain is a candidate
            conds = [
                ("event_type_equals", "event_type", "=", "NewFeedback", {}),
                ("score_threshold", "score", "<", "-100", {}),  # below every value
            ]
        else:
            kind = rng.random()
            if kind < 0.60:
                conds = [
                    ("agent_id_equals", "agent_id", "=", agent, {}),
                    ("score_threshold", "score", "<", str(rng.randrange(-99, -90)), {}),
                ]
            elif kind < 0.75:
                others = ",".join(str(rng.randrange(1, AGENTS)) for _ in range(2))
                conds = [
                    ("agent_id_equals", "agent_id", "in", f"{agent},{others}", {}),
                    ("tag_equals", "tag1", "=", "tradingYield", {}),
                    ("score_threshold", "score", "<", "-95", {}),
                ]
            elif kind < 0.85:
                conds = [
                    ("agent_id_equals", "agent_id", "=", agent, {}),
                    ("ema_threshold", "score", "<", "-95", {"window_size": 10}),
                ]
            elif kind < 0.95:
                conds = [
                    ("agent_id_equals", "agent_id", "=", agent, {}),
                    ("event_type_equals", "event_type", "=", "NewFeedback", {}),
                    ("rate_limit", "count", ">=", "50", {"time_window": "1h"}),
                ]
            else:
                registry = "validation"
                conds = [
                    ("agent_id_equals", "agent_id", "=", agent, {}),
                    ("validator_whitelist", "validator_address", "in", "0x" + "ab" * 20, {}),
                ]
        triggers.append((tid, user, f"t{i}", CHAIN, registry, True, past))
        conditions.extend((tid, *c) for c in conds)
        actions.append((tid, "rest", {"url": "http://127.0.0.1:9/hook", "method": "POST"}))
    return triggers, conditions, actions


async def load_triggers(url: str, n: int) -> None:
    conn = await asyncpg.connect(url)
    await register_codecs(conn)
    try:
        user = str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO users (id, username, email, password_hash) VALUES ($1,$2,$3,'x')",
            user,
            "bench",
            "bench@example.org",
        )
        triggers, conditions, actions = trigger_rows(n, random.Random(n), user)
        async with conn.transaction():
            await conn.copy_records_to_table(
                "triggers",
                records=triggers,
                columns=["id", "user_id", "name", "chain_id", "registry", "enabled", "enabled_at"],
            )
            await conn.copy_records_to_table(
                "trigger_conditions",
                records=conditions,
                columns=["trigger_id", "condition_type", "field", "operator", "value", "config"],
            )
            await conn.copy_records_to_table(
                "trigger_actions", records=actions, columns=["trigger_id", "action_type", "config"]
            )
        # a steady state, not the aftermath of a bulk load: the tables analysed and
        # vacuumed (no autovacuum during the timed phase)
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()


async def produce(bootstrap: str, topic: str, events: list[Event]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        at = datetime.now(UTC)
        started = time.perf_counter()
        futures = await send_events(producer, topic, events, ingested_at=at)
        await asyncio.gather(*futures)
        return len(events) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, topic: str, expect: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(12)]  # scratch_topic's partitions
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        started = time.perf_counter()
        while got < expect:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            got += sum(len(v) for v in batch.values())
        return expect / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_matcher(url: str, bootstrap: str, topic: str, n_events: int) -> dict[str, float]:
    port = 19101
    base = f"http://127.0.0.1:{port}"
    env = matcher_env(url, topic, port)
    wrap = ["taskset", "-c", "1"] if shutil.which("taskset") else []  # one core
    async with scratch_topic(bootstrap) as jobs:  # where fired jobs go
        env["ACTIONS_TOPIC"] = jobs
        started = time.perf_counter()
        with service("matcher", env, wrap=wrap) as matcher:
            async with aiohttp.ClientSession() as session:
                # From the first event evaluated to the last: the index load
                # before it (startup_s) is reported on its own.
                first: tuple[float, float] | None = None
                busy0 = 0.0
                while True:
                    matcher.check()
                    try:
                        done = await metric(session, base, "erc8004_matcher_events_evaluated_total")
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
                        continue
                    now = time.perf_counter()
                    if first is None and done > 0:
                        first = (now, done)
                        busy0 = await metric(
                            session, base, "erc8004_matcher_batch_duration_seconds_sum"
                        )
                    if os.environ.get("BENCH_TRACE") and first is not None:
                        print(f"[trace] {now - first[0]:7.2f}s {done:8.0f}", flush=True)  # noqa: T201
                    if done >= n_events:
                        break
                    await asyncio.sleep(0.02)
                finished = time.perf_counter()
                busy = await metric(session, base, "erc8004_matcher_batch_duration_seconds_sum")
                fired = await metric(session, base, "erc8004_matcher_jobs_produced_total")
                if fired == 0:
                    async with session.get(f"{base}/metrics") as resp:
                        fired = sum(
                            float(line.rsplit(" ", 1)[1])
                            for line in (await resp.text()).splitlines()
                            if line.startswith("erc8004_matcher_jobs_produced_total{")
                        )
            peak = peak_rss_mib(matcher.proc.pid)
    assert first is not None
    return {
        "startup_s": first[0] - started,
        "events_per_s": (n_events - first[1]) / (finished - first[0]),
        # time inside the batch handler (evaluation and its transaction) over the
        # wall time: the rest is waiting for Kafka or for the event loop
        "handler_busy_fraction": (busy - busy0) / (finished - first[0]),
        "jobs": fired,
        "peak_rss_mib": peak,
    }


def matcher_env(url: str, topic: str, port: int) -> dict[str, str]:
    """A benchmark matcher's environment: the scratch database and topic, a group of
    its own."""
    return {
        **os.environ,
        "DATABASE_URL": url,
        "EVENTS_TOPIC": topic,
        "MATCHER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "HTTP_PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }


async def restart(url: str, bootstrap: str, topic: str, size: int) -> dict[str, float]:
    """The matcher started again on the same database: the time until its index
    holds every trigger, and its peak memory (the first start also stored each
    trigger's definition; this one finds them stored, as every later start does)."""
    port = 19102
    env = matcher_env(url, topic, port)
    async with scratch_topic(bootstrap) as jobs:  # never the stack's own topics
        env["ACTIONS_TOPIC"] = jobs
        return await _timed_load(env, port, size)


async def _timed_load(env: dict[str, str], port: int, size: int) -> dict[str, float]:
    started = time.perf_counter()
    with service("matcher", env) as matcher:
        async with aiohttp.ClientSession() as session:
            while True:
                matcher.check()
                try:
                    loaded = await metric(
                        session, f"http://127.0.0.1:{port}", "erc8004_matcher_index_triggers"
                    )
                except aiohttp.ClientError:
                    loaded = 0.0
                if loaded >= size:
                    break
                await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
        return {"restart_load_s": seconds, "restart_peak_rss_mib": peak_rss_mib(matcher.proc.pid)}


async def in_memory(url: str, events: list[Event]) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    await register_codecs(conn)
    try:
        rows = await queries.list_enabled_triggers(conn)
    finally:
        await conn.close()
    gc.disable()  # as the matcher does while it loads its index
    index = TriggerIndex(t for t in map(compile_trigger, rows) if t is not None)
    del rows
    gc.enable()
    gc.freeze()  # as the matcher does after loading its index
    states: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[str] = set()
    # as the matcher: between its batches, the programs built leave the GC's sight
    settler = ProgramSettler()
    batch = MatcherSettings.model_fields["batch_max_records"].default

    def one_pass() -> tuple[list[float], int, int]:
        """Each event's cost (index lookup and evaluation), the candidates, and how
        many of them were evaluated for the first time (compiled then: a trigger's
        program is built at its first evaluation, not at load)."""
        costs = []
        candidates = first = 0
        for n, event in enumerate(events):
            t0 = time.perf_counter()
            if n % batch == 0:  # (counted with the batch's first event)
                settler.settle()
            found = index.candidates(event)
            for trigger in found:
                if trigger.is_stateful:
                    keys = scope_keys(trigger, event)
                    out = evaluate(
                        trigger,
                        event,
                        states={k: states.get((trigger.id, k)) for k in keys},
                        explain_all=False,  # as the matcher
                    )
                    for k in out.changed:
                        states[(trigger.id, k)] = out.states[k]
                else:
                    evaluate(trigger, event, states={})
            costs.append(time.perf_counter() - t0)
            candidates += len(found)
            for trigger in found:  # (not timed)
                if trigger.id not in seen:
                    seen.add(trigger.id)
                    first += 1
        return costs, candidates, first

    cold, candidates, first = one_pass()
    # The same events again: every candidate compiled by the first pass.
    warm, _, _ = one_pass()
    return {
        "mean_us": sum(cold) / len(cold) * 1e6,
        "p50_us": pct(cold, 0.5) * 1e6,
        "p99_us": pct(cold, 0.99) * 1e6,
        "mean_us_warm": sum(warm) / len(warm) * 1e6,
        "p99_us_warm": pct(warm, 0.99) * 1e6,
        "candidates_per_event": candidates / len(events),
        "first_evaluations_per_event": first / len(events),
        "index_size": len(index),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url, bootstrap = stack()
    raw = take(stream(random.Random(7), chain_id=CHAIN), args.events)
    for item in raw:  # agents spread over the whole id space, as on a busy chain
        item["agent_id"] = random.Random(item["transaction_hash"]).randrange(1, AGENTS)
    events, errors = parse_events(list(raw))
    assert not errors
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores; matcher pinned to one",
        "events": len(events),
        "sizes": {},
    }
    for size in args.sizes:
        print(f"[bench-matcher] {size} triggers: loading", flush=True)  # noqa: T201
        async with scratch_database(admin_url, "bench_matcher") as url:
            await load_triggers(url, size)
            async with scratch_topic(bootstrap) as topic:
                produce_rate = await produce(bootstrap, topic, events)
                consume_rate = await raw_consume(bootstrap, topic, len(events))
                memory = await in_memory(url, events)
                process = await run_matcher(url, bootstrap, topic, len(events))
                process.update(await restart(url, bootstrap, topic, size + WILDCARDS))
        row = {
            **{k: round(v, 2) for k, v in memory.items()},
            **{k: round(v, 2) for k, v in process.items()},
            "fired_fraction": round(process["jobs"] / len(events), 4),
            "raw_produce_per_s": round(produce_rate),
            "raw_consume_per_s": round(consume_rate),
            "ratio_to_raw_consume": round(process["events_per_s"] / consume_rate, 3),
        }
        results["sizes"][str(size)] = row
        print(f"[bench-matcher] {size}: {row}", flush=True)  # noqa: T201
    sizes = [str(s) for s in args.sizes]
    small, large = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
    for run in ("", "_warm"):  # the first pass, then the warm one
        for figure in ("mean", "p99"):
            results[f"{figure}_cost_ratio_largest_to_smallest{run}"] = round(
                large[f"{figure}_us{run}"] / small[f"{figure}_us{run}"], 2
            )
    results["targets"] = {
        "cost_ratio_max": 2.0,
        "p99_cost_ratio_max": 2.0,
        "peak_rss_mib_max_at_100000": 300,
        "restart_load_s_max_at_1000000": 60,
        "restart_peak_rss_mib_max_at_1000000": 2048,
        "fired_max": 0.01,
    }
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.bench_matcher", __doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events of each run")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default="100,10000,100000,1000000",
        help="numbers of enabled triggers, comma-separated: one run each",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    path = save("matcher", result)
    print(json.dumps(result, indent=2))  # noqa: T201
    print(f"[bench-matcher] written to {path}")  # noqa: T201


if __name__ == "__main__":
    main()
