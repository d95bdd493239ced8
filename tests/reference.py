"""A reference evaluator of triggers, written from docs/semantics.md alone.

It is deliberately simple and slow: every rule is a plain loop over the history it
needs (a rate count scans every counted event), so that each line can be checked
against the page. It shares no code with the matcher (shared/engine/evaluate.py and friends):
a mistake there cannot be repeated here. It reads only the input model `Event`.

Interface::

    reference_firings(trigger, steps) -> [event version, ...]
    reference_firing_steps(trigger, steps) -> [(position in steps, event version), ...]

`trigger` is ``{"chain_id", "registry", "cooldown_seconds", "conditions"}`` with the
conditions as raw dicts (condition_type, field, operator, value, config; the JSON shape
of ``TriggerCreate.model_dump(mode="json")["conditions"]``). `steps` are, in the order
the matcher sees them:

- ``("event", Event)``: one event of any chain and registry (filtered here, section 1).
  It is also a **tick** (section 5a) of its chain at its block time, whatever its
  registry, whether or not it matches, and whether or not a reorg retracts it later;
- ``("tick", (chain_id, block_time))``: a heartbeat of that chain (section 5a,
  ``POST /v1/checkpoints``), a tick without an event;
- ``("retract", frozenset[str])``: event versions replaced by a reorg (section 6);
- ``("edit", dict)``: a new trigger definition of the same shape (section 7).

The result is the versions ``{id}@{block_hash}`` of the events at which the trigger
fired, in order. An **absence** trigger (section 5a) never fires on an event: it fires
at ticks, one firing per scope whose silence is due, each reported as the version of
the silence's last matching event (the event the silence started at); the firings of
one tick come in the order trigger scope first, then agents by Identity registry (none
first) and ascending agent id, and
before whatever the tick's own event does. ``enabled_at`` is ignored (everything is
live). A firing is a decision taken when its step arrived: it stays in the result even
if a later retraction or revocation takes its event out of the effective history
(section 6: a firing is never taken back; the dispatcher marks the action of a replaced
version ``retracted``, which is no concern of this module).

Section 6 is implemented literally, by its one rule: on each event or tick *e* the
reference builds the **effective history** as known when *e* arrives (every step
received up to and including *e*, less the versions retracted so far, less every
NewFeedback revoked by a later FeedbackRevoked of that history, *e* itself included;
edits stay at their positions; ticks are never taken out, not even the tick of a
retracted event), folds a fresh evaluator over it from the start, and records a firing
when that fold fires at *e*. In the fold an earlier event counts as a firing (it
disarms, starts a cooldown, empties the ``reset_on_trigger`` windows) only when the
fold fires at it **and** the reference recorded a firing on it when it arrived (kept by
the position of its step): a fold firing never sent is treated like a suppressed one, a
sent firing the fold no longer finds is no firing. A tick can fire several scopes, so
for ticks the record is kept per (position of the step, firing scope): the fold's firing
of a scope at a tick counts (marks the silence fired, sets the scope's last firing
time) only when that (tick, scope) was recorded as fired when the tick arrived. The
tick of an event step is decided before the event (and recorded first); when the event
is a FeedbackRevoked, its tick is decided under the effective history without that
revocation (section 5a: "its tick comes first, under the effective history as it was
before it; its revocation (section 6) is applied after"); later folds have it applied.
There is no other state across steps, so every state (EMAs, windows, arming, silences,
last firing times) is, by construction, the state the effective history gives. The cost
is quadratic in the number of steps (twice that for an event step: one fold for its
tick, one for the event), which is fine for histories of tens of events.

Absence (section 5a), in the fold: each scope of the absence condition keeps a
**silence** (the block time and version of its newest matching event, and whether it
fired). A matching event (of the stream, passing the gate) at or after the current
start starts a new silence; at each tick of the trigger's chain with block time *t*,
before the tick's own event is taken, every scope with *t* > start + *D*, not fired yet
and out of its cooldown (*t* >= last firing + C) fires. The silence start is that of the
effective history, so a retraction or revocation of the last matching event moves it
back by construction. Edits (section 7) keep the silences of an absence condition whose
definition (identity) they keep and drop them otherwise; last firing times survive, as
for the other conditions. Disabled periods are not modelled (``enabled_at`` ignored).

Questions the page leaves open are marked ``# SPEC?`` with the reading chosen here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from shared.contract.events import Event

Step = tuple[str, Any]

#: Section 2: "with 40 significant digits, rounding half to even" (per operation).
EMA_CONTEXT = Context(prec=40, rounding=ROUND_HALF_EVEN)
#: For sums that the page does not round (threshold +/- hysteresis): exact, because
#: thresholds and hysteresis are decimals of sane size, far below this precision.
EXACT = Context(prec=10_000)

STATEFUL_TYPES = ("ema_threshold", "rate_limit", "absence")

#: Section 2 table: the field each condition type reads when `field` is empty.
DEFAULT_FIELD = {
    "agent_id_equals": "agent_id",
    "event_type_equals": "event_type",
    "score_threshold": "score",
    "tag_equals": "tag1",
    "field_equals": "client_address",
    "validator_whitelist": "validator_address",
    "file_uri_exists": "file_uri",
    "ema_threshold": "score",
    "rate_limit": "count",
}

#: field_equals: "addresses compare in lower case".
ADDRESS_FIELDS = (
    "client_address",
    "owner",
    "responder",
    "validator_address",
    "registry_address",
    "agent_registry",
)

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")


def version(e: Event) -> str:
    """Section 1: an event's version `{id}@{block_hash}`."""
    return f"{e.chain_id}-{e.block_number}-{e.log_index}@{e.block_hash}"


