"""Which metrics and labels the dashboard's and the alert rules' PromQL use.

Not a PromQL parser: string literals are blanked, then selectors of our metric
families (and of the exporters' we rely on) are found by name, and every label
an expression names (matchers, ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right``) is collected. A query must not use a label one
of its ``erc8004_*`` metrics lacks, so each label counts against every
``erc8004_*`` metric of the expression."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "erc8004-backend.json"
RULES = ROOT / "deploy" / "prometheus" / "erc8004-rules.yaml"

#: Labels Prometheus adds to every scraped series (target labels), and le.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "container", "endpoint", "cluster", "le"}
)
_METRIC = re.compile(r"\b((?:erc8004|pg|process|python)_[a-zA-Z0-9_]+|up)\b(\s*\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    metrics: frozenset[str]
    labels: frozenset[str]
    #: the labels of each metric's own selector ({...}), and of the groupings
    selectors: dict[str, frozenset[str]] = field(default_factory=dict)
    grouping: frozenset[str] = frozenset()


def analyse(where: str, expr: str) -> Query:
    blank = _STRING.sub('""', expr)
    metrics: set[str] = set()
    selectors: dict[str, set[str]] = {}
    grouping: set[str] = set()
    for match in _METRIC.finditer(blank):
        metrics.add(match.group(1))
        own = selectors.setdefault(match.group(1), set())
        if match.group(2):
            own.update(_MATCHER.findall(match.group(2)))
    for group in _GROUPING.findall(blank):
        grouping.update(label.strip() for label in group.split(",") if label.strip())
    labels = grouping.union(*selectors.values())
    return Query(
        where,
        expr,
        frozenset(metrics),
        frozenset(labels - TARGET_LABELS),
        {m: frozenset(own - TARGET_LABELS) for m, own in selectors.items()},
        frozenset(grouping - TARGET_LABELS),
    )


def family(name: str, families: set[str]) -> str | None:
    """The exposed family of a sample name (histogram samples end in
    _bucket/_sum/_count), or None when there is none."""
    if name in families:
        return name
    base = _HISTOGRAM_SUFFIX.sub("", name)
    return base if base in families else None


@dataclass(frozen=True)
class Family:
    """A metric family as a service registers it."""

    type: str
    documentation: str
    labels: frozenset[str]


def families(registry: CollectorRegistry) -> dict[str, Family]:
    """Exposed family name (counters with _total) -> its definition, read from the
    metric objects themselves (a labelled metric without children shows no samples
    to read its labels from)."""
    found: dict[str, Family] = {}
    for collector in set(registry._names_to_collectors.values()):
        if not hasattr(collector, "_name"):
            # a collector of its own (e.g. the matcher's frozen objects): its
            # families as it describes them, without labels
            for family in collector.describe():  # type: ignore[attr-defined]
                exposed = f"{family.name}_total" if family.type == "counter" else family.name
                found[exposed] = Family(family.type, family.documentation, frozenset())
            continue
        name, kind = getattr(collector, "_name"), getattr(collector, "_type")  # noqa: B009
        exposed = f"{name}_total" if kind == "counter" else name
        found[exposed] = Family(
            type=kind,
            documentation=getattr(collector, "_documentation"),  # noqa: B009
            labels=frozenset(getattr(collector, "_labelnames")),  # noqa: B009
        )
    return found


def dashboard_queries() -> Iterator[Query]:
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield analyse(f"panel {panel['title']!r}", target["expr"])


def rule_queries() -> Iterator[Query]:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            yield analyse(f"rule {name}", rule["expr"])


def all_queries() -> list[Query]:
    return [*dashboard_queries(), *rule_queries()]


def service_of(metric: str) -> str | None:
    """``erc8004_<service>_...`` -> service."""
    parts = metric.split("_")
    return parts[1] if parts[0] == "erc8004" and len(parts) > 2 else None
