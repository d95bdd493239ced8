"""Hypothesis strategies of (trigger, steps) cases for differential tests of the trigger
engine against tests/reference.py.

`cases()` draws ``(trigger_dict, steps)``: a random trigger (every condition type,
groups nested with stateful members, mixed scopes, cooldowns, hysteresis, fire_on,
reset_on_trigger, warm-up; one in five an **absence** trigger, section 5a: stateless
gate conditions and groups beside one absence condition of either scope, with a
silence of a second to an hour against block-time gaps of seconds to hours, so that
silences both run out and end in time, and often a cooldown) and a random history of
two chains (both feedback layouts, revocations and responses naming earlier feedback,
validation and identity events, several events per block, gaps of seconds to hours,
reorgs, **heartbeats** ``("tick", (chain_id, block_time))`` of either chain at or after
the chain's clock, sometimes a day or a month ahead (later blocks of the chain follow
them), more of them for absence triggers, and a few edits of the trigger: reordered,
a condition changed, another cooldown; for absence triggers also a gate changed,
added or removed, the silence's duration changed, its scope switched (without a
cooldown), the absence condition replaced by an EMA or a rate window, and now and then
a trigger edited into an absence trigger). Values stay where thresholds cross, so that
firings are frequent.

Every trigger dict (also every edit) is the ``model_dump(mode="json")`` shape of a
`TriggerCreate` that validated; every event is a validated `shared.contract.events.Event`.

Spec features that `TriggerCreate` does not accept yet are behind the flag
`INCLUDE_NEW_FEATURES`: switch it on once they validate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.contract.events import EVENT_TYPES, Event, Registry
from shared.contract.triggers import TriggerCreate

#: Turn on the spec features that TriggerCreate does not validate yet (docs/semantics.md).
INCLUDE_NEW_FEATURES = False
#: score_threshold with the operators in / not_in (the spec's table lists them; not
#: accepted by TriggerCreate yet).
NEW_SCORE_LISTS = INCLUDE_NEW_FEATURES
# Newer spec features that TriggerCreate (or Event) accepts already in the working tree
# this was written against. Set one to INCLUDE_NEW_FEATURES if it stops validating.
#: condition_type field_equals (client_address, endpoint, owner, responder, metadata_key).
NEW_FIELD_EQUALS = True
#: score_threshold on the fields response and value_decimals.
NEW_SCORE_FIELDS = True
#: ema_threshold config with both alpha and window_size (window_size is a warm-up).
NEW_EMA_WARM_UP = True
#: legacy bytes32 tags (0x + 64 hex) in events, stored as their text (section 2).
NEW_BYTES32_TAGS = True

CHAINS = (1, 8453)
AGENTS = (1, 2, 3)
BASE_TIME = 1_700_000_000
#: Seconds between consecutive blocks: same second up to two hours.
GAPS = (0, 0, 0, 1, 1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800, 3600, 7200)
WINDOWS = ("30s", "1m", "5m", "15m", "30m", "1h")
COOLDOWNS = (None, None, 0, 30, 300, 900, 3600)
#: Absence durations: short against GAPS (several equal to a gap: t > s + D is strict),
#: so that silences both end in time and run out.
SILENCES = ("1s", "10s", "30s", "45s", "1m", "2m", "5m", "15m", "1h")
#: Seconds from the chain's clock to a heartbeat: mostly as between blocks, sometimes a
#: day or a month ahead (the chain's later blocks follow it).
TICK_GAPS = (*GAPS, 0, 1, 86_400, 2_592_000)
#: One trigger in ABSENCE_SHARE is an absence trigger.
ABSENCE_SHARE = 5


def _address(seed: str) -> str:
    return "0x" + hashlib.sha256(seed.encode()).hexdigest()[:40]


def _hash(seed: str) -> str:
    return "0x" + hashlib.sha256(seed.encode()).hexdigest()


CLIENTS = tuple(_address(f"client{i}") for i in range(3))
VALIDATORS = tuple(_address(f"validator{i}") for i in range(3))
OWNERS = tuple(_address(f"owner{i}") for i in range(2))
RESPONDERS = tuple(_address(f"responder{i}") for i in range(2))
TAGS = ("quality", "speed", "uptime")
#: bytes32 tags: "quality" zero-padded (text) and 32 bytes that are not UTF-8 (hex stays).
BYTES32_TAGS = ("0x" + b"quality".ljust(32, b"\x00").hex(), "0x" + "ff" * 32)
ENDPOINTS = ("https://a.example/mcp", "https://b.example/a2a")
METADATA_KEYS = ("name", "endpoint", "wallet")
URIS = ("ipfs://bafycard", "https://agent.example/card.json")
FILE_URIS = (None, "", "ipfs://bafyfeedback")

#: Deployments of the registries on a chain: None (events naming no registry, as
#: indexers that post one registry per chain send them) or two deployments whose
#: agents share ids (an old and a new registry on one chain).
DEPLOYMENTS = (None, None, "old", "new")
IDENTITY_REGISTRIES = tuple(_address(f"identity-{d}") for d in ("old", "new"))
CONTRACTS = IDENTITY_REGISTRIES + tuple(
    _address(f"{r}-{d}") for r in ("reputation", "validation") for d in ("old", "new")
)

#: field_equals fields that hold addresses.
ADDRESSES = ("client_address", "owner", "responder", "registry_address", "agent_registry")

ACTIONS = [{"action_type": "rest", "config": {"url": "https://example.org/h"}}]

Condition = dict[str, Any]


def _condition(
    kind: str, op: str, value: str = "", config: dict[str, Any] | None = None, field_name: str = ""
) -> Condition:
    return {
        "condition_type": kind,
        "field": field_name,
        "operator": op,
        "value": value,
        "config": config or {},
    }


def _case_of(text: str, upper: bool) -> str:
    """An address with its hex in upper case (the models lower-case it)."""
    return "0x" + text[2:].upper() if upper else text


# --- conditions ----------------------------------------------------------------------------

EQ_OPS = ("=", "!=", "in", "not_in")
NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
ORDER_OPS = ("<", "<=", ">", ">=")


@st.composite
def _listed(draw: st.DrawFn, op: str, pool: tuple[str, ...]) -> str:
    """One value for =/!=, a comma list of one to three for in/not_in."""
    if op in ("in", "not_in"):
        chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        return ",".join(chosen)
    return draw(st.sampled_from(pool))


@st.composite
def _threshold(draw: st.DrawFn, low: int, high: int) -> str:
    """A threshold, mostly an integer, sometimes with a fraction."""
    whole = draw(st.integers(low, high))
    return draw(st.sampled_from((str(whole), str(whole), f"{whole}.5", f"{whole}.25")))


@st.composite
def stateless_conditions(draw: st.DrawFn, registry: str) -> Condition:
    kinds = [
        "agent_id_equals",
        "event_type_equals",
        "score_threshold",
        "score_threshold",
        "tag_equals",
        "validator_whitelist",
        "file_uri_exists",
    ]
    if NEW_FIELD_EQUALS:
        kinds += ["field_equals", "field_equals"]
    kind = draw(st.sampled_from(kinds))
    if kind == "agent_id_equals":
        op = draw(st.sampled_from(EQ_OPS))
        value = draw(_listed(op, tuple(str(a) for a in (*AGENTS, 9))))
        return _condition(kind, op, value, field_name=draw(st.sampled_from(("", "agent_id"))))
    if kind == "event_type_equals":
        op = draw(st.sampled_from(EQ_OPS))
        value = draw(_listed(op, tuple(sorted(EVENT_TYPES[Registry(registry)]))))
        return _condition(kind, op, value)
    if kind == "score_threshold":
        fields = ["score"] + (["response", "value_decimals"] if NEW_SCORE_FIELDS else [])
        name = draw(st.sampled_from(fields))
        ops = NUMERIC_OPS + (("in", "not_in") if NEW_SCORE_LISTS else ())
        op = draw(st.sampled_from(ops))
        pool: tuple[str, ...]
        if name == "value_decimals":
            pool = ("0", "1", "2", "3")
        elif op in ("in", "not_in"):
            pool = tuple(str(n) for n in range(30, 71, 5))
        else:
            pool = ()
        value = draw(_listed(op, pool)) if pool else draw(_threshold(30, 70))
        return _condition(kind, op, value, field_name=name)
    if kind == "tag_equals":
        name = draw(st.sampled_from(("tag1", "tag2", "tag")))
        op = draw(st.sampled_from(EQ_OPS))
        tags: tuple[str, ...] = TAGS + (("",) if op in ("=", "!=") else ())
        return _condition(kind, op, draw(_listed(op, tags)), field_name=name)
    if kind == "validator_whitelist":
        op = draw(st.sampled_from(("in", "not_in", "=")))
        chosen = draw(st.lists(st.sampled_from(VALIDATORS), min_size=1, max_size=2, unique=True))
        upper = draw(st.booleans())
        return _condition(kind, op, ",".join(_case_of(a, upper) for a in chosen))
    if kind == "file_uri_exists":
        return _condition(kind, "=", draw(st.sampled_from(("true", "false"))))
    # field_equals
    name = draw(
        st.sampled_from(
            (
                "client_address",
                "endpoint",
                "owner",
                "responder",
                "metadata_key",
                "registry_address",
                "agent_registry",
            )
        )
    )
    op = draw(st.sampled_from(EQ_OPS))
    pools: dict[str, tuple[str, ...]] = {
        "client_address": CLIENTS,
        "endpoint": ENDPOINTS,
        "owner": OWNERS,
        "responder": RESPONDERS,
        "metadata_key": METADATA_KEYS,
        "registry_address": CONTRACTS,
        "agent_registry": IDENTITY_REGISTRIES,
    }
    # the empty text (an absent field) for the fields that are not addresses
    empty: tuple[str, ...] = ("",) if op in ("=", "!=") and name not in ADDRESSES else ()
    value = draw(_listed(op, pools[name] + empty))
    if name in ADDRESSES and draw(st.booleans()):
        value = ",".join(_case_of(v, True) if v else v for v in value.split(","))
    return _condition(kind, op, value, field_name=name)


def _maybe(draw: st.DrawFn, config: dict[str, Any], key: str, options: tuple[Any, ...]) -> None:
    """Set config[key] to one of options, or leave it out (the default)."""
    choice = draw(st.sampled_from(("absent", *options)))
    if choice != "absent":
        config[key] = choice


@st.composite
def ema_conditions(draw: st.DrawFn, scope: str | None = None) -> Condition:
    op = draw(st.sampled_from(ORDER_OPS))
    config: dict[str, Any] = {}
    shapes = ["window_size", "alpha"] + (["both"] if NEW_EMA_WARM_UP else [])
    shape = draw(st.sampled_from(shapes))
    if shape in ("window_size", "both"):
        config["window_size"] = draw(st.integers(1, 5))
    if shape in ("alpha", "both"):
        config["alpha"] = draw(st.sampled_from((1, 0.5, 0.3, 0.1, "0.25", "0.7", "1")))
    if scope is None:
        _maybe(draw, config, "scope", ("trigger", "agent"))
    else:
        config["scope"] = scope
    _maybe(draw, config, "hysteresis", (0, 5, 10, "2.5", 7.5))
    _maybe(draw, config, "fire_on", ("crossing", "every"))
    return _condition("ema_threshold", op, draw(_threshold(30, 70)), config)


@st.composite
def rate_conditions(draw: st.DrawFn, scope: str | None = None) -> Condition:
    op = draw(st.sampled_from((">=", ">=", ">", "=", "<", "<=", "!=")))
    config: dict[str, Any] = {"time_window": draw(st.sampled_from(WINDOWS))}
    _maybe(draw, config, "reset_on_trigger", (True, False))
    if scope is None:
        _maybe(draw, config, "scope", ("trigger", "agent"))
    else:
        config["scope"] = scope
    return _condition("rate_limit", op, str(draw(st.integers(1, 4))), config)


def stateful_conditions(
    registry: str = "reputation", scope: str | None = None
) -> st.SearchStrategy[Condition]:
    """An EMA or a rate window (mostly rate windows outside the reputation registry,
    where no event carries a feedback value)."""
    if registry == "reputation":
        return st.one_of(ema_conditions(scope), rate_conditions(scope))
    return st.one_of(ema_conditions(scope), rate_conditions(scope), rate_conditions(scope))


@st.composite
def absence_conditions(draw: st.DrawFn, scope: str | None = None) -> Condition:
    """Section 5a: no matching event for longer than a duration (field empty or
    `silence`, scope left out, trigger or agent)."""
    config: dict[str, Any] = {}
    if scope is None:
        _maybe(draw, config, "scope", ("trigger", "agent", "agent"))
    else:
        config["scope"] = scope
    field_name = draw(st.sampled_from(("", "silence")))
    return _condition("absence", ">", draw(st.sampled_from(SILENCES)), config, field_name)


@st.composite
def stateless_groups(draw: st.DrawFn, registry: str) -> Condition:
    """A group of stateless members only: part of the gate (section 2)."""
    op = draw(st.sampled_from(("any", "all", "not")))
    count = 1 if op == "not" else draw(st.integers(1, 3))
    nested = [draw(stateless_conditions(registry)) for _ in range(count)]
    return _condition("group", op, config={"conditions": nested})


def gate_conditions(registry: str) -> st.SearchStrategy[Condition]:
    """A condition of an absence trigger's gate: mostly a leaf, sometimes a group."""
    return st.one_of(
        stateless_conditions(registry),
        stateless_conditions(registry),
        stateless_conditions(registry),
        stateless_groups(registry),
    )


