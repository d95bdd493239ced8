"""Hypothesis strategies for the contract models (raw input dicts and validated models)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from shared.contract.actions import Action
from shared.contract.condition_types import MAX_GROUP_DEPTH
from shared.contract.conditions import Condition
from shared.contract.event_fields import (
    INT32_MAX,
    INT63_MAX,
    MAX_ABS_VALUE,
)
from shared.contract.events import (
    EVENT_TYPES,
    Event,
    Registry,
    version_key,
)
from shared.contract.jobs import ActionJob, EventMessage, RetractionMessage, job_id
from shared.contract.triggers import TriggerCreate

#: Upper bound of generated timestamps, safely in the past.
MAX_TIMESTAMP = 1_750_000_000


def _hex(size: int) -> st.SearchStrategy[str]:
    """`0x` + hex of `size` bytes, sometimes upper case (the models lower-case it)."""
    return st.tuples(st.binary(min_size=size, max_size=size), st.booleans()).map(
        lambda t: "0x" + (t[0].hex().upper() if t[1] else t[0].hex())
    )


addresses = _hex(20)
hashes = _hex(32)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
words = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
uint63 = st.integers(0, INT63_MAX)
uris = st.sampled_from(["ipfs://bafy", "https://agent.example/card.json", "", "data:,x"])

_COMMON: dict[str, st.SearchStrategy[Any]] = {
    "chain_id": st.integers(1, INT32_MAX),
    "block_number": uint63,
    "block_hash": hashes,
    "transaction_hash": hashes,
    "log_index": st.integers(0, INT32_MAX),
    "timestamp": st.integers(1438269973, MAX_TIMESTAMP),
}

#: (required, optional) fields of each event type besides the common ones.
_FIELDS: dict[str, tuple[dict[str, st.SearchStrategy[Any]], dict[str, st.SearchStrategy[Any]]]] = {
    "Registered": ({"agent_id": uint63, "token_uri": uris, "owner": addresses}, {}),
    "URIUpdated": ({"agent_id": uint63, "token_uri": uris}, {"updated_by": addresses}),
    "MetadataSet": (
        {"agent_id": uint63, "metadata_key": texts},
        {"metadata_value": st.binary(max_size=40).map(lambda b: "0x" + b.hex())},
    ),
    "Transfer": ({"agent_id": uint63, "owner": addresses}, {"previous_owner": addresses}),
    "MetadataUpdate": ({"agent_id": uint63}, {}),
    "NewFeedback": (
        {"agent_id": uint63, "client_address": addresses},
        {
            "feedback_index": uint63,
            "tag1": texts,
            "tag2": texts,
            "endpoint": uris,
            "file_uri": uris,
            "file_hash": hashes,
        },
    ),
    "FeedbackRevoked": (
        {"agent_id": uint63, "client_address": addresses, "feedback_index": uint63},
        {},
    ),
    "ResponseAppended": (
        {
            "agent_id": uint63,
            "client_address": addresses,
            "feedback_index": uint63,
            "responder": addresses,
        },
        {"response_uri": uris, "response_hash": hashes},
    ),
    "ValidationRequest": (
        {"validator_address": addresses, "agent_id": uint63, "request_hash": hashes},
        {"request_uri": uris},
    ),
    "ValidationResponse": (
        {
            "validator_address": addresses,
            "agent_id": uint63,
            "request_hash": hashes,
            "response": st.integers(0, 100),
        },
        {"response_uri": uris, "response_hash": hashes, "tag": texts},
    ),
}

_REGISTRY = {t: r for r, types in EVENT_TYPES.items() for t in types}

legacy_feedback = st.fixed_dictionaries({"score": st.integers(0, 100)})
current_feedback = st.fixed_dictionaries(
    {
        "value": st.one_of(
            st.integers(-MAX_ABS_VALUE, MAX_ABS_VALUE),
            st.integers(-MAX_ABS_VALUE, MAX_ABS_VALUE).map(str),
        ),
        "value_decimals": st.integers(0, 18),
    }
)


@st.composite
def event_dicts(draw: st.DrawFn, event_type: str | None = None) -> dict[str, Any]:
    """A valid raw event as an indexer posts it (NewFeedback in either layout)."""
    kind = event_type or draw(st.sampled_from(sorted(_FIELDS)))
    required, optional = _FIELDS[kind]
    data = draw(st.fixed_dictionaries({**_COMMON, **required}, optional=optional))
    data["registry"] = _REGISTRY[kind].value
    data["event_type"] = kind
    if kind == "NewFeedback":
        data.update(draw(st.one_of(legacy_feedback, current_feedback)))
    return data


def events(event_type: str | None = None) -> st.SearchStrategy[Event]:
    """Validated events."""
    return event_dicts(event_type).map(Event.model_validate)


#: Pass as an override to example_event to leave a field out.
DROP: Any = object()


def example_event(event_type: str, /, **overrides: Any) -> dict[str, Any]:
    """A fixed valid raw event of the given type, with overrides applied."""
    values: dict[str, Any] = {
        "agent_id": 42,
        "token_uri": "ipfs://bafy",
        "owner": "0x" + "11" * 20,
        "metadata_key": "agentWallet",
        "client_address": "0x" + "22" * 20,
        "feedback_index": 1,
        "responder": "0x" + "33" * 20,
        "validator_address": "0x" + "44" * 20,
        "request_hash": "0x" + "55" * 32,
        "response": 90,
    }
    data: dict[str, Any] = {
        "chain_id": 84532,
        "block_number": 100,
        "block_hash": "0x" + "ab" * 32,
        "transaction_hash": "0x" + "cd" * 32,
        "log_index": 3,
        "registry": _REGISTRY[event_type].value,
        "event_type": event_type,
        "timestamp": 1_700_000_000,
    }
    data.update({name: values[name] for name in _FIELDS[event_type][0]})
    if event_type == "NewFeedback":
        data["score"] = 87
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not DROP}


# --- conditions ----------------------------------------------------------------------------

_EQ = ["=", "!=", "in", "not_in"]
_NUMERIC = ["=", "!=", "<", "<=", ">", ">="]
_decimals = st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False).map(str)


def _list_or_one(op: str, item: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    if op in ("in", "not_in"):
        return st.lists(item, min_size=1, max_size=4).map(", ".join)
    return item


def _cond(
    kind: str, ops: list[str], value: Callable[[str], st.SearchStrategy[str]], **extra: Any
) -> st.SearchStrategy[dict[str, Any]]:
    def build(op: str) -> st.SearchStrategy[dict[str, Any]]:
        fields = {
            "condition_type": st.just(kind),
            "operator": st.just(op),
            "value": value(op),
        }
        fields.update(extra)
        return st.fixed_dictionaries(fields)

    return st.sampled_from(ops).flatmap(build)


_durations = st.tuples(st.integers(1, 30), st.sampled_from("smhd")).map(lambda t: f"{t[0]}{t[1]}")
_scope = {"scope": st.sampled_from(["trigger", "agent"])}
_ema_config = st.one_of(
    st.fixed_dictionaries({"window_size": st.integers(1, 10000)}),
    st.fixed_dictionaries(
        {
            "alpha": st.one_of(
                st.floats(0.001, 1.0),
                st.decimals("0.001", "1", places=3).map(str),
            )
        }
    ),
).flatmap(
    lambda base: st.fixed_dictionaries(
        {k: st.just(v) for k, v in base.items()},
        optional={
            **_scope,
            "hysteresis": st.one_of(st.integers(0, 10), st.just("0.5")),
            "fire_on": st.sampled_from(["crossing", "every"]),
        },
    )
)
_rate_config = st.fixed_dictionaries(
    {"time_window": _durations},
    optional={**_scope, "reset_on_trigger": st.booleans()},
)


def leaf_condition_dicts(registry: Registry | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """A raw condition of any non-group type (event types from `registry` when given)."""
    types = sorted(EVENT_TYPES[registry] if registry else _REGISTRY)
    return st.one_of(
        _cond(
            "agent_id_equals",
            _EQ,
            lambda op: _list_or_one(op, uint63.map(str)),
            field=st.sampled_from(["agent_id", ""]),
        ),
        _cond("score_threshold", _NUMERIC, lambda op: _decimals),
        _cond(
            "tag_equals",
            _EQ,
            lambda op: _list_or_one(op, words),
            field=st.sampled_from(["tag1", "tag2", "tag"]),
        ),
        _cond(
            "validator_whitelist",
            ["in", "not_in", "="],
            lambda op: st.lists(addresses, min_size=1, max_size=3).map(",".join),
        ),
        _cond("event_type_equals", _EQ, lambda op: _list_or_one(op, st.sampled_from(types))),
        _cond("ema_threshold", ["<", "<=", ">", ">="], lambda op: _decimals, config=_ema_config),
        _cond(
            "rate_limit",
            _NUMERIC,
            lambda op: st.integers(0, 10**6).map(str),
            field=st.just("count"),
            config=_rate_config,
        ),
        _cond(
            "file_uri_exists",
            ["="],
            lambda op: st.sampled_from(["true", "false", "TRUE", "False"]),
        ),
    )


def condition_dicts(
    depth: int = MAX_GROUP_DEPTH, registry: Registry | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """A raw condition; groups nest at most `depth` levels."""
    leaf = leaf_condition_dicts(registry)
    if depth == 0:
        return leaf
    child = condition_dicts(depth - 1, registry)

    def group(op: str) -> st.SearchStrategy[dict[str, Any]]:
        return st.lists(child, min_size=1, max_size=1 if op == "not" else 2).map(
            lambda cs: {"condition_type": "group", "operator": op, "config": {"conditions": cs}}
        )

    return st.one_of(leaf, st.sampled_from(["any", "all", "not"]).flatmap(group))


def conditions(depth: int = MAX_GROUP_DEPTH) -> st.SearchStrategy[Condition]:
    """Validated conditions."""
    return condition_dicts(depth).map(Condition.model_validate)


# --- actions and triggers ------------------------------------------------------------------

_urls = st.sampled_from(
    ["https://hooks.example.com/x", "http://127.0.0.1:8080/hook?a=1", "https://[::1]:9/p"]
)
_templates = st.one_of(
    st.none(),
    texts,
    st.dictionaries(words, st.one_of(texts, st.integers(), st.booleans()), max_size=3),
)

telegram_configs = st.fixed_dictionaries(
    {
        "chat_id": st.one_of(
            st.integers(-(10**13), 10**13), st.just("@agent_alerts"), st.just("-1001234")
        ),
        "message_template": st.text(
            st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1
        ),
    },
    optional={"parse_mode": st.sampled_from(["MarkdownV2", "HTML", "Markdown", None])},
)
rest_configs = st.fixed_dictionaries(
    {"url": _urls},
    optional={
        "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
        "headers": st.dictionaries(
            st.sampled_from(["X-Token", "Authorization", "x-a"]), words, max_size=2
        ),
        "body_template": _templates,
        "timeout_ms": st.integers(100, 60000),
        "expected_status": st.one_of(
            st.none(), st.lists(st.integers(100, 599), min_size=1, max_size=3)
        ),
        "signing_secret": st.one_of(st.none(), words),
        "max_attempts": st.integers(1, 20),
    },
)
mcp_configs = st.one_of(
    st.fixed_dictionaries({"server_url": _urls}),
    st.fixed_dictionaries({"resolve_endpoint": st.just(True)}),
).flatmap(
    lambda target: st.fixed_dictionaries(
        {
            **{k: st.just(v) for k, v in target.items()},
            "tool_name": st.sampled_from(["agent.receiveFeedback", "notify", "a/b-c_d"]),
        },
        optional={
            "arguments_template": _templates,
            "verify_file_hash": st.booleans(),
            "include_file_content": st.booleans(),
            "timeout_ms": st.integers(100, 60000),
            "max_attempts": st.integers(1, 20),
        },
    )
)


def action_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """A raw action of any type."""
    return st.one_of(
        *(
            st.fixed_dictionaries(
                {"action_type": st.just(kind), "config": config},
                optional={"priority": st.integers(0, 1000)},
            )
            for kind, config in (
                ("telegram", telegram_configs),
                ("rest", rest_configs),
                ("mcp", mcp_configs),
            )
        )
    )


def actions() -> st.SearchStrategy[Action]:
    """Validated actions."""
    return action_dicts().map(Action.model_validate)


@st.composite
def trigger_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A raw valid TriggerCreate body."""
    registry = draw(st.sampled_from(list(Registry)))
    return draw(
        st.fixed_dictionaries(
            {
                "name": words,
                "chain_id": st.integers(1, INT32_MAX),
                "registry": st.just(registry.value),
                "actions": st.lists(action_dicts(), min_size=1, max_size=3),
            },
            optional={
                "description": st.one_of(st.none(), texts),
                "enabled": st.booleans(),
                "cooldown_seconds": st.one_of(st.none(), st.integers(0, 30 * 86400)),
                "conditions": st.lists(condition_dicts(2, registry), max_size=4),
            },
        )
    )


