"""The services' metric definitions, each built on a fresh registry as create_app
builds it: names follow one scheme."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from services.api.metrics import ApiMetrics
from services.dispatcher.metrics import DispatcherMetrics
from services.indexer.metrics import IndexerMetrics
from services.ingest.maintenance import MaintenanceMetrics, RetentionPolicy, default_tasks
from services.ingest.metrics import IngestMetrics
from services.matcher.metrics import MatcherMetrics

pytestmark = pytest.mark.unit

SERVICES = ("ingest", "matcher", "dispatcher", "api", "indexer")
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
        IndexerMetrics.create(registry, (1, 10))


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