def groups(registry: str, depth: int) -> st.SearchStrategy[Condition]:
    """A group of stateless, stateful and (above depth 0) nested group members."""
    member = conditions(registry, depth - 1)

    @st.composite
    def build(draw: st.DrawFn) -> Condition:
        op = draw(st.sampled_from(("any", "all", "not")))
        count = 1 if op == "not" else draw(st.integers(1, 3))
        nested = [draw(member) for _ in range(count)]
        return _condition("group", op, config={"conditions": nested})

    return build()


def conditions(registry: str, depth: int = 2) -> st.SearchStrategy[Condition]:
    """Any condition: stateless, stateful, or (depth > 0) a group."""
    options = [
        stateless_conditions(registry),
        stateful_conditions(registry),
        stateful_conditions(registry),
    ]
    if depth > 0:
        options.append(groups(registry, depth))
    return st.one_of(options)


# --- triggers ------------------------------------------------------------------------------


def validated(trigger: dict[str, Any]) -> dict[str, Any] | None:
    """The trigger as TriggerCreate dumps it, or None when it does not validate."""
    try:
        model = TriggerCreate.model_validate(
            {
                "name": "t",
                "chain_id": trigger["chain_id"],
                "registry": trigger["registry"],
                "cooldown_seconds": trigger["cooldown_seconds"],
                "conditions": trigger["conditions"],
                "actions": ACTIONS,
            }
        )
    except ValidationError:
        return None
    dumped = model.model_dump(mode="json")
    return {
        "chain_id": dumped["chain_id"],
        "registry": dumped["registry"],
        "cooldown_seconds": dumped["cooldown_seconds"],
        "conditions": dumped["conditions"],
    }


