"""Backtests: a trigger replayed over stored events with the matcher's own engine
(shared.replay over shared.evaluate), without running any action."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from services.api import queries
from services.api.models import BacktestIn, BacktestOut, FiringOut
from shared.db import Conn
from shared.evaluate import ActionSpec, TriggerSpec
from shared.events import event_from_row
from shared.replay import Replay
from shared.triggers import TriggerCreate

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
            ActionSpec(
                id=i,
                action_type=a.action_type.value,
                priority=a.priority,
                config={},
            )
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
    times in [from, to), in chain order (block number, log index). Must run inside a
    transaction (a server-side cursor streams the events). Stops, truncated, after
    ``max_events`` events or ``time_limit`` seconds, yielding to other requests every
    few hundred events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    replay = Replay(spec)
    scanned = evaluated = fired = 0
    truncated = False
    firings: list[FiringOut] = []
    explains: list[dict[str, Any]] = []
    sql = queries.backtest_events_sql(max_events + 1)
    async for row in conn.cursor(
        sql, spec.chain_id, spec.registry, body.from_, body.to, prefetch=1000
    ):
        if scanned == max_events:
            truncated = True
            break
        scanned += 1
        step = replay.step(event_from_row(row))
        if scanned % 500 == 0:
            await asyncio.sleep(0)  # let other requests in between
            if loop.time() > deadline:
                truncated = True
                break
        if step is None:
            continue
        evaluated += 1
        if not step.outcome.fired:
            continue
        fired += 1
        event = step.event
        if len(firings) < MAX_FIRINGS:
            firings.append(
                FiringOut(
                    event_id=event.id,
                    block_number=event.block_number,
                    log_index=event.log_index,
                    agent_id=event.agent_id,
                    timestamp=event.timestamp,
                    block_time=event.block_time,
                )
            )
        if len(explains) < body.explain_limit:
            explains.append(step.outcome.explain)
    return BacktestOut(
        trigger_id=trigger_id,
        from_=body.from_,
        to=body.to,
        events_scanned=scanned,
        evaluated=evaluated,
        fired=fired,
        truncated=truncated,
        firings=firings,
        explains=explains,
    )
