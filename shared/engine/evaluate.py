"""The trigger evaluation engine: pure, deterministic functions of (trigger, event, state).

The rules are those of docs/semantics.md; this module is their fast form. In short:

- The top-level stateless conditions are the *gate*: an event failing it changes no
  state and cannot fire (a FeedbackRevoked still withdraws its feedback from rate
  windows). Every stateful condition sees every event passing the gate (no
  short-circuit, inside groups neither): first it takes the event into its state,
  then it gives its verdict.
- Each stateful condition has a scope (``config.scope``: trigger or agent). Its
  state lives in the state row of that scope: ``''`` for the trigger, the agent id
  for an agent. The *firing scope* (arming and cooldown) is agent when any stateful
  condition is agent-scoped, else trigger. `scope_keys` names the rows an event
  needs; `evaluate` takes and returns them.
- Crossing mode (any EMA with ``fire_on: crossing``): the trigger fires when the
  whole condition set holds while armed; the firing disarms, an event whose set
  verdict is false re-arms, a cooldown-suppressed firing does not disarm. Every
  mode: it fires whenever the set holds.
- States are keyed by each condition's identity (a hash of its definition, see
  `condition_id`), not its position, so an edit that keeps a condition keeps its
  state.

No I/O and no wall clock: windows and cooldowns are measured in block time
(``event.timestamp``), so a replay of the same stream gives the same firings.

A state row (JSON-able)::

    {"conditions": {"<condition id>": {...}}, "disarmed": "<set id>", "last_fired_at": t}

- ema_threshold: ``{"ema": "<decimal>", "count": n}`` plus ``"holding": bool`` in
  crossing mode (the level with hysteresis).
- rate_limit: ``{"window": [[timestamp, version, client_address, feedback_index,
  block_number, agent], ...]}`` sorted by timestamp (chain order), ``agent`` the
  agent id, or ``"<registry contract>|<Identity registry>/<id>"`` for events that
  name their registries;
  client_address/feedback_index are set for NewFeedback only (what a
  FeedbackRevoked withdraws). After taking an event the window forgets the entries
  at or before ``T - W - min(W, 1 h)``, T the newest entry's time: a reorg replacing
  blocks further back than that in block time can find a window short of entries.
- ``disarmed``: present while the condition set with that id has fired and not
  been false since (crossing mode, firing-scope row only).
- ``last_fired_at``: block time of the last firing (firing-scope row, with a cooldown).
"""

from __future__ import annotations

import hashlib
import json
import operator
import sys
import weakref
from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from functools import partial
from typing import Any, Final

import orjson

from shared.contract.condition_types import ConditionType
from shared.contract.conditions import Condition
from shared.contract.events import Event, feedback_value, version_key

__all__ = [
    "ActionSpec",
    "Evaluation",
    "TriggerSpec",
    "Withdrawal",
    "condition_id",
    "due_at",
    "evaluate",
    "forget_removed",
    "has_absence",
    "retract",
    "scope_keys",
    "tick",
    "with_due",
]

#: Fixed arithmetic of the EMA (independent of the thread's decimal context).
EMA_CONTEXT: Final = Context(prec=40, rounding=ROUND_HALF_EVEN, Emax=999999, Emin=-999999)
#: Upper bound of how far (block time) behind the newest entry a rate window keeps
#: entries beyond its own width W (the margin is min(W, this)).
MAX_LATENESS: Final = 3600
#: Length to which long text inputs are cut in explain blocks.
EXPLAIN_TEXT: Final = 200

_FEEDBACK: Final = "NewFeedback"
_REVOKED: Final = "FeedbackRevoked"

#: The node kinds that keep a state.
_STATE_KINDS: Final = frozenset({"ema", "rate", "absence"})

# rate window entry layout
_TS, _ID, _CLIENT, _INDEX, _BLOCK, _AGENT = range(6)

Test = Callable[[Event], bool]
Read = Callable[[Event], Any]
Compare = Callable[[Any, Any], bool]
State = dict[str, Any]