@st.composite
def raw_triggers(draw: st.DrawFn) -> dict[str, Any]:
    registry = draw(st.sampled_from(("reputation",) * 6 + ("validation",) * 2 + ("identity",)))
    listed = draw(st.lists(conditions(registry), min_size=0, max_size=4))
    return {
        "chain_id": draw(st.sampled_from(CHAINS)),
        "registry": registry,
        "cooldown_seconds": draw(st.sampled_from(COOLDOWNS)),
        "conditions": listed,
    }


@st.composite
def raw_absence_triggers(draw: st.DrawFn) -> dict[str, Any]:
    """Section 5a: up to two gate conditions and one absence condition among them."""
    registry = draw(st.sampled_from(("reputation",) * 6 + ("validation",) * 2 + ("identity",)))
    listed = draw(st.lists(gate_conditions(registry), min_size=0, max_size=2))
    listed.insert(draw(st.integers(0, len(listed))), draw(absence_conditions()))
    return {
        "chain_id": draw(st.sampled_from(CHAINS)),
        "registry": registry,
        "cooldown_seconds": draw(st.sampled_from(COOLDOWNS)),
        "conditions": listed,
    }


@st.composite
def triggers(draw: st.DrawFn) -> dict[str, Any]:
    """A trigger dict that TriggerCreate accepts, in its dumped shape: one in
    ABSENCE_SHARE an absence trigger."""
    absence = draw(st.integers(1, ABSENCE_SHARE)) == ABSENCE_SHARE
    trigger = validated(draw(raw_absence_triggers() if absence else raw_triggers()))
    assume(trigger is not None)
    assert trigger is not None
    return trigger


