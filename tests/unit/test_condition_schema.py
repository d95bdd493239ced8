"""A condition's value and config in the generated OpenAPI document say what the
server takes: for each condition type, values and configs the `Condition` model
accepts validate against the document's component schemas, and those it refuses do
not, but for the rules docs/api.md lists as beyond a schema (a list where the
operator takes one value, an address where the field holds one, a decimal's size),
which the document allows and the Schemathesis hook excuses. Checked with
`jsonschema` and with `jsonschema_rs`, the validator Schemathesis uses."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # (no stubs installed)
import jsonschema_rs
import pytest
from pydantic import ValidationError

from shared.contract.conditions import Condition
from tests.schema_exceptions import excused
from tools import contracts

pytestmark = pytest.mark.unit

_DOCUMENT = json.loads((contracts.ROOT / "docs" / "openapi" / "api.json").read_text())
_SCHEMA = {"$ref": "#/components/schemas/Condition", "components": _DOCUMENT["components"]}
_PY = jsonschema.Draft202012Validator(_SCHEMA)
_RS = jsonschema_rs.validator_for(_SCHEMA)

ADDR = "0x" + "aB" * 20
SPACE = " \t\u3000"


def c(kind: str, operator: str, value: str | None = None, **config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"condition_type": kind, "operator": operator}
    if kind == "tag_equals":
        out["field"] = "tag1"
    if value is not None:
        out["value"] = value
    if config:
        out["config"] = config
    return out


ACCEPTED: list[dict[str, Any]] = [
    c("agent_id_equals", "=", "0"),
    c("agent_id_equals", "=", f"{SPACE}42{SPACE}"),
    c("agent_id_equals", "=", "9223372036854775807"),
    c("agent_id_equals", "=", "0009223372036854775"),
    c("agent_id_equals", "in", "1, 2 ,3"),
    c("agent_id_equals", "not_in", "7"),
    c("score_threshold", ">", "50"),
    c("score_threshold", "<=", " -1.5e-3 "),
    c("score_threshold", "=", ".5"),
    c("score_threshold", "!=", "+7."),
    c("tag_equals", "=", ""),
    c("tag_equals", "=", " a,,b "),
    c("tag_equals", "=", "x" * 256),
    c("tag_equals", "in", " a , b c ,d"),
    c("tag_equals", "in", ",".join(["y" * 256] * 3)),
    c("validator_whitelist", "=", ADDR),
    c("validator_whitelist", "in", f" {ADDR} ,{ADDR.lower()}"),
    c("event_type_equals", "=", " NewFeedback "),
    c("event_type_equals", "in", "Registered, Transfer"),
    c("ema_threshold", "<", "40", window_size=10),
    c("ema_threshold", ">=", "1e2", alpha=0.5, scope="agent", hysteresis=2, fire_on="every"),
    c("ema_threshold", ">", "3", alpha=" 0.25 ", hysteresis="1.5"),
    c("ema_threshold", ">", "3", alpha=1, window_size=None, hysteresis=None, scope=None),
    c("ema_threshold", ">", "3", alpha="1.000", hysteresis="-0.0"),
    c("ema_threshold", ">", "3", alpha="5e-1"),
    c("ema_threshold", ">", "3", window_size=10000, alpha=None),
    c("rate_limit", ">", " 5 ", time_window="1h"),
    c("rate_limit", "=", "0", time_window="0000001s", reset_on_trigger=True, scope="agent"),
    c("rate_limit", "<", "9999999999999999999", time_window="30d"),
    c("rate_limit", "<", "3", time_window="2592000s", scope=None),
    c("rate_limit", "<", "3", time_window="720h"),
    c("file_uri_exists", "=", " TRUE "),
    c("file_uri_exists", "=", "false"),
    c("field_equals", "=", "") | {"field": "endpoint"},
    c("field_equals", "=", " https://a.example/x?y=1,2 ") | {"field": "endpoint"},
    c("field_equals", "=", f" {ADDR} ") | {"field": "owner"},
    c("field_equals", "in", f"{ADDR}, {ADDR}") | {"field": "client_address"},
    c("field_equals", "not_in", "k1, k2") | {"field": "metadata_key"},
    c("absence", ">", "1h"),
    c("absence", ">", " 30d ", scope="agent"),
    c("absence", ">", "1s") | {"config": None},
    c("absence", ">", "43200m"),
    c("agent_id_equals", "=", "5") | {"config": None},
    c("group", "not", config={"conditions": [c("agent_id_equals", "=", "1")]})
    | {"config": {"conditions": [c("agent_id_equals", "=", "1")]}},
]

#: Refused by the server, and by the document.
REFUSED: list[dict[str, Any]] = [
    c("agent_id_equals", "="),
    c("agent_id_equals", "=", "9223372036854775808"),
    c("agent_id_equals", "=", "00000000000000000001"),
    c("agent_id_equals", "=", "-1"),
    c("agent_id_equals", "=", "\u00a01\u200b"),
    c("agent_id_equals", "in", "1,,2"),
    c("agent_id_equals", "in", "1,"),
    c("agent_id_equals", "=", "1", scope="agent"),
    c("score_threshold", ">"),
    c("score_threshold", ">", "1,5"),
    c("score_threshold", ">", "nan"),
    c("score_threshold", ">", "1e1000"),
    c("score_threshold", ">", "0x10"),
    c("tag_equals", "=", "x" * 257),
    c("tag_equals", "in", "a,b," + "y" * 257),
    c("tag_equals", "=", "a\x00"),
    c("validator_whitelist", "in", ADDR[:-1]),
    c("validator_whitelist", "in", f"{ADDR},"),
    c("validator_whitelist", "="),
    c("event_type_equals", "=", "Unknown"),
    c("event_type_equals", "in", "NewFeedback,newfeedback"),
    c("ema_threshold", "<", "40"),
    c("ema_threshold", "<", "40", scope="agent"),
    c("ema_threshold", "<", "40", window_size=0),
    c("ema_threshold", "<", "40", window_size=10001),
    c("ema_threshold", "<", "40", window_size="10"),
    c("ema_threshold", "<", "40", window_size=None, alpha=None),
    c("ema_threshold", "<", "40", alpha=0),
    c("ema_threshold", "<", "40", alpha=1.5),
    c("ema_threshold", "<", "40", alpha="1.01"),
    c("ema_threshold", "<", "40", alpha="0"),
    c("ema_threshold", "<", "40", alpha="-0.5"),
    c("ema_threshold", "<", "40", alpha=True),
    c("ema_threshold", "<", "40", alpha=0.5, hysteresis=-1),
    c("ema_threshold", "<", "40", alpha=0.5, hysteresis="-0.1"),
    c("ema_threshold", "<", "40", alpha=0.5, fire_on="sometimes"),
    c("ema_threshold", "<", "40", alpha=0.5, fire_on=None),
    c("ema_threshold", "<", "40", alpha=0.5, scope="chain"),
    c("ema_threshold", "<", "40", alpha=0.5, extra=1),
    c("ema_threshold", "<", "40,5", alpha=0.5),
    c("rate_limit", ">", "5"),
    c("rate_limit", ">", "5", time_window=" 1h"),
    c("rate_limit", ">", "5", time_window="0s"),
    c("rate_limit", ">", "5", time_window="31d"),
    c("rate_limit", ">", "5", time_window="2592001s"),
    c("rate_limit", ">", "5", time_window="0000000001s"),
    c("rate_limit", ">", "5", time_window="1w"),
    c("rate_limit", ">", "5", time_window=None),
    c("rate_limit", ">", "5", time_window="1h", reset_on_trigger="true"),
    c("rate_limit", ">", "5", time_window="1h", reset_on_trigger=None),
    c("rate_limit", ">", "-1", time_window="1h"),
    c("rate_limit", ">", "1.5", time_window="1h"),
    c("rate_limit", ">", "1" * 20, time_window="1h"),
    c("file_uri_exists", "=", "yes"),
    c("file_uri_exists", "=", "1"),
    c("file_uri_exists", "="),
    c("field_equals", "=", "x\x00") | {"field": "endpoint"},
    c("field_equals", "=", "x") | {"field": "agent_id"},
    c("field_equals", "=", "a", window_size=3) | {"field": "endpoint"},
    c("absence", ">"),
    c("absence", ">", "0s"),
    c("absence", ">", "31d"),
    c("absence", ">", "721h"),
    c("absence", ">", "1 h"),
    c("absence", ">", "60"),
    c("absence", ">", "1h", scope="everyone"),
    c("absence", ">", "1h", window_size=2),
    c("group", "any", "x", conditions=[c("agent_id_equals", "=", "1")]),
]

#: Refused by the server but allowed by the document, each for a rule docs/api.md
#: lists (by key), which the Schemathesis hook excuses.
EXCUSED: list[tuple[str, dict[str, Any]]] = [
    ("condition-lists", c("agent_id_equals", "=", "1,2")),
    ("condition-lists", c("event_type_equals", "!=", "Registered,Transfer")),
    ("condition-lists", c("tag_equals", "in", " a,,b ")),
    ("condition-lists", c("tag_equals", "in", "")),
    ("condition-lists", c("tag_equals", "=", ",".join(["y" * 200] * 2))),
    ("condition-lists", c("tag_equals", "in", ",".join(["t"] * 1001))),
    ("condition-lists", c("agent_id_equals", "in", ",".join(["1"] * 1001))),
    ("condition-lists", c("field_equals", "in", "x" * 8193) | {"field": "endpoint"}),
    ("condition-lists", c("field_equals", "=", "x" * 8193) | {"field": "endpoint"}),
    ("condition-lists", c("field_equals", "in", "a,,b ,") | {"field": "endpoint"}),
    ("field-addresses", c("field_equals", "=", "alice") | {"field": "owner"}),
    ("field-addresses", c("field_equals", "=", f"{ADDR},{ADDR}") | {"field": "owner"}),
    ("decimal-bounds", c("score_threshold", ">", "1" * 62)),
    ("decimal-bounds", c("score_threshold", ">", "1e61")),
    ("decimal-bounds", c("score_threshold", ">", "0." + "0" * 80)),
    ("decimal-bounds", c("ema_threshold", "<", "1", alpha="2e0")),
    ("decimal-bounds", c("ema_threshold", "<", "1", alpha="0." + "0" * 80 + "1")),
    ("decimal-bounds", c("ema_threshold", "<", "1", alpha=0.5, hysteresis=1e61)),
    ("integers", c("ema_threshold", "<", "1", window_size=5.0)),
]


def _valid(condition: dict[str, Any]) -> tuple[bool, bool]:
    return _PY.is_valid(condition), _RS.is_valid(condition)


def _refusal(condition: dict[str, Any]) -> dict[str, Any] | None:
    """The API's 422 body for the condition as the first of a trigger's, if refused."""
    try:
        Condition.model_validate(condition)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in ("conditions", 0, *err["loc"])), "message": m}
            for err in exc.errors(include_url=False)
            for m in [err["msg"]]
        ]
        return {"error": "invalid body", "details": details}
    return None


@pytest.mark.parametrize("condition", ACCEPTED, ids=lambda c: c["condition_type"])
def test_what_the_server_accepts_the_document_allows(condition: dict[str, Any]) -> None:
    assert _refusal(condition) is None
    assert _valid(condition) == (True, True)


@pytest.mark.parametrize("condition", REFUSED, ids=lambda c: c["condition_type"])
def test_what_the_server_refuses_the_document_refuses(condition: dict[str, Any]) -> None:
    assert _refusal(condition) is not None
    assert _valid(condition) == (False, False)


@pytest.mark.parametrize(("key", "condition"), EXCUSED, ids=lambda v: str(v)[:20])
def test_what_only_a_documented_rule_refuses_is_allowed_and_excused(
    key: str, condition: dict[str, Any]
) -> None:
    refusal = _refusal(condition)
    assert refusal is not None
    assert _valid(condition) == (True, True)
    assert excused(422, refusal), refusal


def test_an_exception_names_the_refusal_narrowly() -> None:
    """A list where one agent id belongs is excused; a wrong agent id is not, nor is a
    placement rule's message on a value."""
    as_list = _refusal(c("agent_id_equals", "=", "1,2"))
    wrong = _refusal(c("agent_id_equals", "=", "x"))
    assert as_list is not None
    assert wrong is not None
    assert excused(422, as_list)
    assert not excused(422, wrong)
    assert not excused(
        422, {"details": [{"field": "conditions.0.value", "message": "must be true or false"}]}
    )


@pytest.mark.parametrize(
    "value",
    [f"{n}{u}" for n in (0, 1, 29, 30, 31, 59, 60, 719, 720, 721) for u in "smhd"]
    + ["2592000s", "2592001s", "43200m", "43201m", "000000030d", "0000000030d"],
)
def test_an_absence_duration_is_bounded_exactly(value: str) -> None:
    condition = c("absence", ">", value)
    accepted = _refusal(condition) is None
    assert _valid(condition) == (accepted, accepted)
