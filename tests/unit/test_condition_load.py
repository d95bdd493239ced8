"""The matcher's load makes most agent conditions without validating them again
(shared.engine.replay._agent_condition): a condition naming agent ids in canonical
form is built from its shape's condition with the id "0". Whatever the input, the
result must be what validating it gives, or the same error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.contract.conditions import Condition
from shared.engine.replay import _CONDITIONS, _condition, compile_trigger

pytestmark = pytest.mark.unit

#: Agent ids in every form a user may type: canonical, with a sign, spaces or
#: leading zeros, out of range, not a number.
ids = st.one_of(
    st.integers(0, 2**63 - 1).map(str),
    st.sampled_from(["0", "1", str(2**63 - 1), str(2**63), "99999999999999999999"]),
    st.sampled_from(["007", "+5", "-1", " 12", "12 ", "1_000", "0x10", "", "١٢", "1.0", "abc"]),
)
values = st.one_of(
    ids,
    st.lists(ids, min_size=1, max_size=4).map(",".join),
    st.lists(ids, min_size=1, max_size=3).map(", ".join),
    st.just(",".join(["1"] * 1000)),
    st.just(",".join(["1"] * 1001)),
    st.integers(0, 10),  # not a string at all
)


@st.composite
def agent_conditions(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {"condition_type": "agent_id_equals"}
    if draw(st.booleans()):
        raw["field"] = draw(st.sampled_from(["", "agent_id", "score", 5]))
    raw["operator"] = draw(st.sampled_from(["=", "!=", "in", "not_in", "<", 1]))
    raw["value"] = draw(values)
    if draw(st.booleans()):
        raw["config"] = draw(st.sampled_from([None, {}, {"scope": "agent"}, [], "x"]))
    if draw(st.integers(0, 9)) == 0:
        raw["extra"] = 1
    # the keys in any order: a shape is its set of keys, not their order
    keys = draw(st.permutations(list(raw)))
    return {k: raw[k] for k in keys}


def validated(raw: dict[str, Any]) -> Condition | str:
    try:
        return Condition.model_validate(raw)
    except ValidationError as exc:
        return str(exc)


def loaded(raw: dict[str, Any]) -> Condition | str:
    try:
        return _condition(raw)
    except ValidationError as exc:
        return str(exc)


@settings(max_examples=1500, deadline=None)
@given(agent_conditions())
def test_a_loaded_agent_condition_is_the_validated_one(raw: dict[str, Any]) -> None:
    want, got = validated(raw), loaded(raw)
    if isinstance(want, str):
        assert got == want
        return
    assert isinstance(got, Condition), got
    assert got == want
    assert got.values == want.values
    assert got.model_fields_set == want.model_fields_set
    assert got.model_dump() == want.model_dump()
    assert (got.number, got.ema, got.rate, got.absence, got.children) == (
        want.number,
        want.ema,
        want.rate,
        want.absence,
        want.children,
    )
    assert got.is_stateful is want.is_stateful
    with pytest.raises(ValidationError):  # frozen, as a validated one
        got.value = "1"  # type: ignore[misc]


def test_canonical_ids_are_made_not_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast way is taken: once a shape is known, a canonical id or list of them
    is not validated (other forms are)."""
    for value in ("1", "1,2"):
        _condition({"condition_type": "agent_id_equals", "operator": "in", "value": value})
    calls: list[object] = []
    real = Condition.model_validate

    def counting(raw: object, **kwargs: Any) -> Condition:
        calls.append(raw)
        return real(raw, **kwargs)

    monkeypatch.setattr(Condition, "model_validate", counting)
    made = _condition({"condition_type": "agent_id_equals", "operator": "in", "value": "42,7"})
    assert made.values == ("42", "7")
    assert made.value == "42,7"
    assert calls == []
    spaced = _condition({"condition_type": "agent_id_equals", "operator": "in", "value": "42, 7"})
    assert spaced.values == ("42", "7")
    assert spaced.value == "42,7"
    assert len(calls) == 1


def test_a_trigger_of_made_conditions_compiles_as_one_of_validated_ones() -> None:
    conditions: list[dict[str, Any]] = [
        {"condition_type": "agent_id_equals", "field": "agent_id", "operator": "=", "value": "77"},
        {"condition_type": "score_threshold", "field": "score", "operator": "<", "value": "-5"},
    ]
    row = {
        "id": "t1",
        "user_id": "u",
        "name": "n",
        "chain_id": 1,
        "registry": "reputation",
        "enabled_at": None,
        "cooldown_seconds": 0,
        "version": 1,
        "conditions": conditions,
        "actions": [],
    }
    spec = compile_trigger(row)
    assert spec is not None
    assert spec.conditions == tuple(Condition.model_validate(c) for c in conditions)
    assert spec.conditions[0].values == ("77",)
    # agent conditions are not kept in the shared cache of conditions
    assert not any('"77"' in key for key in _CONDITIONS)