def _stateful_leaves(listed: list[Condition]) -> list[Condition]:
    out: list[Condition] = []
    for c in listed:
        if c["condition_type"] in ("ema_threshold", "rate_limit", "absence"):
            out.append(c)
        elif c["condition_type"] == "group":
            out.extend(_stateful_leaves((c.get("config") or {}).get("conditions") or []))
    return out


def _agent_firing_scope(listed: list[Condition]) -> bool:
    return any((c.get("config") or {}).get("scope") == "agent" for c in _stateful_leaves(listed))


def _absence_at(listed: list[Condition]) -> int | None:
    """The position of the (top-level) absence condition, None without one."""
    found = [i for i, c in enumerate(listed) if c["condition_type"] == "absence"]
    return found[0] if found else None


@st.composite
def _absence_edits(draw: st.DrawFn, current: dict[str, Any], at: int) -> dict[str, Any] | None:
    """An absence trigger's new definition (section 7: a kept absence condition keeps
    its silences, a changed one starts from none): a gate condition changed, added
    or removed (the absence condition kept); the silence's duration changed; its
    scope switched, only between definitions without a cooldown (the spec does not
    say what a cooldown does across a switch of firing scope); or, now and then, the
    absence condition replaced by an EMA or a rate window of the same scope."""
    listed = list(current["conditions"])
    registry = current["registry"]
    absence = listed[at]
    new = dict(current)
    kind = draw(st.sampled_from(("gate", "gate", "duration", "scope", "replace")))
    if kind == "gate":
        gates = [i for i in range(len(listed)) if i != at]
        what = draw(st.sampled_from(("change", "add", "remove")))
        if what == "change" and gates:
            i = draw(st.sampled_from(gates))
            listed[i] = draw(gate_conditions(registry))
        elif what == "remove" and gates:
            del listed[draw(st.sampled_from(gates))]
        else:
            listed.insert(draw(st.integers(0, len(listed))), draw(gate_conditions(registry)))
    elif kind == "duration":
        listed[at] = {**absence, "value": draw(st.sampled_from(SILENCES))}
    elif kind == "scope":
        if current.get("cooldown_seconds"):
            return None
        scope = "agent" if absence["config"].get("scope") != "agent" else "trigger"
        listed[at] = {**absence, "config": {**absence["config"], "scope": scope}}
    else:
        scope = str(absence["config"].get("scope") or "trigger")
        listed[at] = draw(stateful_conditions(registry, scope))
    new["conditions"] = listed
    return validated(new)


