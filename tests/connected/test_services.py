"""Every service starts as ``python -m services.<name>``, serves /healthz, /readyz and
/metrics (the API and ingest: /metrics and the detailed /readyz on their ops port,
/healthz and a terse /readyz on the public one), logs JSON, and stops cleanly on
SIGTERM within 10 s."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.procs import OPS_PORT_SERVICES, ServiceProcess, http_get, metrics_url
from tools.localnet import Forwarder, free_port

pytestmark = [pytest.mark.db, pytest.mark.kafka]

SERVICES = ["ingest", "matcher", "dispatcher", "api"]


@pytest.fixture
def service_env(stack_env: dict[str, str], kafka_bootstrap: str) -> dict[str, str]:
    return {**stack_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}


@pytest.mark.parametrize("name", SERVICES)
def test_service_lifecycle(
    name: str, service_env: dict[str, str], tmp_path: Path, procs: list[ServiceProcess]
) -> None:
    svc = ServiceProcess(name, service_env, tmp_path)
    procs.append(svc.start())
    assert json.loads(svc.wait_http("/healthz")) == {"status": "ok"}
    ready = json.loads(svc.wait_http("/readyz", ops=True))
    assert ready["status"] == "ready"
    assert ready["checks"]["postgres"] == "ok"
    assert ready["checks"]["kafka"] == "ok"

    code, body = http_get(metrics_url(svc))
    assert code == 200
    assert b"process_resident_memory_bytes" in body
    if name in OPS_PORT_SERVICES:
        # The public port: liveness and a terse readiness for load balancers only.
        assert svc.ops_port != svc.port
        assert json.loads(svc.wait_http("/readyz")) == {"status": "ready"}
        assert http_get(svc.base + "/metrics")[0] == 404
        assert json.loads(svc.wait_http("/healthz", ops=True)) == {"status": "ok"}

    elapsed = svc.terminate(timeout=10)
    assert svc.proc is not None
    assert svc.proc.returncode == 0, svc.log_text()[-2000:]
    assert elapsed < 10

    # Logs are JSON lines carrying the service name and ISO UTC timestamps.
    lines = [json.loads(line) for line in svc.log_text().splitlines() if line.startswith("{")]
    assert lines, svc.log_text()[-2000:]
    assert any(entry.get("service") == name for entry in lines)
    assert all(entry["timestamp"].endswith("Z") for entry in lines)
    assert "erc8004-dev" not in svc.log_text()  # the database password never shows


def test_readyz_names_the_failing_dependency(
    service_env: dict[str, str], tmp_path: Path, procs: list[ServiceProcess]
) -> None:
    """With Kafka unreachable the API and ingest stay ready (only the API's redrive
    needs Kafka: it answers 503 meanwhile; ingest's outbox holds events) and report
    Kafka as informational, naming the kind of failure only. (The matcher and the
    dispatcher, which need Kafka, answer 503: the next test.)"""
    dead_kafka = f"127.0.0.1:{free_port()}"
    api = ServiceProcess("api", {**service_env, "KAFKA_BOOTSTRAP_SERVERS": dead_kafka}, tmp_path)
    ingest = ServiceProcess(
        "ingest", {**service_env, "KAFKA_BOOTSTRAP_SERVERS": dead_kafka}, tmp_path
    )
    procs.extend([api.start(), ingest.start()])

    port = dead_kafka.rsplit(":", 1)[1]
    for svc in (api, ingest):
        # The public port says ready, nothing more; the ops port names each check
        # and the kind of failure only: the exception's text (which names the
        # broker's address) goes to the log, not to whoever asks /readyz.
        public = svc.wait_http("/readyz", status=200, timeout=30)
        assert json.loads(public) == {"status": "ready"}
        body = json.loads(svc.wait_http("/readyz", status=200, timeout=30, ops=True))
        assert body["status"] == "ready"
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["kafka"].startswith("error: ")
        assert port not in json.dumps(body)
    assert port in api.log_text()


def test_stream_services_started_while_kafka_is_away_wait_for_it(
    service_env: dict[str, str], tmp_path: Path, procs: list[ServiceProcess]
) -> None:
    """A matcher or dispatcher (re)started while Kafka is away (a node restart, the
    chaos run's timing) waits for it, alive and not ready, rather than exiting."""
    port = free_port()
    host, _, kafka_port = service_env["KAFKA_BOOTSTRAP_SERVERS"].partition(",")[0].rpartition(":")
    env = {**service_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    services = [ServiceProcess(name, env, tmp_path) for name in ("matcher", "dispatcher")]
    procs.extend(svc.start() for svc in services)
    for svc in services:
        assert json.loads(svc.wait_http("/healthz")) == {"status": "ok"}
        svc.wait_http("/readyz", status=503)
    time.sleep(3.0)  # several attempts in vain
    for svc in services:
        assert svc.proc is not None
        assert svc.proc.poll() is None, svc.log_text()[-3000:]
        assert "kafka does not answer; waiting" in svc.log_text()

    forwarder = Forwarder(port, (host, int(kafka_port))).start()
    try:
        for svc in services:
            body = json.loads(svc.wait_http("/readyz", status=200, timeout=60))
            assert body["checks"]["kafka"] == "ok"
    finally:
        for svc in services:
            svc.terminate(timeout=10)
        forwarder.stop()


def test_bad_settings_fail_fast_with_the_field(
    service_env: dict[str, str], tmp_path: Path, procs: list[ServiceProcess]
) -> None:
    env = {k: v for k, v in service_env.items() if k != "INGEST_TOKENS"}
    env["INGEST_TOKENS"] = ""
    svc = ServiceProcess("ingest", env, tmp_path)
    procs.append(svc.start())
    assert svc.proc is not None
    assert svc.proc.wait(timeout=20) != 0
    assert "INGEST_TOKENS" in svc.log_text()
