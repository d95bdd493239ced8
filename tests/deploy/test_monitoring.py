"""The alert rules and the Grafana dashboard: promtool checks and unit-tests the
rules, parses every dashboard expression, and every metric they use is one the
services (or postgres_exporter) expose, with the labels the queries use.
Against running services: tests/connected/test_metrics_scrape.py."""

from __future__ import annotations

import json
import re

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.api.metrics import ApiMetrics
from services.dispatcher.metrics import DispatcherMetrics
from services.indexer.metrics import IndexerMetrics
from services.ingest.maintenance import MaintenanceMetrics, RetentionPolicy, default_tasks
from services.ingest.metrics import IngestMetrics
from services.matcher.metrics import MatcherMetrics
from tests.deploy.promql import (
    DASHBOARD,
    ROOT,
    RULES,
    all_queries,
    dashboard_queries,
    families,
    family,
    service_of,
)
from tests.deploy.tools import run

pytestmark = pytest.mark.unit

#: postgres_exporter families the dashboard uses (its built-in collectors
#: stat_activity, stat_user_tables, stat_statements with include_query).
POSTGRES_EXPORTER = {
    "pg_stat_activity_count": {"datname", "state"},
    "pg_stat_user_tables_table_size_bytes": {"datname", "schemaname", "relname"},
    "pg_stat_user_tables_index_size_bytes": {"datname", "schemaname", "relname"},
    "pg_stat_statements_calls_total": {"user", "datname", "queryid"},
    "pg_stat_statements_seconds_total": {"user", "datname", "queryid"},
    "pg_stat_statements_query_id": {"queryid", "query"},
}
SERVICES = {"ingest", "matcher", "dispatcher", "api", "indexer"}