@st.composite
def edits(draw: st.DrawFn, current: dict[str, Any]) -> dict[str, Any] | None:
    """A new definition: conditions reordered, one condition changed, or another cooldown
    (an absence trigger: see `_absence_edits` too).

    A changed condition keeps the trigger's firing scope (trigger or agent): the spec
    does not say what a cooldown does across a switch of firing scope. Now and then the
    changed condition is an absence condition (valid when it replaces the trigger's only
    stateful condition, or when the trigger has none).
    """
    listed = list(current["conditions"])
    at = _absence_at(listed)
    if at is None:
        kind = draw(st.sampled_from(("reorder", "change", "cooldown")))
    else:
        kind = draw(st.sampled_from(("reorder", "change", "cooldown", "absence", "absence")))
    new = dict(current)
    if kind == "absence" and at is not None:
        return draw(_absence_edits(current, at))
    if kind == "reorder" and len(listed) >= 2:
        new["conditions"] = draw(st.permutations(listed))
    elif kind == "change" and listed:
        i = draw(st.integers(0, len(listed) - 1))
        if at is not None or draw(st.integers(0, 9)) > 0:
            changed = draw(conditions(current["registry"]))
        else:
            changed = draw(absence_conditions())
        candidate = [*listed[:i], changed, *listed[i + 1 :]]
        if _agent_firing_scope(candidate) != _agent_firing_scope(listed):
            return None
        new["conditions"] = candidate
    else:
        new["cooldown_seconds"] = draw(st.sampled_from(COOLDOWNS))
    return validated(new)


