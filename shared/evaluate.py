"""The trigger evaluation engine: pure, deterministic functions of (trigger, event, state).

`evaluate(trigger, event, state=...)` decides whether a trigger fires on an event and
returns the new state of the trigger's scope; `retract(...)` takes a reorged block range
back out of the rate windows of a state. No I/O and no wall clock: every window is
measured in block time (`event.timestamp`, unix seconds), so a replay of the same stream
from the same state gives the same outcomes and the same final state.

Evaluation order
    Top-level conditions are ANDed. The stateless ones (no ema_threshold/rate_limit
    inside) form a gate evaluated first; if one is False the trigger does not fire and
    the state is not touched. Then every stateful top-level condition is evaluated (no
    short-circuit, inside groups neither), each updating its own state. A
    FeedbackRevoked event first withdraws the revoked feedback from every rate window,
    whatever the gate says.

State (JSON-able) of one scope (the whole trigger, or one agent when a stateful
condition has ``config.scope = 'agent'``: see `scope_key`)::

    {"conditions": {"<path>": {...}}, "last_fired_at": <unix seconds>}

``path`` is the dotted index path of the condition in the tree ("0", "2.1"). Paths the
trigger no longer has (or whose state has the wrong shape) are dropped.

- ema_threshold: ``{"ema": "<decimal>", "count": n, "armed": bool, "seen": [ids]}``
  (``seen``: the last 64 event ids applied, so a redelivered event never counts twice).
- rate_limit: ``{"window": [[timestamp, event_id, client_address, feedback_index,
  block_number, chain_id, agent_id], ...], "high": <latest timestamp seen> | null}``
  sorted by (timestamp, event_id); client_address/feedback_index are set for
  NewFeedback entries only (what a FeedbackRevoked withdraws).

Out-of-order arrival in rate windows: a window keeps the entries later than
``high - W - L`` (W the window, L = min(W, 1 h) the lateness allowance), so an event at
most L earlier than the latest one seen is counted exactly over (t - W, t]. An event
more than L late is "late": it still joins the window (when still inside the kept span),
but its own verdict is False, since part of its window may already be forgotten.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from functools import cached_property
from typing import Any, Final

from shared.events import Event, event_key, feedback_value
from shared.triggers import Condition, ConditionType

__all__ = ["ActionSpec", "Outcome", "TriggerSpec", "evaluate", "retract", "scope_key"]

#: Fixed arithmetic of the EMA (independent of the thread's decimal context).
EMA_CONTEXT: Final = Context(prec=40, rounding=ROUND_HALF_EVEN, Emax=999999, Emin=-999999)
#: How many applied event ids an EMA remembers to refuse redeliveries.
EMA_SEEN: Final = 64
#: Upper bound of the lateness allowance of rate windows (the allowance is min(W, this)).
MAX_LATENESS: Final = 3600
#: Length to which long text inputs are cut in explain blocks.
EXPLAIN_TEXT: Final = 200

_FEEDBACK: Final = "NewFeedback"
_REVOKED: Final = "FeedbackRevoked"

# rate window entry layout
_TS, _ID, _CLIENT, _INDEX, _BLOCK, _CHAIN, _AGENT = range(7)

Test = Callable[[Event], bool]
Read = Callable[[Event], Any]
Compare = Callable[[Any, Any], bool]

_COMPARE: Final[dict[str, Compare]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


# --- public data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionSpec:
    """One trigger_actions row as the matcher hands it on."""

    id: int  # trigger_actions.id
    action_type: str  # telegram | rest | mcp
    priority: int
    config: dict[str, Any]  # as stored (secrets included)

    def __hash__(self) -> int:
        return hash((self.id, self.action_type, self.priority))


@dataclass(frozen=True)
class TriggerSpec:
    """An enabled trigger as the evaluator takes it; compiled once, lazily."""

    id: str
    user_id: str
    name: str
    chain_id: int
    registry: str
    enabled_at: datetime  # aware
    cooldown_seconds: int | None
    conditions: tuple[Condition, ...]  # top level, ANDed
    actions: tuple[ActionSpec, ...]

    def __hash__(self) -> int:
        # Conditions and action configs hold dicts: hash what identifies the trigger.
        return hash((self.id, self.user_id, self.chain_id, self.registry, self.cooldown_seconds))

    @cached_property
    def _program(self) -> _Program:
        return _compile(self)

    @property
    def is_stateful(self) -> bool:
        """Any condition (also nested) is stateful, or a cooldown is set."""
        return self._program.stateful

    @property
    def agent_scoped(self) -> bool:
        """Any stateful condition has ``config.scope = 'agent'``."""
        return self._program.agent_scoped


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one evaluation (or retraction)."""

    fired: bool
    state: dict[str, Any]  # the new state (JSON-able; Decimals as strings)
    changed: bool  # state differs from the state passed in
    explain: dict[str, Any]  # JSON-able


