"""The whole pipeline on its own scratch database and topics, for the end-to-end
benchmark and the chaos run: ingest, matcher and dispatcher as real processes on
free ports; a local webhook receiver; triggers of which a known share fires.

Trigger population (``install_triggers``): per chain, one *hot* trigger per hot
agent (ids from HOT_AGENT_BASE), each firing on every NewFeedback of its agent
(a third stateless, a third rate_limit count >= 1, a third EMA with fire_on every,
so both stateful kinds are exercised), plus *cold* triggers on ordinary agents
whose conditions never hold (score below -95, tags that never occur, EMA below
-95, rate above 10^6). The load steers ``hot_fraction`` of the events to hot
agents (:meth:`Population.shape`), so exactly those events fire, one job each:
the owed firings are known from the acknowledged events alone (:func:`steered_load`
records them in a :class:`Phase`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from shared.contract.jobs import job_id
from shared.platform.db import register_codecs
from tools.benchdb import scratch_database, scratch_topic
from tools.benchkit import ROOT, insert_user
from tools.loadgen import LoadGenerator, Settings, event_id
from tools.localnet import Receiver, Seen, empty_ok, free_port

#: The chains of the load: one indexer each.
CHAINS = (8453, 1, 10, 42161)
HOT_AGENT_BASE = 10_000_000
HOT_KINDS = ("stateless", "rate", "ema")


def vm_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


#: Services whose /metrics is on a second port of their own (OPS_PORT).
OPS_PORT_SERVICES = frozenset({"api", "ingest"})


@dataclass
class Service:
    """One service process; ``peak_rss_mib`` is the highest VmHWM over its lives."""

    name: str
    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    #: The API's and ingest's second port (/metrics, detailed /readyz).
    ops_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    peak_rss_mib: float = 0.0
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        port = self.ops_port if self.name in OPS_PORT_SERVICES else self.port
        return f"http://127.0.0.1:{port}/metrics"

    def start(self) -> None:
        env = {**self.env, "HTTP_PORT": str(self.port), "OPS_PORT": str(self.ops_port)}
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.peak_rss_mib = max(self.peak_rss_mib, vm_hwm_mib(self.proc.pid))

    def kill(self) -> None:
        """SIGKILL by the process's own pid (which must still be running: a service
        that exited by itself is a finding, named as one)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.log_dir / f"{self.name}.log"
            raise RuntimeError(
                f"{self.name} exited by itself with code {self.proc.returncode} (see {log})"
            )
        self.sample()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.sample()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    async def wait_ready(self, path: str = "/readyz", within: float = 90) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    tail = (self.log_dir / f"{self.name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
                try:
                    async with session.get(self.base + path) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {within:g}s")

    async def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` (all label sets); 0 when absent or down."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
                session.get(self.metrics_url) as resp,
            ):
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class Delivery:
    at: float
    idempotency_key: str
    job_id: str
    event_id: str
    #: when the matcher fired (the job's created_at), seconds since the epoch
    fired_at: float | None = None


def delivery_of(seen: Seen) -> Delivery:
    """What a webhook request carries: its Idempotency-Key, the job and event it
    names, when the matcher fired (arrival on this process's wall clock)."""
    fired: float | None = None
    try:
        doc = orjson.loads(seen.body)
        job, event = doc.get("job_id", ""), doc.get("event", {}).get("id", "")
        if isinstance(doc.get("fired_at"), str):
            fired = datetime.fromisoformat(doc["fired_at"]).timestamp()
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        job, event = "", ""
    return Delivery(seen.wall, seen.headers.get("Idempotency-Key", ""), str(job), str(event), fired)


def webhook_receiver(deliveries: list[Delivery]) -> Receiver:
    """The webhook receiver: appends each request to ``deliveries`` as it arrives
    (keeping no other copy) and answers 200 at once. Hooks go to ``url("/hook")``."""
    return Receiver(
        respond=empty_ok, keep=False, on_request=lambda seen: deliveries.append(delivery_of(seen))
    )


def first_arrivals(deliveries: list[Delivery]) -> dict[str, float]:
    """Job id -> when its first request arrived."""
    first: dict[str, float] = {}
    for d in deliveries:
        first.setdefault(d.job_id, d.at)
    return first


def all_delivered(deliveries: list[Delivery], owed: Iterable[str]) -> bool:
    """Whether every owed job (by id) reached the receiver."""
    got = {d.job_id for d in deliveries}
    return all(j in got for j in owed)


@dataclass
class Hot:
    trigger_id: str
    action_id: int
    kind: str


@dataclass
class Population:
    """Which triggers fire on what: (chain, hot agent) -> its trigger."""

    chains: tuple[int, ...]
    hot_agents: int
    hot_fraction: float
    hot: dict[tuple[int, int], Hot] = field(default_factory=dict)
    cold: int = 0

    def shape(self, event: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Steer a share of NewFeedback to hot agents (NewFeedback is 55 % of the mix)."""
        if event["event_type"] == "NewFeedback" and rng.random() < self.hot_fraction / 0.55:
            event["agent_id"] = HOT_AGENT_BASE + rng.randrange(self.hot_agents)
        return event

    def owed_job(self, event: dict[str, Any]) -> str | None:
        """The job id an acknowledged event is owed, if it fires."""
        if event["event_type"] != "NewFeedback":
            return None
        hot = self.hot.get((event["chain_id"], event["agent_id"]))
        if hot is None:
            return None
        # the job id names the event version, {id}@{block_hash} (shared.contract.jobs.job_id)
        version = (
            f"{event['chain_id']}-{event['block_number']}-{event['log_index']}"
            f"@{event['block_hash']}"
        )
        return job_id(hot.trigger_id, version, hot.action_id)


@dataclass
class Phase:
    """What a load got acknowledged: each event's ack time by event id, the events in
    order, and the firings they are owed (job id -> event id)."""

    acked: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    owed: dict[str, str] = field(default_factory=dict)


def steered_load(settings: Settings, population: Population, phase: Phase) -> LoadGenerator:
    """A load generator steered by ``population`` (:meth:`Population.shape`) that
    records what ingest acknowledged, and the firings owed, in ``phase``."""

    def on_ack(event: dict[str, Any], at: float) -> None:
        eid = event_id(event)
        phase.acked[eid] = at
        phase.events.append(event)
        job = population.owed_job(event)
        if job is not None:
            phase.owed[job] = eid

    return LoadGenerator(settings, on_ack=on_ack, shape=population.shape)


Cond = tuple[str, str, str, str, dict[str, Any]]


def _cold_conditions(rng: random.Random) -> list[Cond]:
    agent = str(rng.randrange(1, 5000))
    kind = rng.random()
    if kind < 0.5:
        return [
            ("agent_id_equals", "agent_id", "=", agent, {}),
            ("score_threshold", "score", "<", "-1000", {}),  # values are within ±100
        ]
    if kind < 0.65:
        return [
            ("agent_id_equals", "agent_id", "=", agent, {}),
            ("tag_equals", "tag1", "=", "neverUsedTag", {}),
        ]
    if kind < 0.8:
        return [
            ("agent_id_equals", "agent_id", "=", agent, {}),
            ("ema_threshold", "score", "<", "-1000", {"window_size": 10, "scope": "agent"}),
        ]
    return [
        ("agent_id_equals", "agent_id", "=", agent, {}),
        ("event_type_equals", "event_type", "=", "NewFeedback", {}),
        ("rate_limit", "count", ">=", "1000000", {"time_window": "1h", "scope": "agent"}),
    ]


def _hot_conditions(agent: int, kind: str) -> list[Cond]:
    base: list[Cond] = [
        ("agent_id_equals", "agent_id", "=", str(agent), {}),
        ("event_type_equals", "event_type", "=", "NewFeedback", {}),
    ]
    if kind == "rate":
        return [*base, ("rate_limit", "count", ">=", "1", {"time_window": "1h"})]
    if kind == "ema":
        return [
            *base,
            ("ema_threshold", "score", ">", "-1000000", {"window_size": 5, "fire_on": "every"}),
        ]
    return base


async def install_triggers(
    url: str, population: Population, *, total: int, hook: str, seed: int = 7
) -> None:
    """``total`` triggers (hot ones included), written with COPY in one transaction."""
    rng = random.Random(seed)
    user = str(uuid.uuid4())
    past = datetime.now(UTC) - timedelta(days=1)
    triggers: list[tuple[object, ...]] = []
    conditions: list[tuple[object, ...]] = []
    action_config = {"url": hook, "timeout_ms": 5000, "max_attempts": 10}
    hot_ids: list[tuple[int, int, str, str]] = []
    for chain in population.chains:
        for i in range(population.hot_agents):
            agent = HOT_AGENT_BASE + i
            kind = HOT_KINDS[i % len(HOT_KINDS)]
            tid = str(uuid.uuid4())
            triggers.append((tid, user, f"hot {kind} {chain}:{agent}", chain, "reputation", past))
            conditions.extend((tid, *c) for c in _hot_conditions(agent, kind))
            hot_ids.append((chain, agent, tid, kind))
    n_cold = max(0, total - len(triggers))
    for i in range(n_cold):
        tid = str(uuid.uuid4())
        chain = population.chains[i % len(population.chains)]
        triggers.append((tid, user, f"cold {i}", chain, "reputation", past))
        conditions.extend((tid, *c) for c in _cold_conditions(rng))
    population.cold = n_cold
    conn = await asyncpg.connect(url)
    await register_codecs(conn)
    try:
        await insert_user(conn, "load", user)
        async with conn.transaction():
            await conn.copy_records_to_table(
                "triggers",
                records=triggers,
                columns=["id", "user_id", "name", "chain_id", "registry", "enabled_at"],
            )
            await conn.copy_records_to_table(
                "trigger_conditions",
                records=conditions,
                columns=["trigger_id", "condition_type", "field", "operator", "value", "config"],
            )
            await conn.copy_records_to_table(
                "trigger_actions",
                records=[(t[0], "rest", action_config) for t in triggers],
                columns=["trigger_id", "action_type", "config"],
            )
        rows = await conn.fetch("SELECT id, trigger_id FROM trigger_actions")
    finally:
        await conn.close()
    actions = {r["trigger_id"]: r["id"] for r in rows}
    for chain, agent, tid, kind in hot_ids:
        population.hot[(chain, agent)] = Hot(tid, actions[tid], kind)


@dataclass
class Pipeline:
    url: str
    bootstrap: str
    events_topic: str
    actions_topic: str
    retry_topic: str
    dlq_topic: str
    log_dir: Path
    services: dict[str, Service] = field(default_factory=dict)

    def service_env(self, log_level: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "EVENTS_TOPIC": self.events_topic,
            "ACTIONS_TOPIC": self.actions_topic,
            "ACTIONS_RETRY_TOPIC": self.retry_topic,
            "ACTIONS_DLQ_TOPIC": self.dlq_topic,
            "MATCHER_GROUP": f"matcher-{uuid.uuid4().hex[:8]}",
            "DISPATCHER_GROUP": f"dispatcher-{uuid.uuid4().hex[:8]}",
            "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
            "MAINTENANCE_ENABLED": "false",
            "LOG_LEVEL": log_level,
        }

    async def start(self, *, log_level: str = "WARNING") -> None:
        env = self.service_env(log_level)
        for name in ("ingest", "matcher", "dispatcher"):
            self.services[name] = Service(name, env, self.log_dir)
            self.services[name].start()
        await asyncio.gather(*(s.wait_ready() for s in self.services.values()))
        await asyncio.sleep(0.5)
        for service in self.services.values():  # ready, and still running
            assert service.proc is not None
            if service.proc.poll() is not None:
                log = (self.log_dir / f"{service.name}.log").read_text(errors="replace")
                raise RuntimeError(f"{service.name} exited after it was ready:\n{log[-3000:]}")

    def sample(self) -> None:
        for service in self.services.values():
            service.sample()

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    @property
    def ingest(self) -> Service:
        return self.services["ingest"]


@asynccontextmanager
async def scratch_pipeline(
    admin_url: str, bootstrap: str, log_dir: Path, *, partitions: int = 12
) -> AsyncIterator[Pipeline]:
    """A migrated scratch database and four scratch topics, dropped afterwards."""
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(scratch_database(admin_url, "e2e"))
        topics = [
            await stack.enter_async_context(scratch_topic(bootstrap, n, prefix=prefix))
            for prefix, n in (
                ("e2e.events", partitions),
                ("e2e.actions", partitions),
                ("e2e.retry", partitions),
                ("e2e.dlq", 3),
            )
        ]
        events, actions, retry, dlq = topics
        pipeline = Pipeline(url, bootstrap, events, actions, retry, dlq, log_dir=log_dir)
        try:
            yield pipeline
        finally:
            pipeline.stop()
