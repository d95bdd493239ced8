"""services.matcher.evaluate: leaf semantics, groups, EMA, rate windows, cooldown, explain."""

from __future__ import annotations

import copy
import decimal
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from shared.contract.conditions import Condition
from shared.contract.events import Event
from shared.engine.evaluate import (
    ActionSpec,
    Evaluation,
    TriggerSpec,
    condition_id,
    evaluate,
    retract,
    scope_key,
    scope_keys,
)
from tests.strategies import DROP, example_event

pytestmark = pytest.mark.unit

BASE = 1_700_000_000
CLIENT = "0x" + "22" * 20
OTHER = "0x" + "66" * 20
VALIDATOR = "0x" + "44" * 20
W60 = {"time_window": "60s"}


def cond(kind: str, op: str, value: str = "", field: str = "", **config: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"condition_type": kind, "operator": op, "value": value}
    if field:
        data["field"] = field
    if config:
        data["config"] = config
    return data


def group(op: str, *children: dict[str, Any]) -> dict[str, Any]:
    return {"condition_type": "group", "operator": op, "config": {"conditions": list(children)}}


def trig(*conds: dict[str, Any], cooldown: int | None = None, tid: str = "t1") -> TriggerSpec:
    return TriggerSpec(
        id=tid,
        user_id="u1",
        name="test",
        chain_id=84532,
        registry="reputation",
        enabled_at=datetime(2024, 1, 1, tzinfo=UTC),
        cooldown_seconds=cooldown,
        conditions=tuple(Condition.model_validate(c) for c in conds),
        actions=(ActionSpec.of(1, "rest", 1, {"url": "https://x"}),),
    )


def event(event_type: str = "NewFeedback", **overrides: Any) -> Event:
    return Event.model_validate(example_event(event_type, **overrides))


def fb(
    i: int,
    score: int | None = 87,
    *,
    ts: int = BASE,
    value: int | None = None,
    decimals: int | None = None,
    **overrides: Any,
) -> Event:
    """NewFeedback number i (its log index), legacy score or current value/decimals."""
    data: dict[str, Any] = {"log_index": i, "timestamp": ts, "block_number": 100 + i}
    if value is not None:
        data.update(score=DROP, value=value, value_decimals=decimals or 0)
    else:
        data["score"] = score
    data.update(overrides)
    return event("NewFeedback", **data)


def revoke(i: int, index: int, *, ts: int = BASE, client: str = CLIENT, agent: int = 42) -> Event:
    return event(
        "FeedbackRevoked",
        log_index=i,
        timestamp=ts,
        block_number=100 + i,
        feedback_index=index,
        client_address=client,
        agent_id=agent,
    )


def verdict(c: dict[str, Any], e: Event) -> bool:
    t = trig(c)
    return evaluate(t, e, states=dict.fromkeys(scope_keys(t, e))).fired


def run(
    t: TriggerSpec, events: list[Event], state: dict[str, Any] | None = None
) -> list[Evaluation]:
    """Evaluate event after event; ``state``: the trigger's row ('') to start from."""
    rows: dict[str, Any] = {} if state is None else {"": state}
    out: list[Evaluation] = []
    for e in events:
        outcome = evaluate(t, e, states={k: rows.get(k) for k in scope_keys(t, e)})
        rows.update(outcome.states)
        out.append(outcome)
    return out


def cid(t: TriggerSpec, path: str) -> str:
    """The state identity of the condition at ``path`` ("0", "2.1")."""
    first, *rest = path.split(".")
    c = t.conditions[int(first)]
    for i in rest:
        c = c.children[int(i)]
    return condition_id(c, t.chain_id, t.registry)


def cstate(t: TriggerSpec, outcome: Evaluation, path: str, row: str = "") -> Any:
    return outcome.states[row]["conditions"][cid(t, path)]


def fired(outcomes: list[Evaluation]) -> list[bool]:
    return [o.fired for o in outcomes]


def entry(outcome: Evaluation, path: str) -> dict[str, Any]:
    (found,) = [c for c in outcome.explain["conditions"] if c["path"] == path]
    assert isinstance(found, dict)
    return found


# --- leaves --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("=", "42", True),
        ("=", "7", False),
        ("!=", "7", True),
        ("!=", "42", False),
        ("in", "7, 42", True),
        ("in", "7,8", False),
        ("not_in", "7,8", True),
        ("not_in", "8,42", False),
    ],
)
def test_agent_id_equals(op: str, value: str, expected: bool) -> None:
    assert verdict(cond("agent_id_equals", op, value), fb(1)) is expected


@pytest.mark.parametrize(
    ("op", "expected"), [("=", False), ("in", False), ("!=", True), ("not_in", True)]
)
def test_agent_id_equals_without_agent(op: str, expected: bool) -> None:
    no_agent = fb(1).model_copy(update={"agent_id": None})
    assert verdict(cond("agent_id_equals", op, "42"), no_agent) is expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("=", "87", True),
        ("=", "87.00", True),
        ("=", "86", False),
        ("!=", "86", True),
        ("!=", "87", False),
        ("<", "87.01", True),
        ("<", "87", False),
        ("<=", "87", True),
        ("<=", "86.99", False),
        (">", "86.99", True),
        (">", "87", False),
        (">=", "87", True),
        (">=", "87.01", False),
    ],
)
@pytest.mark.parametrize("layout", ["legacy", "current"])
def test_score_threshold_both_layouts(op: str, value: str, expected: bool, layout: str) -> None:
    e = fb(1, 87) if layout == "legacy" else fb(1, value=8700, decimals=2)
    assert verdict(cond("score_threshold", op, value), e) is expected