# --- events --------------------------------------------------------------------------------


@dataclass
class Block:
    number: int
    timestamp: int
    block_hash: str
    events: list[Event] = field(default_factory=list)
    #: The raw fields each event was drawn with (a reorg may post them again).
    bodies: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Chain:
    chain_id: int
    blocks: list[Block] = field(default_factory=list)
    #: (agent, client, feedback index) of every NewFeedback drawn so far.
    feedbacks: list[tuple[str | None, int, str, int]] = field(default_factory=list)
    next_index: dict[tuple[str | None, int, str], int] = field(default_factory=dict)
    #: The chain's clock: the block time of its newest block or heartbeat (block times
    #: never decrease along a chain, heartbeats included).
    clock: int = BASE_TIME


def deployed(deployment: str | None, registry: str) -> dict[str, Any]:
    """The registry fields of an event of this deployment (none for None): the
    emitting contract, and the Identity registry its agent belongs to."""
    if deployment is None:
        return {"registry_address": None, "agent_registry": None}
    identity = _address(f"identity-{deployment}")
    contract = identity if registry == "identity" else _address(f"{registry}-{deployment}")
    return {"registry_address": contract, "agent_registry": identity}


def _tags() -> tuple[str | None, ...]:
    return TAGS + (BYTES32_TAGS if NEW_BYTES32_TAGS else ()) + ("", None)


def _new_feedback(draw: st.DrawFn, chain: Chain, body: dict[str, Any], upper: bool) -> None:
    """A NewFeedback with the next feedback index of its (agent, client), in either layout."""
    agent, deployment = body["agent_id"], body.pop("deployment")
    client = draw(st.sampled_from(CLIENTS))
    index = chain.next_index.get((deployment, agent, client), 1)
    chain.next_index[deployment, agent, client] = index + 1
    chain.feedbacks.append((deployment, agent, client, index))
    body.update(client_address=_case_of(client, upper), feedback_index=index)
    if draw(st.booleans()):
        body["score"] = draw(st.integers(0, 100))  # legacy layout
    else:
        decimals = draw(st.integers(0, 3))
        scale = 10**decimals
        body["value"] = draw(st.integers(-5 * scale, 105 * scale))
        body["value_decimals"] = decimals
    for name in ("tag1", "tag2"):
        body[name] = draw(st.sampled_from(_tags()))
    body["endpoint"] = draw(st.sampled_from((*ENDPOINTS, "", None)))
    body["file_uri"] = draw(st.sampled_from(FILE_URIS))


