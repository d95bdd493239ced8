"""Stored triggers into the evaluator's form, and a replay of one trigger over a
stream of events: what the matcher does per event, without Kafka, the database or
any action. The matcher compiles its index with :func:`compile_trigger`; the API's
backtest runs :func:`replay` over stored events."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from shared.evaluate import (
    ActionSpec,
    Outcome,
    TriggerSpec,
    evaluate,
    forget_removed,
    retract,
    scope_keys,
)
from shared.events import Event
from shared.trigger_index import TriggerIndex
from shared.triggers import Condition

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger(__name__)


def compile_trigger(row: asyncpg.Record | Mapping[str, Any]) -> TriggerSpec | None:
    """A stored trigger as the evaluator takes it; None (logged) when a row written
    behind the API's back does not validate: one bad trigger never stops the rest."""
    try:
        conditions = tuple(Condition.model_validate(c) for c in row["conditions"])
    except ValidationError as exc:
        log.error("trigger skipped: invalid condition", trigger_id=row["id"], error=str(exc))
        return None
    return TriggerSpec(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        chain_id=row["chain_id"],
        registry=row["registry"],
        enabled_at=row["enabled_at"],
        cooldown_seconds=row["cooldown_seconds"],
        conditions=conditions,
        version=_version(row),
        actions=tuple(
            ActionSpec(
                id=a["id"],
                action_type=a["action_type"],
                priority=a["priority"] if a["priority"] is not None else 1,
                config=a["config"] or {},
            )
            for a in row["actions"]
        ),
    )


def _version(row: asyncpg.Record | Mapping[str, Any]) -> int:
    try:
        value = row["version"]
    except KeyError:
        return 0
    return value if isinstance(value, int) else 0


@dataclass(frozen=True, slots=True)
class Step:
    """One event the trigger was evaluated on (a candidate of the matcher's index)."""

    event: Event
    outcome: Outcome


class Replay:
    """One trigger evaluated event after event, as the live matcher does: only on the
    events its index would offer the trigger, with its state rows carried from one
    event to the next. ``enabled_at`` is ignored: a replay is history on purpose."""

    def __init__(self, trigger: TriggerSpec) -> None:
        self.trigger = trigger
        self.states: dict[str, dict[str, Any]] = {}
        self._index = TriggerIndex([trigger])

    def step(self, event: Event) -> Step | None:
        """Evaluate one event; None when the trigger is not a candidate for it."""
        trigger = self.trigger
        if not self._index.candidates(event):
            return None
        keys = scope_keys(trigger, event)
        outcome = evaluate(
            trigger, event, states={k: self.states.get(k) for k in keys}, explain_all=False
        )
        for key in outcome.changed:
            self.states[key] = outcome.states[key]
        return Step(event, outcome)

    def run(self, events: Iterable[Event]) -> Iterator[Step]:
        """``step`` over the events, yielding the evaluations."""
        for event in events:
            step = self.step(event)
            if step is not None:
                yield step

    def retract(self, chain_id: int, event_keys: Collection[str]) -> None:
        """A reorg replaced these event versions: take them out of every state row."""
        for key, state in list(self.states.items()):
            out = retract(
                self.trigger,
                state=state,
                chain_id=chain_id,
                from_block=0,
                to_block=None,
                event_keys=event_keys,
            )
            if out.changed:
                self.states[key] = out.state

    def edit(self, trigger: TriggerSpec) -> None:
        """The trigger was changed: states carry over per condition identity, what the
        edit removed is forgotten (as the matcher does when its index reloads)."""
        self.trigger = trigger
        self._index = TriggerIndex([trigger])
        self.states = {k: forget_removed(trigger, v) for k, v in self.states.items()}