def test_score_threshold_decimal_and_negative_values() -> None:
    uptime = fb(1, value=9977, decimals=2)  # 99.77 %
    assert verdict(cond("score_threshold", ">", "99.7"), uptime)
    assert not verdict(cond("score_threshold", ">", "99.77"), uptime)
    loss = fb(2, value=-125, decimals=1)  # -12.5
    assert verdict(cond("score_threshold", "<", "-12"), loss)
    assert verdict(cond("score_threshold", "=", "-12.50"), loss)


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
def test_score_threshold_without_feedback_value(op: str) -> None:
    assert not verdict(cond("score_threshold", op, "50"), event("Registered"))


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("tag1", "=", "uptime", True),
        ("tag1", "=", "Uptime", False),
        ("tag1", "!=", "starred", True),
        ("tag1", "!=", "uptime", False),
        ("tag1", "in", "starred, uptime", True),
        ("tag1", "in", "starred,reachable", False),
        ("tag1", "not_in", "starred,reachable", True),
        ("tag1", "not_in", "uptime,reachable", False),
        ("tag2", "=", "week", True),
        ("tag2", "=", "day", False),
        ("tag2", "in", "day,week", True),
    ],
)
def test_tag_equals(field: str, op: str, value: str, expected: bool) -> None:
    e = fb(1, tag1="uptime", tag2="week")
    assert verdict(cond("tag_equals", op, value, field=field), e) is expected


def test_tag_equals_missing_tag_is_empty() -> None:
    e = fb(1)  # no tags
    assert not verdict(cond("tag_equals", "=", "uptime", field="tag1"), e)
    assert verdict(cond("tag_equals", "!=", "uptime", field="tag1"), e)
    assert verdict(cond("tag_equals", "not_in", "a,b", field="tag2"), e)
    assert not verdict(cond("tag_equals", "in", "a,b", field="tag2"), e)


def test_tag_equals_validation_tag() -> None:
    e = event("ValidationResponse", tag="final")
    assert verdict(cond("tag_equals", "=", "final", field="tag"), e)
    assert not verdict(cond("tag_equals", "=", "soft", field="tag"), e)


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("=", VALIDATOR, True),
        ("=", OTHER, False),
        ("=", f"{OTHER},{VALIDATOR.upper().replace('0X', '0x')}", True),
        ("in", f"{OTHER},{VALIDATOR}", True),
        ("in", OTHER, False),
        ("not_in", OTHER, True),
        ("not_in", f"{OTHER},{VALIDATOR}", False),
    ],
)
def test_validator_whitelist(op: str, value: str, expected: bool) -> None:
    e = event("ValidationRequest")
    assert verdict(cond("validator_whitelist", op, value), e) is expected


def test_validator_whitelist_without_validator() -> None:
    assert not verdict(cond("validator_whitelist", "in", VALIDATOR), fb(1))
    assert verdict(cond("validator_whitelist", "not_in", VALIDATOR), fb(1))


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("=", "NewFeedback", True),
        ("=", "FeedbackRevoked", False),
        ("!=", "FeedbackRevoked", True),
        ("!=", "NewFeedback", False),
        ("in", "FeedbackRevoked,NewFeedback", True),
        ("in", "FeedbackRevoked,ResponseAppended", False),
        ("not_in", "FeedbackRevoked", True),
        ("not_in", "NewFeedback,FeedbackRevoked", False),
    ],
)
def test_event_type_equals(op: str, value: str, expected: bool) -> None:
    assert verdict(cond("event_type_equals", op, value), fb(1)) is expected


@pytest.mark.parametrize(
    ("uri", "value", "expected"),
    [
        ("ipfs://bafy", "true", True),
        ("ipfs://bafy", "false", False),
        ("", "true", False),
        ("", "false", True),
        (None, "TRUE", False),
        (None, "False", True),
    ],
)
def test_file_uri_exists(uri: str | None, value: str, expected: bool) -> None:
    e = fb(1, file_uri=uri) if uri is not None else fb(1)
    assert verdict(cond("file_uri_exists", "=", value), e) is expected


def test_conditions_are_anded_and_no_conditions_fire() -> None:
    e = fb(1, tag1="uptime")
    both = trig(cond("agent_id_equals", "=", "42"), cond("tag_equals", "=", "uptime", "tag1"))
    assert evaluate(both, e, states={}).fired
    one = trig(cond("agent_id_equals", "=", "42"), cond("tag_equals", "=", "x", "tag1"))
    assert not evaluate(one, e, states={}).fired
    assert evaluate(trig(), e, states={}).fired


# --- groups --------------------------------------------------------------------------------

YES = cond("agent_id_equals", "=", "42")
NO = cond("agent_id_equals", "=", "7")


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (group("any", NO, YES), True),
        (group("any", NO, NO), False),
        (group("all", YES, YES), True),
        (group("all", YES, NO), False),
        (group("not", NO), True),
        (group("not", YES), False),
        (group("all", YES, group("any", NO, group("not", NO))), True),
        (group("not", group("any", NO, group("all", YES, YES))), False),
        (group("any", group("all", YES, NO), group("not", group("not", NO))), False),
    ],
)
def test_groups(c: dict[str, Any], expected: bool) -> None:
    assert verdict(c, fb(1)) is expected