@pytest.mark.promtool
def test_rules_pass_promtool_check() -> None:
    result = run("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.promtool
def test_rules_fire_on_their_conditions_only() -> None:
    """deploy/prometheus/erc8004-rules.test.yaml: promtool's rule unit tests."""
    result = run("promtool", "test", "rules", str(RULES.with_suffix(".test.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load(RULES.with_suffix(".test.yaml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    # Not unit-tested on purpose: up == 0 and the API's 5xx ratio are
    # one-line comparisons of a single series.
    untested = {
        "Erc8004ServiceDown",
        "Erc8004ApiErrors",
        "Erc8004RelayLagCritical",
        "Erc8004DispatcherConsumerLag",
        "Erc8004StatsViewsStale",
    }
    assert alerts - tested <= untested
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def substitute(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in."""
    substitutions = {
        "$__rate_interval": "5m",
        "$__range": "1h",
        "$chain_id": ".*",
        "$database": "erc8004_backend",
        "$namespace": "erc8004",
        "$pod": ".*",
    }
    for var, value in substitutions.items():
        expr = expr.replace(var, value)
    return expr


def test_every_alert_has_a_runbook_section() -> None:
    """annotations.runbook_url is docs/runbooks.md#<alert name in lower case>, and
    that section exists (a level-2 heading named after the alert, whose anchor that
    is) with what the alert means, what to check and what to do."""
    runbooks = ROOT / "docs" / "runbooks.md"
    sections = re.split(r"^## ", runbooks.read_text(), flags=re.MULTILINE)[1:]
    bodies = {section.split("\n", 1)[0].strip(): section for section in sections}
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for rule in alerts:
        name = rule["alert"]
        url = rule["annotations"].get("runbook_url")
        assert url == f"docs/runbooks.md#{name.lower()}", (name, url)
        assert (ROOT / url.split("#")[0]).is_file()
        assert name in bodies, f"no section ## {name} in docs/runbooks.md"
        for part in ("**Means**", "**Check**", "**Do**"):
            assert part in bodies[name], (name, part)
    # no section of an alert that is gone
    assert set(bodies) == {r["alert"] for r in alerts}


def test_dashboard_and_rule_expressions_parse() -> None:
    """Each dashboard expression (Grafana's variables filled in) and each rule's
    expression parses as PromQL (promql-parser: the Rust port of Prometheus' parser)."""
    exprs: list[tuple[str, str]] = []
    for query in dashboard_queries():
        expr = substitute(query.expr)
        assert "$" not in expr, (query.where, expr)
        exprs.append((query.where, expr))
    rules = yaml.safe_load(RULES.read_text())
    exprs += [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    failures = []
    for where, expr in exprs:
        try:
            promql_parser.parse(expr)
        except ValueError as exc:
            failures.append(f"{where}: {exc}: {expr}")
    assert not failures, "\n".join(failures)
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum by (chain_id (rate(x[5m]))")


#: Labels every aggregation and vector matching keeps: the Kubernetes namespace
#: (dev and prod, or two releases, apart) and the cluster, where Prometheus sets it.
KEPT = {"namespace", "cluster"}


def dropped_labels(node: object, where: str) -> list[str]:
    """Aggregations (but topk/bottomk, which keep their series' labels) and
    on(...) matchings of ``node`` that drop namespace or cluster."""
    found: list[str] = []
    if isinstance(node, promql_parser.AggregateExpr) and str(node.op) not in {"topk", "bottomk"}:
        modifier = node.modifier
        if modifier is None or (
            modifier.type == promql_parser.AggModifierType.By and not set(modifier.labels) >= KEPT
        ):
            found.append(f"{where}: {node.op} by {modifier}")
        elif modifier.type == promql_parser.AggModifierType.Without and KEPT & set(modifier.labels):
            found.append(f"{where}: {node.op} {modifier}")
    if isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
        matching = node.modifier.matching
        if (
            matching is not None
            and matching.type == promql_parser.LabelModifierType.Include
            and not set(matching.labels) >= KEPT
        ):
            found.append(f"{where}: {matching}")
    for attr in ("lhs", "rhs", "expr", "args", "param"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None and type(item).__module__ == "promql_parser":
                found += dropped_labels(item, where)
    return found


def test_every_query_keeps_namespace_and_cluster() -> None:
    """A sum or max over every namespace would mix dev into prod (and one
    cluster into another): every aggregation groups by namespace and cluster, every
    on(...) matches on them, every dashboard selector is narrowed to $namespace
    (and our services' to $pod)."""
    rules = yaml.safe_load(RULES.read_text())
    exprs = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    exprs += [(q.where, substitute(q.expr)) for q in dashboard_queries()]
    failures = [
        f for where, expr in exprs for f in dropped_labels(promql_parser.parse(expr), where)
    ]
    assert not failures, "\n".join(failures)
    assert dropped_labels(promql_parser.parse("sum by (chain_id) (x)"), "probe")
    assert dropped_labels(promql_parser.parse("max(x)"), "probe")
    assert dropped_labels(promql_parser.parse("x and on (instance) y"), "probe")
    assert not dropped_labels(promql_parser.parse("topk(3, x) - ignoring (le) y"), "probe")
    for query in dashboard_queries():
        for metric in re.findall(r"\b(?:erc8004|pg|process|python)_\w+\b(?!\{)", query.expr):
            raise AssertionError(f"{query.where}: {metric} without selector")
        for selector in re.findall(r"\b((?:erc8004|pg|process|python)_\w+)\{([^}]*)\}", query.expr):
            assert 'namespace="$namespace"' in selector[1], (query.where, selector)
            if not selector[0].startswith("pg_"):
                assert 'pod=~"$pod"' in selector[1], (query.where, selector)


def test_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "pod", "chain_id", "database"} <= variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = []
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$([a-z_]+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used)
    # What the issue asks the dashboard to show.
    text = DASHBOARD.read_text()
    for metric in (
        "erc8004_ingest_events_received_total",
        "erc8004_ingest_events_rejected_total",
        "erc8004_ingest_outbox_depth",
        "erc8004_ingest_relay_lag_seconds",
        "erc8004_matcher_events_evaluated_total",
        "erc8004_matcher_consumer_lag_messages",
        "erc8004_dispatcher_consumer_lag_messages",
        "erc8004_matcher_triggers_fired_total",
        "erc8004_dispatcher_actions_total",
        "erc8004_dispatcher_action_duration_seconds_bucket",
        "erc8004_dispatcher_retries_total",
        "erc8004_dispatcher_dlq_total",
        "process_resident_memory_bytes",
        "pg_stat_activity_count",
        "pg_stat_user_tables_table_size_bytes",
        "pg_stat_statements_seconds_total",
        "erc8004_indexer_head_lag_seconds",
        "erc8004_indexer_head_lag_blocks",
        "erc8004_indexer_blocks_total",
        "erc8004_indexer_events_total",
        "erc8004_indexer_rpc_errors_total",
        "erc8004_indexer_reorgs_total",
        "erc8004_indexer_reorg_depth_blocks_bucket",
        "erc8004_indexer_leader",
        "erc8004_indexer_block_range",
    ):
        assert metric in text, metric
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert "Indexer" in rows
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (namespace, cluster, le, action_type)" in text
        )


def test_queries_use_known_metric_names() -> None:
    for query in all_queries():
        assert query.metrics, query.where
        for metric in query.metrics:
            if metric.startswith("erc8004_"):
                assert service_of(metric) in SERVICES, (query.where, metric)
            elif metric.startswith("pg_"):
                assert metric in POSTGRES_EXPORTER, (query.where, metric)
                assert query.labels <= set().union(*POSTGRES_EXPORTER.values()), query.where
            else:
                assert metric.startswith(("process_", "python_")) or metric == "up", metric


def label_names(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Exposed family name -> label names (tests.deploy.promql.families)."""
    return {name: set(f.labels) for name, f in families(registry).items()}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_queries_match_the_metrics_services_define(service: str) -> None:
    """Names and labels, from the metric definitions of every service (as their
    processes expose them: tests/connected/test_metrics_scrape.py)."""
    registry = CollectorRegistry()
    if service == "ingest":
        IngestMetrics.create(registry)
        MaintenanceMetrics.create(
            registry, service="ingest", tasks=default_tasks(RetentionPolicy())
        )
    elif service == "indexer":
        IndexerMetrics.create(registry, (1,))
    elif service == "dispatcher":
        DispatcherMetrics.create(registry)
    elif service == "api":
        ApiMetrics.create(registry)
    else:
        MatcherMetrics.create(registry)
    families = label_names(registry)
    used = [q for q in all_queries() if any(service_of(m) == service for m in q.metrics)]
    assert used
    for query in used:
        for metric in query.metrics:
            if service_of(metric) != service:
                continue
            name = family(metric, set(families))
            assert name is not None, (query.where, metric)
            # its own selector's labels, and those the query groups by
            wanted = query.selectors.get(metric, frozenset()) | query.grouping
            assert wanted <= families[name], (query.where, metric, wanted)