def scope_key(trigger: TriggerSpec, event: Event) -> str:
    """The state scope of (trigger, event): '' for the trigger, the agent id when agent scoped."""
    if trigger._program.agent_scoped and event.agent_id is not None:
        return str(event.agent_id)
    return ""


# --- compiled form -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Node:
    """One condition of the tree, with what evaluating it needs precomputed."""

    path: str
    order: int  # pre-order position, the order of explain entries
    cond: Condition
    kind: str  # leaf | group | ema | rate
    stateful: bool
    test: Test | None  # stateless nodes: the verdict
    read: Read | None  # leaves: the explain input
    children: tuple[_Node, ...] = ()
    # ema
    compare: Compare | None = None
    threshold: Decimal | None = None
    rearm: Decimal | None = None  # ema recovered when not compare(ema, rearm)
    alpha: Decimal | None = None
    keep: Decimal | None = None  # 1 - alpha
    every: bool = False
    # rate
    window: int = 0
    lateness: int = 0
    limit: int = 0
    reset: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class _Program:
    gate: tuple[Test, ...]  # stateless top-level tests
    gate_nodes: tuple[_Node, ...]
    stateful_nodes: tuple[_Node, ...]  # stateful top-level nodes
    state_nodes: tuple[_Node, ...]  # every ema/rate node, in path order
    rate_nodes: tuple[_Node, ...]
    cooldown: int  # 0 = none
    stateful: bool
    agent_scoped: bool


def _compile(trigger: TriggerSpec) -> _Program:
    counter = [0]
    roots = tuple(_compile_node(c, str(i), counter) for i, c in enumerate(trigger.conditions))
    all_nodes: list[_Node] = []

    def collect(node: _Node) -> None:
        all_nodes.append(node)
        for child in node.children:
            collect(child)

    for root in roots:
        collect(root)
    state_nodes = tuple(n for n in all_nodes if n.kind in ("ema", "rate"))
    cooldown = trigger.cooldown_seconds or 0
    agent_scoped = False
    for node in state_nodes:
        cfg = node.cond.ema if node.kind == "ema" else node.cond.rate
        if cfg is not None and cfg.scope == "agent":
            agent_scoped = True
    gate_nodes = tuple(n for n in roots if not n.stateful)
    return _Program(
        gate=tuple(n.test for n in gate_nodes if n.test is not None),
        gate_nodes=gate_nodes,
        stateful_nodes=tuple(n for n in roots if n.stateful),
        state_nodes=state_nodes,
        rate_nodes=tuple(n for n in state_nodes if n.kind == "rate"),
        cooldown=cooldown if cooldown > 0 else 0,
        stateful=bool(state_nodes) or cooldown > 0,
        agent_scoped=agent_scoped,
    )


