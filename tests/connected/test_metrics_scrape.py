"""Every metric the Grafana dashboard and the alert rules use exists on the running
services' /metrics, with the labels the queries use.

The four services run as processes (``python -m services.<name>``) against one
database and two scratch topics; ingest gets events (and a refused batch) for a
chain a trigger watches, so the matcher fires and produces a job the dispatcher
consumes: labelled series then show their label sets. A family without any
series yet (prometheus-client prints only its # HELP / # TYPE lines) is checked
by name; its labels by tests/deploy/test_monitoring.py, from the definitions.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.platform.db import register_codecs
from tests.deploy.promql import TARGET_LABELS, all_queries, family, service_of
from tests.matcherutil import NEW_FEEDBACK, insert_trigger, random_chain
from tests.procs import ServiceProcess, http_get
from tools.benchdb import drop_database, with_database
from tools.eventgen import make_event

pytestmark = [
    pytest.mark.db,
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.xdist_group("metrics-scrape"),
]

TOKEN = "dev-indexer-token"  # deploy/local/dev.env


@dataclass
class Scrape:
    #: family name (as in # TYPE) -> type
    types: dict[str, str] = field(default_factory=dict)
    #: family name -> label names seen on its samples
    labels: dict[str, set[str]] = field(default_factory=dict)


def parse(text: str) -> Scrape:
    """The exposition format, read by hand: family names exactly as in # TYPE
    (counters keep _total), label names per family from the sample lines."""
    scrape = Scrape()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            scrape.types[name] = kind
            scrape.labels.setdefault(name, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split(" ")[0]
            owner = family(name, set(scrape.types)) or name.removesuffix("_created")
            if rest and owner in scrape.labels:
                body = rest.rsplit("}", 1)[0]
                scrape.labels[owner].update(
                    part.split("=", 1)[0].strip() for part in body.split('",') if "=" in part
                )
    return scrape


def post(url: str, body: object, *, token: str = TOKEN) -> int:
    request = urllib.request.Request(  # noqa: S310 (127.0.0.1 only)
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


async def prepare(
    admin_url: str, template: str, name: str, bootstrap: str, topics: list[str]
) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=3, replication_factor=1) for t in topics]
        )
    finally:
        await admin.close()
    return with_database(admin_url, name)


async def teardown(admin_url: str, name: str, bootstrap: str, topics: list[str]) -> None:
    await drop_database(admin_url, name)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def add_trigger(database_url: str, chain: int) -> None:
    conn = await asyncpg.connect(database_url)
    await register_codecs(conn)
    try:
        await insert_trigger(conn, chain_id=chain, conditions=NEW_FEEDBACK)
    finally:
        await conn.close()


def wait_for(proc: ServiceProcess, sample: str, *, within: float = 60) -> None:
    """Until a sample line of /metrics starts with ``sample`` and is not 0."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        _, body = http_get(proc.metrics_url)
        for line in body.decode().splitlines():
            if line.startswith(sample) and float(line.rsplit(" ", 1)[1]) > 0:
                return
        time.sleep(0.25)
    raise AssertionError(f"{proc.name}: no {sample} > 0 within {within}s")


