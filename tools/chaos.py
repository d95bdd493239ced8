"""Chaos run: a fixed load through the whole pipeline while ingest, matcher,
dispatcher, Kafka and PostgreSQL are killed and restarted, one at a time, at random
moments; then the delivery contract is checked.

    python -m tools.chaos [--cycles 5] [--rate 300] [--seed N]

Each component is killed ``--cycles`` times, in a random order, at random moments:
the services with SIGKILL by their own pid (then restarted), Kafka with SIGKILL of
the broker's pid (then started again by deploy/local/kafka.sh), PostgreSQL with an
immediate shutdown (no checkpoint: crash recovery on start, deploy/local/postgres.sh).
Kafka and PostgreSQL are only killed when they are the local stack's own. The load
(tools.loadgen: four indexers, batches and singles, duplicates) runs throughout,
retrying until each request is acknowledged.

Invariants checked afterwards, printed as counts; the exit status is 1 on any loss:
* every acknowledged event is stored exactly once and was relayed to the events topic;
* every firing owed (one job per acknowledged event of a hot agent) reached the
  receiver;
* no job reached the receiver twice except with the same Idempotency-Key (its job id);
* every stateful trigger's state equals a clean replay of the acknowledged events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.contract.events import Event
from shared.contract.jobs import EventMessage, parse_topic_message
from shared.engine.replay import Replay, compile_trigger
from shared.platform.db import register_codecs
from shared.platform.entrypoint import cli_parser
from tools.benchkit import RESULTS, ROOT, stack, timestamp, write_json
from tools.loadgen import Settings, event_id
from tools.pipeline import (
    CHAINS,
    Delivery,
    Phase,
    Pipeline,
    Population,
    all_delivered,
    install_triggers,
    scratch_pipeline,
    steered_load,
    webhook_receiver,
)

PARTITIONS = 12  # scratch_pipeline's
LOCAL = ROOT / "deploy" / "local"


def say(msg: str) -> None:
    print(f"[chaos] {datetime.now(UTC):%H:%M:%S} {msg}", flush=True)  # noqa: T201


def run_script(script: str, action: str, **env: str) -> None:
    subprocess.run(
        [str(LOCAL / script), action], check=True, env={**os.environ, **env}, capture_output=True
    )


@dataclass
class Killer:
    pipeline: Pipeline
    rng: random.Random
    kills: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)

    async def kill(self, component: str) -> None:
        started = time.monotonic()
        if component in self.pipeline.services:
            service = self.pipeline.services[component]
            await asyncio.to_thread(service.kill)
            await asyncio.sleep(self.rng.uniform(0.2, 2.0))
            service.start()
            await service.wait_ready("/healthz")
        elif component == "kafka":
            pid = int((ROOT / ".run" / "pids" / "kafka.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            await gone(pid)
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await asyncio.to_thread(run_script, "kafka.sh", "start")
        elif component == "postgres":
            await asyncio.to_thread(run_script, "postgres.sh", "stop", PG_STOP_MODE="immediate")
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await asyncio.to_thread(run_script, "postgres.sh", "start")
        self.kills[component] += 1
        took = time.monotonic() - started
        line = f"killed {component} (#{self.kills[component]}), back in {took:.1f}s"
        self.log.append(line)
        say(line)


def _proc_state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


async def gone(pid: int, within: float = 30) -> None:
    """Until ``pid`` has exited (a zombie not yet reaped counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _proc_state(pid) in (None, "Z", "X"):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"pid {pid} still running {within:g}s after SIGKILL")


def local_infra() -> list[str]:
    """The infrastructure this run may kill: only the local stack's own."""
    out = []
    if (
        os.environ.get("LOCAL_KAFKA", "1") == "1"
        and (ROOT / ".run" / "pids" / "kafka.pid").exists()
    ):
        out.append("kafka")
    if os.environ.get("LOCAL_DB", "1") == "1" and (ROOT / ".run" / "postgres").exists():
        out.append("postgres")
    return out


