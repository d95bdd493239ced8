"""The trigger index: enabled triggers in memory, keyed so that an event is only
evaluated against its candidates, never against every trigger.

Buckets are ``(chain_id, registry) -> event type -> agent id -> triggers``, where
the event type and agent come from the trigger's top-level (ANDed)
``event_type_equals`` / ``agent_id_equals`` conditions with ``=`` or ``in``; a
trigger without such a condition sits under the wildcard. An event's candidates
are the union of at most four buckets, whatever the number of triggers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shared.contract.condition_types import ConditionType, Operator
from shared.contract.events import Event
from shared.engine.evaluate import TriggerSpec, has_absence

ANY = "*"
#: A revocation withdraws a feedback from the rate windows of stateful triggers
#: that count NewFeedback, so those are candidates of a FeedbackRevoked too.
WITHDRAWS = {"FeedbackRevoked": "NewFeedback"}

#: The triggers under one key: the trigger itself while it is the only one (most
#: agents have one trigger, and a dict of one costs more than the trigger's own
#: entry), else by id.
Held = TriggerSpec | dict[str, TriggerSpec]
Bucket = dict[str, dict[str | int, Held]]


def _held(held: Held | None) -> Iterable[TriggerSpec]:
    if held is None:
        return ()
    if isinstance(held, TriggerSpec):
        return (held,)
    return held.values()


#: The operators whose condition names the keys a trigger sits under.
_KEY_OPERATORS = frozenset({Operator.eq.value, Operator.in_.value})
_KEY_TYPES = frozenset({ConditionType.agent_id_equals, ConditionType.event_type_equals})
_ANY_KEY: tuple[str] = (ANY,)


def _keys(trigger: TriggerSpec) -> tuple[Sequence[str], Sequence[str | int]]:
    event_types: Sequence[str] = _ANY_KEY
    agents: Sequence[str | int] = _ANY_KEY
    for condition in trigger.conditions:
        kind = condition.condition_type
        if kind in _KEY_TYPES and condition.operator in _KEY_OPERATORS:
            values = condition.values
            if kind == ConditionType.event_type_equals:
                event_types = values
            elif len(values) == 1:
                agents = (int(values[0]),)
            else:
                agents = [int(v) for v in values]
    # each key once: a value named twice ("in" 3,3) is one place
    if len(event_types) > 1:
        event_types = list(dict.fromkeys(event_types))
    if len(agents) > 1:
        agents = list(dict.fromkeys(agents))
    return event_types, agents


class TriggerIndex:
    def __init__(self, triggers: Iterable[TriggerSpec] = ()) -> None:
        self._by_id: dict[str, TriggerSpec] = {}
        self._buckets: dict[tuple[int, str], Bucket] = {}
        #: chain id -> the triggers with an absence condition (every tick concerns them)
        self._absence: dict[int, dict[str, TriggerSpec]] = {}
        for trigger in triggers:
            self.put(trigger)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, trigger_id: str) -> TriggerSpec | None:
        return self._by_id.get(trigger_id)

    def ids(self) -> set[str]:
        return set(self._by_id)

    def put(self, trigger: TriggerSpec) -> None:
        """Add or replace a trigger."""
        self.remove(trigger.id)
        self._by_id[trigger.id] = trigger
        bucket = self._buckets.setdefault((trigger.chain_id, trigger.registry), {})
        event_types, agents = _keys(trigger)
        for event_type in event_types:
            by_agent = bucket.setdefault(event_type, {})
            for agent in agents:
                held = by_agent.get(agent)
                if held is None:
                    by_agent[agent] = trigger
                elif isinstance(held, TriggerSpec):
                    if held is not trigger:  # (an agent named twice)
                        by_agent[agent] = {held.id: held, trigger.id: trigger}
                else:
                    held[trigger.id] = trigger
        if has_absence(trigger):
            self._absence.setdefault(trigger.chain_id, {})[trigger.id] = trigger

    def remove(self, trigger_id: str) -> None:
        trigger = self._by_id.pop(trigger_id, None)
        if trigger is None:
            return
        absent = self._absence.get(trigger.chain_id)
        if absent is not None:
            absent.pop(trigger_id, None)
            if not absent:
                del self._absence[trigger.chain_id]
        bucket = self._buckets[(trigger.chain_id, trigger.registry)]
        event_types, agents = _keys(trigger)
        for event_type in event_types:
            by_agent = bucket[event_type]
            for agent in agents:
                held = by_agent[agent]
                if isinstance(held, TriggerSpec):
                    del by_agent[agent]
                    continue
                held.pop(trigger_id, None)
                if len(held) == 1:
                    (by_agent[agent],) = held.values()
                elif not held:
                    del by_agent[agent]
            if not by_agent:
                del bucket[event_type]
        if not bucket:
            del self._buckets[(trigger.chain_id, trigger.registry)]

    def candidates(self, event: Event) -> list[TriggerSpec]:
        """The triggers that may match ``event``, in a stable order (by id)."""
        bucket = self._buckets.get((event.chain_id, event.registry.value))
        if bucket is None:
            return []
        found: dict[str, TriggerSpec] = {}
        agent_keys: tuple[str | int, ...] = (
            (ANY,) if event.agent_id is None else (event.agent_id, ANY)
        )
        for event_type in (event.event_type, ANY):
            by_agent = bucket.get(event_type)
            if by_agent:
                for agent in agent_keys:
                    for trigger in _held(by_agent.get(agent)):
                        found[trigger.id] = trigger
        withdrawn = WITHDRAWS.get(event.event_type)
        if withdrawn is not None:
            by_agent = bucket.get(withdrawn) or {}
            for agent in agent_keys:
                for trigger in _held(by_agent.get(agent)):
                    if trigger.is_stateful:
                        found[trigger.id] = trigger
        return [found[k] for k in sorted(found)]

    def may_match(
        self, chain_id: int, registry: str, event_type: str, agent_id: int | None
    ) -> bool:
        """Whether an event with these keys may have candidates: False only when
        :meth:`candidates` would return none (True may still find none), read from
        the keys alone, before the event is decoded."""
        bucket = self._buckets.get((chain_id, registry))
        if bucket is None:
            return False
        types = (event_type, ANY, WITHDRAWS.get(event_type))
        for key in types:
            by_agent = bucket.get(key) if key is not None else None
            if by_agent and (ANY in by_agent or (agent_id is not None and agent_id in by_agent)):
                return True
        return False

    def stateful_of_chain(self, chain_id: int) -> list[TriggerSpec]:
        """Every stateful trigger of a chain (for reorg retractions)."""
        return sorted(
            (t for t in self._by_id.values() if t.chain_id == chain_id and t.is_stateful),
            key=lambda t: t.id,
        )

    def ticks(self, chain_id: int) -> bool:
        """Some trigger of the chain has an absence condition (its events and
        heartbeats are ticks to evaluate)."""
        return chain_id in self._absence

    def absence_of_chain(self, chain_id: int) -> list[TriggerSpec]:
        """The triggers of a chain with an absence condition, by id."""
        found = self._absence.get(chain_id)
        return [] if not found else sorted(found.values(), key=lambda t: t.id)
