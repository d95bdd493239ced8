"""The engine (shared/evaluate.py through shared/replay.py, as the backtest runs it)
against the reference evaluator (tests/reference.py, written from docs/semantics.md
alone): random triggers of every condition type, groups, mixed scopes, cooldowns,
over random histories of several chains and agents, both feedback layouts,
revocations, reorgs with replacements and edits between events. Both must fire on
exactly the same event versions. ``make fuzz-engine`` runs the same property long."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings

from shared.events import Event, event_key
from shared.replay import Replay, compile_trigger
from tests.engine_strategies import cases
from tests.reference import Step, reference_firings

pytestmark = pytest.mark.unit

#: Examples per run: bounded in make test, raised by make fuzz-engine.
EXAMPLES = int(os.environ.get("ENGINE_FUZZ_EXAMPLES", "300"))


def spec_of(trigger: dict[str, Any]) -> Any:
    spec = compile_trigger(
        {
            "id": "t-diff",
            "user_id": "u",
            "name": "diff",
            "chain_id": trigger["chain_id"],
            "registry": trigger["registry"],
            "enabled_at": datetime(2020, 1, 1, tzinfo=UTC),
            "cooldown_seconds": trigger.get("cooldown_seconds"),
            "conditions": trigger["conditions"],
            "actions": [],
        }
    )
    assert spec is not None
    return spec


def engine_firings(trigger: dict[str, Any], steps: list[Step]) -> list[str]:
    replay = Replay(spec_of(trigger))
    fired: list[str] = []
    for kind, payload in steps:
        if kind == "event":
            assert isinstance(payload, Event)
            step = replay.step(payload)
            if step is not None and step.outcome.fired:
                fired.append(event_key(payload))
        elif kind == "retract":
            replay.retract(trigger["chain_id"], payload)
        else:
            replay.edit(spec_of(payload))
            trigger = payload
        # the matcher keeps its states as JSONB: each step starts from a round trip
        replay.states = json.loads(json.dumps(replay.states))
    return fired


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_engine_fires_exactly_where_the_reference_does(
    case: tuple[dict[str, Any], list[Step]],
) -> None:
    trigger, steps = case
    note(f"trigger: {json.dumps(trigger)}")
    for kind, payload in steps:
        shown: Any
        if isinstance(payload, Event):
            shown = payload.model_dump(mode="json", exclude_none=True)
        else:
            shown = payload if isinstance(payload, dict) else sorted(payload)
        note(f"{kind}: {json.dumps(shown)}")
    assert engine_firings(trigger, steps) == reference_firings(trigger, steps)
