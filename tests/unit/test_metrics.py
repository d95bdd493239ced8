"""The services' metric definitions, each built on a fresh registry as create_app
builds it: names follow one scheme, and every counter whose label values are a
known set exports each of its series at 0 from the start (increase() sees the
first increment only of a series that existed before it)."""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics import MetricWrapperBase

from services.api.metrics import ApiMetrics
from services.dispatcher.metrics import (
    ActionStatus,
    DeferReason,
    DispatcherMetrics,
    TelegramLinkOutcome,
)
from services.indexer.ingest_client import RetryReason
from services.indexer.metrics import RPC_ERROR_KINDS, IndexerMetrics, SkipReason
from services.ingest.maintenance import (
    OUTCOMES,
    MaintenanceMetrics,
    RetentionPolicy,
    default_tasks,
)
from services.ingest.metrics import IngestMetrics
from services.matcher.metrics import (
    NO_CONDITION,
    IndexReload,
    MatcherMetrics,
    RecomputationCause,
    RecomputationResult,
)
from shared.contract.actions import ActionType
from shared.contract.condition_types import ConditionType
from shared.contract.events import Registry

pytestmark = pytest.mark.unit

SERVICES = ("ingest", "matcher", "dispatcher", "api", "indexer")
ROOT = Path(__file__).resolve().parents[2]
#: The indexer's chains in these tests (its settings name them).
CHAINS = ("1", "10")
#: The unit a lag metric is counted in ends its name.
LAG_UNITS = ("_messages", "_seconds", "_blocks")


def build(service: str, registry: CollectorRegistry) -> None:
    """The service's metrics, as its create_app registers them."""
    if service == "ingest":
        IngestMetrics.create(registry)
        MaintenanceMetrics.create(
            registry, service="ingest", tasks=default_tasks(RetentionPolicy())
        )
    elif service == "matcher":
        MatcherMetrics.create(registry)
    elif service == "dispatcher":
        DispatcherMetrics.create(registry)
    elif service == "api":
        ApiMetrics.create(registry)
    else:
        IndexerMetrics.create(registry, tuple(int(c) for c in CHAINS))


def collectors(service: str) -> dict[str, MetricWrapperBase]:
    """The service's metric objects by name (a counter's without _total)."""
    registry = CollectorRegistry()
    build(service, registry)
    found = {
        getattr(c, "_name"): c  # noqa: B009 (prometheus_client keeps the name private)
        for c in set(registry._names_to_collectors.values())
        if isinstance(c, MetricWrapperBase)
    }
    assert found, service
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_lag_metrics_name_their_unit(service: str) -> None:
    """Every lag metric ends in the unit it counts: messages of a topic, seconds,
    blocks. Alerts, dashboards and HPAs name them, so one scheme for all."""
    lags = [name for name in collectors(service) if re.search(r"(^|_)lag(_|$)", name)]
    for name in lags:
        assert name.startswith(f"erc8004_{service}_"), name
        assert name.endswith(LAG_UNITS), f"{name}: end it in one of {LAG_UNITS}"


def test_both_consumers_name_their_group_lag_alike() -> None:
    """The matcher's and the dispatcher's consumer lag: the same gauge by name."""
    for service in ("matcher", "dispatcher"):
        name = f"erc8004_{service}_consumer_lag_messages"
        gauge = collectors(service)[name]
        assert getattr(gauge, "_type") == "gauge", name  # noqa: B009
        assert not getattr(gauge, "_labelnames"), name  # noqa: B009
    assert "erc8004_dispatcher_consumer_lag" not in collectors("dispatcher")


# --- counters of known label values start at 0 ---------------------------------

ACTION_TYPES = [a.value for a in ActionType]
TASKS = [task.name for task in default_tasks(RetentionPolicy())]


def product(*values: Iterable[str]) -> set[tuple[str, ...]]:
    return set(itertools.product(*values))