def triggers() -> st.SearchStrategy[TriggerCreate]:
    """Validated triggers."""
    return trigger_dicts().map(TriggerCreate.model_validate)


# --- topic messages and jobs ---------------------------------------------------------------

# st.datetimes takes naive bounds and attaches the zone itself
aware_datetimes = st.datetimes(
    min_value=datetime(2015, 8, 1, tzinfo=UTC).replace(tzinfo=None),
    max_value=datetime(2030, 1, 1, tzinfo=UTC).replace(tzinfo=None),
    timezones=st.just(UTC),
)


@st.composite
def retraction_messages(draw: st.DrawFn) -> RetractionMessage:
    """Valid retraction messages."""
    start = draw(st.integers(0, 10**12))
    end = draw(st.one_of(st.none(), st.integers(start, start + 10**6)))
    return RetractionMessage(
        chain_id=draw(st.integers(1, INT32_MAX)),
        from_block=start,
        to_block=end,
        reorg_id=draw(words),
        created_at=draw(aware_datetimes),
    )


def topic_messages() -> st.SearchStrategy[EventMessage | RetractionMessage]:
    """Messages of erc8004.events."""
    return st.one_of(events().map(lambda e: EventMessage(event=e)), retraction_messages())


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def action_jobs(draw: st.DrawFn) -> ActionJob:
    """Valid action jobs."""
    event = draw(events())
    action = draw(actions())
    trigger_id = draw(st.uuids()).hex
    action_id = draw(st.integers(1, 10**6))
    return ActionJob(
        job_id=job_id(trigger_id, version_key(event), action_id),
        trigger_id=trigger_id,
        trigger_name=draw(words),
        user_id=draw(st.uuids()).hex,
        action_id=action_id,
        action_type=action.action_type,
        config=action.config.model_dump(mode="json", context={"reveal_secrets": True}),
        event=event,
        explain=draw(st.dictionaries(words, _json_values, max_size=3)),
        attempt=draw(st.integers(1, 10)),
        due_at=draw(st.one_of(st.none(), aware_datetimes)),
        created_at=draw(aware_datetimes),
    )