# --- reading the raw condition dicts -------------------------------------------------------


def number(x: Any) -> Decimal:
    """A JSON number or a decimal string as Decimal (floats via repr, exactly as written)."""
    if isinstance(x, bool):
        raise TypeError(f"not a number: {x!r}")
    if isinstance(x, int):
        return Decimal(x)
    if isinstance(x, float):
        return Decimal(repr(x))
    if isinstance(x, str):
        return Decimal(x.strip())
    if isinstance(x, Decimal):
        return x
    raise TypeError(f"not a number: {x!r}")


def seconds(duration: str) -> int:
    """`30s`, `15m`, `1h`, `7d` -> seconds."""
    match = _DURATION.fullmatch(duration.strip())
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def kind_of(c: dict[str, Any]) -> str:
    return str(c["condition_type"])


def config_of(c: dict[str, Any]) -> dict[str, Any]:
    return c.get("config") or {}


def field_of(c: dict[str, Any]) -> str:
    return c.get("field") or DEFAULT_FIELD.get(kind_of(c), "")


def members(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The nested conditions of a group."""
    return list(config_of(c).get("conditions") or [])


def items(c: dict[str, Any]) -> list[str]:
    """The values a condition lists.

    # SPEC? The page says "one of the values" but not how values are written. Read as
    # the API writes them: `in`/`not_in` (and validator_whitelist's `=`) take a comma
    # list whose items are trimmed; `=`/`!=` take the whole value, trimmed except for
    # tag_equals (a tag may start or end with a space).
    """
    value = str(c.get("value", ""))
    listed = c["operator"] in ("in", "not_in") or (
        kind_of(c) == "validator_whitelist" and c["operator"] == "="
    )
    if listed:
        return [item.strip() for item in value.split(",")]
    if kind_of(c) == "tag_equals":
        return [value]
    return [value.strip()]


def is_stateful(c: dict[str, Any]) -> bool:
    """ema_threshold, rate_limit, absence, or a group holding one at any depth.

    # SPEC? The page calls the table types stateless and ema/rate stateful but does not
    # classify groups. Read: a group is stateful when it holds a stateful condition at
    # any depth (it keeps a state through it); otherwise stateless (its verdict depends
    # only on the event), so a stateless group at the top level is part of the gate.
    """
    if kind_of(c) in STATEFUL_TYPES:
        return True
    if kind_of(c) == "group":
        return any(is_stateful(m) for m in members(c))
    return False


def stateful_leaves(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ema_threshold, rate_limit and absence, also inside groups, in order."""
    out: list[dict[str, Any]] = []
    for c in conditions:
        if kind_of(c) in STATEFUL_TYPES:
            out.append(c)
        elif kind_of(c) == "group":
            out.extend(stateful_leaves(members(c)))
    return out


def scope_of(c: dict[str, Any]) -> str:
    """Section 3: config.scope, `trigger` by default."""
    return str(config_of(c).get("scope") or "trigger")


def identity(c: dict[str, Any], trigger: dict[str, Any]) -> str:
    """Section 7: the condition's definition with the trigger's chain and registry.

    # SPEC? "a hash of its definition (type, field, operator, value, config)": taken
    # here as the definition exactly as stored (the raw dict), so two spellings of the
    # same config (a default written out or left out) are two identities. With dicts
    # from TriggerCreate.model_dump both spellings are normalized alike.
    """
    definition = {
        "chain_id": trigger["chain_id"],
        "registry": trigger["registry"],
        "condition_type": kind_of(c),
        "field": c.get("field", ""),
        "operator": c.get("operator"),
        "value": c.get("value", ""),
        "config": config_of(c),
    }
    return json.dumps(definition, sort_keys=True, default=str)


def absence_of(conditions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Section 5a: the trigger's absence condition, or None when it has none.

    "At the top level of the conditions only (not inside a group), at most one per
    trigger, and never beside an ema_threshold or a rate_limit (anywhere in the
    trigger)"; "the operator is always `>`; `field` is empty (or `silence`)". The API
    answers such triggers 422, so they are inputs the page rules out: refused here.
    """
    leaves = stateful_leaves(conditions)
    found = [c for c in leaves if kind_of(c) == "absence"]
    if not found:
        return None
    c = found[0]
    if len(found) > 1 or len(leaves) > 1 or not any(c is top for top in conditions):
        raise ValueError("absence: top level only, at most one, beside no ema/rate")
    if c.get("operator") != ">" or (c.get("field") or "") not in ("", "silence"):
        raise ValueError(f"not an absence condition: {c!r}")
    # SPEC? `field` "" and "silence" mean the same, but identity() hashes the raw
    # definition, so an edit from one spelling to the other is a new definition
    # (no state kept), like the other spellings noted there.
    return c


# --- events --------------------------------------------------------------------------------


def feedback_value(e: Event) -> Decimal | None:
    """Section 2: the decimal feedback value of a NewFeedback (either layout), else None."""
    if e.event_type != "NewFeedback":
        return None
    return e.score


def stored_tag(tag: str | None) -> str:
    """Section 2: a tag as stored; an absent tag reads as the empty text.

    Legacy bytes32 tags posted as 0x + 64 hex digits are stored as their text when
    they are text; otherwise the hex stays, in lower case. Applied here too, so the
    reference does not depend on where ingest does it (it changes nothing on a tag
    already stored that way).

    Text: the bytes without their trailing NUL padding decode as UTF-8 and hold no
    control character (U+0000-U+001F, U+007F-U+009F).
    """
    if tag is None:
        return ""
    if _BYTES32.fullmatch(tag) is None:
        return tag
    raw = bytes.fromhex(tag[2:]).rstrip(b"\x00")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return tag.lower()
    if any(ord(ch) <= 0x1F or 0x7F <= ord(ch) <= 0x9F for ch in text):
        return tag.lower()
    return text


def event_number(e: Event, name: str) -> Decimal | None:
    """score_threshold's number: `score`, `response` or `value_decimals`."""
    if name == "score":
        return feedback_value(e)
    if name == "response":
        if e.event_type != "ValidationResponse" or e.response is None:
            return None
        return Decimal(e.response)
    if name == "value_decimals":
        # SPEC? A legacy-layout NewFeedback has no value_decimals of its own; the Event
        # model maps it onto value_decimals = 0, and that is what is read here.
        if e.event_type != "NewFeedback" or e.value_decimals is None:
            return None
        return Decimal(e.value_decimals)
    raise ValueError(f"score_threshold has no field {name!r}")


def compare(left: Decimal, op: str, right: Decimal) -> bool:
    """The numeric operators."""
    if op == "=":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    raise ValueError(f"not a comparison: {op!r}")


def one_of(op: str, actual: Any, wanted: list[Any]) -> bool:
    """`=`/`in`: actual is one of the values; `!=`/`not_in`: it is none of them."""
    if op in ("=", "in"):
        return actual in wanted
    if op in ("!=", "not_in"):
        return actual not in wanted
    raise ValueError(f"not an equality operator: {op!r}")


def stateless_holds(c: dict[str, Any], e: Event) -> bool:
    """Section 2 table: the verdict of a stateless leaf on an event."""
    kind, op, name = kind_of(c), c["operator"], field_of(c)
    if kind == "agent_id_equals":
        # SPEC? An event without an agent id is taken as equal to none of the values.
        return one_of(op, e.agent_id, [int(x) for x in items(c)])
    if kind == "event_type_equals":
        return one_of(op, e.event_type, items(c))
    if kind == "score_threshold":
        actual = event_number(e, name)
        if actual is None:
            return False  # "An event without that number: never holds"
        if op in ("in", "not_in"):
            return one_of(op, actual, [number(x) for x in items(c)])
        return compare(actual, op, number(items(c)[0]))
    if kind == "tag_equals":
        return one_of(op, stored_tag(getattr(e, name)), items(c))
    if kind == "field_equals":
        text = str(getattr(e, name) or "")
        wanted = items(c)
        if name in ADDRESS_FIELDS:
            text, wanted = text.lower(), [x.lower() for x in wanted]
        return one_of(op, text, wanted)
    if kind == "validator_whitelist":
        # SPEC? An event without a validator is "not in the list" (like field_equals,
        # it reads as the empty text, which no listed address equals).
        validator = (e.validator_address or "").lower()
        listed = [x.lower() for x in items(c)]
        return validator in listed if op in ("in", "=") else validator not in listed
    if kind == "file_uri_exists":
        has = bool(e.file_uri)
        return has if items(c)[0].lower() == "true" else not has
    raise ValueError(f"not a stateless condition type: {kind!r}")


# --- states --------------------------------------------------------------------------------


@dataclass
class EmaState:
    """One EMA of one scope: the average, how many values it averages, and its level."""

    ema: Decimal | None = None
    count: int = 0
    holding: bool = False


@dataclass
class Counted:
    """One event a rate window counted."""

    version: str
    timestamp: int


@dataclass
class RateState:
    """One rate window of one scope: every event it counted (and did not forget or reset).

    Nothing is ever withdrawn from a window: section 6 is the fold over the effective
    history (see `effective_history`), in which a retracted or revoked event never
    appears.
    """

    counted: list[Counted] = field(default_factory=list)


@dataclass
class Silence:
    """Section 5a: the silence of one scope of an absence condition.

    It starts at the scope's newest matching event (block time and version; None
    before the first: "nothing to miss") and fires at most once. As for windows,
    nothing is ever withdrawn: the fold runs over the effective history, in which a
    retracted or revoked event never appears, so the start is that of the effective
    history.
    """

    start: int | None = None
    event: str | None = None
    fired: bool = False


def silence_take(state: Silence, e: Event) -> None:
    """Section 5a: "a matching event with block time s at or after the start of the
    current silence starts a new silence at s (one older than the start changes
    nothing)"."""
    if state.start is None or e.timestamp >= state.start:
        state.start, state.event, state.fired = e.timestamp, version(e), False


def scope_order(scope: Any) -> tuple[int, str, int]:
    """The order of the firings of one tick: the trigger scope first, then the agents
    by their Identity registry's address (agents of events naming none first), then
    by ascending agent id.

    # SPEC? The page gives no order for the firings of one tick (nor a scope for an
    # event without an agent id under `scope: agent`); this is the brief's order, an
    # agent id None coming first among the agents.
    """
    if scope == "trigger":
        return (0, "", 0)
    registry, agent = scope
    return (1, registry or "", -1 if agent is None else int(agent))


def alpha_of(c: dict[str, Any]) -> Decimal:
    """Section 2: `alpha` when given, else 2/(N+1) with 40 significant digits."""
    config = config_of(c)
    if config.get("alpha") is not None:
        return number(config["alpha"])
    return EMA_CONTEXT.divide(Decimal(2), Decimal(int(config["window_size"]) + 1))


def warm_up_of(c: dict[str, Any]) -> int:
    """Section 2: with both alpha and window_size, window_size values of warm-up."""
    config = config_of(c)
    if config.get("alpha") is not None and config.get("window_size") is not None:
        return int(config["window_size"])
    return 0


def ema_next(alpha: Decimal, value: Decimal, ema: Decimal | None) -> Decimal:
    """Section 2: the first value is the first EMA; then EMA <- a*value + (1-a)*EMA,
    each of the four operations to 40 significant digits, half to even.

    # SPEC? The first value is taken as it is (not rounded to 40 digits). Event values
    # have at most 39 digits (|value| <= 10^38), so this never differs in practice.
    """
    if ema is None:
        return value
    weighted = EMA_CONTEXT.multiply(alpha, value)
    rest = EMA_CONTEXT.subtract(Decimal(1), alpha)
    kept = EMA_CONTEXT.multiply(rest, ema)
    return EMA_CONTEXT.add(weighted, kept)


def ema_take(c: dict[str, Any], state: EmaState, e: Event) -> None:
    """Section 2 and 4: take the event into the EMA, then set its level (the verdict)."""
    value = feedback_value(e)
    if value is not None:
        state.ema = ema_next(alpha_of(c), value, state.ema)
        state.count += 1
    config = config_of(c)
    op, threshold = c["operator"], number(c["value"])
    if state.ema is None or state.count < warm_up_of(c):
        # "no verdict before its first value (false), nor during its warm-up"
        # SPEC? The hysteresis level does not run during the warm-up: it starts, not
        # holding, with the first verdict after the warm-up.
        state.holding = False
        return
    if config.get("fire_on", "crossing") == "every":
        state.holding = compare(state.ema, op, threshold)
        return
    if not state.holding:
        state.holding = compare(state.ema, op, threshold)
        return
    hysteresis = number(config.get("hysteresis") or 0)
    if op in ("<", "<="):
        band = EXACT.add(threshold, hysteresis)
    else:
        band = EXACT.subtract(threshold, hysteresis)
    state.holding = compare(state.ema, op, band)


def rate_forget(c: dict[str, Any], state: RateState) -> None:
    """Section 2: after taking an event, a window forgets every entry whose block time
    is at or before T - W - min(W, 1 h), T the newest block time among its entries."""
    if not state.counted:
        return
    window = seconds(str(config_of(c)["time_window"]))
    newest = max(x.timestamp for x in state.counted)
    cutoff = newest - window - min(window, 3600)
    state.counted = [x for x in state.counted if x.timestamp > cutoff]


def rate_count(c: dict[str, Any], state: RateState, t: int) -> int:
    """Section 2: the counted events whose block time lies in (t - W, t]."""
    window = seconds(str(config_of(c)["time_window"]))
    return sum(1 for x in state.counted if t - window < x.timestamp <= t)


# --- the evaluator -------------------------------------------------------------------------


class Reference:
    """One fold: the state of one trigger over one (effective) history of steps."""

    def __init__(self, trigger: dict[str, Any]) -> None:
        self.trigger = trigger
        #: (identity, scope key) -> EmaState | RateState | Silence. Scope key: "trigger"
        #: or the agent id.
        self.states: dict[tuple[str, Any], EmaState | RateState | Silence] = {}
        #: firing scope key -> armed (absent: armed, "true at the start").
        self.armed: dict[Any, bool] = {}
        #: firing scope key -> block time of its last firing.
        self.last_firing: dict[Any, int] = {}

    # the definition

    def conditions(self) -> list[dict[str, Any]]:
        return list(self.trigger.get("conditions") or [])

    def firing_scope_is_agent(self) -> bool:
        """Section 3: `agent` when at least one stateful condition is agent-scoped."""
        return any(scope_of(c) == "agent" for c in stateful_leaves(self.conditions()))

    def crossing_mode(self) -> bool:
        """Section 4: at least one ema_threshold has fire_on crossing (the default).

        # SPEC? "its ema_threshold conditions" is read as every one, also inside groups.
        """
        return any(
            kind_of(c) == "ema_threshold" and config_of(c).get("fire_on", "crossing") == "crossing"
            for c in stateful_leaves(self.conditions())
        )

    def scope_key(self, c: dict[str, Any], e: Event) -> Any:
        # "An agent is (its Identity registry, its id) when the event names the
        # registry, else its id alone."
        return (e.agent_registry, e.agent_id) if scope_of(c) == "agent" else "trigger"

    def state(self, c: dict[str, Any], e: Event) -> EmaState | RateState | Silence:
        """The state of condition c for the event's scope (created empty on first use)."""
        key = (identity(c, self.trigger), self.scope_key(c, e))
        if key not in self.states:
            kind = kind_of(c)
            self.states[key] = (
                EmaState()
                if kind == "ema_threshold"
                else Silence()
                if kind == "absence"
                else RateState()
            )
        return self.states[key]

    def cooling(self, scope: Any, t: int) -> bool:
        """Section 5: no firing of the same scope before (last firing) + C; a cooldown
        of 0 or null is no cooldown."""
        cooldown = self.trigger.get("cooldown_seconds") or 0
        last = self.last_firing.get(scope)
        return cooldown > 0 and last is not None and t < last + cooldown

    # steps

    def edit(self, new: dict[str, Any]) -> None:
        """Section 7: states are kept by identity; the armed flags restart when any
        condition changed; the last firing times survive.

        # SPEC? "A PATCH that changes any condition" is read as: the multiset of the
        # top-level conditions' identities differs (a pure reorder changes none).
        # SPEC? The state of a condition that the PATCH removes is dropped: if the same
        # definition comes back in a later PATCH it "starts from no state".
        # SPEC? Last firing times are kept per firing-scope key ("trigger" or an agent
        # id). If an edit switches the firing scope between trigger and agent, the old
        # keys are simply not consulted any more (no cooldown carries across).
        """
        old_ids = sorted(identity(c, self.trigger) for c in self.conditions())
        new_ids = sorted(identity(c, new) for c in list(new.get("conditions") or []))
        if old_ids != new_ids:
            self.armed = {}
        keep = {identity(c, new) for c in stateful_leaves(list(new.get("conditions") or []))}
        self.states = {key: s for key, s in self.states.items() if key[0] in keep}
        if not new.get("cooldown_seconds"):  # section 5: without a cooldown none are kept
            self.last_firing = {}
        self.trigger = new

    def in_stream(self, e: Event) -> bool:
        """Section 1: the events of the trigger's chain and registry."""
        return e.chain_id == self.trigger["chain_id"] and e.registry.value == str(
            self.trigger["registry"]
        )

    def passes_gate(self, e: Event) -> bool:
        """Section 2: every top-level stateless condition holds."""
        return all(self.verdict(c, e) for c in self.conditions() if not is_stateful(c))

    def verdict(self, c: dict[str, Any], e: Event) -> bool:
        """Section 4: a condition's verdict on the event (states already updated)."""
        kind = kind_of(c)
        if kind == "group":
            verdicts = [self.verdict(m, e) for m in members(c)]  # every member, no shortcut
            op = c["operator"]
            if op == "any":
                return any(verdicts)
            if op == "all":
                return all(verdicts)
            if op == "not":
                return not verdicts[0]
            raise ValueError(f"not a group operator: {op!r}")
        if kind == "ema_threshold":
            s = self.state(c, e)
            assert isinstance(s, EmaState)
            return s.holding
        if kind == "rate_limit":
            s = self.state(c, e)
            assert isinstance(s, RateState)
            return compare(
                Decimal(rate_count(c, s, e.timestamp)), c["operator"], number(c["value"])
            )
        return stateless_holds(c, e)

    def event(self, e: Event, sent: bool) -> bool:
        """Evaluate one event of the history; True when the evaluation fires at it.

        `sent` says whether the trigger fired on this event when it arrived. Section 6,
        "Firings in a recomputation": a firing counts for the state (it disarms, starts a
        cooldown, empties the reset_on_trigger windows) only when it was sent **and** the
        evaluation fires again. A firing found here but never sent is treated like a
        suppressed one (section 4: the crossing is not used up, no cooldown, no reset);
        a sent firing not found here is no firing. The last event of a fold is the one
        being decided: nothing follows it, so what it does to the state is moot.

        A FeedbackRevoked needs nothing special here: its revocation is applied by
        `effective_history` (the revoked NewFeedback is not in the history folded), and
        it is then evaluated like any other event (section 6).
        """
        if not self.in_stream(e):
            return False
        if not self.passes_gate(e):
            return False  # no state, no firing, no re-arming
        absence = absence_of(self.conditions())
        if absence is not None:
            # Section 5a: a matching event (of the stream, passing the gate) may start
            # a new silence of its scope; "an absence trigger never fires on an event
            # itself" (its tick was evaluated just before, see `tick`).
            s = self.state(absence, e)
            assert isinstance(s, Silence)
            silence_take(s, e)
            return False
        # Every stateful condition takes the event first, each state once (two conditions
        # with one definition share one state, so it takes the event once).
        taken: set[tuple[str, Any]] = set()
        for c in stateful_leaves(self.conditions()):
            key = (identity(c, self.trigger), self.scope_key(c, e))
            if key in taken:
                continue
            taken.add(key)
            s = self.state(c, e)
            if isinstance(s, EmaState):
                ema_take(c, s, e)
            else:
                assert isinstance(s, RateState)  # absence triggers returned above
                s.counted.append(Counted(version(e), e.timestamp))
                rate_forget(c, s)
        verdict = all(self.verdict(c, e) for c in self.conditions())
        scope = (e.agent_registry, e.agent_id) if self.firing_scope_is_agent() else "trigger"
        cooling = self.cooling(scope, e.timestamp)
        crossing = self.crossing_mode()
        if crossing and not verdict:
            self.armed[scope] = True  # section 4: a false set verdict re-arms
        fires = verdict and not cooling and (not crossing or self.armed.get(scope, True))
        if fires and sent:
            if crossing:
                self.armed[scope] = False  # section 4: the firing disarms
            self.fire(e, scope)
        # Otherwise nothing is used up: a suppressed firing, a firing never sent (section
        # 6), or no firing at all leave the arming, the cooldown and the windows as they are.
        return fires

    def tick(self, position: int, chain_id: int, t: int, sent: set[Any]) -> list[tuple[Any, str]]:
        """Section 5a: a tick of chain `chain_id` at block time t; the (scope, version of
        the silence's last matching event) it fires, in `scope_order`.

        Called before the tick's own event (if any) is taken. Each scope whose silence
        started at s fires when t > s + D, the silence has not fired yet, and its
        cooldown is over (t >= f + C). A firing counts for the state (the silence has
        fired, the scope's last firing time is t) only when ("tick", position, scope) is
        in `sent`, i.e. the tick fired that scope when it arrived (section 6's rule,
        ticks included, kept per scope since one tick may fire several); otherwise it
        is treated like a suppressed firing: the silence stays due, and a recomputation
        never finds a new firing at an old tick.

        # SPEC? A tick of another chain than the trigger's (under the definition of the
        # time) is no tick of this trigger ("every event of the trigger's chain").
        """
        if chain_id != self.trigger["chain_id"]:
            return []
        absence = absence_of(self.conditions())
        if absence is None:
            return []  # section 5a: only absence conditions read the clock
        deadline_after = seconds(str(absence["value"]))
        own = identity(absence, self.trigger)
        fired: list[tuple[Any, str]] = []
        scopes = sorted((key[1] for key in self.states if key[0] == own), key=scope_order)
        for scope in scopes:
            s = self.states[(own, scope)]
            assert isinstance(s, Silence)
            if s.start is None or s.event is None:
                continue  # "a scope that never had a matching event has no silence"
            if not t > s.start + deadline_after:
                continue  # strictly longer than D
            if s.fired:
                continue  # "a silence fires at most once"
            if self.cooling(scope, t):
                continue  # "the silence stays due"
            fired.append((scope, s.event))
            if ("tick", position, scope) in sent:
                s.fired = True
                if self.trigger.get("cooldown_seconds"):  # section 5: kept only with one
                    self.last_firing[scope] = t
        return fired

    def fire(self, e: Event, scope: Any) -> None:
        """Section 5: record the firing time; empty the reset_on_trigger windows of the
        firing event's scope."""
        if self.trigger.get("cooldown_seconds"):  # section 5: kept only with a cooldown
            self.last_firing[scope] = e.timestamp
        for c in stateful_leaves(self.conditions()):
            if kind_of(c) == "rate_limit" and config_of(c).get("reset_on_trigger") is True:
                s = self.state(c, e)
                assert isinstance(s, RateState)
                s.counted = []


# --- section 6: the effective history -----------------------------------------------------


def revokes(revocation: Event, feedback: Event) -> bool:
    """Section 6: a FeedbackRevoked revokes a NewFeedback of the same agent, the same
    client address (compared in lower case) and the same feedback index; a feedback
    without an index is never revoked. Only NewFeedback events are revoked
    (ResponseAppended events about it stay)."""
    return (
        revocation.event_type == "FeedbackRevoked"
        and feedback.event_type == "NewFeedback"
        and feedback.agent_id == revocation.agent_id
        # "the agent's Identity registry and the emitting contract, where events name them"
        and feedback.agent_registry == revocation.agent_registry
        and feedback.registry_address == revocation.registry_address
        and (feedback.client_address or "").lower() == (revocation.client_address or "").lower()
        and feedback.feedback_index is not None
        and feedback.feedback_index == revocation.feedback_index
    )


def effective_history(
    trigger: dict[str, Any], steps: Sequence[Step], *, last_revokes: bool = True
) -> list[tuple[int, Step]]:
    """Section 6: the effective history of the steps received so far, as (position in
    `steps`, step) pairs: every edit, at its position; every tick of the trigger's chain
    (section 5a), as ``("tick", (chain_id, block_time))``: each heartbeat, and each event
    of the chain (any registry), its tick placed just before the event itself; and the
    events of the trigger's stream that reached it (in the order it saw them, whether or
    not they passed the gate: the gate is applied by the fold, under the definition of
    the time, so an event that fails it changes nothing there, while a FeedbackRevoked
    that fails it still revokes here), less

    - the versions retracted by a reorg (every retraction received so far takes out the
      named versions received before it), and
    - every NewFeedback revoked by a later FeedbackRevoked of the effective history
      (every matching one; a FeedbackRevoked that is itself retracted revokes nothing,
      which is how a retraction of a FeedbackRevoked un-revokes its feedback). The last
      step may be a FeedbackRevoked: it revokes too ("every revocation up to and
      including e itself"), unless `last_revokes` is False: the history its own tick
      is decided under (section 5a: "its tick comes first, under the effective history
      as it was before it; its revocation (section 6) is applied after").

    Ticks are never taken out (section 5a: "a tick stands even when the event that
    carried it is replaced"): a retraction or revocation removes the event, not its tick.

    # SPEC? "A replaced version never comes back: ingest answers a re-posted version as
    # a duplicate." Read as: an event step whose version was already received (replaced
    # or not) never reaches the trigger; it is dropped here, so it is in no history and
    # never fires, and it is no tick either (ingest does not pass it on). Such steps are
    # inputs the page rules out; the generated cases have none.
    # SPEC? Which ticks are the trigger's is decided, like the stream, under the
    # definition current when the step is received (the chain id; a PATCH does not
    # normally change it).
    # Note: "How far back" (30 days, or evaluations by the previous release) is not
    # modelled: the reference has no wall clock, and every change is recomputed.
    """
    current = trigger
    received: list[tuple[int, Step]] = []
    seen: set[str] = set()
    retracted: set[int] = set()  # positions of retracted *events* (never of ticks)
    for position, (kind, payload) in enumerate(steps):
        if kind == "edit":
            current = payload
            received.append((position, (kind, payload)))
        elif kind == "tick":
            chain_id, block_time = payload
            if chain_id == current["chain_id"]:
                received.append((position, ("tick", (chain_id, block_time))))
        elif kind == "event":
            if version(payload) in seen:
                continue  # a re-posted version: a duplicate, never delivered
            seen.add(version(payload))
            if payload.chain_id == current["chain_id"]:
                received.append((position, ("tick", (payload.chain_id, payload.timestamp))))
            if Reference(current).in_stream(payload):
                received.append((position, (kind, payload)))
        elif kind == "retract":
            versions = frozenset(payload)
            retracted |= {p for p, (k, x) in received if k == "event" and version(x) in versions}
        else:
            raise ValueError(f"unknown step {kind!r}")
    kept = [(p, (k, x)) for p, (k, x) in received if not (k == "event" and p in retracted)]
    last = len(steps) - 1
    revokers = [(q, (k, x)) for q, (k, x) in kept if k == "event" and (last_revokes or q != last)]
    revoked = {
        p
        for p, (kind, feedback) in kept
        if kind == "event"
        and any(q > p and revokes(revocation, feedback) for q, (_k, revocation) in revokers)
    }
    return [(p, (k, x)) for p, (k, x) in kept if not (k == "event" and p in revoked)]


#: A firing's key in a fold, for "fired when it arrived": ("event", position, None) for
#: a firing on an event, ("tick", position, scope) for one scope fired at a tick.
FiringKey = tuple[str, int, Any]


def fold(
    trigger: dict[str, Any], history: list[tuple[int, Step]], sent: set[FiringKey]
) -> dict[FiringKey, str]:
    """Evaluate a history from the start with a fresh state (section 6: "the evaluation
    of the effective history from its start"), applying each edit at its position
    (section 7); every firing of the evaluation, key -> the version it reports (the
    event's own for an event, the silence's last matching event for a tick, section 5a),
    in the order of the evaluation.

    `sent` holds the keys of the firings the trigger made when their step arrived: only
    those of the evaluation's firings count for the state (section 6, "an earlier event
    counts as a firing only if the trigger also fired on it when it arrived"; section
    5a, "a tick counts as a firing in a recomputation only if it fired when it arrived";
    see `Reference.event` and `Reference.tick`).

    # SPEC? "Fires again in the recomputation" is read as the whole decision of the
    # re-evaluation (set verdict true, armed, no cooldown running), with the arming and
    # the cooldown as the recomputation itself has them, not the set verdict alone.
    # SPEC? For ticks, "fired when it arrived" is kept per (tick, scope), as the brief
    # asks, not per (tick, scope, silence): if a reorg replaces the event a sent silence
    # started at, the earlier silence of that scope, due at the same tick, counts as
    # fired there (it does not fire again at a later tick), although the version sent
    # was the replaced one.
    """
    ref = Reference(trigger)
    fired: dict[FiringKey, str] = {}
    for position, (kind, payload) in history:
        if kind == "edit":
            ref.edit(payload)
        elif kind == "tick":
            chain_id, block_time = payload
            for scope, silence in ref.tick(position, chain_id, block_time, sent):
                fired[("tick", position, scope)] = silence
        elif ref.event(payload, sent=("event", position, None) in sent):
            fired[("event", position, None)] = version(payload)
    return fired


def reference_firing_steps(trigger: dict[str, Any], steps: Sequence[Step]) -> list[tuple[int, str]]:
    """The firings as (position of the step in `steps` at which the trigger fired, the
    version it reports), in order. See `reference_firings`."""
    sent: set[FiringKey] = set()
    firings: list[tuple[int, str]] = []
    for position, (kind, _payload) in enumerate(steps):
        if kind not in ("event", "tick", "retract", "edit"):
            raise ValueError(f"unknown step {kind!r}")
        if kind not in ("event", "tick"):
            continue
        known = steps[: position + 1]
        # First the step's tick (section 5a: before its own event is taken), decided
        # under the effective history as it was before the step's own revocation, if it
        # is a FeedbackRevoked ("its tick comes first, under the effective history as it
        # was before it; its revocation (section 6) is applied after"); its decisions
        # are recorded before the event is decided.
        before = effective_history(trigger, known, last_revokes=False)
        for key, reported in fold(trigger, before, sent).items():
            if key[0] == "tick" and key[1] == position:  # in scope_order
                sent.add(key)
                firings.append((position, reported))
        # Then the event itself, under the effective history with its revocation.
        for key, reported in fold(trigger, effective_history(trigger, known), sent).items():
            if key[0] == "event" and key[1] == position:
                sent.add(key)
                firings.append((position, reported))
    return firings


def reference_firings(trigger: dict[str, Any], steps: Sequence[Step]) -> list[str]:
    """The versions reported by the trigger's firings, in order: the event's own version
    for a firing on an event, the silence's last matching event's for an absence firing
    at a tick (section 5a; the firings of one tick in `scope_order`).

    Section 6, the one rule: the trigger fires on an event e exactly when the evaluation
    of the effective history as known when e arrives (every retraction received before
    e, every revocation up to and including e), from its start up to and including e,
    fires at e, where an earlier event counts as a firing only if the trigger also fired
    on it when it arrived. The same holds for ticks (section 5a), per scope, except that
    the tick of a FeedbackRevoked is decided before its own revocation. "Fired when
    it arrived" is this function's own decision on that step, kept by the step's
    position in `steps` (not by version), and the scope for a tick. Decisions stand
    (nothing is taken back or sent again); only the state follows the recomputation.
    """
    return [reported for _position, reported in reference_firing_steps(trigger, steps)]