def test_group_evaluates_stateful_children_without_short_circuit() -> None:
    # any(score > 50, rate >= 1): the rate window counts even though the first child is True
    t = trig(group("any", cond("score_threshold", ">", "50"), cond("rate_limit", ">=", "1", **W60)))
    out = run(t, [fb(1, 90), fb(2, 10, ts=BASE + 1)])
    assert fired(out) == [True, True]
    assert len(cstate(t, out[1], "0.1")["window"]) == 2
    paths = [c["path"] for c in out[1].explain["conditions"]]
    assert paths == ["0", "0.0", "0.1"]


def test_not_group_over_a_stateful_condition() -> None:
    # fire while fewer than 2 events in a minute: not(count >= 2)
    t = trig(group("not", cond("rate_limit", ">=", "2", **W60)))
    out = run(t, [fb(1, ts=BASE), fb(2, ts=BASE + 10), fb(3, ts=BASE + 100)])
    assert fired(out) == [True, False, True]


# --- the stateless gate --------------------------------------------------------------------


def test_stateless_gate_leaves_state_untouched() -> None:
    t = trig(cond("tag_equals", "=", "uptime", "tag1"), cond("rate_limit", ">=", "1", **W60))
    first = evaluate(t, fb(1, tag1="uptime"), states={})
    assert first.fired
    assert first.changed == ("",)
    state = first.state
    snapshot = copy.deepcopy(state)
    out = evaluate(t, fb(2, tag1="starred", ts=BASE + 1), states={"": state})
    assert out == Evaluation(False, {"": state}, (), {})
    assert state == snapshot
    assert out.state is state


def test_stateless_trigger_has_no_state() -> None:
    out = evaluate(trig(YES), fb(1), states={})
    assert out.fired
    assert not out.changed
    assert out.states == {}


# --- ema_threshold -------------------------------------------------------------------------


def ema_of(t: TriggerSpec, outcome: Evaluation, path: str = "0") -> Decimal:
    return Decimal(cstate(t, outcome, path)["ema"])


def test_ema_first_value_then_window_size() -> None:
    # window_size 3 -> alpha = 2/4 = 0.5
    t = trig(cond("ema_threshold", "<", "10", window_size=3))
    out = run(t, [fb(1, 80), fb(2, 40, ts=BASE + 1), fb(3, 100, ts=BASE + 2)])
    assert [ema_of(t, o) for o in out] == [Decimal(80), Decimal(60), Decimal(80)]
    state = cstate(t, out[-1], "0")
    assert Decimal(state["ema"]) == 80
    assert (state["count"], state["holding"]) == (3, False)


def test_ema_with_alpha_and_decimal_values() -> None:
    t = trig(cond("ema_threshold", ">", "1000", alpha="0.2"))
    out = run(t, [fb(1, value=9977, decimals=2), fb(2, value=5, decimals=0, ts=BASE + 1)])
    # 0.2 * 5 + 0.8 * 99.77
    assert ema_of(t, out[0]) == Decimal("99.77")
    assert ema_of(t, out[1]) == Decimal("80.816")


def test_ema_window_size_alpha_is_two_over_n_plus_one() -> None:
    t = trig(cond("ema_threshold", ">", "1000", window_size=2))
    out = run(t, [fb(1, 0), fb(2, 90, ts=BASE + 1)])
    assert abs(ema_of(t, out[1]) - Decimal(60)) < Decimal("1e-35")


def test_ema_crossing_fires_once_and_rearms_past_the_band() -> None:
    # alpha 1: the ema is the last value; fire below 50, re-arm at >= 60
    t = trig(cond("ema_threshold", "<", "50", alpha=1, hysteresis=10))
    values = [60, 40, 30, 55, 45, 59, 60, 40, 49]
    out = run(t, [fb(i, v, ts=BASE + i) for i, v in enumerate(values)])
    assert fired(out) == [False, True, False, False, False, False, False, True, False]
    # the level holds from a crossing until the EMA is back past the band (>= 60)
    holding = [cstate(t, o, "0")["holding"] for o in out]
    assert holding == [False, True, True, True, True, True, False, True, True]
    armed = [True, True, False, False, False, False, False, True, False]
    assert [o.explain["armed"] for o in out] == armed


def test_ema_crossing_above_with_inclusive_operator() -> None:
    t = trig(cond("ema_threshold", ">=", "80", alpha=1, hysteresis="5"))
    values = [80, 90, 76, 75, 80, 74.5, 81]
    out = run(t, [fb(i, value=int(v * 10), decimals=1, ts=BASE + i) for i, v in enumerate(values)])
    # re-armed when not (ema >= 75), i.e. ema < 75: only 74.5
    assert fired(out) == [True, False, False, False, False, False, True]


def test_ema_crossing_without_hysteresis_rearms_once_not_firing() -> None:
    t = trig(cond("ema_threshold", "<", "50", alpha=1))
    out = run(t, [fb(i, v, ts=BASE + i) for i, v in enumerate([40, 45, 50, 49])])
    assert fired(out) == [True, False, False, True]


def test_ema_fire_on_every() -> None:
    t = trig(cond("ema_threshold", "<", "50", alpha=1, fire_on="every"))
    out = run(t, [fb(i, v, ts=BASE + i) for i, v in enumerate([40, 45, 60, 10])])
    assert fired(out) == [True, True, False, True]


