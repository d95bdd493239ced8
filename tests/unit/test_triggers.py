"""shared.contract.conditions, .actions and .triggers: condition/action/trigger
validation, normalization and round trips."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from pydantic import SecretStr, ValidationError

from shared.contract.actions import (
    REVEAL_SECRETS,
    Action,
    McpConfig,
    RestConfig,
    TelegramConfig,
)
from shared.contract.condition_types import ConditionType, Operator, parse_duration
from shared.contract.conditions import Condition
from shared.contract.triggers import TriggerCreate, TriggerUpdate
from tests.strategies import actions, conditions, trigger_dicts, triggers

pytestmark = pytest.mark.unit

ADDR = "0x" + "Ab" * 20
REST = {"action_type": "rest", "config": {"url": "https://hooks.example.com/x"}}


def errors_of(model: Any, data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def trigger(*conds: dict[str, Any], registry: str = "reputation", **extra: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "chain_id": 84532,
        "registry": registry,
        "conditions": list(conds),
        "actions": [REST],
        **extra,
    }


def group(op: str, *children: dict[str, Any]) -> dict[str, Any]:
    return {"condition_type": "group", "operator": op, "config": {"conditions": list(children)}}


def ema(**config: Any) -> dict[str, Any]:
    return {"condition_type": "ema_threshold", "operator": ">", "value": "80", "config": config}


AGENT = {"condition_type": "agent_id_equals", "operator": "=", "value": "7"}


# --- round trips ---------------------------------------------------------------------------


@given(conditions())
def test_condition_json_round_trip(condition: Condition) -> None:
    again = Condition.model_validate(condition.model_dump(mode="json"))
    assert again == condition
    assert again.children == condition.children
    assert again.ema == condition.ema
    assert again.rate == condition.rate


@given(trigger_dicts())
def test_trigger_round_trips_through_storage(data: dict[str, Any]) -> None:
    created = TriggerCreate.model_validate(data)
    stored = created.storage_dump()
    assert stored["is_stateful"] is created.is_stateful
    again = TriggerCreate.model_validate(stored)
    assert again == created
    assert again.model_dump(mode="json", context=REVEAL_SECRETS) == stored
    for before, after in zip(created.actions, again.actions, strict=True):
        if isinstance(before.config, RestConfig) and before.config.signing_secret is not None:
            assert isinstance(after.config, RestConfig)
            assert after.config.signing_secret is not None
            assert (
                after.config.signing_secret.get_secret_value()
                == before.config.signing_secret.get_secret_value()
            )


@given(triggers())
def test_trigger_json_dump_masks_secrets(created: TriggerCreate) -> None:
    dumped = created.model_dump(mode="json")
    secrets = [
        a.config.signing_secret
        for a in created.actions
        if isinstance(a.config, RestConfig) and a.config.signing_secret is not None
    ]
    for action in dumped["actions"]:
        if action["action_type"] == "rest" and action["config"]["signing_secret"] is not None:
            assert action["config"]["signing_secret"] == "**********"
    assert all(s.get_secret_value() not in ("", "**********") for s in secrets)
    if not secrets:
        assert TriggerCreate.model_validate(dumped) == created


@given(actions())
def test_action_round_trip(action: Action) -> None:
    assert Action.model_validate(action.model_dump(mode="json", context=REVEAL_SECRETS)) == action


# --- normalization -------------------------------------------------------------------------


def test_condition_normalization() -> None:
    agent = Condition.model_validate(
        {"condition_type": "agent_id_equals", "operator": "in", "value": " 1, 2,003 "}
    )
    assert (agent.field, agent.value, agent.values) == ("agent_id", "1,2,3", ("1", "2", "3"))
    whitelist = Condition.model_validate(
        {"condition_type": "validator_whitelist", "operator": "in", "value": f"{ADDR}, {ADDR}"}
    )
    assert whitelist.value == f"{ADDR.lower()},{ADDR.lower()}"
    assert whitelist.field == "validator_address"
    flag = Condition.model_validate(
        {"condition_type": "file_uri_exists", "operator": "=", "value": "TRUE", "config": None}
    )
    assert (flag.value, flag.config) == ("true", {})
    tag = Condition.model_validate(
        {"condition_type": "tag_equals", "field": "tag1", "operator": "=", "value": " a,b "}
    )
    assert tag.value == " a,b "
    assert tag.values == (" a,b ",)


def test_ema_config_defaults_and_alpha() -> None:
    by_window = Condition.model_validate(ema(window_size=9))
    assert by_window.config == {
        "window_size": 9,
        "scope": "trigger",
        "hysteresis": 0,
        "fire_on": "crossing",
    }
    assert by_window.ema is not None
    assert by_window.ema.alpha == Decimal("0.2")
    assert by_window.number == Decimal(80)
    by_alpha = Condition.model_validate(ema(alpha="0.5", scope="agent", fire_on="every"))
    assert by_alpha.ema is not None
    assert (by_alpha.ema.alpha, by_alpha.ema.window_size) == (Decimal("0.5"), None)
    assert (by_alpha.ema.scope, by_alpha.ema.fire_on) == ("agent", "every")


def test_rate_limit_config() -> None:
    rate = Condition.model_validate(
        {
            "condition_type": "rate_limit",
            "operator": ">=",
            "value": "05",
            "config": {"time_window": "15m", "reset_on_trigger": True},
        }
    )
    assert rate.field == "count"
    assert rate.value == "5"
    assert rate.rate is not None
    assert (rate.rate.window_seconds, rate.rate.reset_on_trigger, rate.rate.scope) == (
        900,
        True,
        "trigger",
    )


def test_operator_values() -> None:
    assert [op.value for op in Operator] == ["=", "!=", "<", "<=", ">", ">=", "in", "not_in"]
    assert len(ConditionType) == 11


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1), ("90s", 90), ("15m", 900), ("2h", 7200), ("30d", 2592000)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1w", "1.5h", "-1s", " 1s", "1H", "1s "])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_is_stateful_sees_into_groups() -> None:
    plain = TriggerCreate.model_validate(trigger(AGENT, group("any", AGENT, AGENT)))
    assert plain.is_stateful is False
    nested = TriggerCreate.model_validate(
        trigger(AGENT, group("any", AGENT, group("not", ema(alpha=1))))
    )
    assert nested.is_stateful is True
    assert nested.model_dump()["is_stateful"] is True
    assert TriggerCreate.model_validate(trigger()).is_stateful is False


def test_echoed_is_stateful_is_ignored() -> None:
    created = TriggerCreate.model_validate(trigger(ema(window_size=3), is_stateful=False))
    assert created.is_stateful is True


# --- condition errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "loc", "message"),
    [
        (ema(window_size=0), ("config", "window_size"), "must be between 1 and 10000"),
        (ema(window_size=10001), ("config", "window_size"), "must be between 1 and 10000"),
        (ema(window_size="10"), ("config", "window_size"), "must be an integer"),
        (ema(window_size=True), ("config", "window_size"), "must be an integer"),
        (ema(window_size=0, alpha=0.3), ("config", "window_size"), "must be between 1 and"),
        (ema(), ("config",), "window_size or alpha is required"),
        (ema(alpha=0), ("config", "alpha"), "0 < alpha <= 1"),
        (ema(alpha=1.5), ("config", "alpha"), "0 < alpha <= 1"),
        (ema(alpha=False), ("config", "alpha"), "0 < alpha <= 1"),
        (ema(alpha=0.5, hysteresis=-1), ("config", "hysteresis"), "must be a number >= 0"),
        (ema(alpha=0.5, fire_on="always"), ("config", "fire_on"), "crossing or every"),
        (ema(alpha=0.5, scope="user"), ("config", "scope"), "trigger or agent"),
        (ema(alpha=0.5, window=3), ("config", "window"), "unknown key for ema_threshold"),
        (
            {**ema(alpha=0.5), "operator": "="},
            ("operator",),
            "must be one of <, <=, >, >= for ema_threshold",
        ),
        ({**ema(alpha=0.5), "value": "high"}, ("value",), "must be a decimal number"),
        ({**ema(alpha=0.5), "field": "value"}, ("field",), "must be one of score"),
        (
            {"condition_type": "rate_limit", "operator": ">", "value": "3", "config": {}},
            ("config", "time_window"),
            "required",
        ),
        (
            {
                "condition_type": "rate_limit",
                "operator": ">",
                "value": "3",
                "config": {"time_window": "31d"},
            },
            ("config", "time_window"),
            "between 1s and 30d",
        ),
        (
            {
                "condition_type": "rate_limit",
                "operator": ">",
                "value": "3",
                "config": {"time_window": "1w"},
            },
            ("config", "time_window"),
            "must look like",
        ),
        (
            {
                "condition_type": "rate_limit",
                "operator": ">",
                "value": "3",
                "config": {"time_window": "1h", "reset_on_trigger": "yes"},
            },
            ("config", "reset_on_trigger"),
            "must be true or false",
        ),
        (
            {
                "condition_type": "rate_limit",
                "operator": ">",
                "value": "-3",
                "config": {"time_window": "1h"},
            },
            ("value",),
            "integer >= 0",
        ),
        (
            {"condition_type": "agent_id_equals", "operator": "=", "value": str(2**63)},
            ("value",),
            "not an agent id",
        ),
        (
            {"condition_type": "agent_id_equals", "operator": "=", "value": "1,2"},
            ("value",),
            "not an agent id",
        ),
        (
            {"condition_type": "agent_id_equals", "operator": "in", "value": "1,,2"},
            ("value",),
            "without empty items",
        ),
        (
            {"condition_type": "agent_id_equals", "operator": ">", "value": "1"},
            ("operator",),
            "must be one of",
        ),
        (
            {
                "condition_type": "agent_id_equals",
                "operator": "=",
                "value": "1",
                "config": {"a": 1},
            },
            ("config", "a"),
            "unknown key",
        ),
        (
            {"condition_type": "score_threshold", "operator": "in", "value": "1"},
            ("operator",),
            "must be one of",
        ),
        (
            {"condition_type": "tag_equals", "operator": "=", "value": "x"},
            ("field",),
            "must be one of tag, tag1, tag2",
        ),
        (
            {"condition_type": "validator_whitelist", "operator": "in", "value": f"{ADDR},0x12"},
            ("value",),
            "not an address",
        ),
        (
            {"condition_type": "validator_whitelist", "operator": "!=", "value": ADDR},
            ("operator",),
            "must be one of",
        ),
        (
            {"condition_type": "event_type_equals", "operator": "in", "value": "Registered,Mint"},
            ("value",),
            "unknown event type Mint",
        ),
        (
            {"condition_type": "file_uri_exists", "operator": "=", "value": "yes"},
            ("value",),
            "must be true or false",
        ),
        (
            {"condition_type": "file_uri_exists", "operator": "!=", "value": "true"},
            ("operator",),
            "must be one of =",
        ),
        (
            {"condition_type": "score_threshold", "operator": ">", "value": "1\x00"},
            ("value",),
            "NUL",
        ),
        ({"condition_type": "score", "operator": ">", "value": "1"}, ("condition_type",), "Input"),
        (group("not", AGENT, AGENT), ("config", "conditions"), "exactly one condition"),
        (group("any"), ("config", "conditions"), "non-empty list"),
        (group("xor", AGENT), ("operator",), "must be one of all, any, not"),
        ({**group("all", AGENT), "value": "x"}, ("value",), "must be empty for a group"),
        (
            group("all", AGENT, {**AGENT, "value": "x"}),
            ("config", "conditions", 1, "value"),
            "not an agent id",
        ),
        (
            group("any", group("all", ema(alpha=2))),
            ("config", "conditions", 0, "config", "conditions", 0, "config", "alpha"),
            "0 < alpha <= 1",
        ),
        (
            group("any", group("any", group("any", group("any", group("any", AGENT))))),
            ("config", "conditions", 0) * 4,
            "groups nest at most 4 deep",
        ),
    ],
)
def test_condition_error_locations(
    condition: dict[str, Any], loc: tuple[str | int, ...], message: str
) -> None:
    errors = errors_of(Condition, condition)
    assert any(where == loc and message in m for where, m in errors), errors


def test_four_nested_groups_are_allowed() -> None:
    deep = Condition.model_validate(group("any", group("all", group("not", group("any", AGENT)))))
    assert deep.children[0].children[0].children[0].children[0].value == "7"
    assert len(deep.walk()) == 5


def test_errors_inside_a_trigger_carry_the_full_path() -> None:
    errors = errors_of(TriggerCreate, trigger(AGENT, AGENT, ema(window_size=0)))
    assert errors == [(("conditions", 2, "config", "window_size"), "must be between 1 and 10000")]
    errors = errors_of(
        TriggerCreate, trigger(AGENT, group("any", AGENT, {**AGENT, "operator": "<"}))
    )
    assert errors == [
        (
            ("conditions", 1, "config", "conditions", 1, "operator"),
            "must be one of !=, =, in, not_in for agent_id_equals",
        )
    ]


def test_event_types_must_belong_to_the_trigger_registry() -> None:
    own = {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"}
    TriggerCreate.model_validate(trigger(own))
    foreign = {**own, "operator": "not_in", "value": "NewFeedback,Transfer"}
    errors = errors_of(TriggerCreate, trigger(AGENT, group("all", AGENT, foreign)))
    assert errors == [
        (
            ("conditions", 1, "config", "conditions", 1, "value"),
            "Transfer is not an event of the reputation registry",
        )
    ]


# --- actions -------------------------------------------------------------------------------


def test_action_configs_by_type() -> None:
    telegram = Action.model_validate(
        {"action_type": "telegram", "config": {"chat_id": -1001234, "message_template": "hi"}}
    )
    assert isinstance(telegram.config, TelegramConfig)
    assert telegram.config.chat_id == "-1001234"
    assert telegram.priority == 1
    rest = Action.model_validate(REST)
    assert isinstance(rest.config, RestConfig)
    assert (rest.config.method, rest.config.timeout_ms, rest.config.max_attempts) == (
        "POST",
        10000,
        5,
    )
    assert rest.config.expected_status is None
    mcp = Action.model_validate(
        {"action_type": "mcp", "config": {"resolve_endpoint": True, "tool_name": "agent.notify"}}
    )
    assert isinstance(mcp.config, McpConfig)
    assert mcp.config.server_url is None


@pytest.mark.parametrize(
    ("action", "loc", "message"),
    [
        (
            {"action_type": "rest", "config": {"url": "ftp://example.com"}},
            ("config", "url"),
            "http or https",
        ),
        (
            {"action_type": "rest", "config": {"url": "https://a.example/x y"}},
            ("config", "url"),
            "http(s) URL",
        ),
        (
            {"action_type": "rest", "config": {"url": "https:///path"}},
            ("config", "url"),
            "with a host",
        ),
        (
            {"action_type": "rest", "config": {"url": "https://a.example", "timeout_ms": 99}},
            ("config", "timeout_ms"),
            "greater than or equal to 100",
        ),
        (
            {"action_type": "rest", "config": {"url": "https://a.example", "max_attempts": 21}},
            ("config", "max_attempts"),
            "less than or equal to 20",
        ),
        (
            {"action_type": "rest", "config": {"url": "https://a.example", "method": "HEAD"}},
            ("config", "method"),
            "Input should be",
        ),
        (
            {
                "action_type": "rest",
                "config": {"url": "https://a.example", "headers": {"X-A": "1\r\nX-B: 2"}},
            },
            ("config", "headers", "X-A"),
            "one line",
        ),
        (
            {
                "action_type": "rest",
                "config": {"url": "https://a.example", "expected_status": [200, 700]},
            },
            ("config", "expected_status", 1),
            "less than or equal to 599",
        ),
        (
            {"action_type": "rest", "config": {"url": "https://a.example", "body_template": 5}},
            ("config", "body_template"),
            "a string, an object or null",
        ),
        (
            {
                "action_type": "rest",
                "config": {"url": "https://a.example", "body_template": "{{ x }}" * 10000},
            },
            ("config", "body_template"),
            "at most 65536 characters",
        ),
        (
            {
                "action_type": "mcp",
                "config": {
                    "tool_name": "x",
                    "server_url": "https://a.example",
                    "arguments_template": {f"k{i}": "{{ event.agent_id }}" for i in range(3000)},
                },
            },
            ("config", "arguments_template"),
            "at most 65536 characters written as JSON",
        ),
        (
            {"action_type": "mcp", "config": {"tool_name": "x"}},
            ("config", "server_url"),
            "exactly one of server_url or resolve_endpoint",
        ),
        (
            {
                "action_type": "mcp",
                "config": {
                    "tool_name": "x",
                    "resolve_endpoint": True,
                    "server_url": "https://a.example",
                },
            },
            ("config", "server_url"),
            "exactly one of server_url or resolve_endpoint",
        ),
        (
            {"action_type": "mcp", "config": {"tool_name": "a b", "resolve_endpoint": True}},
            ("config", "tool_name"),
            "should match pattern",
        ),
        (
            {"action_type": "telegram", "config": {"chat_id": True, "message_template": "m"}},
            ("config", "chat_id"),
            "numeric chat id",
        ),
        (
            {"action_type": "telegram", "config": {"chat_id": 1, "message_template": ""}},
            ("config", "message_template"),
            "at least 1 character",
        ),
        (
            {"action_type": "telegram", "config": {"chat_id": 1, "message_template": "x" * 16385}},
            ("config", "message_template"),
            "at most 16384",
        ),
        (
            {"action_type": "telegram", "config": {"chat_id": 1, "message_template": "m", "x": 1}},
            ("config", "x"),
            "Extra inputs",
        ),
        ({"action_type": "sms", "config": {}}, ("action_type",), "Input should be"),
        (
            {"action_type": "rest", "config": {"url": "https://a.example"}, "priority": "1"},
            ("priority",),
            "valid integer",
        ),
    ],
)
def test_action_error_locations(
    action: dict[str, Any], loc: tuple[str | int, ...], message: str
) -> None:
    errors = errors_of(Action, action)
    assert any(where == loc and message in m for where, m in errors), errors


def test_action_config_instance_must_match_type() -> None:
    config = TelegramConfig(chat_id="1", message_template="m")
    assert Action(action_type="telegram", config=config).config is config
    errors = errors_of(Action, {"action_type": "rest", "config": config})
    assert errors == [(("config",), "is not a config of a rest action")]


def test_signing_secret_is_masked_unless_revealed() -> None:
    action = Action.model_validate(
        {
            "action_type": "rest",
            "config": {"url": "https://a.example", "signing_secret": "top-secret-1"},
        }
    )
    assert isinstance(action.config, RestConfig)
    assert action.config.signing_secret == SecretStr("top-secret-1")
    assert "top-secret-1" not in action.model_dump_json()
    assert "top-secret-1" not in repr(action)
    revealed = action.model_dump(mode="json", context=REVEAL_SECRETS)
    assert revealed["config"]["signing_secret"] == "top-secret-1"


def test_secret_headers_are_masked_unless_revealed_and_checked_like_headers() -> None:
    config = {
        "url": "https://a.example",
        "headers": {"X-Source": "e"},
        "secret_headers": {"Authorization": "Bearer t-123"},
    }
    action = Action.model_validate({"action_type": "rest", "config": config})
    assert isinstance(action.config, RestConfig)
    assert "t-123" not in action.model_dump_json()
    assert "t-123" not in repr(action)
    revealed = action.model_dump(mode="json", context=REVEAL_SECRETS)
    assert revealed["config"]["secret_headers"] == {"Authorization": "Bearer t-123"}
    assert Action.model_validate(revealed) == action

    def problems(secret_headers: Any, headers: Any = None) -> list[Any]:
        body = {"url": "https://a.example", "secret_headers": secret_headers}
        if headers is not None:
            body["headers"] = headers
        return errors_of(RestConfig, body)

    assert problems({"Host": "x"}) == [
        (("secret_headers", "Host"), "set by the dispatcher itself (framing, routing or signing)")
    ]
    assert problems({"Bad Name": "x"}) == [
        (("secret_headers", "Bad Name"), "not a valid header name")
    ]
    assert problems({"X-Key": "a\r\nb"}) == [
        (("secret_headers", "X-Key"), "header values are one line of at most 8192 characters")
    ]
    # A "secret" the outbound client would carry to another origin on a redirect.
    for name in ("Accept", "content-type", "User-Agent", "Content-Encoding"):
        assert problems({name: "x"}) == [
            (
                ("secret_headers", name),
                "not a secret: this header follows redirects to other origins; give it in headers",
            )
        ]
    assert problems({"X-Key": ""}) == [
        (("secret_headers", "X-Key"), "empty: leave the header out instead")
    ]
    assert problems({"x-key": "a"}, headers={"X-Key": "b"}) == [
        (("secret_headers", "x-key"), "header named in both headers and secret_headers")
    ]
    assert problems({"X-Key": "a", "x-key": "b"}) == [
        (("secret_headers", "x-key"), "the same header twice (names ignore case)")
    ]
    # the error never carries the secret values
    with pytest.raises(ValidationError) as info:
        RestConfig.model_validate(
            {"url": "https://a.example", "headers": {"K": "1"}, "secret_headers": {"k": "s3c"}}
        )
    assert "s3c" not in str(info.value)
    assert all(e["input"] is None for e in info.value.errors())


# --- triggers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"name": "   "}, ("name",)),
        ({"name": "x" * 201}, ("name",)),
        ({"chain_id": 0}, ("chain_id",)),
        ({"registry": "ledger"}, ("registry",)),
        ({"enabled": "yes"}, ("enabled",)),
        ({"cooldown_seconds": 30 * 86400 + 1}, ("cooldown_seconds",)),
        ({"cooldown_seconds": -1}, ("cooldown_seconds",)),
        ({"actions": []}, ("actions",)),
        ({"actions": [REST] * 21}, ("actions",)),
        ({"conditions": [AGENT] * 51}, ("conditions",)),
        ({"owner": "me"}, ("owner",)),
    ],
)
def test_trigger_field_errors(extra: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    assert [where for where, _ in errors_of(TriggerCreate, trigger(**extra))] == [loc]


def test_trigger_defaults_and_name_strip() -> None:
    created = TriggerCreate.model_validate(trigger(name="  my trigger  "))
    assert created.name == "my trigger"
    assert (created.enabled, created.cooldown_seconds, created.description) == (True, None, None)
    assert created.conditions == []


def test_trigger_update_is_partial() -> None:
    update = TriggerUpdate.model_validate({"description": None, "cooldown_seconds": 60})
    assert update.storage_dump() == {"description": None, "cooldown_seconds": 60}
    current = TriggerCreate.model_validate(trigger(AGENT, description="d"))
    merged = update.apply(current)
    assert (merged.description, merged.cooldown_seconds) == (None, 60)
    assert merged.conditions == current.conditions
    assert TriggerUpdate.model_validate({}).apply(current) == current


@pytest.mark.parametrize(
    "field", ["name", "chain_id", "registry", "enabled", "conditions", "actions"]
)
def test_trigger_update_refuses_null_for_required_fields(field: str) -> None:
    assert errors_of(TriggerUpdate, {field: None}) == [((field,), "may be omitted but not null")]


def test_trigger_update_is_validated_again_when_applied() -> None:
    own = {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"}
    current = TriggerCreate.model_validate(trigger(own))
    with pytest.raises(ValidationError) as info:
        TriggerUpdate.model_validate({"registry": "identity"}).apply(current)
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("conditions", 0, "value")]
    errors = errors_of(TriggerUpdate, {"conditions": [ema(window_size=0)]})
    assert errors == [(("conditions", 0, "config", "window_size"), "must be between 1 and 10000")]


def test_ema_with_window_size_and_alpha_is_alpha_with_a_warm_up() -> None:
    """The schema document's own example config: alpha smooths, window_size warms up."""
    both = Condition.model_validate(
        {"condition_type": "ema_threshold", "operator": "<", "value": "40",
         "config": {"window_size": 10, "alpha": 0.2}}
    )  # fmt: skip
    assert both.ema is not None
    assert both.ema.alpha == Decimal("0.2")
    assert both.ema.warmup == 10
    only_window = Condition.model_validate(
        {"condition_type": "ema_threshold", "operator": "<", "value": "40",
         "config": {"window_size": 10}}
    )  # fmt: skip
    assert only_window.ema is not None
    assert only_window.ema.warmup == 1
    # 2/11 to 40 significant digits, whatever the thread's context
    assert only_window.ema.alpha == Decimal("0.1818181818181818181818181818181818181818")