_COMPARE: Final[dict[str, Compare]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


# --- public data ---------------------------------------------------------------------------


def _shared_text(text: str) -> str:
    """One copy of equal texts while something holds them: sys.intern on Python 3.11,
    where an interned string is freed with its last holder; from 3.12 interned
    strings live for ever (every edited config would stay), so the text as it is."""
    return sys.intern(text) if sys.version_info < (3, 12) else text


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One trigger_actions row as the matcher hands it on."""

    id: int  # trigger_actions.id
    action_type: str  # telegram | rest | mcp
    priority: int
    #: The config as stored (secrets included), as compact JSON: the matcher holds
    #: every enabled trigger's actions and reads them only when one fires, and a
    #: dict per action costs several times the bytes.
    config_json: str

    @classmethod
    def of(
        cls, action_id: int, action_type: str, priority: int, config: Mapping[str, Any]
    ) -> ActionSpec:
        # a str of its exact size (orjson's bytes keep their whole buffer: kilobytes),
        # one copy for the triggers of the same config (a user's webhook, on many)
        return cls(action_id, action_type, priority, _shared_text(orjson.dumps(config).decode()))

    @property
    def config(self) -> dict[str, Any]:
        """The config, decoded afresh (the caller may change it)."""
        config: dict[str, Any] = orjson.loads(self.config_json)
        return config

    def __hash__(self) -> int:
        return hash((self.id, self.action_type, self.priority))


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """An enabled trigger as the evaluator takes it; compiled once, lazily (slots:
    the matcher holds one per enabled trigger, a million of them at the most)."""

    id: str
    user_id: str
    name: str
    chain_id: int
    registry: str
    enabled_at: datetime  # aware
    cooldown_seconds: int | None
    conditions: tuple[Condition, ...]  # top level, ANDed
    actions: tuple[ActionSpec, ...]
    #: triggers.version: which edit of the trigger this is (0: not known).
    version: int = 0
    #: the compiled program, once built (``_program``)
    _compiled: _Program | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        # Conditions and action configs hold dicts: hash what identifies the trigger.
        return hash((self.id, self.user_id, self.chain_id, self.registry, self.cooldown_seconds))

    @property
    def _program(self) -> _Program:
        compiled = self._compiled
        if compiled is None:
            global _built  # noqa: PLW0603 - one counter for the process
            compiled = _compile(self)
            object.__setattr__(self, "_compiled", compiled)
            _built += 1
        return compiled

    @property
    def is_stateful(self) -> bool:
        """Any condition (also nested) is stateful, or a cooldown is set."""
        return self._program.stateful

    @property
    def agent_scoped(self) -> bool:
        """The firing scope is the agent (some stateful condition is agent-scoped)."""
        return self._program.agent_firing

    @property
    def condition_paths(self) -> dict[str, list[str]]:
        """Each stateful condition's identity (the key of its state) -> the paths of the
        conditions with that definition (``"0"``, ``"2.1"``)."""
        paths: dict[str, list[str]] = {}
        for node in self._program.all_state_nodes:
            paths.setdefault(node.cid, []).append(node.path)
        return paths

    @property
    def state_signature(self) -> tuple[frozenset[str], str, bool, int]:
        """What the stored state depends on: the identities of the stateful conditions,
        the condition set's identity (arming), whether firing times are kept, and
        for an absence condition the cooldown (its rows' ``due_at`` counts it)."""
        prog = self._program
        ids = frozenset(n.cid for n in prog.state_nodes)
        due = prog.cooldown if prog.absence is not None else 0
        return ids, prog.set_id, prog.cooldown > 0, due


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The result of one evaluation."""

    fired: bool
    #: The new state of every scope row the evaluation was given (JSON-able).
    states: dict[str, State]
    #: The scope keys whose state differs from the one passed in.
    changed: tuple[str, ...]
    explain: dict[str, Any]  # JSON-able

    @property
    def state(self) -> State:
        """The state of the only row (triggers with one scope row)."""
        (only,) = self.states.values()
        return only


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """The result of taking events back out of one state row (reorg retraction)."""

    state: State
    changed: bool
    explain: dict[str, Any]


#: Programs built so far in this process (:func:`programs_built`).
_built = 0


def programs_built() -> int:
    """How many triggers this process has compiled so far: each once, at its first
    evaluation (a trigger edited or reloaded is a new one). The matcher moves the
    programs out of the cyclic GC's sight by this count
    (services/matcher/keeper.py, :class:`ProgramSettler`)."""
    return _built


def condition_id(condition: Condition, chain_id: int, registry: str) -> str:
    """The identity of a condition's state: a hash of its definition and the stream
    it reads (chain, registry); the same wherever the condition sits in the list."""
    return hashlib.sha256(_definition_text(condition, chain_id, registry).encode()).hexdigest()[:16]


def _definition_text(condition: Condition, chain_id: int, registry: str) -> str:
    """What :func:`condition_id` hashes: ``[chain, registry, the condition as JSON]``,
    keys sorted, no spaces. A condition without config (an agent's, in a crossing
    trigger's set: one for each such trigger compiled) is its kind's text around
    its value (:data:`_TEXTS`), without dumping the model (5 µs against 1)."""
    # (a Condition itself: a subclass may dump more fields, e.g. the API's ConditionPatch)
    if type(condition) is Condition and not condition.config:
        key = (chain_id, registry, condition.condition_type, condition.field, condition.operator)
        around = _TEXTS.get(key)
        if around is None:
            whole = _dump_text(condition.model_copy(update={"value": "\0"}), chain_id, registry)
            parts = whole.split(_HOLE)
            if len(parts) != 2:  # pragma: no cover - the hole is the value's alone
                return _dump_text(condition, chain_id, registry)
            around = (parts[0], parts[1])
            if len(_TEXTS) < 10_000:  # (kinds x fields x operators x streams in use)
                _TEXTS[key] = around
        return around[0] + json.dumps(condition.value) + around[1]
    return _dump_text(condition, chain_id, registry)


def _dump_text(condition: Condition, chain_id: int, registry: str) -> str:
    return json.dumps(
        [chain_id, registry, condition.model_dump(mode="json")],
        sort_keys=True,
        separators=(",", ":"),
    )


#: The value "\0" as JSON writes it: a condition's value holds no NUL (validation).
_HOLE: Final = json.dumps("\0")
#: The text of a definition without config, before and after its value, by
#: (chain, registry, kind, field, operator).
_TEXTS: dict[tuple[int, str, ConditionType, str, str], tuple[str, str]] = {}


def forget_removed(trigger: TriggerSpec, state: Mapping[str, Any]) -> State:
    """A state row after an edit: the states of conditions the trigger no longer has
    are dropped (re-added later, a condition starts from no state), arming of another
    condition set is dropped (the new set starts armed), and the last firing time
    without a cooldown (a cooldown added later counts from the next firing)."""
    ids, set_id, keeps_firings, _ = trigger.state_signature
    new: State = {}
    conds = state.get("conditions")
    if isinstance(conds, dict):
        kept = {k: v for k, v in conds.items() if k in ids}
        if kept:
            new["conditions"] = kept
    if state.get("disarmed") == set_id:
        new["disarmed"] = set_id
    last = state.get("last_fired_at")
    if keeps_firings and type(last) is int:
        new["last_fired_at"] = last
    return _with_due(trigger._program, new)


def agent_key(event: Event) -> str:
    """The state row of an agent ('' for an event without agent): its id, after its
    Identity registry's address when the event names one (``0x…/7``: no colon, which
    separates a tick record's scope from its tick), so agent 7 of
    two registries on one chain are two agents (docs/semantics.md §4)."""
    if event.agent_id is None:
        return ""
    if event.agent_registry is None:
        return str(event.agent_id)
    return f"{event.agent_registry}/{event.agent_id}"


def _window_agent(event: Event) -> int | str | None:
    """A rate window entry's agent, as a revocation finds it: the id alone for events
    that name no registry (entries stored before registries were named), else the
    registry contract, the agent's Identity registry and the id."""
    if event.registry_address is None and event.agent_registry is None:
        return event.agent_id
    return f"{event.registry_address}|{event.agent_registry}/{event.agent_id}"


def scope_keys(trigger: TriggerSpec, event: Event) -> tuple[str, ...]:
    """The state rows evaluating `trigger` on `event` reads and writes ('' = the
    trigger's row, else the event's agent's); empty for a stateless trigger."""
    prog = trigger._program
    if not prog.stateful:
        return ()
    keys: list[str] = []
    if prog.trigger_row:
        keys.append("")
    if prog.agent_firing:
        key = agent_key(event)
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def passes_gate(trigger: TriggerSpec, event: Event) -> bool:
    """Whether the event passes the trigger's gate (its top-level stateless
    conditions): an event that does not changes no state (docs/semantics.md §2)."""
    return all(test(event) for test in trigger._program.gate)


def scope_key(trigger: TriggerSpec, event: Event) -> str:
    """The firing-scope row of (trigger, event): '' or the agent id."""
    return agent_key(event) if trigger._program.agent_firing else ""


# --- compiled form -------------------------------------------------------------------------


@dataclass(slots=True, eq=False, weakref_slot=True)
class _Node:
    """One condition of the tree, with what evaluating it needs precomputed. Depends
    only on its condition, place (path, order) and stream (chain, registry): triggers
    holding the same condition model at the same place share one (:data:`_NODES`).

    Never changed once built, but not a frozen dataclass: a frozen one's ``__init__``
    sets each field through ``object.__setattr__`` (a node: 3.6 µs against 0.4), and
    a trigger's first evaluation builds a node and a :class:`_Program` (a million
    triggers: most of a first pass's events meet a trigger not yet compiled)."""

    path: str
    order: int  # pre-order position, the order of explain entries
    cond: Condition
    kind: str  # leaf | group | ema | rate | absence
    stateful: bool
    test: Test | None  # stateless nodes: the verdict
    read: Read | None  # leaves: the explain input
    children: tuple[_Node, ...] = ()
    cid: str = ""  # ema / rate: the state's identity
    agent: bool = False  # ema / rate: agent-scoped
    # ema
    compare: Compare | None = None
    threshold: Decimal | None = None
    rearm: Decimal | None = None  # a holding level stops when not compare(ema, rearm)
    alpha: Decimal | None = None
    keep: Decimal | None = None  # 1 - alpha
    warmup: int = 1
    crossing: bool = False
    # rate
    window: int = 0
    lateness: int = 0
    limit: int = 0
    reset: bool = False
    # absence: the silence fires when it lasts longer than this many seconds
    silence: int = 0


@dataclass(slots=True, eq=False)
class _Program:
    """A trigger compiled; never changed once built (not frozen: see :class:`_Node`;
    2.7 µs against 0.7)."""

    gate: tuple[Test, ...]  # stateless top-level tests
    gate_nodes: tuple[_Node, ...]
    stateful_nodes: tuple[_Node, ...]  # stateful top-level nodes
    state_nodes: tuple[_Node, ...]  # every ema/rate node, one per identity, in path order
    all_state_nodes: tuple[_Node, ...]  # every ema/rate node
    rate_nodes: tuple[_Node, ...]
    absence: _Node | None  # the absence condition (top level, alone: section 5a)
    cooldown: int  # 0 = none
    stateful: bool
    crossing: bool
    agent_firing: bool
    trigger_row: bool  # the trigger's row '' is needed
    set_id: str = field(default="")


def _compile(trigger: TriggerSpec) -> _Program:
    counter = [0]
    chain, reg = trigger.chain_id, trigger.registry
    roots = tuple(
        [_compile_node(c, str(i), counter, chain, reg) for i, c in enumerate(trigger.conditions)]
    )
    cooldown = max(trigger.cooldown_seconds or 0, 0)
    if cooldown == 0 and not any([n.stateful for n in roots]):  # noqa: C419 - faster here
        # Most triggers: stateless conditions only, no cooldown (a first evaluation
        # compiles one, so this path is kept short).
        return _Program(
            gate=tuple([n.test for n in roots if n.test is not None]),
            gate_nodes=roots,
            stateful_nodes=(),
            state_nodes=(),
            all_state_nodes=(),
            rate_nodes=(),
            absence=None,
            cooldown=0,
            stateful=False,
            crossing=False,
            agent_firing=False,
            trigger_row=True,
        )
    # One pass over the nodes (a trigger with a stateful condition compiles at its first
    # evaluation too): every stateful node in path order, one per identity.
    every_state: list[_Node] = []
    unique: dict[str, _Node] = {}
    gate_nodes: list[_Node] = []
    stateful_nodes: list[_Node] = []
    for root in roots:
        (stateful_nodes if root.stateful else gate_nodes).append(root)
        for node in _preorder(root) if root.children else (root,):
            if node.kind in _STATE_KINDS:
                every_state.append(node)
                unique.setdefault(node.cid, node)
    state_nodes = tuple(unique.values())
    agent_firing = crossing = row = False
    rate_nodes: list[_Node] = []
    absence: _Node | None = None
    for node in state_nodes:
        if node.agent:
            agent_firing = True
        else:
            row = True
        if node.kind == "rate":
            rate_nodes.append(node)
        elif node.kind == "ema":
            crossing = crossing or node.crossing
        elif absence is None:
            absence = node
    set_id = ""
    if crossing:  # arming is kept only in crossing mode: only then is the set named
        # a stateful condition's node already holds its identity
        ids = sorted(
            n.cid if n.kind in _STATE_KINDS else condition_id(c, chain, reg)
            for n, c in zip(roots, trigger.conditions, strict=True)
        )
        set_id = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
    return _Program(
        gate=tuple([n.test for n in gate_nodes if n.test is not None]),
        gate_nodes=tuple(gate_nodes),
        stateful_nodes=tuple(stateful_nodes),
        state_nodes=state_nodes,
        all_state_nodes=tuple(every_state),
        rate_nodes=tuple(rate_nodes),
        absence=absence,
        cooldown=cooldown,
        stateful=bool(state_nodes) or cooldown > 0,
        crossing=crossing,
        agent_firing=agent_firing,
        trigger_row=not agent_firing or row,
        set_id=set_id,
    )


def _preorder(node: _Node) -> list[_Node]:
    """The node and its descendants, parents first, children in order."""
    out = [node]
    for child in node.children:
        out += _preorder(child)
    return out


#: Compiled conditions other than groups and agents, while some program holds them, by (the
#: condition model's identity, path, order, chain, registry): conditions are shared
#: between triggers (shared.engine.replay), and so is what they compile to (a node
#: and its test closures: most of a compiled trigger). The node holds its condition,
#: so the identity in a live entry's key is never reused.
_NODES: weakref.WeakValueDictionary[tuple[int, str, int, int, str], _Node] = (
    weakref.WeakValueDictionary()
)


def _compile_node(cond: Condition, path: str, counter: list[int], chain: int, reg: str) -> _Node:
    order = counter[0]
    counter[0] += 1
    kind = cond.condition_type
    if kind is ConditionType.group:
        return _compile_group(cond, path, order, counter, chain=chain, reg=reg)
    if kind is ConditionType.agent_id_equals:
        # one agent's condition is rarely another trigger's: an entry would cost
        # more than it saves (a node of its own, made directly: most triggers' first
        # evaluation builds one)
        test, read = _agent_leaf(cond)
        return _Node(path, order, cond, "leaf", False, test, read)
    key = (id(cond), path, order, chain, reg)
    node = _NODES.get(key)
    if node is None or node.cond is not cond:
        node = _NODES[key] = _compile_single(cond, path, order, chain, reg)
    return node


def _compile_group(
    cond: Condition, path: str, order: int, counter: list[int], *, chain: int, reg: str
) -> _Node:
    children = tuple(
        _compile_node(child, f"{path}.{i}", counter, chain, reg)
        for i, child in enumerate(cond.children)
    )
    stateful = any(c.stateful for c in children)
    test = None if stateful else _group_test(cond.operator, [c.test for c in children])
    return _Node(path, order, cond, "group", stateful, test, None, children)


def _compile_single(cond: Condition, path: str, order: int, chain: int, reg: str) -> _Node:
    kind = cond.condition_type
    if kind is ConditionType.ema_threshold:
        return _ema_node(cond, path, order, condition_id(cond, chain, reg))
    if kind is ConditionType.rate_limit:
        return _rate_node(cond, path, order, condition_id(cond, chain, reg))
    if kind is ConditionType.absence:
        cfg = cond.absence
        if cfg is None:  # pragma: no cover - the model always parses it
            raise ValueError("absence without its duration")
        cid = condition_id(cond, chain, reg)
        return _Node(
            path, order, cond, "absence", True, None, None, cid=cid,
            agent=cfg.scope == "agent", silence=cfg.seconds,
        )  # fmt: skip
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


_AGENT_ID: Final = operator.attrgetter("agent_id")

#: What _equality takes as ``items`` when there is one value (``one``): its size is
#: all it reads then.
_ONE: Final = frozenset({None})


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


def _text_field(name: str) -> tuple[Read, Read]:
    """(the value compared: absent = '', the explain input) of a text field."""
    attr = operator.attrgetter(name)

    def get(e: Event) -> str:
        v = attr(e)
        return "" if v is None else str(v)

    def read(e: Event) -> str | None:
        return _text_input(attr(e))

    return get, read


def _agent_is(agent: int, e: Event) -> bool:
    return e.agent_id == agent


def _agent_leaf(cond: Condition) -> tuple[Test, Read]:
    """An agent_id_equals condition's (test, explain input). One agent with "=" (the
    usual case): a partial of :func:`_agent_is`, one object where a closure is four,
    no set built and kept for it."""
    op, values = cond.operator, cond.values
    if op == "=" and len(values) == 1:
        return partial(_agent_is, int(values[0])), _AGENT_ID
    ids = frozenset(int(v) for v in values) if len(set(values)) > 1 else _ONE
    return _equality(_AGENT_ID, op, ids, int(values[0])), _AGENT_ID


def _leaf(cond: Condition) -> tuple[Test, Read]:
    """A stateless leaf's (test, explain input); an agent's is :func:`_agent_leaf`'s
    (its node is made by :func:`_compile_node` directly)."""
    kind, op, values = cond.condition_type, cond.operator, cond.values
    if kind is ConditionType.score_threshold:
        number = _NUMBERS[cond.field]
        return _number_test(cond, number), lambda e: _str_or_none(number(e))
    if kind in (ConditionType.tag_equals, ConditionType.field_equals):
        get, read = _text_field(cond.field)
        return _equality(get, op, frozenset(values), values[0]), read
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
    raise ValueError(f"no leaf test here for {kind}")  # pragma: no cover - schema closed


def _file_uri_input(e: Event) -> str | None:
    return _text_input(e.file_uri)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _response(e: Event) -> Decimal | None:
    return None if e.response is None else Decimal(e.response)


def _value_decimals(e: Event) -> Decimal | None:
    if e.event_type != _FEEDBACK or e.value_decimals is None:
        return None
    return Decimal(e.value_decimals)


#: The numbers score_threshold reads, by field.
_NUMBERS: Final[dict[str, Callable[[Event], Decimal | None]]] = {
    "score": feedback_value,
    "response": _response,
    "value_decimals": _value_decimals,
}


def _number_test(cond: Condition, number: Callable[[Event], Decimal | None]) -> Test:
    op = cond.operator
    if op in ("in", "not_in"):
        numbers = frozenset(Decimal(v) for v in cond.values)
        if op == "in":
            return lambda e: number(e) in numbers
        return lambda e: (v := number(e)) is not None and v not in numbers
    compare = _COMPARE[op]
    threshold = cond.number
    if threshold is None:  # pragma: no cover - the model always parses it
        raise ValueError("score_threshold without a number")

    def test(e: Event) -> bool:
        v = number(e)
        return v is not None and compare(v, threshold)

    return test


def _agent_scoped(cfg: Any) -> bool:
    return cfg is not None and cfg.scope == "agent"


def _ema_node(cond: Condition, path: str, order: int, cid: str) -> _Node:
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
        cid=cid,
        agent=_agent_scoped(cfg),
        compare=_COMPARE[op],
        threshold=threshold,
        rearm=rearm,
        alpha=cfg.alpha,
        keep=EMA_CONTEXT.subtract(Decimal(1), cfg.alpha),
        warmup=cfg.warmup,
        crossing=cfg.fire_on == "crossing",
    )


def _rate_node(cond: Condition, path: str, order: int, cid: str) -> _Node:
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
        cid=cid,
        agent=_agent_scoped(cfg),
        compare=_COMPARE.get(cond.operator),
        window=window,
        lateness=min(window, MAX_LATENESS),
        limit=int(number),
        reset=cfg.reset_on_trigger,
    )


# --- state helpers -------------------------------------------------------------------------


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
    if node.kind == "absence":
        return (
            type(s.get("since")) is int
            and isinstance(s.get("event"), str)
            and type(s.get("fired")) is bool
        )
    if node.kind == "ema":
        return (
            _finite(s.get("ema"))
            and type(s.get("count")) is int
            and (not node.crossing or type(s.get("holding")) is bool)
        )
    window = s.get("window")
    # The ends only: a whole scan per evaluation would cost O(window) each time;
    # the matcher alone writes these rows.
    return isinstance(window, list) and all(
        isinstance(x, list) and len(x) == 6 and type(x[_TS]) is int
        for x in window[:1] + window[-1:]
    )


def _legacy(node: _Node, s: Any) -> tuple[State, bool] | None:
    """A condition state stored by the previous release (keyed by the condition's
    path, with a per-condition armed flag): the state in today's layout, and whether
    the condition fired and has not re-armed since (the set is then disarmed, so the
    upgrade does not alert twice). None when it does not read as one."""
    if not isinstance(s, dict) or node.kind == "absence":
        return None
    if node.kind == "ema":
        if not (_finite(s.get("ema")) and type(s.get("count")) is int):
            return None
        armed = s.get("armed")
        if type(armed) is not bool:
            return None
        out: State = {"ema": str(Decimal(s["ema"])), "count": s["count"]}
        if node.crossing:
            out["holding"] = not armed and s["count"] >= node.warmup
        return out, node.crossing and not armed
    window = s.get("window")
    if not isinstance(window, list) or not all(
        isinstance(x, list) and len(x) == 7 and type(x[0]) is int for x in window
    ):
        return None
    # [ts, id, client, index, block, chain, agent] -> [ts, version, client, index, block, agent]
    entries = sorted(([x[0], x[1], x[2], x[3], x[4], x[6]] for x in window), key=_ts)
    return {"window": entries}, False


def _load_state(
    node: _Node, conds: Mapping[str, Any], *, legacy: bool = True
) -> tuple[State, bool] | None:
    """One condition's state from a stored row: today's layout (by identity), else,
    with ``legacy``, the previous release's (by path; see `_legacy`, whose flag this
    returns too). None when neither reads as one."""
    s = conds.get(node.cid)
    if s is not None:
        return (s, False) if _valid(node, s) else None
    if legacy and node.path in conds:
        return _legacy(node, conds[node.path])
    return None


class _Rows:
    """The scope rows of one evaluation: loaded (only what still fits the trigger),
    worked on, and built back."""

    __slots__ = ("agent", "firing", "old", "work")

    def __init__(self, prog: _Program, event: Event, states: Mapping[str, Any]) -> None:
        self.agent = agent_key(event)
        self.firing = self.agent if prog.agent_firing else ""
        self.old: dict[str, State] = {}
        self.work: dict[str, dict[str, State]] = {}
        for key, raw in states.items():
            old = raw if isinstance(raw, dict) else dict(raw or {})
            self.old[key] = old
            conds = old.get("conditions")
            loaded: dict[str, State] = {}
            if isinstance(conds, dict):
                for node in prog.state_nodes:
                    if self.key(node) != key:
                        continue
                    found = _load_state(node, conds)
                    if found is not None:
                        loaded[node.cid], fired_before = found
                        if fired_before and prog.crossing and key == self.firing:
                            self.old[key] = old = {**old, "disarmed": prog.set_id}
            self.work[key] = loaded

    def need(self, keys: Collection[str]) -> None:
        """Rows that were not passed in start empty."""
        for key in keys:
            if key not in self.old:
                self.old[key] = {}
                self.work[key] = {}

    def key(self, node: _Node) -> str:
        return self.agent if node.agent else ""

    def get(self, node: _Node) -> State | None:
        return self.work.get(self.key(node), {}).get(node.cid)

    def put(self, node: _Node, s: State) -> None:
        self.work.setdefault(self.key(node), {})[node.cid] = s

    def build(self, prog: _Program, firing: dict[str, Any] | None) -> dict[str, State]:
        """The new rows; ``firing`` = the firing row's disarmed/last_fired_at (None: as before)."""
        out: dict[str, State] = {}
        for key, old in self.old.items():
            new: State = {}
            conds = self.work.get(key, {})
            if conds:
                new["conditions"] = {
                    n.cid: conds[n.cid] for n in prog.state_nodes if n.cid in conds
                }
            source = firing if (firing is not None and key == self.firing) else old
            if key == self.firing:
                disarmed = source.get("disarmed")
                if prog.crossing and disarmed == prog.set_id:
                    new["disarmed"] = disarmed
                last = source.get("last_fired_at")
                if type(last) is int:
                    new["last_fired_at"] = last
            out[key] = _with_due(prog, new)
        return out


def _compact(node: _Node, s: State | None) -> dict[str, Any] | None:
    """A condition state for explain blocks: no window entries."""
    if s is None:
        return None
    if node.kind == "absence":
        return dict(s)
    if node.kind == "ema":
        out = {"ema": s["ema"], "count": s["count"]}
        if node.crossing:
            out["holding"] = s["holding"]
        return out
    window = s["window"]
    return {"entries": len(window), "newest": window[-1][_TS] if window else None}


def _compact_before(before: list[tuple[_Node, State | None]]) -> dict[str, Any]:
    return {"conditions": {node.cid: _compact(node, s) for node, s in before}}


def _compact_rows(prog: _Program, rows: _Rows) -> dict[str, Any]:
    return {"conditions": {n.cid: _compact(n, rows.get(n)) for n in prog.state_nodes}}


def _ts(entry: list[Any]) -> Any:
    return entry[_TS]


def _withdraw(
    prog: _Program, conds: dict[str, State], keep: Callable[[list[Any]], bool]
) -> dict[str, int]:
    """Drop the window entries `keep` refuses, in every rate window of one row."""
    removed: dict[str, int] = {}
    for node in prog.rate_nodes:
        s = conds.get(node.cid)
        if s is None:
            continue
        window: list[list[Any]] = s["window"]
        kept = [entry for entry in window if keep(entry)]
        if len(kept) != len(window):
            removed[node.cid] = len(window) - len(kept)
            conds[node.cid] = {"window": kept}
    return removed


# --- evaluation ----------------------------------------------------------------------------


class _Run:
    """Mutable scratch of one evaluation."""

    __slots__ = ("entries", "event", "notes", "rows", "verdicts", "version")

    def __init__(self, event: Event, rows: _Rows, *, notes: bool = True) -> None:
        self.event = event
        self.version = version_key(event)
        self.rows = rows
        #: Whether verdicts are written down for an explain (a second pass does it
        #: when only a firing needs one).
        self.notes = notes
        self.entries: list[tuple[int, dict[str, Any]]] = []
        #: condition id -> (verdict, input, state before, state after): states raw,
        #: compacted only when noted.
        self.verdicts: dict[str, tuple[bool, Any, Any, Any]] = {}

    def note(
        self,
        node: _Node,
        value: Any,
        verdict: bool,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        if not self.notes:
            return
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
        if node.cid:
            entry["id"] = node.cid
        self.entries.append((node.order, entry))


def _explain_stateless(node: _Node, run: _Run) -> bool:
    if node.kind == "group":
        verdict = _combine(node.cond.operator, [_explain_stateless(c, run) for c in node.children])
        run.note(node, None, verdict)
        return verdict
    assert node.test is not None  # a compiled stateless node
    assert node.read is not None
    verdict = node.test(run.event)
    if run.notes:
        run.note(node, node.read(run.event), verdict)
    return verdict


def _verdict(node: _Node, run: _Run) -> bool:
    """The verdict of a stateful node once every state took the event."""
    if not node.stateful:
        return _explain_stateless(node, run)
    if node.kind in _STATE_KINDS:
        verdict, value, before, after = run.verdicts[node.cid]
        if run.notes:
            run.note(node, value, verdict, _compact(node, before), _compact(node, after))
        return bool(verdict)
    verdict = _combine(node.cond.operator, [_verdict(child, run) for child in node.children])
    run.note(node, None, verdict)
    return verdict


def _apply_ema(node: _Node, run: _Run) -> None:
    before = run.rows.get(node)
    value = feedback_value(run.event)
    if value is None:
        run.verdicts[node.cid] = (_ema_level(node, before), None, before, before)
        return
    assert node.compare is not None  # set by _ema_node
    assert node.alpha is not None
    assert node.keep is not None
    ctx = EMA_CONTEXT
    if before is None:
        ema, count, holding = value, 1, False
    else:
        previous = Decimal(before["ema"])
        ema = ctx.add(ctx.multiply(node.alpha, value), ctx.multiply(node.keep, previous))
        count, holding = before["count"] + 1, bool(before.get("holding", False))
    after: State = {"ema": str(ema), "count": count}
    if node.crossing:
        if count < node.warmup:
            holding = False
        elif not holding:
            holding = node.compare(ema, node.threshold)
        else:
            holding = node.compare(ema, node.rearm)
        after["holding"] = holding
    run.rows.put(node, after)
    run.verdicts[node.cid] = (_ema_level(node, after), {"value": str(value)}, before, after)


def _apply_absence(node: _Node, run: _Run) -> None:
    """A matching event: a new silence starts at it unless it is older than the
    start of the current one (section 5a). An absence never holds at an event."""
    before = run.rows.get(node)
    t = run.event.timestamp
    after = before
    if before is None or t >= before["since"]:
        after = {"since": t, "event": run.version, "fired": False}
        run.rows.put(node, after)
    run.verdicts[node.cid] = (False, {"block_time": t}, before, after)


def _ema_level(node: _Node, s: State | None) -> bool:
    if s is None or s["count"] < node.warmup:
        return False
    if node.crossing:
        return bool(s["holding"])
    assert node.compare is not None
    return bool(node.compare(Decimal(s["ema"]), node.threshold))


def _apply_rate(node: _Node, run: _Run) -> None:
    before = run.rows.get(node)
    event = run.event
    t = event.timestamp
    window: list[list[Any]] = [] if before is None else before["window"]
    feedback = event.event_type == _FEEDBACK
    entry = [
        t,
        run.version,
        event.client_address if feedback else None,
        event.feedback_index if feedback else None,
        event.block_number,
        _window_agent(event),
    ]
    newest = t if not window else max(window[-1][_TS], t)
    horizon = newest - node.window - node.lateness
    start = bisect_right(window, horizon, key=_ts)
    new_window = window[start:]
    if t > horizon:  # else forgotten at once
        # after the entries of the same time or earlier: chain order
        new_window.insert(bisect_right(new_window, t, key=_ts), entry)
    after = {"window": new_window}
    run.rows.put(node, after)
    low = t - node.window
    count = bisect_right(new_window, t, key=_ts) - bisect_right(new_window, low, key=_ts)
    compare = node.compare
    if compare is not None:
        verdict = compare(count, node.limit)
    else:  # in / not_in (not admitted by the schema today)
        members = {int(v) for v in node.cond.values}
        verdict = (count in members) == (node.cond.operator == "in")
    run.verdicts[node.cid] = (verdict, {"count": count, "window": [low, t]}, before, after)


def evaluate(
    trigger: TriggerSpec,
    event: Event,
    *,
    states: Mapping[str, Any],
    explain_all: bool = True,
    may_fire: bool = True,
) -> Evaluation:
    """Evaluate `trigger` on `event` with the state rows ``scope_keys(trigger, event)``
    (a missing or None row is an empty one). With ``explain_all=False`` only a firing
    carries its explain (the matcher and the backtest keep no other): cheaper. With
    ``may_fire=False`` (a recomputation re-evaluating an event that did not fire when
    it arrived) a firing is suppressed: it neither disarms nor starts a cooldown nor
    resets a window."""
    prog = trigger._program
    revoking = bool(prog.rate_nodes) and event.event_type == _REVOKED
    if not revoking:
        for test in prog.gate:
            if not test(event):
                return Evaluation(False, _unchanged(states), (), {})
        if not prog.stateful:
            return _fire_stateless(trigger, prog, event)
    return _evaluate_stateful(
        trigger, prog, event, states, revoking, explain_all=explain_all, may_fire=may_fire
    )


def _unchanged(states: Mapping[str, Any]) -> dict[str, State]:
    return {k: (v if isinstance(v, dict) else dict(v or {})) for k, v in states.items()}


def _fire_stateless(trigger: TriggerSpec, prog: _Program, event: Event) -> Evaluation:
    run = _Run(event, _Rows(prog, event, {}))
    for node in prog.gate_nodes:
        _explain_stateless(node, run)
    run.entries.sort(key=lambda item: item[0])
    explain = {
        "trigger_id": trigger.id,
        "trigger_version": trigger.version,
        "event_id": run.event.id,
        "event_version": run.version,
        "fired": True,
        "set_verdict": True,
        "mode": "every",
        "suppressed": None,
        "conditions": [entry for _, entry in run.entries],
        "state_before": {},
        "state_after": {},
    }
    return Evaluation(True, {}, (), explain)


def _revoke(prog: _Program, rows: _Rows, event: Event) -> dict[str, int]:
    """Withdraw the feedback a FeedbackRevoked names from every rate window."""
    client, index, agent = event.client_address, event.feedback_index, _window_agent(event)

    def keep(entry: list[Any]) -> bool:
        return not (
            entry[_INDEX] is not None
            and entry[_INDEX] == index
            and entry[_CLIENT] == client
            and entry[_AGENT] == agent
        )

    removed: dict[str, int] = {}
    for conds in rows.work.values():
        for cid, n in _withdraw(prog, conds, keep).items():
            removed[cid] = removed.get(cid, 0) + n
    return removed


def _outcome(
    fired: bool, rows: _Rows, new: dict[str, State], explain: dict[str, Any]
) -> Evaluation:
    changed = tuple(k for k, v in new.items() if v != rows.old[k])
    return Evaluation(fired, new, changed, explain)


def _evaluate_stateful(
    trigger: TriggerSpec,
    prog: _Program,
    event: Event,
    states: Mapping[str, Any],
    revoking: bool,
    *,
    explain_all: bool,
    may_fire: bool = True,
) -> Evaluation:
    rows = _Rows(prog, event, states)
    rows.need(scope_keys(trigger, event))
    # the states before (every change builds new dicts): compacted only for an explain
    before = [(node, rows.get(node)) for node in prog.state_nodes]
    revoked = _revoke(prog, rows, event) if revoking else {}
    if revoking and not all(test(event) for test in prog.gate):
        # withdrawn from the windows, but not part of the trigger's stream
        explain: dict[str, Any] = {}
        if revoked and explain_all:
            explain = _revoked_only(trigger, event, revoked, _compact_before(before))
            explain["state_after"] = _compact_rows(prog, rows)
        return _outcome(False, rows, rows.build(prog, None), explain)
    run = _Run(event, rows, notes=explain_all)
    for node in prog.state_nodes:  # every state takes the event, once per identity
        if node.kind == "ema":
            _apply_ema(node, run)
        elif node.kind == "rate":
            _apply_rate(node, run)
        else:
            _apply_absence(node, run)
    verdict = _set_verdict(prog, run)
    fired, suppressed, armed, firing = _decide(
        prog, rows.old[rows.firing], event, verdict, may_fire
    )
    if fired and not run.notes:
        run.notes = True  # the firing's explain: the verdicts again, written down
        _set_verdict(prog, run)
    if fired:
        _reset_windows(prog, run)
    new = rows.build(prog, firing)
    if not run.notes:
        return _outcome(False, rows, new, {})
    run.entries.sort(key=lambda item: item[0])
    explain = {
        "trigger_id": trigger.id,
        "trigger_version": trigger.version,
        "event_id": run.event.id,
        "event_version": run.version,
        "fired": fired,
        "set_verdict": verdict,
        "mode": "crossing" if prog.crossing else "every",
        "suppressed": suppressed,
        "conditions": [entry for _, entry in run.entries],
        "state_before": _compact_before(before),
        "state_after": _compact_rows(prog, rows),
    }
    _explain_firing(prog, explain, armed, firing)
    if revoking:
        explain["revoked"] = revoked
    return _outcome(fired, rows, new, explain)


def _set_verdict(prog: _Program, run: _Run) -> bool:
    """Every top-level condition's verdict (noted when ``run.notes``); all of them."""
    for node in prog.gate_nodes:
        _explain_stateless(node, run)
    verdict = True
    for node in prog.stateful_nodes:
        if not _verdict(node, run):
            verdict = False
    return verdict


def _explain_firing(
    prog: _Program, explain: dict[str, Any], armed: bool, firing: dict[str, Any]
) -> None:
    if prog.crossing:
        explain["armed"] = armed
    if prog.cooldown:
        explain["last_fired_at"] = firing.get("last_fired_at")
    if explain["suppressed"] is not None:
        explain["cooldown_until"] = firing["last_fired_at"] + prog.cooldown


def _revoked_only(
    trigger: TriggerSpec, event: Event, revoked: dict[str, int], before: dict[str, Any]
) -> dict[str, Any]:
    return {
        "trigger_id": trigger.id,
        "trigger_version": trigger.version,
        "event_id": event.id,
        "event_version": version_key(event),
        "fired": False,
        "suppressed": None,
        "revoked": revoked,
        "conditions": [],
        "state_before": before,
    }


def _decide(
    prog: _Program, old: State, event: Event, verdict: bool, may_fire: bool = True
) -> tuple[bool, str | None, bool, dict[str, Any]]:
    """Whether the set verdict fires (crossing mode: armed; then the cooldown), and the
    firing row's new disarmed / last_fired_at: (fired, suppressed, armed, firing)."""
    armed = not prog.crossing or old.get("disarmed") != prog.set_id
    last = old.get("last_fired_at")
    last = last if type(last) is int else None
    suppressed: str | None = None
    fired = verdict and armed
    if fired and prog.cooldown and last is not None and event.timestamp < last + prog.cooldown:
        suppressed, fired = "cooldown", False
    if fired and not may_fire:
        suppressed, fired = "not sent", False
    # crossing mode: a firing disarms, a false set verdict re-arms, and a set that
    # holds while disarmed stays disarmed (a suppressed firing leaves it armed)
    disarmed = prog.set_id if prog.crossing and (fired or (verdict and not armed)) else None
    if fired and prog.cooldown:
        last = event.timestamp
    firing: dict[str, Any] = {"disarmed": disarmed}
    if last is not None:
        firing["last_fired_at"] = last
    return fired, suppressed, armed, firing


def _reset_windows(prog: _Program, run: _Run) -> None:
    """The trigger fired: clear the windows of the rate conditions with reset_on_trigger."""
    resets = [n for n in prog.rate_nodes if n.reset]
    if not resets:
        return
    ids = set()
    for node in resets:
        run.rows.put(node, {"window": []})
        ids.add(node.cid)
    for _, entry in run.entries:
        if entry.get("id") in ids:
            entry["reset"] = True
            entry["state_after"] = {"entries": 0, "newest": None}


def retract(
    trigger: TriggerSpec,
    *,
    state: Mapping[str, Any] | None,
    chain_id: int,
    from_block: int,
    to_block: int | None,
    event_keys: Collection[str] | None = None,
    scope_key: str | None = None,
) -> Withdrawal:
    """Take a reorged block range [from_block, to_block] (None: no upper bound) of a chain
    back out of every rate window of one state row; with ``event_keys`` (the replaced
    versions, see shared.contract.events.version_key), exactly those entries, so that applying
    the retraction again never removes a canonical event of the same range. EMAs,
    arming and cooldowns stay as they are. ``scope_key`` names the row ('' the
    trigger's, else an agent's): a window stored in the previous release's layout is
    converted when its condition belongs in that row."""
    prog = trigger._program
    old = state if isinstance(state, dict) else dict(state or {})
    explain: dict[str, Any] = {
        "trigger_id": trigger.id,
        "chain_id": chain_id,
        "from_block": from_block,
        "to_block": to_block,
        "removed": {},
    }
    conds = old.get("conditions")
    if not prog.rate_nodes or chain_id != trigger.chain_id or not isinstance(conds, dict):
        return Withdrawal(old, False, explain)
    work: dict[str, State] = {}
    for n in prog.rate_nodes:
        own_row = scope_key is None or n.agent == (scope_key != "")
        found = _load_state(n, conds, legacy=own_row)
        if found is not None:
            work[n.cid] = found[0]
    keys = frozenset(event_keys) if event_keys is not None else None

    def keep(entry: list[Any]) -> bool:
        if keys is not None:
            return entry[_ID] not in keys
        block = entry[_BLOCK]
        return not (block >= from_block and (to_block is None or block <= to_block))

    removed = _withdraw(prog, work, keep)
    if not removed:
        return Withdrawal(old, False, explain)
    new = dict(old)
    new["conditions"] = {**conds, **work}
    explain["removed"] = removed
    return Withdrawal(new, new != old, explain)


# --- absence (docs/semantics.md section 5a) ------------------------------------------------


def _with_due(prog: _Program, row: State) -> State:
    """The row with its ``due_at`` (the block time after which a tick fires its silence;
    a stored column of trigger_state follows it) set, or left out when nothing is due."""
    row.pop("due_at", None)
    node = prog.absence
    if node is not None:
        due = _due(prog, node, row)
        if due is not None:
            row["due_at"] = due
    return row


def _due(prog: _Program, node: _Node, row: Mapping[str, Any]) -> int | None:
    conds = row.get("conditions")
    s = conds.get(node.cid) if isinstance(conds, dict) else None
    if s is None or not _valid(node, s) or s["fired"]:
        return None
    due: int = s["since"] + node.silence
    last = row.get("last_fired_at")
    if prog.cooldown and type(last) is int:
        due = max(due, last + prog.cooldown - 1)  # t > due: t >= last + cooldown
    return due


def due_at(trigger: TriggerSpec, row: Mapping[str, Any] | None) -> int | None:
    """When the scope row's silence is due: a tick with a later block time fires it
    (None: no silence waiting, or the trigger has no absence condition)."""
    prog = trigger._program
    if prog.absence is None or not row:
        return None
    return _due(prog, prog.absence, row)


def with_due(trigger: TriggerSpec, row: Mapping[str, Any]) -> State:
    """A copy of the row with the ``due_at`` its state gives under this definition
    (a row written under an earlier one may carry another)."""
    return _with_due(trigger._program, dict(row))


def has_absence(trigger: TriggerSpec) -> bool:
    """The trigger has an absence condition: every tick of its chain concerns it.
    (It stands at the top level: read without compiling the trigger, which the
    index does lazily; a loop, not any() over a generator: a large load asks it of
    every trigger twice.)"""
    for condition in trigger.conditions:
        if condition.condition_type is ConditionType.absence:
            return True
    return False


def tick(
    trigger: TriggerSpec,
    scope: str,
    row: Mapping[str, Any] | None,
    time: int,
    tick_key: str,
    *,
    may_fire: bool = True,
) -> Evaluation:
    """A tick of the trigger's chain at block time ``time`` (an event of the chain or a
    heartbeat, named ``tick_key``) for one scope row: the silence fires when the tick
    is later than its due time (section 5a). ``may_fire=False``: a recomputation
    re-evaluating a tick that did not fire when it arrived (no state changes)."""
    prog = trigger._program
    node = prog.absence
    old = row if isinstance(row, dict) else dict(row or {})
    due = None if node is None else _due(prog, node, old)
    if node is None or due is None or time <= due or not may_fire:
        return Evaluation(False, {scope: old}, (), {})
    before = old["conditions"][node.cid]
    after = {**before, "fired": True}
    new: State = {"conditions": {**old["conditions"], node.cid: after}}
    last = time if prog.cooldown else None
    if last is not None:
        new["last_fired_at"] = last
    new = _with_due(prog, new)
    version: str = before["event"]
    cond = node.cond
    explain = {
        "trigger_id": trigger.id,
        "trigger_version": trigger.version,
        "event_id": version.partition("@")[0],
        "event_version": version,
        "fired": True,
        "set_verdict": True,
        "mode": "absence",
        "suppressed": None,
        "scope": scope,
        "tick": {"time": time, "key": tick_key},
        "silent_since": before["since"],
        "deadline": before["since"] + node.silence,
        "conditions": [
            {
                "path": node.path,
                "type": cond.condition_type.value,
                "field": cond.field,
                "operator": cond.operator,
                "value": cond.value,
                "input": {
                    "silent_since": before["since"],
                    "silence_seconds": time - before["since"],
                },
                "verdict": True,
                "state_before": dict(before),
                "state_after": dict(after),
                "id": node.cid,
            }
        ],
        "state_before": {"conditions": {node.cid: dict(before)}},
        "state_after": {"conditions": {node.cid: dict(after)}},
    }
    if prog.cooldown:
        explain["last_fired_at"] = old.get("last_fired_at")
    return Evaluation(True, {scope: new}, (scope,) if new != old else (), explain)