def _compile_node(cond: Condition, path: str, counter: list[int]) -> _Node:
    order = counter[0]
    counter[0] += 1
    kind = cond.condition_type
    if kind is ConditionType.group:
        children = tuple(
            _compile_node(child, f"{path}.{i}", counter) for i, child in enumerate(cond.children)
        )
        stateful = any(c.stateful for c in children)
        test = None if stateful else _group_test(cond.operator, [c.test for c in children])
        return _Node(path, order, cond, "group", stateful, test, None, children)
    if kind is ConditionType.ema_threshold:
        return _ema_node(cond, path, order)
    if kind is ConditionType.rate_limit:
        return _rate_node(cond, path, order)
    test, read = _leaf(cond)
    return _Node(path, order, cond, "leaf", False, test, read)


def _group_test(op: str, tests: list[Test | None]) -> Test:
    parts = tuple(t for t in tests if t is not None)
    if op == "not":
        (only,) = parts

        def negated(e: Event) -> bool:
            return not only(e)

        return negated
    if op == "any":

        def any_of(e: Event) -> bool:
            for t in parts:  # noqa: SIM110 - a loop beats any() on a generator here
                if t(e):
                    return True
            return False

        return any_of

    def all_of(e: Event) -> bool:
        for t in parts:  # noqa: SIM110
            if not t(e):
                return False
        return True

    return all_of


def _combine(op: str, verdicts: list[bool]) -> bool:
    if op == "not":
        return not verdicts[0]
    if op == "any":
        return any(verdicts)
    return all(verdicts)


def _equality(get: Read, op: str, items: frozenset[Any], one: Any) -> Test:
    """A test of ``get(e)`` against the value(s): = / in match, != / not_in do not."""
    if op in ("=", "in"):
        if len(items) == 1:
            return lambda e: bool(get(e) == one)
        return lambda e: get(e) in items
    if op in ("!=", "not_in"):
        if len(items) == 1:
            return lambda e: bool(get(e) != one)
        return lambda e: get(e) not in items
    raise ValueError(f"operator {op!r} does not apply here")


def _text_input(v: str | None) -> str | None:
    return v if v is None or len(v) <= EXPLAIN_TEXT else v[:EXPLAIN_TEXT] + "..."


def _leaf(cond: Condition) -> tuple[Test, Read]:
    kind, op, values = cond.condition_type, cond.operator, cond.values
    if kind is ConditionType.agent_id_equals:
        ids = frozenset(int(v) for v in values)
        get_agent: Read = operator.attrgetter("agent_id")
        return _equality(get_agent, op, ids, int(values[0])), get_agent
    if kind is ConditionType.score_threshold:
        return _score_test(cond), _score_input
    if kind is ConditionType.tag_equals:
        name = cond.field

        def get_tag(e: Event) -> str:
            v = getattr(e, name)
            return "" if v is None else str(v)

        return _equality(get_tag, op, frozenset(values), values[0]), operator.attrgetter(name)
    if kind is ConditionType.validator_whitelist:
        members = frozenset(values)
        get_validator: Read = operator.attrgetter("validator_address")
        if op in ("=", "in"):
            return (lambda e: e.validator_address in members), get_validator
        return (lambda e: e.validator_address not in members), get_validator
    if kind is ConditionType.event_type_equals:
        get_type: Read = operator.attrgetter("event_type")
        return _equality(get_type, op, frozenset(values), values[0]), get_type
    if kind is ConditionType.file_uri_exists:
        wanted = values[0] == "true"
        if op == "!=":
            wanted = not wanted
        if wanted:
            return (lambda e: bool(e.file_uri)), _file_uri_input
        return (lambda e: not e.file_uri), _file_uri_input
    raise ValueError(f"not a stateless leaf: {kind}")  # pragma: no cover - schema closed


def _file_uri_input(e: Event) -> str | None:
    return _text_input(e.file_uri)


def _score_input(e: Event) -> str | None:
    v = feedback_value(e)
    return None if v is None else str(v)