def _about_feedback(draw: st.DrawFn, chain: Chain, body: dict[str, Any], upper: bool) -> None:
    """FeedbackRevoked / ResponseAppended: mostly naming an earlier NewFeedback."""
    deployment = body.pop("deployment")
    if chain.feedbacks and draw(st.integers(0, 4)) > 0:
        named, agent, client, index = draw(st.sampled_from(chain.feedbacks))
        if draw(st.integers(0, 3)) > 0:  # mostly of the feedback's own deployment
            deployment = named
            body.update(deployed(deployment, "reputation"))
    else:
        agent, client = body["agent_id"], draw(st.sampled_from(CLIENTS))
        index = draw(st.integers(1, 3))
    body.update(agent_id=agent, client_address=_case_of(client, upper), feedback_index=index)
    if body["event_type"] == "ResponseAppended":
        body["responder"] = _case_of(draw(st.sampled_from(RESPONDERS)), upper)
        body["response_uri"] = draw(st.sampled_from((*URIS, None)))


def _validation(draw: st.DrawFn, body: dict[str, Any], upper: bool) -> None:
    body["validator_address"] = _case_of(draw(st.sampled_from(VALIDATORS)), upper)
    body["request_hash"] = _hash(f"request{draw(st.integers(0, 5))}")
    if body["event_type"] == "ValidationResponse":
        body["response"] = draw(st.integers(0, 100))
        body["tag"] = draw(st.sampled_from(_tags()))
        body["file_uri"] = draw(st.sampled_from(FILE_URIS))
    else:
        body["request_uri"] = draw(st.sampled_from(URIS))


def _identity(draw: st.DrawFn, body: dict[str, Any], upper: bool) -> None:
    event_type = body["event_type"]
    if event_type in ("Registered", "Transfer"):
        body["owner"] = _case_of(draw(st.sampled_from(OWNERS)), upper)
    if event_type in ("Registered", "URIUpdated"):
        body["token_uri"] = draw(st.sampled_from(URIS))
    if event_type == "MetadataSet":
        body["metadata_key"] = draw(st.sampled_from(METADATA_KEYS))
        body["metadata_value"] = "0x" + draw(st.binary(max_size=4)).hex()


@st.composite
def _event_body(draw: st.DrawFn, chain: Chain, registry: str) -> dict[str, Any]:
    """The fields of one event besides chain, block, log index and timestamp."""
    types = {
        "reputation": ("NewFeedback",) * 5 + ("FeedbackRevoked",) * 2 + ("ResponseAppended",),
        "validation": ("ValidationRequest",) * 2 + ("ValidationResponse",) * 3,
        "identity": ("Registered", "URIUpdated", "MetadataSet", "Transfer", "MetadataUpdate"),
    }[registry]
    event_type = draw(st.sampled_from(types))
    deployment = draw(st.sampled_from(DEPLOYMENTS))
    body: dict[str, Any] = {
        "registry": registry,
        "event_type": event_type,
        "agent_id": draw(st.sampled_from(AGENTS)),
        "deployment": deployment,
        **deployed(deployment, registry),
    }
    upper = draw(st.booleans())  # addresses in upper-case hex (the model lower-cases them)
    if event_type == "NewFeedback":
        _new_feedback(draw, chain, body, upper)
    elif registry == "reputation":
        _about_feedback(draw, chain, body, upper)
    elif registry == "validation":
        _validation(draw, body, upper)
    else:
        _identity(draw, body, upper)
    body.pop("deployment", None)
    return body


def _event(chain: Chain, block: Block, log_index: int, body: dict[str, Any]) -> Event:
    return Event.model_validate(
        {
            "chain_id": chain.chain_id,
            "block_number": block.number,
            "block_hash": block.block_hash,
            "transaction_hash": _hash(f"tx:{block.block_hash}:{log_index}"),
            "log_index": log_index,
            "timestamp": block.timestamp,
            **body,
        }
    )


@st.composite
def _registry_for(draw: st.DrawFn, watched: str) -> str:
    """Mostly the trigger's registry, sometimes another (the engine must skip those)."""
    options: tuple[str, ...] = (watched, watched, watched, "reputation", "validation", "identity")
    chosen: str = draw(st.sampled_from(options))
    return chosen


