"""Property tests of services.matcher.evaluate against slow reference implementations.

Streams are random: values in both feedback layouts, events without a feedback value,
redeliveries (right away and out of order, long after the first delivery), timestamps
out of order (within and beyond the lateness allowance), revocations and resets.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.evaluate import (
    EMA_SEEN,
    MAX_LATENESS,
    ActionSpec,
    Outcome,
    TriggerSpec,
    evaluate,
    retract,
)
from shared.events import Event, event_key, feedback_value
from shared.triggers import Condition
from tests.strategies import DROP, example_event

pytestmark = pytest.mark.unit

BASE = 1_700_000_000
CLIENTS = ("0x" + "22" * 20, "0x" + "66" * 20)
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
PROPERTY = settings(max_examples=150, deadline=None)


def trig(*conds: dict[str, Any], cooldown: int | None = None) -> TriggerSpec:
    return TriggerSpec(
        id="t-prop",
        user_id="u",
        name="prop",
        chain_id=84532,
        registry="reputation",
        enabled_at=datetime(2024, 1, 1, tzinfo=UTC),
        cooldown_seconds=cooldown,
        conditions=tuple(Condition.model_validate(c) for c in conds),
        actions=(ActionSpec(id=1, action_type="rest", priority=1, config={}),),
    )


def make_event(i: int, ts: int, kind: str, fields: dict[str, Any]) -> Event:
    data = example_event(kind, log_index=i, block_number=1000 + i, timestamp=ts, **fields)
    return Event.model_validate(data)


@st.composite
def deliveries(draw: st.DrawFn, n: int) -> list[int]:
    """An order of delivering events 0..n-1 (maybe permuted) with redeliveries inserted
    anywhere after the first delivery: right away or out of order, later."""
    order = list(draw(st.permutations(range(n)))) if draw(st.booleans()) else list(range(n))
    for _ in range(draw(st.integers(0, n))):
        pos = draw(st.integers(1, len(order)))
        src = draw(st.integers(max(0, pos - 3), pos - 1) | st.integers(0, pos - 1))
        order.insert(pos, order[src])
    return order


# --- (1) EMA against exact rational arithmetic ---------------------------------------------

feedback_fields = st.one_of(
    st.integers(0, 100).map(lambda s: {"score": s}),
    st.integers(-12000, 12000).map(lambda v: {"score": DROP, "value": v, "value_decimals": 2}),
    st.tuples(st.integers(-(10**6), 10**6), st.integers(0, 4)).map(
        lambda t: {"score": DROP, "value": t[0], "value_decimals": t[1]}
    ),
    st.tuples(st.integers(-(10**38), 10**38), st.integers(0, 18)).map(
        lambda t: {"score": DROP, "value": t[0], "value_decimals": t[1]}
    ),
    st.none(),  # an event without a feedback value
)


@st.composite
def ema_cases(draw: st.DrawFn) -> tuple[dict[str, Any], list[Event], list[int]]:
    config: dict[str, Any] = draw(
        st.one_of(
            st.integers(1, 60).map(lambda n: {"window_size": n}),
            st.sampled_from(["0.1", "0.25", "0.5", "0.9", "1", "0.333"]).map(
                lambda a: {"alpha": a}
            ),
        )
    )
    config["hysteresis"] = draw(st.sampled_from([0, 1, "2.5", 10]))
    config["fire_on"] = draw(st.sampled_from(["crossing", "every"]))
    condition = {
        "condition_type": "ema_threshold",
        "operator": draw(st.sampled_from(["<", "<=", ">", ">="])),
        "value": str(draw(st.decimals(-100, 100, places=2))),
        "config": config,
    }
    n = draw(st.integers(1, 40))
    fields = draw(st.lists(feedback_fields, min_size=n, max_size=n))
    events = [
        make_event(i, BASE + i, "ResponseAppended", {})
        if f is None
        else make_event(i, BASE + i, "NewFeedback", f)
        for i, f in enumerate(fields)
    ]
    return condition, events, draw(deliveries(n))


class EmaReference:
    """The EMA with exact fractions; crossing and re-arming spelled out plainly."""

    def __init__(self, condition: Condition) -> None:
        ema = condition.ema
        assert ema is not None
        assert condition.number is not None
        self.alpha = Fraction(ema.alpha)
        self.threshold = Fraction(condition.number)
        self.hysteresis = Fraction(ema.hysteresis)
        self.every = ema.fire_on == "every"
        self.op = condition.operator
        self.value: Fraction | None = None
        self.armed = True
        self.seen: list[str] = []  # the engine remembers the last EMA_SEEN ids applied
        self.scale = Fraction(0)

    def hit(self, threshold: Fraction) -> bool:
        assert self.value is not None
        return COMPARE[self.op](self.value, threshold)

    def step(self, event: Event) -> bool:
        v = feedback_value(event)
        if v is None or event_key(event) in self.seen:
            return False
        x = Fraction(v)
        self.scale = max(self.scale, abs(x))
        self.value = x if self.value is None else self.alpha * x + (1 - self.alpha) * self.value
        self.seen = [*self.seen, event_key(event)][-EMA_SEEN:]
        if self.every:
            return self.hit(self.threshold)
        if self.armed and self.hit(self.threshold):
            self.armed = False
            return True
        below = self.op in ("<", "<=")
        band = self.threshold + self.hysteresis if below else self.threshold - self.hysteresis
        if not self.armed and not self.hit(band):
            self.armed = True
        return False


@PROPERTY
@given(ema_cases())
def test_ema_matches_exact_reference(case: tuple[dict[str, Any], list[Event], list[int]]) -> None:
    condition, events, order = case
    trigger = trig(condition)
    reference = EmaReference(trigger.conditions[0])
    state: dict[str, Any] | None = None
    engine_firings = reference_firings = 0
    for i in order:
        outcome = evaluate(trigger, events[i], state=state)
        expected = reference.step(events[i])
        assert outcome.fired == expected
        engine_firings += outcome.fired
        reference_firings += expected
        state = outcome.state
        if reference.value is not None:
            ema = Fraction(Decimal(state["conditions"]["0"]["ema"]))
            assert abs(ema - reference.value) <= reference.scale * Fraction(1, 10**25)
            assert state["conditions"]["0"]["armed"] == reference.armed
    assert engine_firings == reference_firings


# --- (2, 3) rate windows against brute force -----------------------------------------------


@st.composite
def rate_cases(
    draw: st.DrawFn, *, revocations: bool
) -> tuple[dict[str, Any], list[Event], list[int]]:
    window = draw(st.sampled_from([30, 60, 300, 7200]))
    config: dict[str, Any] = {"time_window": f"{window}s", "reset_on_trigger": draw(st.booleans())}
    condition = {
        "condition_type": "rate_limit",
        "operator": draw(st.sampled_from(sorted(COMPARE))),
        "value": str(draw(st.integers(0, 5))),
        "config": config,
    }
    n = draw(st.integers(1, 40))
    step = st.integers(0, window // 3) | st.integers(-2 * window, window)
    ts, events = 0, []
    kinds = ["NewFeedback", "FeedbackRevoked"] if revocations else ["NewFeedback"]
    for i in range(n):
        ts = max(0, ts + draw(step))
        fields = {
            "agent_id": draw(st.sampled_from([1, 2])),
            "client_address": draw(st.sampled_from(CLIENTS)),
            "feedback_index": draw(st.integers(1, 3)),
        }
        events.append(make_event(i, BASE + ts, draw(st.sampled_from(kinds)), fields))
    return condition, events, draw(deliveries(n))


class RateReference:
    """Counts the distinct events seen since the last reset with timestamp in (t-W, t].

    The engine forgets what lies more than W + L before the latest timestamp it has seen
    (L = min(W, 1 h)); an event more than L late gets verdict False instead of a count.
    """

    def __init__(self, condition: Condition) -> None:
        rate = condition.rate
        assert rate is not None
        assert condition.number is not None
        self.window = rate.window_seconds
        self.lateness = min(self.window, MAX_LATENESS)
        self.reset = rate.reset_on_trigger
        self.op = condition.operator
        self.limit = int(condition.number)
        self.seen: dict[str, tuple[int, tuple[Any, ...] | None]] = {}
        self.high: int | None = None

    def revoke(self, event: Event) -> None:
        key = (event.agent_id, event.client_address, event.feedback_index)
        self.seen = {k: v for k, v in self.seen.items() if v[1] != key}

    def step(self, event: Event) -> tuple[bool, int | None]:
        """The verdict, and the count when the event was counted."""
        if event_key(event) in self.seen:
            return False, None
        t = event.timestamp
        late = self.high is not None and t < self.high - self.lateness
        self.high = t if self.high is None else max(self.high, t)
        key = (event.agent_id, event.client_address, event.feedback_index)
        self.seen[event_key(event)] = (t, key if event.event_type == "NewFeedback" else None)
        if late:
            return False, None
        count = sum(1 for ts, _ in self.seen.values() if t - self.window < ts <= t)
        verdict = COMPARE[self.op](count, self.limit)
        if verdict and self.reset:
            self.seen, self.high = {}, None
        return verdict, count


def check_rate_stream(
    condition: dict[str, Any], events: list[Event], order: list[int], *, gated: bool
) -> None:
    gate = [{"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"}]
    trigger = trig(*gate, condition) if gated else trig(condition)
    path = "1" if gated else "0"
    reference = RateReference(trigger.conditions[-1])
    state: dict[str, Any] | None = None
    for i in order:
        event = events[i]
        outcome = evaluate(trigger, event, state=state)
        if event.event_type == "FeedbackRevoked":
            reference.revoke(event)
        if gated and event.event_type != "NewFeedback":
            assert not outcome.fired
        else:
            verdict, count = reference.step(event)
            assert outcome.fired == verdict
            (explained,) = [c for c in outcome.explain["conditions"] if c["path"] == path]
            assert explained["input"].get("count") == count
        state = outcome.state
        # the window holds the counted events of the reference that are still in reach
        window = state.get("conditions", {}).get(path, {"window": []})["window"]
        assert {e[1] for e in window} <= set(reference.seen)


@PROPERTY
@given(rate_cases(revocations=False))
def test_rate_window_matches_brute_force(
    case: tuple[dict[str, Any], list[Event], list[int]],
) -> None:
    check_rate_stream(*case, gated=False)


@PROPERTY
@given(rate_cases(revocations=True), st.booleans())
def test_rate_window_with_revocations_matches_brute_force(
    case: tuple[dict[str, Any], list[Event], list[int]], gated: bool
) -> None:
    check_rate_stream(*case, gated=gated)


# --- (4) replay determinism ----------------------------------------------------------------


@st.composite
def replay_cases(draw: st.DrawFn) -> tuple[TriggerSpec, list[Event], list[int], int | None]:
    ema = {
        "condition_type": "ema_threshold",
        "operator": draw(st.sampled_from(["<", ">="])),
        "value": "50",
        "config": {"window_size": draw(st.integers(1, 10)), "hysteresis": 5},
    }
    rate = {
        "condition_type": "rate_limit",
        "operator": ">=",
        "value": str(draw(st.integers(1, 4))),
        "config": {"time_window": "2m", "reset_on_trigger": draw(st.booleans())},
    }
    combined = draw(
        st.sampled_from(
            [
                [ema, rate],
                [
                    {
                        "condition_type": "group",
                        "operator": "any",
                        "config": {"conditions": [ema, rate]},
                    }
                ],
                [{"condition_type": "group", "operator": "not", "config": {"conditions": [rate]}}],
            ]
        )
    )
    trigger = trig(*combined, cooldown=draw(st.sampled_from([None, 0, 30, 600])))
    n = draw(st.integers(1, 30))
    ts, events = 0, []
    for i in range(n):
        ts = max(0, ts + draw(st.integers(-60, 90)))
        kind = draw(st.sampled_from(["NewFeedback", "NewFeedback", "FeedbackRevoked"]))
        fields: dict[str, Any] = {"feedback_index": draw(st.integers(1, 3))}
        if kind == "NewFeedback":
            fields["score"] = draw(st.integers(0, 100))
        events.append(make_event(i, BASE + ts, kind, fields))
    order = draw(deliveries(n))
    reorg = draw(st.none() | st.integers(1000, 1000 + n))
    return trigger, events, order, reorg


def replay(
    trigger: TriggerSpec, events: list[Event], order: list[int], reorg: int | None, *, stored: bool
) -> tuple[list[Outcome], dict[str, Any]]:
    """Evaluate a stream from empty state (`stored`: the state goes through JSON each step);
    a reorg retraction from block `reorg` halfway."""
    state: dict[str, Any] = {}
    outcomes: list[Outcome] = []
    for step, i in enumerate(order):
        if reorg is not None and step == len(order) // 2:
            outcome = retract(trigger, state=state, chain_id=84532, from_block=reorg, to_block=None)
            outcomes.append(outcome)
            state = outcome.state
        outcome = evaluate(trigger, events[i], state=state)
        outcomes.append(outcome)
        state = json.loads(json.dumps(outcome.state)) if stored else outcome.state
    return outcomes, state


@PROPERTY
@given(replay_cases())
def test_replay_is_deterministic(
    case: tuple[TriggerSpec, list[Event], list[int], int | None],
) -> None:
    trigger, events, order, reorg = case
    first, final = replay(trigger, events, order, reorg, stored=False)
    second, again = replay(trigger, events, order, reorg, stored=False)
    stored, from_storage = replay(trigger, events, order, reorg, stored=True)
    assert first == second == stored
    assert final == again == from_storage
    for outcome in first:
        json.dumps(outcome.state)
        json.dumps(outcome.explain)