def _score_test(cond: Condition) -> Test:
    op = cond.operator
    if op in ("in", "not_in"):
        numbers = frozenset(Decimal(v) for v in cond.values)
        if op == "in":
            return lambda e: feedback_value(e) in numbers
        return lambda e: (v := feedback_value(e)) is not None and v not in numbers
    compare = _COMPARE[op]
    threshold = cond.number
    if threshold is None:  # pragma: no cover - the model always parses it
        raise ValueError("score_threshold without a number")

    def test(e: Event) -> bool:
        v = feedback_value(e)
        return v is not None and compare(v, threshold)

    return test


def _ema_node(cond: Condition, path: str, order: int) -> _Node:
    cfg, threshold = cond.ema, cond.number
    if cfg is None or threshold is None:  # pragma: no cover - the model always parses them
        raise ValueError("ema_threshold without config or threshold")
    op = cond.operator
    below = op in ("<", "<=")
    rearm = (
        EMA_CONTEXT.add(threshold, cfg.hysteresis)
        if below
        else EMA_CONTEXT.subtract(threshold, cfg.hysteresis)
    )
    return _Node(
        path,
        order,
        cond,
        "ema",
        True,
        None,
        None,
        compare=_COMPARE[op],
        threshold=threshold,
        rearm=rearm,
        alpha=cfg.alpha,
        keep=EMA_CONTEXT.subtract(Decimal(1), cfg.alpha),
        every=cfg.fire_on == "every",
    )


def _rate_node(cond: Condition, path: str, order: int) -> _Node:
    cfg, number = cond.rate, cond.number
    if cfg is None or number is None:  # pragma: no cover - the model always parses them
        raise ValueError("rate_limit without config or count")
    window = cfg.window_seconds
    return _Node(
        path,
        order,
        cond,
        "rate",
        True,
        None,
        None,
        compare=_COMPARE.get(cond.operator),
        window=window,
        lateness=min(window, MAX_LATENESS),
        limit=int(number),
        reset=cfg.reset_on_trigger,
    )


# --- state helpers -------------------------------------------------------------------------


def _as_dict(state: Mapping[str, Any] | None) -> dict[str, Any]:
    if state is None:
        return {}
    return state if isinstance(state, dict) else dict(state)


def _finite(v: Any) -> bool:
    """A string holding a finite decimal (as an EMA is stored)."""
    if not isinstance(v, str):
        return False
    try:
        return Decimal(v).is_finite()
    except ArithmeticError:
        return False


def _valid(node: _Node, s: Any) -> bool:
    if not isinstance(s, dict):
        return False
    if node.kind == "ema":
        return (
            _finite(s.get("ema"))
            and type(s.get("count")) is int
            and type(s.get("armed")) is bool
            and isinstance(s.get("seen"), list)
        )
    high = s.get("high")
    return isinstance(s.get("window"), list) and (high is None or type(high) is int)


