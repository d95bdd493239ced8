"""Stored triggers into the evaluator's form, a replay of one trigger over a stream
of events (what the matcher does per event, without Kafka, the database or any
action), and the recomputation of a trigger's state over its effective history
(docs/semantics.md section 6), which the matcher and the replay share. The matcher
compiles its index with :func:`compile_trigger`; the API's backtest runs
:class:`Replay` over stored events."""

from __future__ import annotations

import heapq
import re
import sys
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
from pydantic import ValidationError

from shared.contract.condition_types import LIST_OPERATORS, MAX_LIST_ITEMS
from shared.contract.conditions import Condition
from shared.contract.event_fields import INT63_MAX
from shared.contract.events import Event, version_key
from shared.engine.evaluate import (
    ActionSpec,
    Evaluation,
    State,
    TriggerSpec,
    due_at,
    evaluate,
    forget_removed,
    has_absence,
    scope_keys,
    tick,
)
from shared.engine.trigger_index import TriggerIndex

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger(__name__)


#: Validated conditions by their definition, while some trigger holds them: triggers
#: share most of their conditions (the same event type, threshold or window), and a
#: condition model is frozen, so one instance serves them all (the matcher holds
#: every enabled trigger; validating each condition once also makes loading faster).
_CONDITIONS: weakref.WeakValueDictionary[str, Condition] = weakref.WeakValueDictionary()
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


def _condition(raw: Any) -> Condition:
    """``Condition.model_validate(raw)``, shared with every trigger holding the same
    definition (the same JSON, keys in the same order). A definition that cannot be
    written as JSON is validated alone, and an agent's condition is not shared: one
    agent's is rarely another trigger's, and its entry would cost more than it saves
    (:func:`_agent_condition`)."""
    # (type() first: isinstance against the Mapping ABC is slow, and rows hold dicts)
    if (type(raw) is dict or isinstance(raw, Mapping)) and raw.get(
        "condition_type"
    ) == "agent_id_equals":
        return _agent_condition(raw)
    try:
        key = orjson.dumps(raw).decode()  # exact size: orjson's bytes keep their buffer
    except TypeError:
        return Condition.model_validate(raw)
    found = _CONDITIONS.get(key)
    if found is None:
        found = _CONDITIONS[key] = _fields_shared(Condition.model_validate(raw))
    return found


#: agent_id_equals conditions validated with the id "0", by their shape: every key but
#: the value (which keys are given, the field, the operator, a null config).
_AGENT_SHAPES: dict[tuple[frozenset[str], str, str, bool], Condition] = {}
#: An agent id as validation leaves it (no sign, space or leading zero; 19 digits at most).
_CANONICAL_ID: Final = re.compile(r"0|[1-9][0-9]{0,18}")


def _agent_condition(raw: Mapping[str, Any]) -> Condition:
    """``Condition.model_validate(raw)`` of an agent_id_equals condition. Validation
    checks each agent id on its own (its digits and range) and leaves one in
    canonical form as it is, so a condition whose ids are all canonical (and, for a
    list, without spaces, at most MAX_LIST_ITEMS) validates to the condition of its
    shape with the id "0", but for its value and values: it is made from that one
    without validating again. That is most of a large load's conditions (a million
    triggers: 19 µs each validated, 2 µs made). Other forms of an id and anything
    unexpected are validated as they are. tests/unit/test_condition_load.py holds the
    two ways to the same result."""
    value, operator = raw.get("value"), raw.get("operator")
    field, config = raw.get("field", ""), raw.get("config")
    if not (
        isinstance(raw.get("condition_type"), str)  # (a str, not just equal to one)
        and type(value) is str
        and type(operator) is str
        and type(field) is str
        and (config is None or (type(config) is dict and not config))
    ):
        return _fields_shared(Condition.model_validate(raw))
    items = value.split(",") if operator in LIST_OPERATORS else [value]
    if len(items) > MAX_LIST_ITEMS or not all(
        _CANONICAL_ID.fullmatch(item) and int(item) <= INT63_MAX for item in items
    ):
        return _fields_shared(Condition.model_validate(raw))
    key = (frozenset(raw), field, operator, config is None)
    shape = _AGENT_SHAPES.get(key)
    if shape is None:
        try:
            shape = _fields_shared(Condition.model_validate({**raw, "value": "0"}))
        except ValidationError:
            return Condition.model_validate(raw)  # raises, about this condition
        _AGENT_SHAPES[key] = shape
    # What pydantic's own copy of a model does, with the id in place of "0" (the
    # empty config is the shape's: a frozen condition's is only read, as a shared
    # condition's is).
    condition = Condition.__new__(Condition)
    object.__setattr__(condition, "__dict__", {**shape.__dict__, "value": value})
    object.__setattr__(condition, "__pydantic_fields_set__", shape.__pydantic_fields_set__)
    object.__setattr__(condition, "__pydantic_extra__", None)
    private = {**shape._private, "_values": tuple(items)}
    object.__setattr__(condition, "__pydantic_private__", private)
    return condition


