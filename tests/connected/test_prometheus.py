"""A real Prometheus (Debian's package, 2.42: `make monitoring-deps`) scrapes the four
local services and evaluates deploy/prometheus/erc8004-rules.yaml every second:
every target is up, every rule evaluates without error, and no alert goes pending
or fires on the healthy stack, neither while it runs nor across a restart of all
four (a deploy). The one alert expected is the indexer's absent scrape: it is not
started here (it needs a chain), which shows the absent() alerts work.

Prometheus runs on a free port with its data under the test's tmp_path; where a
service's metrics are is `tests.procs.metrics_url` (the ops port of the API and
ingest)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.connected.test_metrics_scrape import prepare, teardown
from tests.deploy.promql import RULES
from tests.deploy.tools import tool
from tests.procs import ServiceProcess, http_get, metrics_url
from tools.localnet import free_port

pytestmark = [
    pytest.mark.db,
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.promtool,
    pytest.mark.serial,
]

SERVICES = ("ingest", "matcher", "dispatcher", "api")
NAMESPACE = "erc8004-local"
#: Alerts that must be active here: the indexer is not run, so its scrape is absent.
EXPECTED = {("Erc8004TargetMissing", "erc8004-indexer")}


class Prometheus:
    """prometheus itself, scraping ``targets`` (job -> metrics URL) every second."""

    def __init__(self, directory: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        scrape_configs = []
        for job, url in targets.items():
            parts = urllib.parse.urlsplit(url)
            scrape_configs.append(
                {
                    "job_name": job,
                    "metrics_path": parts.path,
                    "static_configs": [
                        {"targets": [parts.netloc], "labels": {"namespace": NAMESPACE}}
                    ],
                }
            )
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": scrape_configs,
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with (self.directory / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(tool("prometheus")),
                    f"--config.file={self.directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.console.templates=/nonexistent",
                    "--web.console.libraries=/nonexistent",
                ],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if http_get(self.base + "/-/ready", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready:\n{self.log()}")

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        assert status == 200, (url, body[:500])
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def job(service: str) -> str:
    """The job name the rules expect (the Kubernetes Service's name)."""
    return f"erc8004-{service}"


def wait_healthy(
    prom: Prometheus, procs: list[ServiceProcess], since: float, *, restarted: bool = False
) -> None:
    """Until every target was scraped up after ``since`` (by a process started after
    it, when ``restarted``) and every rule was evaluated after that, without error."""
    deadline = time.monotonic() + 60
    problems: list[object] = []
    while time.monotonic() < deadline:
        problems = []
        targets = prom.api("targets", state="active")
        assert isinstance(targets, dict)
        seen = {t["labels"]["job"]: t for t in targets["activeTargets"]}
        for proc in procs:
            target = seen.get(job(proc.name))
            if (
                target is None
                or target["health"] != "up"
                or parse_time(target["lastScrape"]) <= since
            ):
                problems.append(
                    (proc.name, target and target["health"], target and target["lastError"])
                )
        # the scrape comes from the process started last (a restart took effect)
        started = {
            r["metric"]["job"]: float(r["value"][1])
            for r in prom.query("process_start_time_seconds")
        }
        for proc in procs:
            if restarted and started.get(job(proc.name), 0) < since - 1:
                problems.append((proc.name, "an old process's scrape"))
        groups = prom.api("rules")
        assert isinstance(groups, dict)
        for group in groups["groups"]:
            for rule in group["rules"]:
                if rule["health"] != "ok" or parse_time(rule["lastEvaluation"]) <= since:
                    problems.append((rule["name"], rule["health"], rule.get("lastError")))
        if not problems:
            return
        time.sleep(0.25)
    raise AssertionError(f"not healthy: {problems}\n{prom.log()}")


def parse_time(value: str) -> float:
    """Prometheus' RFC 3339 times (nanoseconds; 0001-01-01 for never) as Unix time."""
    if value.startswith("0001-"):
        return 0.0
    match = re.fullmatch(r"([^.Z+]+)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", value)
    assert match, value
    whole, fraction, zone = match.groups()
    at = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return at.timestamp() + float("0." + (fraction or "0"))


def active_alerts(prom: Prometheus, since: float) -> set[tuple[str, str, str]]:
    """(alertname, job, state) of every alert pending or firing at any evaluation
    since ``since`` (the ALERTS series Prometheus writes), and of those active now."""
    window = max(1, int(time.time() - since) + 1)
    seen = {
        (r["metric"]["alertname"], r["metric"].get("job", ""), r["metric"]["alertstate"])
        for r in prom.query(f"max_over_time(ALERTS[{window}s])")
    }
    now = prom.api("alerts")
    assert isinstance(now, dict)
    seen |= {
        (a["labels"]["alertname"], a["labels"].get("job", ""), a["state"]) for a in now["alerts"]
    }
    return seen


def check_quiet(prom: Prometheus) -> None:
    """No alert but the expected ones at any evaluation of the next few seconds,
    from one evaluation (every second) after the stack was seen healthy: an
    evaluation just before a target's first scrape (absent() of its job) leaves a
    pending ALERTS sample until the next one."""
    since = time.time() + 1.5
    time.sleep(5.5)  # a few evaluations of every rule
    alerts = active_alerts(prom, since)
    unexpected = {a for a in alerts if (a[0], a[1]) not in EXPECTED}
    assert not unexpected, unexpected
    # the absent scrape is noticed (pending: it waits its for: before firing)
    assert {(a[0], a[1]) for a in alerts} == EXPECTED, alerts


@pytest.fixture
def services(
    env: dict[str, str],
    admin_url: str,
    template_db: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> Iterator[list[ServiceProcess]]:
    tag = uuid.uuid4().hex[:10]
    name = f"erc8004_test_prom_{tag}"
    # Every topic of its own: a fresh dispatcher group reads its retry topic from the
    # start, and the shared default one holds other tests' failing retries.
    topics = [
        f"test.prom.{tag}",
        f"test.prom.actions.{tag}",
        f"test.prom.retry.{tag}",
        f"test.prom.dlq.{tag}",
    ]
    database_url = asyncio.run(prepare(admin_url, template_db, name, kafka_bootstrap, topics))
    logs = tmp_path / "logs"
    logs.mkdir()
    common = {
        **env,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EVENTS_TOPIC": topics[0],
        "ACTIONS_TOPIC": topics[1],
        "ACTIONS_RETRY_TOPIC": topics[2],
        "ACTIONS_DLQ_TOPIC": topics[3],
        "MATCHER_GROUP": f"matcher-{tag}",
        "DISPATCHER_GROUP": f"dispatcher-{tag}",
        "MAINTENANCE_INITIAL_DELAY": "0",
    }
    procs = [ServiceProcess(service, common, logs) for service in SERVICES]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        asyncio.run(teardown(admin_url, name, kafka_bootstrap, topics))


def test_prometheus_sees_a_healthy_stack_and_no_alert(
    services: list[ServiceProcess], tmp_path: Path
) -> None:
    for proc in services:
        proc.start()
    for proc in services:
        proc.wait_http("/readyz", timeout=60)
    ingest = services[0]
    # The first start runs every maintenance task (a fresh database has none recorded).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = http_get(metrics_url(ingest))[1].decode()
        stale = [
            line
            for line in body.splitlines()
            if line.startswith("erc8004_ingest_maintenance_last_success_timestamp_seconds{")
            and float(line.rsplit(" ", 1)[1]) == 0
        ]
        if not stale:
            break
        time.sleep(0.2)
    assert not stale, stale

    prom = Prometheus(tmp_path, {job(p.name): metrics_url(p) for p in services}).start()
    try:
        since = time.time()
        wait_healthy(prom, services, since)
        check_quiet(prom)

        # A deploy: every service stops and starts again on its ports. Ingest's new
        # process finds every task claimed by the old one and skips them; its
        # maintenance gauges still report the successes the database recorded.
        restart = time.time()
        for proc in services:
            proc.terminate()
        for proc in services:
            proc.start()
        for proc in services:
            proc.wait_http("/readyz", timeout=60)
        wait_healthy(prom, services, restart, restarted=True)
        check_quiet(prom)
        skipped = prom.query('sum(erc8004_ingest_maintenance_runs_total{outcome="skipped"})')
        assert skipped, "no skipped maintenance runs after the restart"
        assert float(skipped[0]["value"][1]) > 0, skipped
    finally:
        prom.stop()
