"""condition_id: the identity of a condition's state, stored with it (docs/semantics.md):
a hash of [chain, registry, the definition as JSON, keys sorted, no spaces]. The
evaluator builds the text of a definition without config around its value from a
kept template; the hash must be the one of the whole definition written out, for
every kind, field, operator and value, whether the template was kept before or not."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from shared.contract.conditions import Condition
from shared.engine.evaluate import condition_id
from tests.unit.test_evaluate import cond as c

pytestmark = pytest.mark.unit


def written_out(definition: dict[str, Any], chain: int, registry: str) -> str:
    """The rule itself, from the definition as validation leaves it (no shared code)."""
    dumped = Condition.model_validate(definition).model_dump(mode="json")
    text = json.dumps([chain, registry, dumped], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


DEFINITIONS = [
    c("agent_id_equals", "=", "7"),
    c("agent_id_equals", "=", "9223372036854775807"),
    c("agent_id_equals", "in", "1,2,3"),
    c("agent_id_equals", "not_in", "4, 5"),
    c("agent_id_equals", "!=", "0"),
    c("score_threshold", "<", "-95", field="score"),
    c("score_threshold", ">=", "12.5", field="response"),
    c("tag_equals", "=", 'quo"te\\back', field="tag1"),
    c("tag_equals", "!=", "naïve ünïcode ✓ \U0001f600", field="tag2"),
    c("field_equals", "=", "line\nbreak\ttab", field="endpoint"),
    c("field_equals", "=", "0x" + "Cd" * 20, field="client_address"),
    c("event_type_equals", "=", "NewFeedback"),
    c("event_type_equals", "in", "NewFeedback,FeedbackRevoked"),
    c("validator_whitelist", "in", "0x" + "ab" * 20),
    c("file_uri_exists", "=", "true"),
    c("ema_threshold", "<", "-95", field="score", window_size=10),
    c("rate_limit", ">=", "50", time_window="1h"),
]


@pytest.mark.parametrize(
    "definition", DEFINITIONS, ids=lambda d: f"{d['condition_type']}{d['operator']}"
)
@pytest.mark.parametrize(("chain", "registry"), [(8453, "reputation"), (1, "validation")])
def test_the_id_is_the_hash_of_the_definition_written_out(
    definition: dict[str, Any], chain: int, registry: str
) -> None:
    condition = Condition.model_validate(definition)
    first = condition_id(condition, chain, registry)
    assert first == written_out(definition, chain, registry)
    # again, the template kept now: the same, and another value of the same kind its own
    assert condition_id(condition, chain, registry) == first
    other = {**definition, "value": definition["value"].replace("9", "8") + "1"}
    try:
        Condition.model_validate(other)
    except ValueError:
        return
    assert condition_id(Condition.model_validate(other), chain, registry) == written_out(
        other, chain, registry
    )


def test_ids_differ_by_value_stream_and_place_of_nothing_else() -> None:
    seven = Condition.model_validate(c("agent_id_equals", "=", "7"))
    eight = Condition.model_validate(c("agent_id_equals", "=", "8"))
    assert condition_id(seven, 1, "reputation") != condition_id(eight, 1, "reputation")
    assert condition_id(seven, 1, "reputation") != condition_id(seven, 2, "reputation")
    assert condition_id(seven, 1, "reputation") != condition_id(seven, 1, "validation")


class WithId(Condition):
    """A subclass dumping one more field (as the API's ConditionPatch does)."""

    id: int | None = None


def test_a_subclass_neither_takes_nor_leaves_a_plain_conditions_text() -> None:
    definition = c("agent_id_equals", "=", "41")
    patch = WithId.model_validate({**definition, "id": 3})
    # its own id: the hash of what it dumps, the extra field included
    dumped = json.dumps([5, "reputation", patch.model_dump(mode="json")], sort_keys=True,
                        separators=(",", ":"))  # fmt: skip
    assert condition_id(patch, 5, "reputation") == hashlib.sha256(dumped.encode()).hexdigest()[:16]
    # and a plain condition of the same kind hashed after it is still its own
    plain = Condition.model_validate({**definition, "value": "42"})
    assert condition_id(plain, 5, "reputation") == written_out(
        {**definition, "value": "42"}, 5, "reputation"
    )
