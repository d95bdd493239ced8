"""The matcher's programs leave the cyclic GC's sight as they are built: between
batches, once enough programs were built, one collection frees the cyclic garbage
and the rest is frozen (services/matcher/keeper.py, ProgramSettler)."""

from __future__ import annotations

import gc
import weakref
from datetime import UTC, datetime

import pytest

from services.matcher.keeper import ProgramSettler
from shared.engine.evaluate import TriggerSpec, programs_built
from shared.engine.replay import compile_trigger
from shared.platform import frozen_heap

pytestmark = pytest.mark.unit


def _triggers(n: int) -> list[TriggerSpec]:
    out = []
    for i in range(n):
        spec = compile_trigger(
            {
                "id": f"t{i}",
                "user_id": "u",
                "name": "t",
                "chain_id": 1,
                "registry": "reputation",
                "enabled_at": datetime(2026, 12, 7, tzinfo=UTC),
                "cooldown_seconds": None,
                "conditions": [
                    {"condition_type": "agent_id_equals", "operator": "=", "value": str(i)},
                    {"condition_type": "score_threshold", "field": "score", "operator": "<",
                     "value": "-95"},
                ],
                "actions": [],
            }
        )  # fmt: skip
        assert spec is not None
        out.append(spec)
    return out


def _tracked(obj: object) -> bool:
    """Whether the cyclic GC still walks ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_programs_built_counts_each_trigger_once() -> None:
    triggers = _triggers(3)
    before = programs_built()
    for t in triggers:
        assert not t.is_stateful  # compiles it
        assert not t.is_stateful  # already compiled
    assert programs_built() == before + 3


def test_a_settle_comes_with_enough_new_programs_and_freezes_them(unfrozen: None) -> None:
    settler = ProgramSettler(every=10)
    triggers = _triggers(25)
    for t in triggers[:9]:
        _ = t.agent_scoped
    assert not settler.settle()  # nine built: not yet
    assert gc.get_freeze_count() == 0
    for t in triggers[9:20]:
        _ = t.agent_scoped
    program = triggers[12]._compiled
    assert program is not None
    assert _tracked(program)
    # cyclic garbage made before the settle is freed, not pinned
    garbage = Cycle()
    gone = weakref.ref(garbage)
    del garbage
    assert settler.settle()
    assert gone() is None
    assert gc.get_freeze_count() > 0
    # counted as it froze, by what it took from the generations (no walk of them all;
    # a temporary frozen with them and freed since stays counted)
    assert 0 <= frozen_heap.frozen_total() - gc.get_freeze_count() <= 10
    assert not _tracked(program)  # the GC no longer walks it
    assert not settler.settle()  # nothing new since
    # a frozen program is still freed by its reference count (its agent's node: its own)
    dropped = weakref.ref(program.gate_nodes[0])
    del program, triggers
    assert dropped() is None
    assert settler.settles == 1


def test_the_count_starts_where_the_process_is() -> None:
    _ = [t.agent_scoped for t in _triggers(5)]
    settler = ProgramSettler(every=5)
    assert not settler.settle()  # the five above were built before it