def _load(prog: _Program, old: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-path states of `old` that still fit the trigger."""
    conds = old.get("conditions")
    work: dict[str, dict[str, Any]] = {}
    if isinstance(conds, dict):
        for node in prog.state_nodes:
            s = conds.get(node.path)
            if isinstance(s, dict) and _valid(node, s):
                work[node.path] = s
    return work


def _last_fired(prog: _Program, old: dict[str, Any]) -> int | None:
    last = old.get("last_fired_at")
    return last if prog.cooldown and type(last) is int else None


def _build(prog: _Program, work: dict[str, dict[str, Any]], last: int | None) -> dict[str, Any]:
    new: dict[str, Any] = {}
    conds = {n.path: work[n.path] for n in prog.state_nodes if n.path in work}
    if conds:
        new["conditions"] = conds
    if last is not None:
        new["last_fired_at"] = last
    return new


def _compact(node: _Node, s: dict[str, Any] | None) -> dict[str, Any] | None:
    """A condition state for explain blocks: no id lists, no window entries."""
    if s is None:
        return None
    if node.kind == "ema":
        return {"ema": s["ema"], "count": s["count"], "armed": s["armed"]}
    return {"entries": len(s["window"]), "high": s.get("high")}


def _compact_state(
    prog: _Program, work: dict[str, dict[str, Any]], last: int | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conditions": {
            n.path: _compact(n, work[n.path]) for n in prog.state_nodes if n.path in work
        }
    }
    if prog.cooldown:
        out["last_fired_at"] = last
    return out


def _ts(entry: list[Any]) -> Any:
    return entry[_TS]


def _ts_id(entry: list[Any]) -> tuple[Any, Any]:
    return entry[_TS], entry[_ID]


def _withdraw(
    prog: _Program, work: dict[str, dict[str, Any]], keep: Callable[[list[Any]], bool]
) -> dict[str, int]:
    """Drop the window entries `keep` refuses, in every rate window; counts per path."""
    removed: dict[str, int] = {}
    for node in prog.rate_nodes:
        s = work.get(node.path)
        if s is None:
            continue
        window: list[list[Any]] = s["window"]
        kept = [entry for entry in window if keep(entry)]
        if len(kept) != len(window):
            removed[node.path] = len(window) - len(kept)
            work[node.path] = {"window": kept, "high": s.get("high")}
    return removed


# --- evaluation ----------------------------------------------------------------------------


class _Run:
    """Mutable scratch of one evaluation."""

    __slots__ = ("entries", "event", "event_id", "work")

    def __init__(self, event: Event, work: dict[str, dict[str, Any]]) -> None:
        self.event = event
        # Windows and EMAs remember versions, not positions: after a reorg the
        # canonical event at a position has the same id and another block hash.
        self.event_id = event_key(event)
        self.work = work
        self.entries: list[tuple[int, dict[str, Any]]] = []

    def note(
        self,
        node: _Node,
        value: Any,
        verdict: bool,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        cond = node.cond
        entry = {
            "path": node.path,
            "type": cond.condition_type.value,
            "field": cond.field,
            "operator": cond.operator,
            "value": cond.value,
            "input": value,
            "verdict": verdict,
            "state_before": before,
            "state_after": after,
        }
        self.entries.append((node.order, entry))
        return entry


def _explain_stateless(node: _Node, run: _Run) -> bool:
    if node.kind == "group":
        verdict = _combine(node.cond.operator, [_explain_stateless(c, run) for c in node.children])
        run.note(node, None, verdict)
        return verdict
    assert node.test is not None  # a compiled stateless node
    assert node.read is not None
    verdict = node.test(run.event)
    run.note(node, node.read(run.event), verdict)
    return verdict


def _run(node: _Node, run: _Run) -> bool:
    if not node.stateful:
        return _explain_stateless(node, run)
    if node.kind == "ema":
        return _run_ema(node, run)
    if node.kind == "rate":
        return _run_rate(node, run)
    verdicts = [_run(child, run) for child in node.children]  # all of them: no short-circuit
    verdict = _combine(node.cond.operator, verdicts)
    run.note(node, None, verdict)
    return verdict


def _run_ema(node: _Node, run: _Run) -> bool:
    before = run.work.get(node.path)
    value = feedback_value(run.event)
    compact_before = _compact(node, before)
    if value is None:
        run.note(node, None, False, compact_before, compact_before)
        return False
    if before is not None and run.event_id in before["seen"]:
        run.note(
            node, {"value": str(value), "duplicate": True}, False, compact_before, compact_before
        )
        return False
    assert node.compare is not None  # set by _ema_node
    assert node.threshold is not None
    assert node.alpha is not None
    assert node.keep is not None
    ctx = EMA_CONTEXT
    if before is None:
        ema, count, armed, seen = value, 1, True, [run.event_id]
    else:
        previous = Decimal(before["ema"])
        ema = ctx.add(ctx.multiply(node.alpha, value), ctx.multiply(node.keep, previous))
        count, armed = before["count"] + 1, before["armed"]
        seen = [*before["seen"][-(EMA_SEEN - 1) :], run.event_id]
    hit = node.compare(ema, node.threshold)
    if node.every:
        verdict = hit
    elif armed and hit:
        verdict, armed = True, False
    else:
        verdict = False
        if not armed and not node.compare(ema, node.rearm):
            armed = True
    after = {"ema": str(ema), "count": count, "armed": armed, "seen": seen}
    run.work[node.path] = after
    run.note(node, {"value": str(value)}, verdict, compact_before, _compact(node, after))
    return verdict


def _run_rate(node: _Node, run: _Run) -> bool:
    before = run.work.get(node.path)
    compact_before = _compact(node, before)
    event = run.event
    t, eid = event.timestamp, run.event_id
    window: list[list[Any]] = [] if before is None else before["window"]
    high: int | None = before.get("high") if before is not None else None
    at = bisect_left(window, (t, eid), key=_ts_id)
    if at < len(window) and window[at][_TS] == t and window[at][_ID] == eid:
        run.note(node, {"duplicate": True}, False, compact_before, compact_before)
        return False
    feedback = event.event_type == _FEEDBACK
    entry = [
        t,
        eid,
        event.client_address if feedback else None,
        event.feedback_index if feedback else None,
        event.block_number,
        event.chain_id,
        event.agent_id,
    ]
    late = high is not None and t < high - node.lateness
    new_high = t if high is None else max(high, t)
    horizon = new_high - node.window - node.lateness
    start = bisect_right(window, horizon, key=_ts)
    # an entry at or before the horizon would be dropped at once: too late even to be kept
    new_window = [*window[start:at], entry, *window[at:]] if t > horizon else window[start:]
    after = {"window": new_window, "high": new_high}
    run.work[node.path] = after
    if late:
        run.note(node, {"late": True}, False, compact_before, _compact(node, after))
        return False
    low = t - node.window
    count = bisect_right(new_window, t, key=_ts) - bisect_right(new_window, low, key=_ts)
    compare = node.compare
    if compare is not None:
        verdict = compare(count, node.limit)
    else:  # in / not_in (not admitted by the schema today)
        members = {int(v) for v in node.cond.values}
        verdict = (count in members) == (node.cond.operator == "in")
    run.note(
        node,
        {"count": count, "window": [low, t]},
        verdict,
        compact_before,
        _compact(node, after),
    )
    return verdict


def evaluate(trigger: TriggerSpec, event: Event, *, state: Mapping[str, Any] | None) -> Outcome:
    """Evaluate `trigger` on `event` with the state of its scope (None = no state yet)."""
    prog = trigger._program
    revoking = bool(prog.rate_nodes) and event.event_type == _REVOKED
    if not revoking:
        for test in prog.gate:
            if not test(event):
                return Outcome(False, _as_dict(state), False, {})
        if not prog.stateful:
            return _fire_stateless(trigger, prog, event, state)
    return _evaluate_stateful(trigger, prog, event, _as_dict(state), revoking)


def _fire_stateless(
    trigger: TriggerSpec, prog: _Program, event: Event, state: Mapping[str, Any] | None
) -> Outcome:
    run = _Run(event, {})
    for node in prog.gate_nodes:
        _explain_stateless(node, run)
    run.entries.sort(key=lambda item: item[0])
    explain = {
        "trigger_id": trigger.id,
        "event_id": run.event.id,
        "fired": True,
        "suppressed": None,
        "conditions": [entry for _, entry in run.entries],
        "state_before": {},
        "state_after": {},
    }
    return Outcome(True, _as_dict(state), False, explain)


def _revoke(prog: _Program, work: dict[str, dict[str, Any]], event: Event) -> dict[str, int]:
    """Withdraw the feedback a FeedbackRevoked names from every rate window."""
    client, index, agent = event.client_address, event.feedback_index, event.agent_id

    def keep(entry: list[Any]) -> bool:
        return not (
            entry[_INDEX] is not None
            and entry[_INDEX] == index
            and entry[_CLIENT] == client
            and entry[_AGENT] == agent
        )

    return _withdraw(prog, work, keep)


def _reset_windows(prog: _Program, run: _Run) -> None:
    """The trigger fired: clear the windows of the rate conditions with reset_on_trigger."""
    resets = {n.path for n in prog.rate_nodes if n.reset}
    if not resets:
        return
    for path in resets:
        run.work[path] = {"window": [], "high": None}
    for _, entry in run.entries:
        if entry["path"] in resets:
            entry["reset"] = True
            entry["state_after"] = {"entries": 0, "high": None}


def _evaluate_stateful(
    trigger: TriggerSpec, prog: _Program, event: Event, old: dict[str, Any], revoking: bool
) -> Outcome:
    work = _load(prog, old)
    last = _last_fired(prog, old)
    before_compact = _compact_state(prog, work, last)
    revoked = _revoke(prog, work, event) if revoking else {}
    if revoking and not all(test(event) for test in prog.gate):
        if not revoked:
            return Outcome(False, old, False, {})
        new = _build(prog, work, last)
        return Outcome(
            False,
            new,
            new != old,
            {
                "trigger_id": trigger.id,
                "event_id": event.id,
                "fired": False,
                "suppressed": None,
                "revoked": revoked,
                "conditions": [],
                "state_before": before_compact,
                "state_after": _compact_state(prog, work, last),
            },
        )
    run = _Run(event, work)
    for node in prog.gate_nodes:
        _explain_stateless(node, run)
    verdict = True
    for node in prog.stateful_nodes:
        if not _run(node, run):
            verdict = False
    suppressed: str | None = None
    fired = verdict
    if verdict and prog.cooldown and last is not None and event.timestamp < last + prog.cooldown:
        suppressed, fired = "cooldown", False
    if fired:
        if prog.cooldown:
            last = event.timestamp if last is None else max(last, event.timestamp)
        _reset_windows(prog, run)
    new = _build(prog, work, last)
    run.entries.sort(key=lambda item: item[0])
    explain: dict[str, Any] = {
        "trigger_id": trigger.id,
        "event_id": run.event.id,
        "fired": fired,
        "suppressed": suppressed,
        "conditions": [entry for _, entry in run.entries],
        "state_before": before_compact,
        "state_after": _compact_state(prog, work, last),
    }
    if suppressed is not None:
        explain["cooldown_until"] = (last or 0) + prog.cooldown
    if revoking:
        explain["revoked"] = revoked
    return Outcome(fired, new, new != old, explain)


def retract(
    trigger: TriggerSpec,
    *,
    state: Mapping[str, Any] | None,
    chain_id: int,
    from_block: int,
    to_block: int | None,
    event_keys: Collection[str] | None = None,
) -> Outcome:
    """Take a reorged block range [from_block, to_block] (None: no upper bound) of a chain
    back out of every rate window of `state`; with ``event_keys`` (the replaced
    versions, see shared.events.event_key), exactly those entries, so that applying
    the retraction again never removes a canonical event of the same range. EMAs
    cannot be undone and stay as they are."""
    prog = trigger._program
    old = _as_dict(state)
    explain: dict[str, Any] = {
        "trigger_id": trigger.id,
        "chain_id": chain_id,
        "from_block": from_block,
        "to_block": to_block,
        "removed": {},
    }
    if not prog.rate_nodes:
        return Outcome(False, old, False, explain)
    work = _load(prog, old)
    upper = to_block

    keys = frozenset(event_keys) if event_keys is not None else None

    def keep(entry: list[Any]) -> bool:
        if keys is not None:
            return entry[_ID] not in keys
        block = entry[_BLOCK]
        return not (
            entry[_CHAIN] == chain_id and block >= from_block and (upper is None or block <= upper)
        )

    removed = _withdraw(prog, work, keep)
    if not removed:
        return Outcome(False, old, False, explain)
    new = _build(prog, work, _last_fired(prog, old))
    explain["removed"] = removed
    return Outcome(False, new, new != old, explain)