def test_ema_ignores_events_without_feedback_value() -> None:
    t = trig(cond("ema_threshold", "<", "50", alpha=1))
    first = evaluate(t, fb(1, 40), states={})
    assert first.fired
    out = evaluate(t, event("ResponseAppended", log_index=9), states={"": first.state})
    # the EMA's verdict as it stands (holding), but the crossing was used: no firing
    assert entry(out, "0")["verdict"] is True
    assert not out.fired
    assert not out.changed
    assert entry(out, "0")["input"] is None


def test_ema_state_is_exact_under_any_thread_context() -> None:
    t = trig(cond("ema_threshold", "<", "0", window_size=2))
    events = [fb(i, v, ts=BASE + i) for i, v in enumerate([1, 2, 3, 4, 5, 6])]
    expected = run(t, events)[-1].state
    with decimal.localcontext(decimal.Context(prec=5)):
        assert run(t, events)[-1].state == expected


# --- rate_limit ----------------------------------------------------------------------------


def counts(outcomes: list[Evaluation], path: str = "0") -> list[Any]:
    return [entry(o, path)["input"].get("count") for o in outcomes]


def test_rate_window_uses_block_time() -> None:
    t = trig(cond("rate_limit", ">=", "3", **W60))
    stamps = [0, 10, 59, 60, 61, 200]
    out = run(t, [fb(i, ts=BASE + s) for i, s in enumerate(stamps)])
    assert counts(out) == [1, 2, 3, 3, 4, 1]
    assert fired(out) == [False, False, True, True, True, False]
    assert entry(out[4], "0")["input"]["window"] == [BASE + 1, BASE + 61]


def test_rate_window_keeps_a_margin_for_reorgs_and_forgets_beyond() -> None:
    t = trig(cond("rate_limit", ">=", "1", **W60))
    out = run(t, [fb(i, ts=BASE + s) for i, s in enumerate([0, 70, 81, 200])])
    # kept: later than high - W - min(W, 1 h) = 200 - 60 - 60 = 80
    assert [e[0] - BASE for e in cstate(t, out[-1], "0")["window"]] == [81, 200]
    # a replacement earlier than the newest entry (after a reorg) counts what is kept
    late = run(t, [fb(9, ts=BASE + 130)], state=out[-1].state)
    assert counts(late) == [2]  # (70, 130]: 81 and itself


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("=", "2", [False, True, False]),
        ("!=", "2", [True, False, True]),
        ("<", "2", [True, False, False]),
        ("<=", "2", [True, True, False]),
        (">", "2", [False, False, True]),
        (">=", "2", [False, True, True]),
    ],
)
def test_rate_operators(op: str, value: str, expected: list[bool]) -> None:
    t = trig(cond("rate_limit", op, value, **W60))
    assert fired(run(t, [fb(i, ts=BASE + i) for i in range(3)])) == expected


def test_rate_reset_on_trigger() -> None:
    t = trig(cond("rate_limit", ">=", "2", time_window="1m", reset_on_trigger=True))
    out = run(t, [fb(i, ts=BASE + i) for i in range(5)])
    assert fired(out) == [False, True, False, True, False]
    assert cstate(t, out[1], "0") == {"window": []}
    assert entry(out[1], "0")["reset"] is True
    after = out[1].explain["state_after"]["conditions"][cid(t, "0")]
    assert after == {"entries": 0, "newest": None}


def test_rate_reset_only_when_the_trigger_fires() -> None:
    t = trig(
        cond("rate_limit", ">=", "2", time_window="1m", reset_on_trigger=True),
        cond("ema_threshold", "<", "50", alpha=1, fire_on="every"),
    )
    out = run(t, [fb(0, 90), fb(1, 90, ts=BASE + 1), fb(2, 10, ts=BASE + 2)])
    assert fired(out) == [False, False, True]
    assert counts(out) == [1, 2, 3]
    assert cstate(t, out[2], "0")["window"] == []


def test_feedback_revoked_withdraws_from_rate_window() -> None:
    t = trig(cond("event_type_equals", "=", "NewFeedback"), cond("rate_limit", ">=", "3", **W60))
    feedbacks = [
        fb(1, ts=BASE, feedback_index=1),
        fb(2, ts=BASE + 1, feedback_index=2),
        fb(3, ts=BASE + 2, feedback_index=1, client_address=OTHER),
        fb(4, ts=BASE + 3, feedback_index=2, agent_id=43),
    ]
    last = run(t, feedbacks)[-1]
    assert len(cstate(t, last, "1")["window"]) == 4
    out = evaluate(t, revoke(5, 2, ts=BASE + 4), states={"": last.state})
    assert not out.fired
    assert out.changed == ("",)
    assert out.explain["revoked"] == {cid(t, "1"): 1}
    window = cstate(t, out, "1")["window"]
    assert [e[1].partition("@")[0] for e in window] == ["84532-101-1", "84532-103-3", "84532-104-4"]
    # the next feedback counts the 3 entries left and itself
    nxt = evaluate(t, fb(6, ts=BASE + 5, feedback_index=3), states={"": out.state})
    assert entry(nxt, "1")["input"]["count"] == 4
    # revoking again changes nothing
    again = evaluate(t, revoke(5, 2, ts=BASE + 4), states={"": out.state})
    assert not again.changed
    assert again.explain == {}


