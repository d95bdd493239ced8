"""Backtests: a trigger replayed over stored events with the matcher's own engine
(shared.engine.replay over shared.engine.evaluate), without running any action."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from services.api.models import BacktestIn, BacktestOut, FiringOut
from services.api.queries import backtests as backtest_sql
from shared.contract.event_rows import (
    event_from_row,
)
from shared.contract.jobs import tick_key
from shared.contract.triggers import TriggerCreate
from shared.engine.evaluate import ActionSpec, TriggerSpec, has_absence
from shared.engine.replay import Replay, Step
from shared.platform.db import Conn

MAX_FIRINGS = 1000


def unsaved_spec(trigger: TriggerCreate, *, user_id: str) -> TriggerSpec:
    """An unsaved trigger in the evaluator's form (its actions are never run)."""
    return TriggerSpec(
        id="unsaved",
        user_id=user_id,
        name=trigger.name,
        chain_id=trigger.chain_id,
        registry=trigger.registry.value,
        enabled_at=datetime.now(UTC),
        cooldown_seconds=trigger.cooldown_seconds,
        conditions=tuple(trigger.conditions),
        actions=tuple(
            ActionSpec.of(i, a.action_type.value, a.priority, {})
            for i, a in enumerate(trigger.actions)
        ),
    )


async def run_backtest(
    conn: Conn,
    spec: TriggerSpec,
    body: BacktestIn,
    *,
    trigger_id: str | None,
    max_events: int,
    time_limit: float,
) -> BacktestOut:
    """Replay ``spec`` over the canonical events of its chain and registry with block
    times in [from, to), in chain order (block number, log index); an absence trigger
    over every event of its chain and the chain's heartbeats (its ticks, each after
    the events of its block). Must run inside a transaction (server-side cursors
    stream the rows). Stops, truncated, after ``max_events`` rows (events and
    heartbeats) or ``time_limit`` seconds, yielding to other requests every few
    hundred rows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    replay = Replay(spec)
    out = _Tally(body.explain_limit)
    absence = has_absence(spec)
    scanned = events = beats = 0
    truncated = False
    async for kind, row in _rows(conn, spec, body, max_events + 1, absence=absence):
        if scanned == max_events:
            truncated = True
            break
        scanned += 1
        if kind == "beat":
            beats += 1
            key = tick_key(spec.chain_id, row["block_number"], row["block_hash"])
            out.add(replay.tick(spec.chain_id, row["timestamp"], key))
        else:
            events += 1
            event = event_from_row(row)
            out.add(replay.feed(event) if absence else [s for s in [replay.step(event)] if s])
        if scanned % 500 == 0:
            await asyncio.sleep(0)  # let other requests in between
            if loop.time() > deadline:
                truncated = True
                break
    return BacktestOut(
        trigger_id=trigger_id,
        from_=body.from_,
        to=body.to,
        events_scanned=events,
        heartbeats_scanned=beats,
        evaluated=out.evaluated,
        fired=out.fired,
        truncated=truncated,
        firings=out.firings,
        explains=out.explains,
    )


async def _rows(
    conn: Conn, spec: TriggerSpec, body: BacktestIn, limit: int, *, absence: bool
) -> AsyncIterator[tuple[str, Any]]:
    """The rows a backtest replays, in chain order: ("event", row) and, for an absence
    trigger, ("beat", row) for each heartbeat, after the events of its block."""
    sql = backtest_sql.backtest_events_sql(limit)
    registry = None if absence else spec.registry
    events = conn.cursor(sql, spec.chain_id, registry, body.from_, body.to, prefetch=1000)
    if not absence:
        async for row in events:
            yield "event", row
        return
    beats = conn.cursor(
        backtest_sql.BACKTEST_HEARTBEATS, spec.chain_id, body.from_, body.to, prefetch=500
    ).__aiter__()
    beat = await anext(beats, None)
    async for row in events:
        while beat is not None and beat["block_number"] < row["block_number"]:
            yield "beat", beat
            beat = await anext(beats, None)
        yield "event", row
    while beat is not None:
        yield "beat", beat
        beat = await anext(beats, None)


class _Tally:
    """What a backtest reports of the replay's steps."""

    def __init__(self, explain_limit: int) -> None:
        self.explain_limit = explain_limit
        self.evaluated = self.fired = 0
        self.firings: list[FiringOut] = []
        self.explains: list[dict[str, Any]] = []

    def add(self, steps: list[Step]) -> None:
        for step in steps:
            # an evaluated event (a tick's firing is not one)
            self.evaluated += step.outcome.explain.get("mode") != "absence"
            if not step.outcome.fired:
                continue
            self.fired += 1
            event = step.event
            if len(self.firings) < MAX_FIRINGS:
                self.firings.append(
                    FiringOut(
                        event_id=event.id,
                        block_number=event.block_number,
                        log_index=event.log_index,
                        agent_id=event.agent_id,
                        timestamp=event.timestamp,
                        block_time=event.block_time,
                    )
                )
            if len(self.explains) < self.explain_limit:
                self.explains.append(step.outcome.explain)