def _fields_shared(condition: Condition) -> Condition:
    """``condition`` holding the shared copy of its set of fields set: which fields the
    input set is one of a few sets, and pydantic gives every model a set of its own
    (728 bytes, the largest part of a condition). Shared: a frozen model's is only
    read (a copy of the model copies it)."""
    fields_set = frozenset(condition.__pydantic_fields_set__)
    shared = _FIELDS_SETS.setdefault(fields_set, set(fields_set))
    object.__setattr__(condition, "__pydantic_fields_set__", shared)
    return condition


def compile_trigger(row: asyncpg.Record | Mapping[str, Any]) -> TriggerSpec | None:
    """A stored trigger as the evaluator takes it; None (logged) when a row written
    behind the API's back does not validate: one bad trigger never stops the rest."""
    try:
        conditions = tuple(_condition(c) for c in row["conditions"])
    except ValidationError as exc:
        log.error("trigger skipped: invalid condition", trigger_id=row["id"], error=str(exc))
        return None
    # a user's triggers, a registry's, share one copy of its name (sys.intern)
    return TriggerSpec(
        id=row["id"],
        user_id=sys.intern(row["user_id"]),
        name=row["name"],
        chain_id=row["chain_id"],
        registry=sys.intern(row["registry"]),
        enabled_at=row["enabled_at"],
        cooldown_seconds=row["cooldown_seconds"],
        conditions=conditions,
        version=_version(row),
        actions=tuple(
            ActionSpec.of(
                a["id"],
                sys.intern(a["action_type"]),
                a["priority"] if a["priority"] is not None else 1,
                a["config"] or {},
            )
            for a in row["actions"]
        ),
    )


def spec_at(
    trigger: TriggerSpec, version: int, definition: Mapping[str, Any] | None
) -> TriggerSpec | None:
    """The trigger as it was at ``version``, from its stored definition (the stream,
    cooldown and conditions; services/matcher/queries.definition_of). None when not
    stored or no longer valid."""
    if definition is None:
        return None
    try:
        conditions = tuple(Condition.model_validate(c) for c in definition["conditions"])
        return replace(
            trigger,
            chain_id=int(definition["chain_id"]),
            registry=str(definition["registry"]),
            cooldown_seconds=definition["cooldown_seconds"],
            conditions=conditions,
            version=version,
        )
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        log.error("stored trigger definition skipped", trigger_id=trigger.id, error=str(exc))
        return None


def _version(row: asyncpg.Record | Mapping[str, Any]) -> int:
    try:
        value = row["version"]
    except KeyError:
        return 0
    return value if isinstance(value, int) else 0


# --- the effective history (docs/semantics.md section 6) ----------------------------------

REVOKED: Final = "revoked"
RETRACTED: Final = "retracted"
#: Not an event: the trigger was edited to ``Evaluated.trigger`` at this point.
EDIT: Final = "edit"


def revokes(revocation: Event, feedback: Event) -> bool:
    """Whether a FeedbackRevoked names this NewFeedback: same stream and agent (its
    Identity registry too, when named), same registry contract (when named), same
    client address (in lower case), same feedback index (present on both)."""
    return (
        revocation.event_type == "FeedbackRevoked"
        and feedback.event_type == "NewFeedback"
        and revocation.feedback_index is not None
        and revocation.feedback_index == feedback.feedback_index
        and revocation.agent_id == feedback.agent_id
        and revocation.agent_registry == feedback.agent_registry
        and revocation.registry_address == feedback.registry_address
        and revocation.chain_id == feedback.chain_id
        and revocation.registry == feedback.registry
        and (revocation.client_address or "").lower() == (feedback.client_address or "").lower()
    )