def test_feedback_revoked_counts_itself_when_conditions_match_it() -> None:
    t = trig(cond("rate_limit", ">=", "2", **W60))
    state = run(t, [fb(1, feedback_index=1)])[-1].state
    out = evaluate(t, revoke(2, 1, ts=BASE + 1), states={"": state})
    assert out.explain["revoked"] == {cid(t, "0"): 1}
    assert entry(out, "0")["input"]["count"] == 1
    assert not out.fired
    (only,) = cstate(t, out, "0")["window"]
    assert only[1].partition("@")[0] == "84532-102-2"
    assert only[2] is None


# --- cooldown ------------------------------------------------------------------------------


def test_cooldown_suppresses_refiring() -> None:
    t = trig(YES, cooldown=60)
    assert t.is_stateful
    out = run(t, [fb(1, ts=BASE), fb(2, ts=BASE + 30), fb(3, ts=BASE + 60), fb(4, ts=BASE + 61)])
    assert fired(out) == [True, False, True, False]
    assert out[0].state == {"last_fired_at": BASE}
    assert out[1].explain["suppressed"] == "cooldown"
    assert out[1].explain["cooldown_until"] == BASE + 60
    assert not out[1].changed
    assert out[2].state == {"last_fired_at": BASE + 60}
    assert out[1].explain["mode"] == "every"


def test_cooldown_suppressed_firing_still_updates_condition_state() -> None:
    t = trig(cond("rate_limit", ">=", "1", **W60), cooldown=600)
    out = run(t, [fb(1, ts=BASE), fb(2, ts=BASE + 10)])
    assert fired(out) == [True, False]
    assert out[1].changed
    assert len(cstate(t, out[1], "0")["window"]) == 2
    assert out[1].state["last_fired_at"] == BASE


def test_cooldown_zero_is_no_cooldown() -> None:
    t = trig(YES, cooldown=0)
    assert not t.is_stateful
    assert fired(run(t, [fb(1, ts=BASE + 10), fb(2, ts=BASE)])) == [True, True]


# --- scope, shape changes, retract ---------------------------------------------------------


def test_scope_key() -> None:
    e = fb(1)
    per_trigger = trig(cond("rate_limit", ">", "1", **W60))
    per_agent = trig(YES, group("not", cond("ema_threshold", "<", "1", alpha=1, scope="agent")))
    assert not per_trigger.agent_scoped
    assert per_agent.agent_scoped
    assert scope_key(per_trigger, e) == ""
    assert scope_key(per_agent, e) == "42"
    assert scope_key(per_agent, e.model_copy(update={"agent_id": None})) == ""
    assert scope_key(trig(YES), e) == ""


def test_agent_scoped_states_are_independent() -> None:
    t = trig(cond("rate_limit", ">=", "2", time_window="1m", scope="agent"))
    states: dict[str, dict[str, Any]] = {}
    results = []
    for i, agent in enumerate([1, 2, 1, 2, 3]):
        e = fb(i, ts=BASE + i, agent_id=agent)
        assert scope_keys(t, e) == (str(agent),)
        out = evaluate(t, e, states={k: states.get(k) for k in scope_keys(t, e)})
        states.update(out.states)
        results.append(out.fired)
    assert results == [False, False, True, True, False]
    assert sorted(states) == ["1", "2", "3"]


def test_state_follows_the_condition_not_its_position() -> None:
    ema = cond("ema_threshold", "<", "1", alpha=1)
    old = trig(YES, cond("rate_limit", ">=", "1", **W60), ema)
    state = run(old, [fb(1)])[-1].state
    assert sorted(state["conditions"]) == sorted([cid(old, "1"), cid(old, "2")])
    # the EMA moves to position 0 and keeps its state; the rate condition is gone
    new = trig(ema, YES)
    assert cid(new, "0") == cid(old, "2")
    out = evaluate(new, fb(2, 50, ts=BASE + 1), states={"": state})
    assert sorted(out.state["conditions"]) == [cid(new, "0")]
    assert cstate(new, out, "0")["count"] == 2
    # a changed definition starts from no state
    changed = trig(cond("ema_threshold", "<", "2", alpha=1), YES)
    fresh = evaluate(changed, fb(3, 50, ts=BASE + 2), states={"": out.state})
    assert cstate(changed, fresh, "0")["count"] == 1


def test_retract_by_block_range() -> None:
    t = trig(cond("rate_limit", ">=", "1", time_window="1h"), cooldown=10)
    state = run(t, [fb(i, ts=BASE + i) for i in range(6)])[-1].state  # blocks 100..105
    rate = cid(t, "0")
    out = retract(t, state=state, chain_id=84532, from_block=102, to_block=103)
    assert out.changed
    assert [e[4] for e in out.state["conditions"][rate]["window"]] == [100, 101, 104, 105]
    assert out.state["last_fired_at"] == state["last_fired_at"]
    assert out.explain["removed"] == {rate: 2}
    open_ended = retract(t, state=state, chain_id=84532, from_block=104, to_block=None)
    assert [e[4] for e in open_ended.state["conditions"][rate]["window"]] == [100, 101, 102, 103]
    other_chain = retract(t, state=state, chain_id=1, from_block=0, to_block=None)
    assert not other_chain.changed
    assert other_chain.state == state
    nothing = retract(t, state=None, chain_id=84532, from_block=0, to_block=None)
    assert not nothing.changed
    assert nothing.state == {}
    # exactly the versions named, when they are named
    keyed = retract(t, state=state, chain_id=84532, from_block=0, to_block=None, event_keys=[])
    assert not keyed.changed
    # a re-included event counts again
    again = evaluate(t, fb(4, ts=BASE + 4), states={"": open_ended.state})
    assert again.changed
    assert entry(again, "0")["input"]["count"] == 5


