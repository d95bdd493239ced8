"""The matcher leaves undecoded the events the trigger index rules out from their
keys alone (``TriggerIndex.may_match`` over ``event_keys`` of the message): that
must never drop an event that has a candidate."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.contract.events import Event
from shared.contract.jobs import (
    EventKeys,
    EventMessage,
    TickMessage,
    dump_message,
    event_keys,
)
from shared.engine.evaluate import TriggerSpec, evaluate
from shared.engine.replay import compile_trigger
from shared.engine.trigger_index import TriggerIndex
from tests import engine_strategies as es
from tests.strategies import event_dicts, retraction_messages
from tools.eventgen import make_event

AT = datetime(2026, 12, 6, tzinfo=UTC)


def _spec(n: int, trigger: dict[str, Any]) -> TriggerSpec:
    spec = compile_trigger(
        {
            "id": f"t{n:02d}",
            "user_id": "u",
            "name": "t",
            "chain_id": trigger["chain_id"],
            "registry": trigger["registry"],
            "enabled_at": AT,
            "cooldown_seconds": trigger["cooldown_seconds"],
            "conditions": trigger["conditions"],
            "actions": [],
        }
    )
    assert spec is not None
    return spec


def _index(triggers: list[dict[str, Any]]) -> TriggerIndex:
    index = TriggerIndex()
    for n, trigger in enumerate(triggers):
        index.put(_spec(n, trigger))
    return index


@st.composite
def events_of_the_chains(draw: st.DrawFn) -> Event:
    # mostly feedback and revocations: the triggers drawn watch them most
    kind = draw(st.sampled_from(("NewFeedback", "FeedbackRevoked", None)))
    data = draw(event_dicts(kind))
    data["chain_id"] = draw(st.sampled_from(es.CHAINS))
    if "agent_id" in data:
        data["agent_id"] = draw(st.sampled_from((*es.AGENTS, 4)))
    return Event.model_validate(data)


@st.composite
def keyed_triggers(draw: st.DrawFn) -> dict[str, Any]:
    """Engine triggers, half of them keyed on one event type and agent (the index's
    buckets), as most triggers are."""
    trigger = draw(es.triggers())
    if trigger["registry"] == "reputation" and draw(st.booleans()):
        kind = draw(st.sampled_from(("NewFeedback", "FeedbackRevoked")))
        keyed = es.validated(
            {
                **trigger,
                "conditions": [
                    es._condition("event_type_equals", "=", kind),
                    es._condition("agent_id_equals", "=", str(draw(st.sampled_from(es.AGENTS)))),
                    *trigger["conditions"],
                ],
            }
        )
        assume(keyed is not None)
        assert keyed is not None
        return keyed
    return trigger


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(keyed_triggers(), min_size=1, max_size=6), st.lists(events_of_the_chains(), max_size=8)
)
def test_an_event_ruled_out_by_its_keys_has_no_candidate(
    triggers: list[dict[str, Any]], events: list[Event]
) -> None:
    index = _index(triggers)
    for event in events:
        keys = event_keys(dump_message(EventMessage(event=event, ingested_at=AT)))
        assert keys == EventKeys(
            event.chain_id, event.registry.value, event.event_type, event.agent_id
        )
        may = index.may_match(keys.chain_id, keys.registry, keys.event_type, keys.agent_id)
        found = index.candidates(event)
        if found:
            assert may, (event, [t.id for t in found])
        elif may:
            # only a revocation may be let through for nothing: the stateless
            # triggers on NewFeedback are not its candidates
            assert event.event_type == "FeedbackRevoked"


def test_the_index_rules_out_other_agents_types_chains_and_registries() -> None:
    feedback_of_agent_2: dict[str, Any] = {
        "chain_id": 1,
        "registry": "reputation",
        "cooldown_seconds": None,
        "conditions": [
            {
                "condition_type": "agent_id_equals",
                "field": "agent_id",
                "operator": "=",
                "value": "2",
            },
            {
                "condition_type": "event_type_equals",
                "field": "event_type",
                "operator": "=",
                "value": "NewFeedback",
            },
        ],
    }
    index = _index([feedback_of_agent_2])
    assert index.may_match(1, "reputation", "NewFeedback", 2)
    assert not index.may_match(1, "reputation", "NewFeedback", 3)
    assert not index.may_match(1, "reputation", "NewFeedback", None)
    assert not index.may_match(1, "reputation", "ResponseAppended", 2)
    assert not index.may_match(2, "reputation", "NewFeedback", 2)
    assert not index.may_match(1, "validation", "NewFeedback", 2)
    # a stateless trigger on NewFeedback is no candidate of a revocation, but the
    # keys alone cannot tell: let through
    assert index.may_match(1, "reputation", "FeedbackRevoked", 2)
    chain_wide = {**feedback_of_agent_2, "conditions": feedback_of_agent_2["conditions"][1:]}
    index = _index([chain_wide])
    assert index.may_match(1, "reputation", "NewFeedback", 3)
    assert index.may_match(1, "reputation", "NewFeedback", None)


@given(retraction_messages())
def test_keys_are_read_only_from_event_messages(message: Any) -> None:
    assert event_keys(dump_message(message)) is None


def test_keys_not_of_their_types_are_left_to_the_full_parse() -> None:
    tick = TickMessage(chain_id=1, block_number=5, block_hash="0x" + "ab" * 32, timestamp=10)
    assert event_keys(dump_message(tick)) is None
    good = {"chain_id": 1, "registry": "reputation", "event_type": "NewFeedback", "agent_id": 7}
    assert event_keys(orjson.dumps({"kind": "event", "event": good})) == EventKeys(
        1, "reputation", "NewFeedback", 7
    )
    for field, value in [
        ("chain_id", "1"),
        ("chain_id", True),
        ("chain_id", 1.0),
        ("chain_id", None),
        ("registry", "reputations"),
        ("registry", 1),
        ("event_type", None),
        ("event_type", ["NewFeedback"]),
        ("agent_id", "7"),
        ("agent_id", False),
    ]:
        body = orjson.dumps({"kind": "event", "event": {**good, field: value}})
        assert event_keys(body) is None, (field, value)
    for body in [b"", b"{", b"[]", b'{"kind":"event"}', b'{"kind":"event","event":[1]}']:
        assert event_keys(body) is None, body
    # an integer beyond 64 bits is the full parse's to refuse
    assert event_keys(b'{"kind":"event","event":{"chain_id":' + b"9" * 30 + b"}}") is None


@pytest.mark.parametrize("agent", [None, 3])
def test_an_absent_agent_meets_only_chain_wide_triggers(agent: int | None) -> None:
    index = _index(
        [
            {
                "chain_id": 1,
                "registry": "identity",
                "cooldown_seconds": None,
                "conditions": [
                    {
                        "condition_type": "agent_id_equals",
                        "field": "agent_id",
                        "operator": "in",
                        "value": "3,4",
                    }
                ],
            }
        ]
    )
    assert index.may_match(1, "identity", "Registered", agent) is (agent == 3)


def _row(n: int, value: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"t{n}",
        "user_id": "u",
        "name": "t",
        "chain_id": 1,
        "registry": "reputation",
        "enabled_at": AT,
        "cooldown_seconds": None,
        "version": 1,
        "conditions": [
            {"condition_type": "score_threshold", "field": "score", "operator": "<", "value": value}
        ],
        "actions": [{"id": n, "action_type": "rest", "priority": None, "config": config}],
    }


def test_triggers_share_equal_conditions_and_keep_their_own_action_configs() -> None:
    config = {"url": "https://example.org/hook", "headers": {"X-A": "b"}, "max_attempts": 3}
    a, b, c = (
        compile_trigger(_row(n, v, {**config, "n": n})) for n, v in enumerate(["1", "1", "2"])
    )
    assert a is not None
    assert b is not None
    assert c is not None
    # one frozen model for an equal definition, another for another
    assert a.conditions[0] is b.conditions[0]
    assert a.conditions[0] is not c.conditions[0]
    assert c.conditions[0].number == 2
    assert a.conditions[0].model_dump() == b.conditions[0].model_dump()
    # the shared fields set is what pydantic would have given each
    assert a.conditions[0].model_fields_set == {"condition_type", "field", "operator", "value"}
    # each action keeps its own config, decoded afresh at every read
    assert a.actions[0].config == {**config, "n": 0}
    assert b.actions[0].config == {**config, "n": 1}
    a.actions[0].config["url"] = "https://elsewhere.example/"
    assert a.actions[0].config["url"] == "https://example.org/hook"
    assert a.actions[0].priority == 1


def test_equal_conditions_at_the_same_place_share_their_compiled_form() -> None:
    a, b, c = (compile_trigger(_row(n, v, {"url": "https://x.example/"})) for n, v in
               enumerate(["1", "1", "2"]))  # fmt: skip
    other_chain = compile_trigger({**_row(3, "1", {"url": "https://x.example/"}), "chain_id": 2})
    assert a is not None
    assert b is not None
    assert c is not None
    assert other_chain is not None
    (node_a,), (node_b,) = a._program.gate_nodes, b._program.gate_nodes
    assert node_a is node_b
    assert c._program.gate_nodes[0] is not node_a
    assert other_chain._program.gate_nodes[0] is not node_a
    # the same config: one string for both actions
    assert a.actions[0].config_json is b.actions[0].config_json
    # an agent's condition: a model of its own, its fields set shared
    agent = {
        "condition_type": "agent_id_equals",
        "field": "agent_id",
        "operator": "=",
        "value": "7",
    }
    d, e = (compile_trigger({**_row(n, "1", {}), "conditions": [agent]}) for n in (4, 5))
    assert d is not None
    assert e is not None
    assert d.conditions[0] is not e.conditions[0]
    assert d.conditions[0].__pydantic_fields_set__ is e.conditions[0].__pydantic_fields_set__
    assert d.conditions[0].model_fields_set == {"condition_type", "field", "operator", "value"}
    # and each still judges by its own definition (score < 1, score < 2)
    one = Event.model_validate(
        make_event(random.Random(1), chain_id=1, block_number=5, log_index=0, agent_id=7,
                   legacy=True, score=1)
    )  # fmt: skip
    assert one.score == 1
    assert not evaluate(a, one, states={}).fired
    assert evaluate(c, one, states={}).fired
    assert evaluate(d, one, states={}).fired


def _reference_candidates(live: dict[str, Any], event: Event) -> list[str]:
    """The candidates by the rule the index documents, trigger by trigger: its chain
    and registry; each top-level = / in condition on the event type or the agent
    names the event's; a revocation also brings the stateful triggers that would
    take the NewFeedback it names."""

    def named(spec: Any, kind: str) -> set[str] | None:
        found: set[str] | None = None
        for c in spec.conditions:
            if c.condition_type.value == kind and c.operator in ("=", "in"):
                found = {v.strip() for v in c.value.split(",")}
        return found

    def keyed_to(spec: Any, event_type: str) -> bool:
        types, agents = named(spec, "event_type_equals"), named(spec, "agent_id_equals")
        if types is not None and event_type not in types:
            return False
        return agents is None or (event.agent_id is not None and str(event.agent_id) in agents)

    out = []
    for tid, spec in live.items():
        if (spec.chain_id, spec.registry) != (event.chain_id, event.registry.value):
            continue
        if keyed_to(spec, event.event_type) or (
            event.event_type == "FeedbackRevoked"
            and spec.is_stateful
            and keyed_to(spec, "NewFeedback")
        ):
            out.append(tid)
    return sorted(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 5), st.none() | keyed_triggers()), min_size=1, max_size=14),
    st.lists(events_of_the_chains(), min_size=1, max_size=6),
)
def test_puts_replacements_and_removals_keep_the_candidates_exact(
    steps: list[tuple[int, dict[str, Any] | None]], events: list[Event]
) -> None:
    """Triggers put, replaced (another definition under the same id) and removed in
    any order, several on one key: the candidates are always those of the triggers
    live, and an emptied index holds nothing."""
    index = TriggerIndex()
    live: dict[str, Any] = {}
    for n, trigger in steps:
        if trigger is None:
            index.remove(f"t{n:02d}")
            live.pop(f"t{n:02d}", None)
        else:
            spec = _spec(n, trigger)
            index.put(spec)
            live[spec.id] = spec
        for event in events:
            assert [t.id for t in index.candidates(event)] == _reference_candidates(live, event)
    assert len(index) == len(live)
    for tid in list(live):
        index.remove(tid)
    assert index._buckets == {}