#: Every labelled counter whose label values are a known set, with that set, as the
#: code defines it (its enums and Literal types; mypy holds the code to them).
KNOWN: dict[str, set[tuple[str, ...]]] = {
    "erc8004_dispatcher_actions": product(ACTION_TYPES, get_args(ActionStatus)),
    "erc8004_dispatcher_retries": product(ACTION_TYPES),
    "erc8004_dispatcher_dlq": product(ACTION_TYPES),
    "erc8004_dispatcher_deferred": product(get_args(DeferReason)),
    "erc8004_dispatcher_telegram_links": product(get_args(TelegramLinkOutcome)),
    "erc8004_matcher_recomputations": product(
        get_args(RecomputationCause), get_args(RecomputationResult)
    ),
    "erc8004_matcher_triggers_fired": product([*(c.value for c in ConditionType), NO_CONDITION]),
    "erc8004_matcher_jobs_produced": product(ACTION_TYPES),
    "erc8004_matcher_index_reloads": product(get_args(IndexReload)),
    "erc8004_api_jobs_redriven": product(ACTION_TYPES),
    "erc8004_ingest_maintenance_runs": product(TASKS, OUTCOMES),
    "erc8004_indexer_rpc_errors": product(CHAINS, RPC_ERROR_KINDS),
    "erc8004_indexer_events": product(CHAINS, [r.value for r in Registry]),
    "erc8004_indexer_events_skipped": product(CHAINS, get_args(SkipReason)),
    "erc8004_indexer_blocks": product(CHAINS),
    "erc8004_indexer_heartbeats": product(CHAINS),
    "erc8004_indexer_reorgs": product(CHAINS),
    "erc8004_indexer_ingest_retries": product(get_args(RetryReason)),
}
#: Labelled counters whose values are not known before they happen, and why.
OPEN = {
    # chain ids are those of the indexers that post (ingest has no list of them)
    "erc8004_ingest_events_received": "chain_id",
    "erc8004_ingest_events_accepted": "chain_id",
    "erc8004_ingest_events_duplicate": "chain_id",
    "erc8004_ingest_events_conflict": "chain_id",
    "erc8004_ingest_events_rejected": "chain_id",
    "erc8004_ingest_reorgs": "chain_id",
    "erc8004_ingest_heartbeats": "chain_id",
    # the class name of whatever exception broke the batch
    "erc8004_ingest_relay_errors": "reason",
    # route templates times methods times statuses as they are served
    "erc8004_api_requests": "status",
}


def labelled_counters(service: str) -> dict[str, Counter]:
    return {
        name: c
        for name, c in collectors(service).items()
        if isinstance(c, Counter) and getattr(c, "_labelnames")  # noqa: B009
    }


def series(counter: Counter) -> dict[tuple[str, ...], float]:
    """The counter's _total samples by their label values, as a scrape shows them."""
    names = getattr(counter, "_labelnames")  # noqa: B009
    (family,) = counter.collect()
    return {
        tuple(s.labels[n] for n in names): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }


@pytest.mark.parametrize("service", SERVICES)
def test_counters_of_known_labels_start_at_zero(service: str) -> None:
    counters = labelled_counters(service)
    assert counters, service
    unclassified = set(counters) - set(KNOWN) - set(OPEN)
    assert not unclassified, f"add {sorted(unclassified)} to KNOWN (and create()) or OPEN"
    for name, counter in counters.items():
        present = series(counter)
        if name in OPEN:
            assert OPEN[name] in getattr(counter, "_labelnames"), name  # noqa: B009
            continue
        assert set(present) == KNOWN[name], (name, set(present) ^ KNOWN[name])
        assert set(present.values()) == {0.0}, (name, present)


def test_no_known_set_is_empty_or_stale() -> None:
    """Every entry above names a counter that exists, and every known set has
    values (a Literal renamed away would leave an empty product)."""
    every = {name for service in SERVICES for name in labelled_counters(service)}
    assert set(KNOWN) | set(OPEN) == every
    assert all(KNOWN.values())


def literal_label_calls(path: Path) -> Iterable[tuple[str, int, int, str]]:
    """(metrics field, argument position, line, value) of every
    ``<...>.<field>.labels(..., "literal", ...)`` call in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "labels"
            and isinstance(node.func.value, ast.Attribute)
        ):
            for i, arg in enumerate(node.args):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield node.func.value.attr, i, node.lineno, arg.value


def metrics_objects(service: str) -> list[Any]:
    registry = CollectorRegistry()
    if service == "ingest":
        tasks = default_tasks(RetentionPolicy())
        return [
            IngestMetrics.create(registry),
            MaintenanceMetrics.create(registry, service="ingest", tasks=tasks),
        ]
    if service == "matcher":
        return [MatcherMetrics.create(registry)]
    if service == "dispatcher":
        return [DispatcherMetrics.create(registry)]
    if service == "api":
        return [ApiMetrics.create(registry)]
    return [IndexerMetrics.create(registry, tuple(int(c) for c in CHAINS))]


@pytest.mark.parametrize("service", SERVICES)
def test_label_values_the_code_writes_are_in_the_known_sets(service: str) -> None:
    """A string literal the service's code passes to .labels() of a counter of a
    known set is one of that set's values at that position: a new value written
    in the code but not added to the set would start without its 0."""
    fields: dict[str, str] = {}
    for metrics in metrics_objects(service):
        for field, value in vars(metrics).items():
            if isinstance(value, Counter):
                fields[field] = getattr(value, "_name")  # noqa: B009
    checked = 0
    for path in sorted((ROOT / "services" / service).rglob("*.py")):
        for field, position, line, value in literal_label_calls(path):
            name = fields.get(field)
            if name is None or name not in KNOWN:
                continue
            allowed = {combination[position] for combination in KNOWN[name]}
            assert value in allowed, f"{path.relative_to(ROOT)}:{line}: {name} {value!r}"
            checked += 1
    if service in ("dispatcher", "matcher"):
        assert checked, service  # deferred "handover"/"not_due", index_reloads "full"