def test_retract_leaves_ema_alone() -> None:
    t = trig(cond("ema_threshold", "<", "1", alpha="0.5"))
    state = run(t, [fb(1, 10), fb(2, 20, ts=BASE + 1)])[-1].state
    out = retract(t, state=state, chain_id=84532, from_block=0, to_block=None)
    assert not out.changed
    assert out.state == state


# --- explain, JSON, purity -----------------------------------------------------------------


def test_explain_of_a_firing() -> None:
    t = trig(
        cond("event_type_equals", "=", "NewFeedback"),
        group(
            "any",
            cond("ema_threshold", "<", "50", window_size=3),
            cond("tag_equals", "=", "uptime", "tag1"),
        ),
        cond("rate_limit", ">=", "2", time_window="1m"),
        tid="trig-1",
    )
    first = evaluate(t, fb(1, 80), states={})
    out = evaluate(t, fb(2, 10, ts=BASE + 30), states={"": first.state})
    assert out.fired
    explain = out.explain
    assert explain["trigger_id"] == "trig-1"
    assert explain["event_id"] == "84532-102-2"
    assert explain["fired"] is True
    assert explain["suppressed"] is None
    assert explain["event_version"] == f"84532-102-2@{fb(2).block_hash}"
    assert explain["mode"] == "crossing"
    assert explain["set_verdict"] is True
    assert explain["armed"] is True
    assert [c["path"] for c in explain["conditions"]] == ["0", "1", "1.0", "1.1", "2"]
    by_path = {c["path"]: c for c in explain["conditions"]}
    assert by_path["0"] == {
        "path": "0",
        "type": "event_type_equals",
        "field": "event_type",
        "operator": "=",
        "value": "NewFeedback",
        "input": "NewFeedback",
        "verdict": True,
        "state_before": None,
        "state_after": None,
    }
    ema = by_path["1.0"]
    assert ema["input"] == {"value": "10"}
    assert ema["verdict"] is True
    assert ema["id"] == cid(t, "1.0")
    assert ema["state_before"] == {"ema": "80", "count": 1, "holding": False}
    assert ema["state_after"] == {"ema": "45.0", "count": 2, "holding": True}
    assert by_path["1.1"]["input"] is None
    assert by_path["1.1"]["verdict"] is False
    assert by_path["1"]["type"] == "group"
    assert by_path["1"]["operator"] == "any"
    rate = by_path["2"]
    assert rate["input"] == {"count": 2, "window": [BASE - 30, BASE + 30]}
    assert rate["state_before"] == {"entries": 1, "newest": BASE}
    assert rate["state_after"] == {"entries": 2, "newest": BASE + 30}
    assert explain["state_before"]["conditions"][cid(t, "2")] == {"entries": 1, "newest": BASE}
    assert explain["state_after"]["conditions"][cid(t, "1.0")]["holding"] is True
    json.dumps(explain)


def test_stateless_firing_explain_and_fast_rejection() -> None:
    t = trig(cond("score_threshold", ">", "50"), cond("agent_id_equals", "in", "1,42"))
    out = evaluate(t, fb(1, 90), states={})
    assert out.fired
    assert [c["input"] for c in out.explain["conditions"]] == ["90", 42]
    rejected = evaluate(t, fb(2, 10), states={})
    assert rejected == Evaluation(False, {}, (), {})


def test_state_is_json_and_input_state_is_not_mutated() -> None:
    t = trig(
        group(
            "all",
            cond("ema_threshold", ">", "50", alpha="0.3", hysteresis="2.5"),
            cond("rate_limit", ">", "1", time_window="1m", reset_on_trigger=True),
        ),
        cooldown=5,
    )
    state: dict[str, Any] | None = None
    events = [fb(i, 30 + 10 * i, ts=BASE + 3 * i, feedback_index=i) for i in range(8)]
    events += [revoke(20, 3, ts=BASE + 30), fb(3, 60, ts=BASE + 9, feedback_index=3)]
    for e in events:
        before = copy.deepcopy(state)
        out = evaluate(t, e, states={"": state})
        assert state == before
        assert json.loads(json.dumps(out.state)) == out.state
        json.dumps(out.explain)
        assert bool(out.changed) == (out.state != (state or {}))
        # a state that went through JSON (as stored) gives the same outcome
        if state is not None:
            assert evaluate(t, e, states={"": json.loads(json.dumps(state))}) == out
        state = out.state
    assert state is not None
    assert sorted(state["conditions"]) == sorted([cid(t, "0.0"), cid(t, "0.1")])


def test_specs_hash_and_compare() -> None:
    a, b = trig(YES), trig(YES)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert hash(a.actions[0]) == hash(b.actions[0])


def test_malformed_condition_state_starts_over() -> None:
    t = trig(cond("ema_threshold", "<", "50", alpha="0.5"), cond("rate_limit", ">=", "1", **W60))
    broken = {
        "conditions": {cid(t, "0"): {"ema": "NaN?", "count": 1, "holding": True}, cid(t, "1"): []}
    }
    out = evaluate(t, fb(1, 40), states={"": broken})
    assert out.fired
    assert cstate(t, out, "0")["count"] == 1
    assert len(cstate(t, out, "1")["window"]) == 1


