"""The services count what they freeze out of the cyclic GC's sight as they freeze
it (shared/platform/frozen_heap.py): CPython's own count walks every frozen object,
which at a million triggers stalled the matcher for a third of a second per
scrape of its metrics."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.matcher.metrics import MatcherMetrics
from shared.platform import frozen_heap

pytestmark = pytest.mark.unit


def _no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def walk() -> int:
        raise AssertionError("the frozen objects were walked to count them")

    monkeypatch.setattr(gc, "get_freeze_count", walk)


def test_each_freeze_adds_what_gc_froze_and_reading_walks_nothing(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = [[i] for i in range(20_000)]
    assert frozen_heap.frozen_total() == 0
    first = frozen_heap.freeze()
    assert first >= 20_000
    assert 0 <= first - gc.get_freeze_count() <= 10
    # young objects made since, cyclic garbage among them, then a collection between
    # batches and a freeze of what survived (ProgramSettler)
    kept += [[i] for i in range(5_000)]
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    gc.collect()
    second = frozen_heap.freeze_young()
    assert 5_000 <= second < 5_100
    assert frozen_heap.frozen_total() == first + second
    # gc's own count: the same, less what another thread (pytest's own) freed since
    assert 0 <= first + second - gc.get_freeze_count() <= 10
    with monkeypatch.context() as patched:
        _no_walk(patched)
        assert frozen_heap.frozen_total() == first + second
        # a freeze between batches does not walk what was frozen before either
        kept += [[i] for i in range(1_000)]
        gc.collect()
        third = frozen_heap.freeze_young()
    assert 1_000 <= third < 1_100
    total = first + second + third
    assert frozen_heap.frozen_total() == total
    # what gc still holds frozen: the three freezes, less what was freed since (the
    # patch's own function, frozen by the third); the total counts what was frozen
    assert total - 10 < gc.get_freeze_count() <= total
    del kept[:100]
    assert gc.get_freeze_count() <= total - 100
    assert frozen_heap.frozen_total() == total
    frozen_heap.unfreeze()
    assert frozen_heap.frozen_total() == gc.get_freeze_count() == 0


def test_a_scrape_of_the_matcher_reads_the_kept_total(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = CollectorRegistry()
    MatcherMetrics.create(registry)
    assert registry.get_sample_value("erc8004_matcher_gc_frozen_objects_total") == 0
    froze = frozen_heap.freeze()
    assert froze > 0
    _no_walk(monkeypatch)
    lines = generate_latest(registry).decode().splitlines()
    assert "# TYPE erc8004_matcher_gc_frozen_objects_total counter" in lines
    assert registry.get_sample_value("erc8004_matcher_gc_frozen_objects_total") == froze