async def read_event_ids(bootstrap: str, topic: str, partitions: int) -> Counter[str]:
    """Every event id on the topic (duplicates counted), read from the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        seen: Counter[str] = Counter()

        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    msg = parse_topic_message(record.value)
                    if isinstance(msg, EventMessage):
                        seen[msg.event.id] += 1
        return seen
    finally:
        await consumer.stop()


async def clean_replay_mismatches(
    url: str, population: Population, acked: list[dict[str, Any]]
) -> int:
    """Stateful hot triggers whose stored state differs from a replay of the
    acknowledged events (per agent in block order: the order Kafka keeps per key)."""
    conn = await asyncpg.connect(url)
    await register_codecs(conn)
    try:
        by_trigger = {
            h.trigger_id: key for key, h in population.hot.items() if h.kind != "stateless"
        }
        rows = await conn.fetch(
            """SELECT t.id, t.user_id, t.name, t.chain_id, t.registry, t.enabled_at,
                      t.cooldown_seconds,
                      (SELECT coalesce(jsonb_agg(jsonb_build_object(
                          'condition_type', c.condition_type, 'field', c.field,
                          'operator', c.operator, 'value', c.value, 'config', c.config)
                          ORDER BY c.id), '[]') FROM trigger_conditions c
                       WHERE c.trigger_id = t.id) AS conditions,
                      (SELECT coalesce(jsonb_agg(jsonb_build_object(
                          'id', a.id, 'action_type', a.action_type, 'priority', a.priority,
                          'config', a.config) ORDER BY a.id), '[]') FROM trigger_actions a
                       WHERE a.trigger_id = t.id) AS actions
               FROM triggers t WHERE t.id = ANY($1::text[])""",
            list(by_trigger),
        )
        stored = await conn.fetch(
            "SELECT trigger_id, scope_key, state_data FROM trigger_state "
            "WHERE trigger_id = ANY($1)",
            list(by_trigger),
        )
    finally:
        await conn.close()
    states: dict[tuple[str, str], Any] = {
        (r["trigger_id"], r["scope_key"]): r["state_data"] for r in stored
    }
    ordered = sorted(acked, key=lambda e: (e["chain_id"], e["block_number"], e["log_index"]))
    events = [Event.model_validate(e) for e in ordered]
    mismatches = 0
    for row in rows:
        spec = compile_trigger(row)
        assert spec is not None
        chain, agent = by_trigger[row["id"]]
        replay = Replay(spec)
        for _ in replay.run(e for e in events if e.chain_id == chain and e.agent_id == agent):
            pass
        want = {(row["id"], k): v for k, v in replay.states.items()}
        got = {k: v for k, v in states.items() if k[0] == row["id"]}
        if want != got:
            mismatches += 1
            say(f"state differs from a clean replay: trigger {row['id']}")
    return mismatches


async def run(args: argparse.Namespace) -> int:  # noqa: PLR0915 (one run, told in order)
    admin_url, bootstrap = stack()
    rng = random.Random(args.seed)
    stamp = timestamp()
    out = RESULTS
    deliveries: list[Delivery] = []
    receiver = webhook_receiver(deliveries)
    await receiver.start()
    population = Population(CHAINS, hot_agents=12, hot_fraction=0.05)
    phase = Phase()  # what the load got acknowledged, the firings owed
    acked, owed = phase.events, phase.owed

    components = ["ingest", "matcher", "dispatcher", *local_infra()]
    schedule = [c for c in components for _ in range(args.cycles)]
    rng.shuffle(schedule)
    say(
        f"schedule: {len(schedule)} kills ({', '.join(components)} x {args.cycles}), "
        f"seed {args.seed}"
    )
    try:
        async with scratch_pipeline(admin_url, bootstrap, out / f"chaos-{stamp}-logs") as pipeline:
            await install_triggers(pipeline.url, population, total=1000, hook=receiver.url("/hook"))
            await pipeline.start(log_level="INFO")
            killer = Killer(pipeline, rng)
            # More load than the kills need; it is stopped once they are done.
            total = int(args.rate * 3600)
            gen = steered_load(
                Settings(
                    base=pipeline.ingest.base,
                    chains=CHAINS,
                    events=total,
                    rate=args.rate,
                    batch=50,
                    single=0.05,
                    duplicates=0.02,
                    seed=args.seed,
                    give_up_after=600,
                ),
                population,
                phase,
            )
            load = asyncio.create_task(gen.run())
            await asyncio.sleep(5)
            for component in schedule:
                if load.done():
                    break
                await killer.kill(component)
                await asyncio.sleep(rng.uniform(1.0, 5.0))
            say(f"kills done ({sum(killer.kills.values())}); stopping the load")
            gen.stop()
            await load
            say(f"load done: {len(acked)} events acknowledged, {len(owed)} firings owed")

            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline:
                if all_delivered(deliveries, owed):
                    break
                await asyncio.sleep(1)
            await asyncio.sleep(5)  # late duplicates show too

            conn = await asyncpg.connect(pipeline.url)
            try:
                stored = Counter(
                    r["id"]
                    for r in await conn.fetch(
                        "SELECT id FROM events WHERE id = ANY($1::text[])",
                        [event_id(e) for e in acked],
                    )
                )
                outbox = await conn.fetchval("SELECT count(*) FROM event_outbox")
            finally:
                await conn.close()
            relayed = await read_event_ids(bootstrap, pipeline.events_topic, PARTITIONS)
            mismatched = await clean_replay_mismatches(pipeline.url, population, acked)
            pipeline.stop()
    finally:
        await receiver.stop()

    acked_ids = {event_id(e) for e in acked}
    per_job = Counter(d.job_id for d in deliveries)
    bad_keys = sum(1 for d in deliveries if d.idempotency_key != d.job_id)
    counts = {
        "kills": dict(killer.kills),
        "events_acknowledged": len(acked_ids),
        "events_stored": sum(1 for i in acked_ids if stored[i] >= 1),
        "events_stored_twice": sum(1 for i in acked_ids if stored[i] > 1),
        "events_lost": sum(1 for i in acked_ids if stored[i] == 0),
        "events_relayed": sum(1 for i in acked_ids if relayed[i] >= 1),
        "events_not_relayed": sum(1 for i in acked_ids if relayed[i] == 0),
        "relay_duplicates": sum(n - 1 for n in relayed.values() if n > 1),
        "outbox_left": outbox,
        "firings_owed": len(owed),
        "firings_delivered": sum(1 for j in owed if per_job[j] >= 1),
        "firings_lost": sum(1 for j in owed if per_job[j] == 0),
        "deliveries": len(deliveries),
        "duplicate_deliveries": sum(n - 1 for n in per_job.values() if n > 1),
        "duplicates_with_another_key": bad_keys,
        "unexpected_jobs": sum(1 for j in per_job if j not in owed),
        "state_mismatches": mismatched,
    }
    failed = (
        counts["events_lost"]
        + counts["events_stored_twice"]
        + counts["events_not_relayed"]
        + counts["firings_lost"]
        + counts["duplicates_with_another_key"]
        + counts["state_mismatches"]
    )
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "seed": args.seed,
        "rate": args.rate,
        "counts": counts,
        "kill_log": killer.log,
        "verdict": "PASS" if failed == 0 else "FAIL",
    }
    write_json(out / f"chaos-{stamp}.json", result)
    for key, value in counts.items():
        print(f"  {key:28} {value}")  # noqa: T201
    say(f"{result['verdict']}; written to bench-results/chaos-{stamp}.json")
    return 0 if failed == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.chaos", (__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=5, help="kills per component")
    parser.add_argument("--rate", type=float, default=300.0, help="events/s of the load")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the kill order, moments and load (default: from the clock; printed)",
    )
    parser.add_argument("--settle", type=float, default=300.0, help="seconds to wait for delivery")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time()) % 100000
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