TICK: Final = "tick:"


def tick_record(scope: str, tick_key: str) -> str:
    """The key of a firing tick's evaluation record: one per (tick, scope row)."""
    return f"{TICK}{scope}:{tick_key}"


def tick_scope(record_key: str) -> str | None:
    """The scope row of a tick record's key; None for an event's record."""
    if not record_key.startswith(TICK):
        return None
    return record_key[len(TICK) :].partition(":")[0]


def scope_order(scope: str) -> tuple[bool, str, int]:
    """Scope rows in the order ticks visit them: the trigger's, then agents by their
    Identity registry (none first) and id (rows are ``7`` or ``0x…/7``)."""
    registry, _, agent = scope.rpartition("/")
    return (scope != "", registry, int(agent) if agent.isdigit() else -1)


@dataclass(slots=True, eq=False)
class Evaluated:
    """One event a trigger evaluated, as kept for recomputing its state."""

    key: str  #: the event version, shared.contract.events.version_key
    event: Event | None  #: None: no longer stored
    trigger: TriggerSpec | None  #: the definition it was evaluated under (None: unknown)
    #: Whether the trigger fired on it when it arrived (its actions were sent).
    fired: bool = False
    #: The state rows it read, as they were before it (None: not kept).
    before: dict[str, State] | None = None
    #: Out of the effective history: RETRACTED (a reorg replaced it) or REVOKED.
    excluded: str | None = None
    #: A tick that fired (section 5a): its block time, and the scope row it fired.
    #: Ticks stay in the history; only firing ticks are kept (one that did not fire
    #: cannot fire again in a recomputation, so it changes nothing).
    tick: int | None = None
    scope: str = ""
    effective_before: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.effective_before = self.excluded is None


def exclude(
    records: Sequence[Evaluated],
    *,
    replaced: Collection[str] = (),
    revocation: Event | None = None,
) -> str | None:
    """Mark which records are out of the effective history now: those a reorg
    ``replaced`` (and those retracted before), and every NewFeedback that a later
    FeedbackRevoked among the records that stay (or ``revocation``, an event after all
    of them) revokes. ``effective_before`` keeps what held before this change.
    Returns why it cannot be done (a record whose event is gone), else None."""
    for rec in records:
        rec.effective_before = rec.excluded is None
        if rec.key in replaced and rec.excluded != EDIT:
            rec.excluded = RETRACTED
    later: list[Event] = [revocation] if revocation is not None else []
    for rec in reversed(records):
        if rec.excluded in (RETRACTED, EDIT) or rec.tick is not None:
            continue
        event = rec.event
        if event is None:
            return f"the event {rec.key} is no longer stored"
        if event.event_type == "NewFeedback":
            revoked = any(revokes(r, event) for r in later)
            rec.excluded = REVOKED if revoked else None
        elif event.event_type == "FeedbackRevoked":
            later.append(event)
    return None


def refold(  # noqa: PLR0912 (one branch per kind of record, in order)
    trigger: TriggerSpec,
    records: Sequence[Evaluated],
    states: dict[str, State],
    *,
    since: TriggerSpec | None = None,
    keep_before: bool = False,
    visit: Callable[[int, dict[str, State], TriggerSpec | None], None] | None = None,
) -> dict[str, State] | str:
    """Evaluate the effective records again, in order, from ``states`` (the rows as
    they were before the first record, under the definition ``since``; None: the first
    record's), each under its own definition, with the edits between them applied as
    the matcher applies them (shared.engine.evaluate.forget_removed), and at the end the edits
    up to ``trigger`` (the definition now). Returns every row's state after, or why it
    cannot be done. An event counts as a firing only when it fired when it arrived
    and fires again. ``keep_before`` stores each record's rows before it
    (``Evaluated.before``); ``visit(i, states, since)`` sees the rows before record i
    and the definition they are under. Firings found on the way are not returned:
    past decisions stand."""
    prev = since
    for i, rec in enumerate(records):
        spec, event = rec.trigger, rec.event
        # an edit took effect here whether or not this event is still in the history
        if spec is not None and spec is not prev:
            if prev is not None:
                states = {k: forget_removed(spec, v) for k, v in states.items()}
            prev = spec
        if visit is not None:
            visit(i, states, prev)
        if rec.tick is not None:
            if spec is None:
                return f"the definition {rec.key} was evaluated under is not known"
            _refold_tick(spec, rec, states, keep_before=keep_before)
            continue
        if rec.excluded is not None:
            if keep_before and rec.excluded != EDIT and spec is not None and event is not None:
                # kept fresh, for when a later change puts the event back
                rec.before = {k: states.get(k) or {} for k in scope_keys(spec, event)}
            continue
        if spec is None:
            return f"the definition {rec.key} was evaluated under is not known"
        if event is None:
            return f"the event {rec.key} is no longer stored"
        keys = scope_keys(spec, event)
        if keep_before:
            rec.before = {k: states.get(k) or {} for k in keys}
        outcome = evaluate(
            spec,
            event,
            states={k: states.get(k) for k in keys},
            explain_all=False,
            may_fire=rec.fired,  # a firing never sent did not happen (section 6)
        )
        for key in outcome.changed:
            states[key] = outcome.states[key]
        prev = spec
    if prev is not None and prev is not trigger:
        states = {k: forget_removed(trigger, v) for k, v in states.items()}
    return states


