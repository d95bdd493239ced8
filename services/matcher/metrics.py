"""Matcher metrics, on the app's own registry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from shared.contract.actions import ActionType
from shared.contract.condition_types import ConditionType
from shared.platform import frozen_heap

CANDIDATE_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000)
SECONDS_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 0.01, 0.05, 0.25, 1)
BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

#: A firing's condition type; ``none`` for a trigger without conditions.
NO_CONDITION = "none"
RecomputationCause = Literal["reorg", "revocation"]
RecomputationResult = Literal["exact", "withdrawn"]
#: An index update: the whole index (full) or one trigger (trigger).
IndexReload = Literal["full", "trigger"]


class FrozenObjects:
    """``erc8004_matcher_gc_frozen_objects_total``: objects taken out of the cyclic
    GC's sight since the start, read at each scrape from the count the freezes keep
    (shared.platform.frozen_heap; CPython's own count walks every frozen object)."""

    NAME = "erc8004_matcher_gc_frozen_objects"
    HELP = (
        "Objects taken out of the cyclic GC's sight since the start (the start-up heap,"
        " the index after its load, the programs compiled since); grows with the"
        " triggers compiled, not with the events."
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP, value=frozen_heap.frozen_total())


@dataclass(frozen=True)
class MatcherMetrics:
    events: Counter
    retractions: Counter
    heartbeats: Counter
    recomputations: Counter
    candidates: Histogram
    fired: Counter
    jobs: Counter
    jobs_dropped: Counter
    evaluation_seconds: Histogram
    batch_seconds: Histogram
    batches_failed: Counter
    index_size: Gauge
    index_reloads: Counter
    consumer_lag: Gauge
    frozen_objects: FrozenObjects

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MatcherMetrics:
        metrics = cls._create(registry)
        # Every known label value exported at 0 from the start, so that increase()
        # sees the first increment.
        for cause in get_args(RecomputationCause):
            for result in get_args(RecomputationResult):
                metrics.recomputations.labels(cause, result)
        for condition_type in (*(c.value for c in ConditionType), NO_CONDITION):
            metrics.fired.labels(condition_type)
        for action_type in ActionType:
            metrics.jobs.labels(action_type.value)
        for kind in get_args(IndexReload):
            metrics.index_reloads.labels(kind)
        return metrics

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> MatcherMetrics:
        return cls(
            events=Counter(
                "erc8004_matcher_events_evaluated_total",
                "Events evaluated against their candidate triggers.",
                registry=registry,
            ),
            retractions=Counter(
                "erc8004_matcher_retractions_total",
                "Reorg retractions applied.",
                registry=registry,
            ),
            heartbeats=Counter(
                "erc8004_matcher_heartbeats_total",
                "Heartbeats (tick messages of POST /v1/checkpoints) consumed: the chains'"
                " clock for absence conditions.",
                registry=registry,
            ),
            recomputations=Counter(
                "erc8004_matcher_recomputations_total",
                "Trigger states recomputed over the effective history, by cause (reorg,"
                " revocation) and result (exact; withdrawn: only rate windows, the"
                " records needed were gone).",
                ["cause", "result"],
                registry=registry,
            ),
            candidates=Histogram(
                "erc8004_matcher_candidates_per_event",
                "Candidate triggers looked up for one event.",
                buckets=CANDIDATE_BUCKETS,
                registry=registry,
            ),
            fired=Counter(
                "erc8004_matcher_triggers_fired_total",
                "Firings, counted once per condition type present in the trigger.",
                ("condition_type",),
                registry=registry,
            ),
            jobs=Counter(
                "erc8004_matcher_jobs_produced_total",
                "Action jobs produced to erc8004.actions.",
                ("action_type",),
                registry=registry,
            ),
            jobs_dropped=Counter(
                "erc8004_matcher_jobs_dropped_total",
                "Jobs not produced: beyond MATCHER_MAX_JOBS_PER_EVENT_PER_USER for one "
                "event version and user.",
                registry=registry,
            ),
            evaluation_seconds=Histogram(
                "erc8004_matcher_evaluation_seconds",
                (
                    "In-memory evaluation time of one event against its candidates "
                    "(not observed for the events the index rules out undecoded)."
                ),
                buckets=SECONDS_BUCKETS,
                registry=registry,
            ),
            batch_seconds=Histogram(
                "erc8004_matcher_batch_duration_seconds",
                "Time to make one consumed batch durable (state, jobs acknowledged).",
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            batches_failed=Counter(
                "erc8004_matcher_batches_failed_total",
                "Consumed batches whose handling raised: not committed, redelivered"
                " after a pause (the matcher's log says why).",
                registry=registry,
            ),
            index_size=Gauge(
                "erc8004_matcher_index_triggers",
                "Enabled triggers in the in-memory index.",
                registry=registry,
            ),
            index_reloads=Counter(
                "erc8004_matcher_index_reloads_total",
                "Index updates: one trigger (notify) or a full resync.",
                ("kind",),
                registry=registry,
            ),
            consumer_lag=Gauge(
                "erc8004_matcher_consumer_lag_messages",
                "Messages of erc8004.events not yet committed by the matcher group.",
                registry=registry,
            ),
            frozen_objects=FrozenObjects(registry),
        )