def _undoable(current: dict[str, Any], earlier: dict[str, Any]) -> bool:
    """Whether an edit may go back to an earlier definition: one of the same firing
    scope, or (absence edits switch scopes) a switch between definitions without a
    cooldown, so that no firing time ever crosses a switch of firing scope."""
    same = _agent_firing_scope(current["conditions"]) == _agent_firing_scope(earlier["conditions"])
    return same or not (current.get("cooldown_seconds") or earlier.get("cooldown_seconds"))


@st.composite
def histories(draw: st.DrawFn, trigger: dict[str, Any]) -> list[tuple[str, Any]]:
    """Steps over two chains: blocks of events, heartbeats, reorgs and a few edits of the
    trigger. Heartbeats (section 5a) are ``("tick", (chain_id, block_time))`` at or
    after the chain's clock; more of them for an absence trigger."""
    chains = {chain_id: Chain(chain_id) for chain_id in CHAINS}
    watched = trigger["chain_id"]
    other = next(c for c in CHAINS if c != watched)
    steps: list[tuple[str, Any]] = []
    current = trigger
    forks = 0
    edits_left = draw(st.integers(0, 3))
    operations = draw(st.integers(1, 40))
    ticks = ("tick",) * (4 if _absence_at(trigger["conditions"]) is not None else 1)
    for _ in range(operations):
        operation = draw(st.sampled_from(("block",) * 8 + ("reorg", "edit", *ticks)))
        chain = chains[draw(st.sampled_from((watched, watched, watched, other)))]
        if operation == "tick":
            chain.clock += draw(st.sampled_from(TICK_GAPS))
            steps.append(("tick", (chain.chain_id, chain.clock)))
            continue
        if operation == "edit":
            if edits_left > 0:
                edits_left -= 1
                earlier = [p for kind, p in steps if kind == "edit"] + [trigger]
                earlier = [p for p in earlier if _undoable(current, p)]
                if draw(st.integers(0, 3)) == 0:
                    new = draw(st.sampled_from(earlier))  # an edit undone (A -> B -> A)
                else:
                    new = draw(edits(current))
                if new is not None:
                    current = new
                    steps.append(("edit", new))
            continue
        if operation == "reorg" and chain.blocks:
            depth = draw(st.integers(1, min(3, len(chain.blocks))))
            replaced = chain.blocks[-depth:]
            steps.append(
                (
                    "retract",
                    frozenset(f"{e.id}@{e.block_hash}" for b in replaced for e in b.events),
                )
            )
            forks += 1
            for block in replaced:
                block.block_hash = _hash(f"block:{chain.chain_id}:{block.number}:{forks}")
                new_events = []
                new_bodies = []
                for e, old in zip(block.events, block.bodies, strict=True):
                    body = old  # the same content in the new block, or new content:
                    if draw(st.booleans()):
                        body = draw(_event_body(chain, draw(_registry_for(trigger["registry"]))))
                    new_bodies.append(body)
                    new_events.append(_event(chain, block, e.log_index, body))
                block.bodies = new_bodies
                block.events = new_events
                steps.extend(("event", e) for e in new_events)
            continue
        last = chain.blocks[-1] if chain.blocks else None
        number = (last.number if last else 100) + draw(st.integers(1, 3))
        chain.clock += draw(st.sampled_from(GAPS))  # after the newest block or heartbeat
        timestamp = chain.clock
        block = Block(number, timestamp, _hash(f"block:{chain.chain_id}:{number}:0"))
        count = draw(st.integers(1, 3))
        for log_index in range(count):
            body = draw(_event_body(chain, draw(_registry_for(trigger["registry"]))))
            block.bodies.append(body)
            block.events.append(_event(chain, block, log_index * 2, body))
        chain.blocks.append(block)
        steps.extend(("event", e) for e in block.events)
    return steps


@st.composite
def _cases(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    trigger = draw(triggers())
    return trigger, draw(histories(trigger))


def cases() -> st.SearchStrategy[tuple[dict[str, Any], list[tuple[str, Any]]]]:
    """(trigger dict, steps) for reference_firings and the engine."""
    return _cases()