def _refold_tick(
    spec: TriggerSpec, rec: Evaluated, states: dict[str, State], *, keep_before: bool
) -> None:
    """A firing tick again (it stays in the history; section 5a)."""
    assert rec.tick is not None
    if keep_before:
        rec.before = {rec.scope: states.get(rec.scope) or {}}
    outcome = tick(spec, rec.scope, states.get(rec.scope), rec.tick, rec.key, may_fire=rec.fired)
    for key in outcome.changed:
        states[key] = outcome.states[key]


def restore(records: Sequence[Evaluated], current: Mapping[str, State]) -> dict[str, State] | str:
    """The state rows as they were before the first record: for each row, the state
    kept by the first record that read it (a recomputation keeps the states before
    every record, also those out of the effective history); the other rows are as
    they are now (nothing in the records changed them). Returns why it cannot be
    done (a record of the effective history that kept no states)."""
    states = dict(current)
    seen: set[str] = set()
    for rec in records:
        if rec.excluded == EDIT:
            continue
        if rec.before is None:
            if rec.effective_before:
                return f"no state was kept for {rec.key}"
            continue
        for key, state in rec.before.items():
            if key not in seen:
                seen.add(key)
                states[key] = state or {}
    return states


@dataclass(frozen=True, slots=True)
class Step:
    """One event the trigger was evaluated on (a candidate of the matcher's index)."""

    event: Event
    outcome: Evaluation