def test_cooldown_alone_makes_a_trigger_stateful() -> None:
    body = {
        "name": "t", "chain_id": 1, "registry": "reputation", "cooldown_seconds": 60,
        "actions": [{"action_type": "rest", "config": {"url": "https://example.org/h"}}],
    }  # fmt: skip
    assert TriggerCreate.model_validate(body).is_stateful
    assert not TriggerCreate.model_validate({**body, "cooldown_seconds": 0}).is_stateful
    assert not TriggerCreate.model_validate({**body, "cooldown_seconds": None}).is_stateful


@pytest.mark.parametrize(
    ("condition", "field", "value"),
    [
        ({"condition_type": "field_equals", "field": "client_address", "operator": "in",
          "value": "0x" + "AB" * 20 + ", 0x" + "cd" * 20}, "client_address",
         "0x" + "ab" * 20 + ",0x" + "cd" * 20),
        ({"condition_type": "field_equals", "field": "endpoint", "operator": "=",
          "value": " https://a.example/mcp"}, "endpoint", " https://a.example/mcp"),
        ({"condition_type": "score_threshold", "field": "response", "operator": ">=",
          "value": "80"}, "response", "80"),
        ({"condition_type": "score_threshold", "field": "value_decimals", "operator": "=",
          "value": "2"}, "value_decimals", "2"),
        ({"condition_type": "score_threshold", "operator": ">", "value": "1"}, "score", "1"),
    ],
)  # fmt: skip
def test_more_event_fields_in_conditions(condition: dict[str, Any], field: str, value: str) -> None:
    c = Condition.model_validate(condition)
    assert (c.field, c.value) == (field, value)


def test_field_equals_refuses_what_does_not_fit() -> None:
    errors = errors_of(
        Condition,
        {"condition_type": "field_equals", "field": "owner", "operator": "=", "value": "bob"},
    )
    assert errors
    assert errors[0][0] == ("value",)
    errors = errors_of(
        Condition,
        {"condition_type": "field_equals", "field": "token_uri", "operator": "=", "value": "x"},
    )
    assert errors
    assert errors[0][0] == ("field",)
