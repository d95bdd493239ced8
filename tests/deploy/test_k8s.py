"""deploy/k8s: both overlays (and their migration kustomizations) build with
kustomize, validate against the Kubernetes schemas offline (kubernetes-validate;
ServiceMonitors, a CRD, by our own check), and keep the invariants the services
rely on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.api.settings import ApiSettings
from services.dispatcher.settings import DispatcherSettings
from services.ingest.settings import IngestSettings
from services.matcher.settings import MatcherSettings
from shared.settings import ServiceSettings
from shared.topics import ACTIONS, EVENTS, TOPICS
from tests.deploy.tools import ROOT, run

pytestmark = pytest.mark.unit

Doc = dict[str, Any]
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SERVICES: dict[str, type[ServiceSettings]] = {
    "ingest": IngestSettings,
    "matcher": MatcherSettings,
    "dispatcher": DispatcherSettings,
    "api": ApiSettings,
}
PARTITIONS = {spec.name: spec.partitions for spec in TOPICS}
CONSUMES = {"erc8004-matcher": EVENTS, "erc8004-dispatcher": ACTIONS}
PRE_STOP_AND_POOL_CLOSE = 5 + 3  # preStop sleep, then close_pool's bound


def build(path: str) -> list[Doc]:
    result = run("kustomize", "build", str(ROOT / "deploy" / "k8s" / path), timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[Doc]]:
    return {
        name: build(f"overlays/{name}")
        for overlay in OVERLAYS
        for name in (overlay, f"{overlay}/migrate")
    }


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def config_value(docs: list[Doc], key: str) -> str:
    (config,) = (
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("erc8004-")
    )
    value: str = config["data"][key]
    return value


def test_every_object_validates_against_the_kubernetes_schemas(
    built: dict[str, list[Doc]],
) -> None:
    kinds = set()
    for name, docs in built.items():
        for doc in docs:
            kinds.add(doc["kind"])
            assert doc["metadata"]["namespace"] == ("erc8004-dev" if "dev" in name else "erc8004")
            if doc["kind"] == "ServiceMonitor":
                continue  # a CRD: test_service_monitors_scrape_every_service
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    assert {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceMonitor", "NetworkPolicy", "ConfigMap", "Job", "Secret",
    } <= kinds  # fmt: skip


def test_an_invalid_object_would_be_caught() -> None:
    """The validation above is not vacuous."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "three", "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_have_probes_limits_and_a_restricted_context(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    docs = built[overlay]
    deployments = of_kind(docs, "Deployment")
    assert {f"erc8004-{s}" for s in SERVICES} | {"erc8004-postgres-exporter"} == set(deployments)
    shutdown = float(config_value(docs, "SHUTDOWN_TIMEOUT"))
    for doc, container in containers(docs):
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert context.get("privileged", False) is False, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
        image = container["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), image
        assert not image.endswith(":latest"), image
        if doc["kind"] != "Deployment":
            continue
        assert container["livenessProbe"]["httpGet"]["port"]
        assert container["readinessProbe"]["httpGet"]["port"]
        if name == "erc8004-postgres-exporter":
            continue
        short = name.removeprefix("erc8004-")
        assert container["command"] == ["python", "-m", f"services.{short}"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        port = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["port"] in port
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["HTTP_PORT"] == str(next(iter(port.values())))
        # The service's own shutdown, then the preStop pause and the pool's
        # close, all end before Kubernetes kills the pod.
        grace = pod["terminationGracePeriodSeconds"]
        assert grace > shutdown + PRE_STOP_AND_POOL_CLOSE, (name, grace)
        (secrets,) = (v["secret"] for v in pod["volumes"] if "secret" in v)
        # Files of a secret volume belong to root and the fsGroup: group-readable.
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
        assert secrets["defaultMode"] & 0o040, (name, oct(secrets["defaultMode"]))
        assert not secrets["defaultMode"] & 0o007, name  # nothing for others
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {
            "/tmp",  # noqa: S108 (an emptyDir: the root filesystem is read-only)
            "/run/secrets/erc8004",
        }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_every_service_requires_are_provided(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """Each required setting (no default) of a service's Settings class comes from
    the ConfigMap, the container's env, or a file of its secret volume."""
    docs = built[overlay]
    (config,) = (d for d in docs if d["kind"] == "ConfigMap")
    deployments = of_kind(docs, "Deployment")
    for short, settings in SERVICES.items():
        pod = deployments[f"erc8004-{short}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (secret_volume,) = (v for v in pod["volumes"] if "secret" in v)
        files = {item["path"] for item in secret_volume["secret"]["items"]}
        provided = set(config["data"]) | {e["name"] for e in container["env"]} | files
        assert config["data"]["SECRETS_DIR"] == "/run/secrets/erc8004"
        for field in settings.model_fields.values():
            if field.is_required():
                assert field.validation_alias in provided, (short, field.validation_alias)
        assert "DATABASE_URL" in files  # a login of the service's own
        assert not files & set(config["data"])  # secrets never in the ConfigMap


def test_dev_secret_holds_every_key_referenced(built: dict[str, list[Doc]]) -> None:
    for name in ("dev", "dev/migrate"):
        docs = built[name]
        (secret,) = of_kind(docs, "Secret").values()
        keys = set(secret["data"])
        for doc, container in containers(docs):
            pod = doc["spec"]["template"]["spec"]
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
                    assert {i["key"] for i in volume["secret"]["items"]} <= keys
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] in keys, ref
    # prod: the Secret comes from outside the repository.
    assert not of_kind(built["prod"], "Secret")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_stay_within_the_topic_partitions(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    docs = built[overlay]
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    deployments = of_kind(docs, "Deployment")
    assert set(hpas) == set(CONSUMES)
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert target["name"] == name
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["maxReplicas"] <= PARTITIONS[CONSUMES[name]] == 12
        # The HPA owns the replica count: the Deployment does not fight it.
        assert "replicas" not in deployments[name]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budgets_and_monitors_select_the_pods(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    docs = built[overlay]
    deployments = of_kind(docs, "Deployment")
    services = of_kind(docs, "Service")
    budgets = of_kind(docs, "PodDisruptionBudget")
    monitors = of_kind(docs, "ServiceMonitor")
    assert set(services) == set(deployments) == set(monitors)
    assert set(budgets) == {f"erc8004-{s}" for s in SERVICES}

    def selects(selector: dict[str, str], deployment: Doc) -> bool:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        return all(labels.get(k) == v for k, v in selector.items())

    for name, deployment in deployments.items():
        assert deployment["spec"]["selector"]["matchLabels"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        service = services[name]
        assert selects(service["spec"]["selector"], deployment)
        container_ports = {
            p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
        # ServiceMonitor (monitoring.coreos.com/v1): selects the Service, scrapes a named port.
        monitor = monitors[name]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        if name in budgets:
            assert selects(budgets[name]["spec"]["selector"]["matchLabels"], deployment)
    if overlay == "prod":
        assert all(m["metadata"]["labels"]["release"] for m in monitors.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_what_is_needed(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    docs = built[overlay]
    policies = of_kind(docs, "NetworkPolicy")
    deny = policies["erc8004-default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny
    egress = policies["erc8004-egress-dns-postgres-kafka"]["spec"]["egress"]
    ports = {p["port"] for rule in egress for p in rule["ports"]}
    assert ports == {53, 5432, 9092}
    if overlay == "prod":  # PostgreSQL and Kafka only at their own networks
        assert all(rule.get("to") for rule in egress)
    internet = policies["erc8004-egress-internet"]["spec"]
    blocked = {c for to in internet["egress"][0]["to"] for c in to["ipBlock"].get("except", [])}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= blocked
    deployments = of_kind(docs, "Deployment")
    with_internet = {
        name
        for name, d in deployments.items()
        if d["spec"]["template"]["metadata"]["labels"].get("erc8004.io/egress-internet") == "true"
    }
    assert with_internet == {"erc8004-dispatcher"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_matches_its_release(built: dict[str, list[Doc]], overlay: str) -> None:
    """Applied first (deploy/k8s/deploy.sh): same image and Kafka as the
    services, the migration command, the owner's login."""
    services, migrate = built[overlay], built[f"{overlay}/migrate"]
    (job,) = of_kind(migrate, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "tools.migrate", "up"]
    images = {c["image"] for d, c in containers(services) if "postgres-exporter" not in c["image"]}
    assert images == {container["image"]}
    assert config_value(migrate, "KAFKA_BOOTSTRAP_SERVERS") == config_value(
        services, "KAFKA_BOOTSTRAP_SERVERS"
    )
    replication = int(config_value(migrate, "KAFKA_REPLICATION_FACTOR"))
    assert replication == (3 if overlay == "prod" else 1)  # topics outlive a broker in prod
    (url,) = (e for e in container["env"] if e["name"] == "DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"]["key"] == "DATABASE_URL_MIGRATE"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["activeDeadlineSeconds"] > 0