class Replay:
    """One trigger evaluated event after event, as the live matcher does: only on the
    events its index would offer the trigger, with its state rows carried from one
    event to the next, and its state recomputed over the effective history when a
    revocation or a retraction changes it. ``enabled_at`` is ignored: a replay is
    history on purpose."""

    #: A copy of the state rows is kept every this many evaluations: a recomputation
    #: starts from the last copy before the first event it concerns.
    SNAPSHOT_EVERY = 256

    def __init__(self, trigger: TriggerSpec) -> None:
        self.trigger = trigger
        self.states: dict[str, State] = {}
        self._index = TriggerIndex([trigger])
        self._records: list[Evaluated] = []
        #: Absence triggers: the events evaluated, by version (a firing names the
        #: silence's last matching event), and a heap of (due time, scope row),
        #: checked against the row when popped (an entry whose row moved on is stale).
        self._events: dict[str, Event] = {}
        self._due: list[tuple[int, str]] = []
        #: The rows before record i * SNAPSHOT_EVERY, and the definition they are under.
        self._snapshots: list[tuple[dict[str, State], TriggerSpec]] = []

    def step(self, event: Event) -> Step | None:
        """Evaluate one event; None when the trigger is not a candidate for it."""
        trigger = self.trigger
        if not self._index.candidates(event):
            return None
        keys = scope_keys(trigger, event)
        if keys and event.event_type == "FeedbackRevoked":
            named = [
                i
                for i, rec in enumerate(self._records)
                if rec.excluded is None and rec.event is not None and revokes(event, rec.event)
            ]
            if named:
                self._recompute(named[0], revocation=event)
        outcome = evaluate(
            trigger, event, states={k: self.states.get(k) for k in keys}, explain_all=False
        )
        if keys:
            self._record(Evaluated(version_key(event), event, trigger, outcome.fired))
            if has_absence(trigger):
                self._events[version_key(event)] = event
        for key in outcome.changed:
            self.states[key] = outcome.states[key]
            self._push_due(key)
        return Step(event, outcome)

    def feed(self, event: Event) -> list[Step]:
        """One event of any chain and registry as the matcher takes it: first a tick
        of its chain (section 5a), then ``step``. The steps that evaluated or fired."""
        steps = self.tick(event.chain_id, event.timestamp, version_key(event))
        step = self.step(event)
        if step is not None:
            steps.append(step)
        return steps

    def tick(self, chain_id: int, time: int, key: str) -> list[Step]:
        """A tick of a chain at block time ``time`` (an event or a heartbeat named
        ``key``): the silences due before it fire, the trigger's scope first, then
        agents by id. Each firing's step carries the silence's last matching event."""
        trigger = self.trigger
        if chain_id != trigger.chain_id or not has_absence(trigger):
            return []
        ready: set[str] = set()
        while self._due and self._due[0][0] < time:
            due, scope = heapq.heappop(self._due)
            if due_at(trigger, self.states.get(scope)) == due:
                ready.add(scope)
        steps: list[Step] = []
        for scope in sorted(ready, key=scope_order):
            outcome = tick(trigger, scope, self.states[scope], time, key)
            self._record(
                Evaluated(tick_record(scope, key), None, trigger, True, tick=time, scope=scope)
            )
            self.states.update(outcome.states)
            steps.append(Step(self._events[outcome.explain["event_version"]], outcome))
        return steps

    def _push_due(self, scope: str) -> None:
        due = due_at(self.trigger, self.states.get(scope))
        if due is not None:
            heapq.heappush(self._due, (due, scope))

    def _rebuild_due(self) -> None:
        self._due = []
        for scope in self.states:
            self._push_due(scope)

    def _record(self, rec: Evaluated) -> None:
        if len(self._records) % self.SNAPSHOT_EVERY == 0:
            self._snapshots.append((dict(self.states), self.trigger))
        self._records.append(rec)

    def run(self, events: Iterable[Event]) -> Iterator[Step]:
        """``step`` over the events, yielding the evaluations."""
        for event in events:
            step = self.step(event)
            if step is not None:
                yield step

    def retract(self, chain_id: int, event_keys: Collection[str]) -> None:
        """A reorg replaced these event versions: the state is recomputed without them
        (and a revocation among them no longer revokes)."""
        if chain_id != self.trigger.chain_id:
            return
        keys = frozenset(event_keys)
        first: int | None = None
        for i, rec in enumerate(self._records):
            if rec.key not in keys or rec.excluded == RETRACTED:
                continue
            first = i if first is None else first
            if rec.event is not None and rec.event.event_type == "FeedbackRevoked":
                for j in range(i):
                    other = self._records[j].event
                    if other is not None and revokes(rec.event, other):
                        first = min(first, j)
                        break
        if first is not None:
            self._recompute(first, replaced=keys)

    def _recompute(
        self, first: int, *, replaced: Collection[str] = (), revocation: Event | None = None
    ) -> None:
        start = first // self.SNAPSHOT_EVERY
        records = self._records[start * self.SNAPSHOT_EVERY :]
        reason = exclude(records, replaced=replaced, revocation=revocation)
        if reason is None:
            del self._snapshots[start + 1 :]

            def keep(i: int, states: dict[str, State], since: TriggerSpec | None) -> None:
                if i and i % self.SNAPSHOT_EVERY == 0:
                    assert since is not None
                    self._snapshots.append((dict(states), since))

            rows, since = self._snapshots[start]
            result = refold(self.trigger, records, dict(rows), since=since, visit=keep)
            if not isinstance(result, str):
                self.states = result
                self._rebuild_due()
                return
            reason = result
        raise AssertionError(f"a replay keeps every event: {reason}")  # pragma: no cover

    def edit(self, trigger: TriggerSpec) -> None:
        """The trigger was changed: states carry over per condition identity, what the
        edit removed is forgotten (as the matcher does when its index reloads)."""
        self.trigger = trigger
        self._index = TriggerIndex([trigger])
        self.states = {k: forget_removed(trigger, v) for k, v in self.states.items()}
        self._rebuild_due()
        if self._records:  # a recomputation across this point applies it again
            self._record(Evaluated(f"edit#{len(self._records)}", None, trigger, excluded=EDIT))
