"""Helpers for dispatcher tests and benchmarks: a local MCP server (the HTTP receiver
is tools.localnet's); jobs produced as the matcher does; results read back."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from mcp.server.mcpserver import Context, MCPServer

from shared.contract.actions import ActionType
from shared.contract.event_rows import (
    EVENT_COLUMNS,
    event_row,
)
from shared.contract.events import (
    Event,
    version_key,
)
from shared.contract.jobs import ActionJob, job_id
from tests.conftest import UnderTest
from tests.matcherutil import NEW_FEEDBACK, insert_trigger, insert_user
from tests.procs import ServiceProcess, http_get
from tools.eventgen import make_event
from tools.localnet import free_port


@dataclass
class McpAgentServer:
    """A real MCP server (the ``mcp`` package, streamable HTTP) with two tools:
    ``notify`` records its arguments and the request's headers; ``echo_auth`` answers
    with the request's Authorization header (a tool that leaks its credentials)."""

    calls: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@asynccontextmanager
async def serve_mcp(agent: McpAgentServer) -> AsyncIterator[McpAgentServer]:
    server: MCPServer[Any] = MCPServer("test-agent")

    @server.tool()
    async def notify(
        ctx: Context,
        event: dict[str, Any] | None = None,
        trigger: dict[str, Any] | None = None,
        explain: dict[str, Any] | None = None,
        job_id: str | None = None,
        file: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> str:
        request = ctx.request_context.request
        headers = {k.lower(): v for k, v in request.headers.items()} if request else {}
        arguments = {
            "event": event,
            "trigger": trigger,
            "explain": explain,
            "job_id": job_id,
            "file": file,
            "message": message,
        }
        agent.calls.append((headers, {k: v for k, v in arguments.items() if v is not None}))
        return f"noted {len(agent.calls)}"

    @server.tool()
    async def echo_auth(
        ctx: Context,
        event: dict[str, Any] | None = None,
        trigger: dict[str, Any] | None = None,
        explain: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> str:
        request = ctx.request_context.request
        auth = request.headers.get("authorization", "") if request else ""
        agent.calls.append(({"authorization": auth} if auth else {}, {"job_id": job_id}))
        return f"you sent: {auth}"

    agent.port = free_port()
    config = uvicorn.Config(
        server.streamable_http_app(),
        host="127.0.0.1",
        port=agent.port,
        log_level="warning",
        lifespan="on",
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield agent
    finally:
        uv.should_exit = True
        await task


def an_event(
    seed: int = 1, *, event_type: str = "NewFeedback", agent_id: int = 7, **overrides: Any
) -> Event:
    rng = random.Random(seed)
    return Event.model_validate(
        make_event(
            rng,
            chain_id=8453,
            block_number=1000 + seed,
            log_index=seed % 100,
            event_type=event_type,
            agent_id=agent_id,
            **overrides,
        )
    )


async def action_ids(db: asyncpg.Connection, trigger_id: str) -> list[int]:
    return [
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM trigger_actions WHERE trigger_id = $1 ORDER BY id", trigger_id
        )
    ]


def make_job(
    *,
    trigger_id: str,
    user_id: str,
    action_id: int,
    action_type: str,
    config: dict[str, Any],
    event: Event,
    name: str = "test trigger",
) -> ActionJob:
    return ActionJob(
        job_id=job_id(trigger_id, version_key(event), action_id),
        trigger_id=trigger_id,
        trigger_name=name,
        user_id=user_id,
        action_id=action_id,
        action_type=ActionType(action_type),
        config=config,
        event=event,
        explain={"fired": True, "note": "a_b*c"},
        created_at=datetime.now(UTC),
    )


@dataclass(frozen=True)
class TriggerAction:
    """One action of a stored trigger, and whose it is: what a job is made of."""

    user: str
    trigger: str
    action: int
    action_type: str
    config: dict[str, Any]

    def job(self, event: Event | None = None, *, name: str = "test trigger") -> ActionJob:
        """A job of this action (make_job) for ``event``, by default an_event()."""
        return make_job(
            trigger_id=self.trigger,
            user_id=self.user,
            action_id=self.action,
            action_type=self.action_type,
            config=self.config,
            event=event or an_event(),
            name=name,
        )


async def feedback_trigger(
    db: asyncpg.Connection, *actions: tuple[str, dict[str, Any]]
) -> list[TriggerAction]:
    """A new user's trigger on NewFeedback (chain 8453) with these (action_type,
    config) actions, in that order."""
    user = await insert_user(db)
    trigger = await insert_trigger(
        db,
        user_id=user,
        chain_id=8453,
        conditions=NEW_FEEDBACK,
        actions=[{"action_type": kind, "config": config} for kind, config in actions],
    )
    ids = await action_ids(db, trigger)
    return [
        TriggerAction(user, trigger, action, kind, config)
        for action, (kind, config) in zip(ids, actions, strict=True)
    ]


async def link_chat(
    db: asyncpg.Connection,
    user_id: str,
    chat_id: str,
    *,
    chat_type: str = "group",
    username: str | None = None,
) -> None:
    """The chat linked by the user, as the dispatcher records it after the user's
    ``/start <code>`` in the chat."""
    await db.execute(
        "INSERT INTO telegram_chats (user_id, chat_id, chat_type, username)"
        " VALUES ($1, $2, $3, $4)",
        user_id,
        chat_id,
        chat_type,
        username,
    )


async def produce_jobs(bootstrap: str, topic: str, jobs: Sequence[ActionJob]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, job.dump(), key=job.trigger_id.encode()) for job in jobs
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def store_events(db: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Events straight into the table (as ingest's COPY does)."""
    await db.copy_records_to_table(
        "events", records=[event_row(e) for e in events], columns=list(EVENT_COLUMNS)
    )


async def results(db: asyncpg.Connection, job: str | None = None) -> list[asyncpg.Record]:
    if job is None:
        return await db.fetch("SELECT * FROM action_results ORDER BY executed_at, attempt")
    return await db.fetch(
        "SELECT * FROM action_results WHERE job_id = $1 ORDER BY attempt, executed_at", job
    )


def statuses(rows: list[asyncpg.Record]) -> list[str]:
    return [r["status"] for r in rows]


async def has_status(db: asyncpg.Connection, job: str, status: str) -> bool:
    """Whether an attempt of ``job`` was recorded with ``status``."""
    return status in statuses(await results(db, job))


async def recorded(db: asyncpg.Connection, n: int) -> bool:
    """Whether action_results holds ``n`` rows or more."""
    return len(await results(db)) >= n


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, within: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within:g}s waiting for {what}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Dispatch(UnderTest):
    """The dispatcher under test (its environment: dispatcher_env): the jobs given to
    it on its topics."""

    name = "dispatcher"

    @property
    def topic(self) -> str:
        return self.env["ACTIONS_TOPIC"]

    async def produce(self, jobs: Sequence[ActionJob], *, topic: str | None = None) -> None:
        """The jobs on the actions topic (or ``topic``), as the matcher produces them."""
        await produce_jobs(self.bootstrap, topic or self.topic, jobs)


def metric_value(proc: ServiceProcess, name: str, **labels: str) -> float:
    _, body = http_get(proc.metrics_url)
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        if metric in (name, f"{name}{{{want}}}"):
            return float(value)
    return 0.0
