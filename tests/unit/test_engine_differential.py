"""The engine (shared/engine/evaluate.py through shared/engine/replay.py, as the backtest runs it)
against the reference evaluator (tests/reference.py, written from docs/semantics.md
alone): random triggers of every condition type, groups, mixed scopes, cooldowns,
absence triggers (section 5a), over random histories of several chains and agents,
both feedback layouts, revocations, reorgs with replacements, heartbeats and edits
between events. Both must fire on exactly the same event versions, in the same order
(an absence firing: the version of its silence's last matching event).
``make fuzz-engine`` runs the same property long."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings

from shared.contract.events import Event, version_key
from shared.engine.replay import Replay, compile_trigger
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
    """The versions the engine's firings report, in order: an event's own, or for an
    absence firing at a tick its silence's last matching event (``Step.event``)."""
    replay = Replay(spec_of(trigger))
    fired: list[str] = []
    for n, (kind, payload) in enumerate(steps):
        if kind == "event":
            assert isinstance(payload, Event)
            for step in replay.feed(payload):  # the event's tick first, then the event
                if not step.outcome.fired:
                    continue
                if step.outcome.explain.get("mode") == "absence":
                    fired.append(version_key(step.event))
                else:
                    assert step.event is payload
                    fired.append(version_key(payload))
        elif kind == "tick":
            chain_id, block_time = payload
            for step in replay.tick(chain_id, block_time, f"hb:{n}"):
                assert step.outcome.fired
                assert step.outcome.explain["mode"] == "absence"
                fired.append(version_key(step.event))
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
        elif isinstance(payload, tuple):  # a heartbeat: (chain_id, block_time)
            shown = list(payload)
        else:
            shown = payload if isinstance(payload, dict) else sorted(payload)
        note(f"{kind}: {json.dumps(shown)}")
    assert engine_firings(trigger, steps) == reference_firings(trigger, steps)


def test_a_recomputation_applies_the_edits_between_its_events() -> None:
    """Found in review: an edit that removes a condition and one that adds it back,
    with no event between them, then a revocation of a feedback from before them.
    The recomputation must apply both edits where they happened (the condition
    starts again from no state, section 7), not only the version changes it sees
    between evaluated events: before the fix the engine fired once more than the
    reference."""
    from tests.unit.test_reference_rules import fb, revoke  # noqa: PLC0415

    low = {"condition_type": "ema_threshold", "field": "score", "operator": "<",
           "value": "40", "config": {"alpha": "0.5"}}  # fmt: skip
    other = {**low, "value": "45"}
    v1 = {"chain_id": 1, "registry": "reputation", "cooldown_seconds": None, "conditions": [low]}
    v2 = {**v1, "conditions": [other]}
    client = "0x" + "3b" * 20
    e0, f = fb(1, 100, client_address=client, feedback_index=7), fb(2, 100, feedback_index=1)
    g, h = (fb(n, 0, client_address=client, feedback_index=n + 5) for n in (3, 5))
    steps: list[Step] = [
        ("event", e0), ("event", f), ("edit", v2), ("edit", v1),
        ("event", g), ("event", revoke(4, 1)), ("event", h),
    ]  # fmt: skip
    expected = reference_firings(v1, steps)
    assert expected == [version_key(g)]
    assert engine_firings(v1, steps) == expected


def test_a_recomputation_across_a_removed_cooldown_does_not_bring_it_back() -> None:
    """Found in review: a cooldown removed by an edit (its firing time forgotten),
    then a revocation of a feedback from before the edit, then the cooldown added
    back: the recomputation must not resurrect the forgotten firing time."""
    from tests.unit.test_reference_rules import fb, revoke  # noqa: PLC0415

    low = {"condition_type": "ema_threshold", "field": "score", "operator": "<",
           "value": "40", "config": {"alpha": "0.5"}}  # fmt: skip
    v1 = {"chain_id": 1, "registry": "reputation", "cooldown_seconds": 1000, "conditions": [low]}
    v2 = {**v1, "cooldown_seconds": None}
    client = "0x" + "3b" * 20
    events = [fb(1, 10, client_address=client, feedback_index=7), fb(2, 10, feedback_index=1)]
    events += [fb(n, 100, client_address=client, feedback_index=n + 5) for n in (3, 4)]
    later = [fb(n, 0, client_address=client, feedback_index=n + 4) for n in (6, 7, 8)]
    steps: list[Step] = [("event", e) for e in events]
    steps.insert(2, ("edit", v2))
    steps += [("event", revoke(5, 1)), ("edit", v1)] + [("event", e) for e in later]
    expected = reference_firings(v1, steps)
    assert len(expected) == 2
    assert engine_firings(v1, steps) == expected