@pytest.fixture(scope="module")
def stack(
    env: dict[str, str],
    admin_url: str,
    template_db: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Scrape]]:
    tag = uuid.uuid4().hex[:10]
    name = f"erc8004_test_scrape_{tag}"
    events_topic, actions_topic = f"test.scrape.{tag}", f"test.scrape.actions.{tag}"
    retry_topic, dlq_topic = f"test.scrape.retry.{tag}", f"test.scrape.dlq.{tag}"
    topics = [events_topic, actions_topic, retry_topic, dlq_topic]
    database_url = asyncio.run(prepare(admin_url, template_db, name, kafka_bootstrap, topics))
    chain = random_chain(10_000_000)
    procs: list[ServiceProcess] = []
    logs = tmp_path_factory.mktemp("scrape")
    try:
        asyncio.run(add_trigger(database_url, chain))
        common = {
            **env,
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "EVENTS_TOPIC": events_topic,
            "ACTIONS_TOPIC": actions_topic,
            "ACTIONS_RETRY_TOPIC": retry_topic,
            "ACTIONS_DLQ_TOPIC": dlq_topic,
            "MATCHER_GROUP": f"matcher-{tag}",
            "DISPATCHER_GROUP": f"dispatcher-{tag}",
            "MAINTENANCE_INITIAL_DELAY": "0",
        }
        for service in ("ingest", "matcher", "dispatcher", "api"):
            procs.append(ServiceProcess(service, common, logs).start())
        for proc in procs:
            proc.wait_http("/readyz", timeout=60)
        ingest, matcher = procs[0], procs[1]

        rng = random.Random(7)
        events = [
            make_event(
                rng, chain_id=chain, block_number=100 + i, log_index=0, event_type="NewFeedback"
            )
            for i in range(20)
        ]
        assert post(ingest.base + "/v1/events", events) == 200
        bad = [{**events[0], "log_index": -1}]
        assert post(ingest.base + "/v1/events", bad) == 422
        for path in ("/v1/triggers", "/healthz"):  # API traffic, answered or refused
            http_get(procs[3].base + path)
        wait_for(matcher, 'erc8004_matcher_jobs_produced_total{action_type="rest"}')
        wait_for(ingest, "erc8004_ingest_relayed_messages_total")
        wait_for(
            ingest,
            'erc8004_ingest_maintenance_last_success_timestamp_seconds{task="refresh_stats_views"}',
        )

        yield {proc.name: parse(http_get(proc.metrics_url)[1].decode()) for proc in procs}
    finally:
        for proc in procs:
            proc.stop()
        asyncio.run(teardown(admin_url, name, kafka_bootstrap, topics))


def used_by(service: str) -> dict[str, set[str]]:
    """Metric -> the labels the dashboard and the rules use with it."""
    used: dict[str, set[str]] = {}
    for query in all_queries():
        for metric in query.metrics:
            if service_of(metric) == service:
                # its own selector's labels, and those the query groups by
                own = query.selectors.get(metric, frozenset())
                used.setdefault(metric, set()).update(own | query.grouping)
    return used


@pytest.mark.parametrize(
    "service",
    [
        "ingest",
        "matcher",
        "dispatcher",
        "api",
    ],
)
def test_dashboard_and_alert_metrics_exist_with_their_labels(
    stack: dict[str, Scrape], service: str
) -> None:
    scrape = stack[service]
    used = used_by(service)
    assert used, service
    missing, wrong_labels = [], []
    for metric, labels in sorted(used.items()):
        name = family(metric, set(scrape.types))
        if name is None:
            missing.append(metric)
            continue
        if metric.endswith("_bucket"):
            assert scrape.types[name] == "histogram", metric
        seen = scrape.labels[name] - TARGET_LABELS
        if seen and not labels <= seen:
            wrong_labels.append((metric, sorted(labels - seen)))
    assert not missing, f"{service}: metrics not exposed: {missing}"
    assert not wrong_labels, f"{service}: labels the queries use are missing: {wrong_labels}"


def test_traffic_made_the_labelled_series_show(stack: dict[str, Scrape]) -> None:
    """The label check above is not vacuous for the services that exist."""
    ingest, matcher = stack["ingest"], stack["matcher"]
    assert ingest.labels["erc8004_ingest_events_received_total"] == {"chain_id", "registry"}
    assert ingest.labels["erc8004_ingest_events_rejected_total"] == {"chain_id", "registry"}
    assert ingest.labels["erc8004_ingest_request_duration_seconds"] >= {"route", "status"}
    assert ingest.labels["erc8004_ingest_maintenance_runs_total"] == {"task", "outcome"}
    assert matcher.labels["erc8004_matcher_jobs_produced_total"] == {"action_type"}
    assert matcher.labels["erc8004_matcher_triggers_fired_total"] == {"condition_type"}


@pytest.mark.parametrize("service", ["ingest", "matcher", "dispatcher", "api"])
def test_process_metrics_of_every_service(stack: dict[str, Scrape], service: str) -> None:
    """The dashboard's per-service process panels."""
    process = {m for q in all_queries() for m in q.metrics if m.startswith(("process_", "python_"))}
    assert process
    for metric in process:
        assert family(metric, set(stack[service].types)) is not None, (service, metric)
    assert "generation" in stack[service].labels["python_gc_collections_total"]