# --- issue 12: composition, scopes, edits, more fields -------------------------------------


def test_ema_crossing_is_not_used_up_by_a_firing_that_did_not_happen() -> None:
    """EMA < 40 AND 3+ feedbacks a minute: the EMA crosses first, the count comes later."""
    t = trig(cond("ema_threshold", "<", "40", alpha=1), cond("rate_limit", ">=", "3", **W60))
    out = run(t, [fb(1, 30), fb(2, 20, ts=BASE + 1), fb(3, 10, ts=BASE + 2), fb(4, 5, ts=BASE + 3)])
    assert fired(out) == [False, False, True, False]


def test_crossing_under_a_not_group() -> None:
    t = trig(
        cond("ema_threshold", "<", "40", alpha=1),
        group("not", cond("rate_limit", ">=", "2", **W60)),
    )
    # the EMA crosses while the count is 2 (the not-group false), then the window empties
    out = run(t, [fb(1, 90), fb(2, 10, ts=BASE + 1), fb(3, 10, ts=BASE + 100)])
    assert fired(out) == [False, False, True]


def test_crossing_is_not_used_up_by_a_suppressed_firing() -> None:
    t = trig(cond("ema_threshold", "<", "40", alpha=1), cooldown=60)
    out = run(t, [fb(1, 10), fb(2, 90, ts=BASE + 10), fb(3, 10, ts=BASE + 20)])
    assert fired(out) == [True, False, False]
    assert out[2].explain["suppressed"] == "cooldown"
    # still below, the cooldown over: the crossing at BASE + 20 fires now
    later = run(t, [fb(4, 15, ts=BASE + 61)], state=out[-1].state)
    assert fired(later) == [True]


def test_mixed_scopes_count_over_the_trigger_and_average_per_agent() -> None:
    """A trigger-scope rate over three agents, next to an agent-scope EMA."""
    t = trig(
        cond("ema_threshold", "<", "50", alpha=1, scope="agent", fire_on="every"),
        cond("rate_limit", ">=", "3", **W60),
    )
    events = [fb(i, 10, ts=BASE + i, agent_id=a) for i, a in enumerate([1, 2, 3])]
    rows: dict[str, Any] = {}
    results = []
    for e in events:
        keys = scope_keys(t, e)
        assert keys == ("", str(e.agent_id))
        out = evaluate(t, e, states={k: rows.get(k) for k in keys})
        rows.update(out.states)
        results.append(out.fired)
    assert results == [False, False, True]
    assert len(rows[""]["conditions"][cid(t, "1")]["window"]) == 3
    assert sorted(rows) == ["", "1", "2", "3"]
    assert cid(t, "0") in rows["3"]["conditions"]
    assert cid(t, "0") not in rows[""].get("conditions", {})


def test_agent_firing_scope_arms_per_agent() -> None:
    t = trig(cond("ema_threshold", "<", "50", alpha=1, scope="agent"))
    rows: dict[str, Any] = {}
    results = []
    for i, (agent, v) in enumerate([(1, 10), (2, 10), (1, 5), (2, 90), (2, 10)]):
        e = fb(i, v, ts=BASE + i, agent_id=agent)
        out = evaluate(t, e, states={k: rows.get(k) for k in scope_keys(t, e)})
        rows.update(out.states)
        results.append(out.fired)
    assert results == [True, True, False, False, True]
    assert "" not in rows


def test_ema_warm_up_with_window_size_and_alpha() -> None:
    t = trig(cond("ema_threshold", "<", "50", window_size=3, alpha=1))
    out = run(t, [fb(i, 10, ts=BASE + i) for i in range(4)])
    assert fired(out) == [False, False, True, False]


def test_legacy_bytes32_tag_matches_its_text() -> None:
    padded = "0x" + b"starred".hex() + "00" * 25
    e = fb(1, tag1=padded.upper().replace("0X", "0x"))
    assert e.tag1 == "starred"
    assert verdict(cond("tag_equals", "=", "starred", "tag1"), e)
    binary = "0x" + "ff" * 32
    assert fb(2, tag1=binary).tag1 == binary


@pytest.mark.parametrize(
    ("c", "overrides", "expected"),
    [
        (cond("field_equals", "=", "0x" + "22" * 20, "client_address"), {}, True),
        (cond("field_equals", "!=", "0x" + "22" * 20, "client_address"), {}, False),
        (cond("field_equals", "=", "https://a.example/mcp", "endpoint"),
         {"endpoint": "https://a.example/mcp"}, True),
        (cond("field_equals", "in", "x, y", "endpoint"), {"endpoint": "z"}, False),
        (cond("field_equals", "=", "", "endpoint"), {"endpoint": DROP}, True),
        (cond("score_threshold", "=", "2", "value_decimals"),
         {"score": DROP, "value": 1234, "value_decimals": 2}, True),
        (cond("score_threshold", ">", "1", "value_decimals"),
         {"score": DROP, "value": 1234, "value_decimals": 2}, True),
        (cond("score_threshold", "=", "0", "value_decimals"), {"score": 50}, True),
    ],
)  # fmt: skip
def test_field_conditions(c: dict[str, Any], overrides: dict[str, Any], expected: bool) -> None:
    assert verdict(c, fb(1, **overrides)) is expected


