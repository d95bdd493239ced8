"""deploy/compose.yaml (no Docker engine here): the laptop stack's shape, and each
service gets every setting it requires."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.test_k8s import SERVICES
from tests.deploy.tools import ROOT

pytestmark = [pytest.mark.unit, pytest.mark.xdist_group("compose")]

#: Services the laptop stack may leave out: the indexer needs an EVM node's
#: JSON-RPC endpoint, which the stack does not have (docs/indexer.md). Checked
#: like the others once it is there.
OPTIONAL = {"indexer"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return data


def test_infrastructure_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("timescale/timescaledb:")
    assert "pg16" in services["postgres"]["image"]
    preload = next(a for a in services["postgres"]["command"] if "shared_preload" in a)
    assert "timescaledb" in preload
    assert "pg_stat_statements" in preload
    assert services["kafka"]["image"].startswith("apache/kafka:4.1.")
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_migrate_runs_once_before_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["python", "-m", "tools.migrate", "up"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name, settings in SERVICES.items():
        if name in OPTIONAL and name not in services:
            continue
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["command"] == ["python", "-m", f"services.{name}"]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["read_only"] is True
        env = service["environment"]
        assert env["HTTP_HOST"] == "0.0.0.0"  # noqa: S104 (inside its container)
        assert f"127.0.0.1:{env['HTTP_PORT']}:{env['HTTP_PORT']}" in service["ports"]
        if "ops_port" in settings.model_fields:  # api, ingest: /metrics on a port of its own
            assert env["OPS_PORT"] != env["HTTP_PORT"]
            assert f"127.0.0.1:{env['OPS_PORT']}:{env['OPS_PORT']}" in service["ports"]
        for field in settings.model_fields.values():
            if field.is_required():
                assert field.validation_alias in env, (name, field.validation_alias)