def test_score_threshold_on_a_validation_response() -> None:
    v = event("ValidationResponse", response=85)
    c = cond("score_threshold", ">=", "80", "response")
    t = replace(trig(c), registry="validation")
    assert evaluate(t, v, states={}).fired
    assert not evaluate(t, event("ValidationResponse", response=20), states={}).fired
    assert not verdict(c, fb(1))  # a feedback has no response


def test_state_of_the_previous_release_carries_over() -> None:
    """Rows stored before this layout (conditions keyed by position, an armed flag per
    EMA, rate entries with the chain) are read, not dropped: an upgrade neither forgets
    the EMA nor alerts twice for a crossing that already fired."""
    t = trig(
        cond("ema_threshold", "<", "50", alpha="0.5"),
        cond("rate_limit", ">=", "1", **W60),
    )
    key = f"84532-100-1@{'0x' + '11' * 32}"
    old_layout = {
        "conditions": {
            "0": {"ema": "30", "count": 4, "armed": False, "seen": [key]},
            "1": {"window": [[BASE, key, CLIENT, 1, 100, 84532, 42]], "high": BASE},
        },
        "last_fired_at": BASE,
    }
    out = run(t, [fb(2, 30, ts=BASE + 1), fb(3, 30, ts=BASE + 2)], state=old_layout)
    # the EMA went on from 30 (not restarted), the window from its one entry
    assert Decimal(cstate(t, out[0], "0")["ema"]) == 30
    assert cstate(t, out[0], "0")["count"] == 5
    assert [e[0] - BASE for e in cstate(t, out[1], "1")["window"]] == [0, 1, 2]
    # the crossing had fired before the upgrade and the set still holds: no second alert
    assert fired(out) == [False, False]
    assert [o.explain["armed"] for o in out] == [False, False]
    # an EMA that had re-armed (armed: true) fires on its next crossing
    rearmed = {"conditions": {"0": {"ema": "60", "count": 2, "armed": True, "seen": []}}}
    again = run(trig(cond("ema_threshold", "<", "50", alpha=1)), [fb(4, 10)], state=rearmed)
    assert fired(again) == [True]


def test_a_retraction_reaches_windows_of_the_previous_layout() -> None:
    t = trig(cond("rate_limit", ">=", "2", time_window="1h", scope="agent"))
    replaced = f"84532-100-1@{'0x' + '11' * 32}"
    old_layout = {
        "conditions": {"0": {"window": [[BASE, replaced, CLIENT, 1, 100, 84532, 42]], "high": BASE}}
    }
    out = retract(
        t,
        state=old_layout,
        chain_id=84532,
        from_block=100,
        to_block=None,
        event_keys=[replaced],
        scope_key="42",
    )
    assert out.changed
    assert out.state["conditions"][cid(t, "0")] == {"window": []}
    # so the next event of that agent counts only itself
    after = evaluate(t, fb(2, ts=BASE + 5), states={"42": out.state})
    assert not after.fired
    assert entry(after, "0")["input"]["count"] == 1


def test_the_condition_sets_identity_is_the_hash_of_every_top_level_conditions_id() -> None:
    """A crossing trigger's stored arming names its condition set: the sha256 of its
    top-level conditions' identities, sorted and joined by commas (its first 16 hex
    digits). The compiler takes a stateful condition's identity from its node; a
    stored row must still match what each condition's definition gives."""
    t = trig(
        cond("agent_id_equals", "=", "7"),
        cond("ema_threshold", "<", "40", alpha=1),
        group("not", cond("rate_limit", ">=", "2", **W60)),
        cond("rate_limit", ">=", "3", **W60),
    )
    ids = sorted(condition_id(c, t.chain_id, t.registry) for c in t.conditions)
    expected = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
    assert t.state_signature[1] == expected
    # reordering the conditions names the same set
    assert trig(*reversed([c.model_dump() for c in t.conditions])).state_signature == (
        t.state_signature
    )


def test_a_stateless_trigger_compiles_to_the_program_of_the_general_path() -> None:
    """Triggers without stateful conditions or cooldown take a short path through the
    compiler; with a cooldown the same conditions take the general one. Both must
    agree on everything but the cooldown's own fields."""
    conds = (
        cond("agent_id_equals", "in", "7,8"),
        group("any", cond("score_threshold", "<", "10"), cond("tag_equals", "=", "x", "tag1")),
        cond("event_type_equals", "=", "NewFeedback"),
    )
    short, general = trig(*conds)._program, trig(*conds, cooldown=60)._program
    for name in ("gate_nodes", "stateful_nodes", "state_nodes", "all_state_nodes", "rate_nodes"):
        assert [n.path for n in getattr(short, name)] == [n.path for n in getattr(general, name)], (
            name
        )
    assert len(short.gate) == len(general.gate) == 3
    assert (short.absence, short.crossing, short.agent_firing, short.trigger_row) == (
        general.absence,
        general.crossing,
        general.agent_firing,
        general.trigger_row,
    )
    assert (short.stateful, short.cooldown, general.stateful) == (False, 0, True)
    for agent, score, fires in ((8, 5, True), (9, 5, False), (7, 50, False)):
        e = fb(1, score, agent_id=agent)
        assert evaluate(trig(*conds), e, states={}).fired is fires
        with_cooldown = trig(*conds, cooldown=60)
        states = dict.fromkeys(scope_keys(with_cooldown, e))
        assert evaluate(with_cooldown, e, states=states).fired is fires
