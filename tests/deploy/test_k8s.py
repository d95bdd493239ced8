"""deploy/k8s: both overlays (and their migration kustomizations) build with
kustomize, validate against the Kubernetes schemas offline (kubernetes-validate;
ServiceMonitors, a CRD, by our own check), and keep the invariants the services
(the indexer's secrets, replicas and network included), the scheduled backup
(backup.sh itself: test_backup_script.py) and the lag-based autoscaling
(components/lag-autoscaling, with its prometheus-adapter rules) rely on."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import stat
import subprocess
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.api.settings import ApiSettings
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.settings import DispatcherSettings
from services.indexer.settings import IndexerSettings
from services.ingest.settings import IngestSettings
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings
from shared.contract.topics import ACTIONS, EVENTS, TOPICS
from shared.outbound.policy import DEFAULT_ALLOWED_PORTS, parse_ports
from shared.platform.settings import DEFAULT_SECRETS_DIR, KafkaSettings, ServiceSettings
from tests.deploy.promql import RULES, TARGET_LABELS, Family, analyse, families
from tests.deploy.tools import ROOT, run, tool
from tools import prometheus_rule

pytestmark = [pytest.mark.unit, pytest.mark.xdist_group("k8s")]

Doc = dict[str, Any]
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SERVICES: dict[str, type[ServiceSettings]] = {
    "ingest": IngestSettings,
    "matcher": MatcherSettings,
    "dispatcher": DispatcherSettings,
    "api": ApiSettings,
    "indexer": IndexerSettings,
}
PARTITIONS = {spec.name: spec.partitions for spec in TOPICS}
CONSUMES = {"erc8004-matcher": EVENTS, "erc8004-dispatcher": ACTIONS}
PRE_STOP_AND_POOL_CLOSE = 5 + 3  # preStop sleep, then close_pool's bound
#: Workloads of other images than ours (erc8004-backend).
THIRD_PARTY = ("erc8004-postgres-exporter", "erc8004-backup")


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


def pod_template(doc: Doc) -> Doc:
    """The pod template of a Deployment, Job or CronJob."""
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    template: Doc = spec["template"]
    return template


def containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            for container in pod_template(doc)["spec"]["containers"]:
                yield doc, container


def config_value(docs: list[Doc], key: str) -> str:
    """A setting of the services' (or the migration Job's) ConfigMap."""
    (config,) = (
        d
        for d in docs
        if d["kind"] == "ConfigMap"
        and re.fullmatch(r"erc8004-(migrate-)?config-\w+", d["metadata"]["name"])
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
            if doc["kind"] == "PrometheusRule":
                continue  # a CRD: test_the_alerts_and_the_dashboard_deploy_with_the_rest
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    assert {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceMonitor", "NetworkPolicy", "ConfigMap", "Job", "Secret",
        "CronJob", "PersistentVolumeClaim",
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
        pod = pod_template(doc)["spec"]
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
        # close, all end before Kubernetes kills the pod. The dispatcher's takes up
        # to twice SHUTDOWN_TIMEOUT: half for the batches still ending, the whole
        # for the batch in hand, half for the attempts still running.
        own = 2 * shutdown if short == "dispatcher" else shutdown
        grace = pod["terminationGracePeriodSeconds"]
        assert grace > own + PRE_STOP_AND_POOL_CLOSE, (name, grace)
        (secrets,) = (v["secret"] for v in pod["volumes"] if v["name"] == "secrets")
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
    (config,) = (
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("erc8004-config-")
    )
    deployments = of_kind(docs, "Deployment")
    for short, settings in SERVICES.items():
        pod = deployments[f"erc8004-{short}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (secret_volume,) = (v for v in pod["volumes"] if v["name"] == "secrets")
        files = {item["path"] for item in secret_volume["secret"]["items"]}
        provided = set(config["data"]) | {e["name"] for e in container["env"]} | files
        assert config["data"]["SECRETS_DIR"] == "/run/secrets/erc8004"
        for field in settings.model_fields.values():
            if field.is_required():
                assert field.validation_alias in provided, (short, field.validation_alias)
        assert "DATABASE_URL" in files  # a login of the service's own
        assert not files & set(config["data"])  # secrets never in the ConfigMap
        # The Kafka settings it is given are a whole combination (SASL_SSL with
        # its mechanism, user, password file and CA file in prod; PLAINTEXT in
        # dev): a missing piece would stop the service at start.
        kafka_given(config, container, files)


def test_dev_secret_holds_every_key_referenced(built: dict[str, list[Doc]]) -> None:
    for name in ("dev", "dev/migrate"):
        docs = built[name]
        (secret,) = of_kind(docs, "Secret").values()
        keys = set(secret["data"])
        for doc, container in containers(docs):
            pod = pod_template(doc)["spec"]
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
    assert ports == {53, 5432, KAFKA_PORT[overlay]}
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


#: Services with a public port (http) and an ops port (metrics: /metrics and the
#: detailed /readyz, OPS_PORT); the others have their metrics port alone.
OPS_PORT_SERVICES: dict[str, type[ServiceSettings]] = {
    "erc8004-api": ApiSettings,
    "erc8004-ingest": IngestSettings,
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_are_scraped_from_the_ops_port_which_only_monitoring_reaches(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """The API and ingest serve /metrics on OPS_PORT (the settings' default, the
    container port named metrics, a port of their Service), which the
    ServiceMonitors scrape; probes stay on the public port; Prometheus' namespace
    is let in to ports named metrics and nothing else."""
    docs = built[overlay]
    deployments = of_kind(docs, "Deployment")
    services = of_kind(docs, "Service")
    for name, settings in OPS_PORT_SERVICES.items():
        (container,) = pod_template(deployments[name])["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert set(ports) == {"http", "metrics"}, name
        assert ports["metrics"] != ports["http"]
        assert (
            env["OPS_PORT"]
            == str(ports["metrics"])
            == str(settings.model_fields["ops_port"].default)
        )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http", (name, probe)
        assert {p["name"]: p["targetPort"] for p in services[name]["spec"]["ports"]} == {
            "http": "http",
            "metrics": "metrics",
        }
    for name, monitor in of_kind(docs, "ServiceMonitor").items():
        if name.startswith("erc8004-"):
            assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"], name
    scrape = of_kind(docs, "NetworkPolicy")["erc8004-ingress-metrics"]["spec"]
    (rule,) = scrape["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # The public port's policy opens http alone: the ops port is not reachable from it.
    public = of_kind(docs, "NetworkPolicy")["erc8004-ingress-http"]["spec"]
    assert [p["port"] for r in public["ingress"] for p in r["ports"]] == ["http"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dispatchers_egress_ports_are_the_guards(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """The NetworkPolicy lets the dispatcher out on exactly the ports its outbound
    guard allows (OUTBOUND_ALLOWED_PORTS of the ConfigMap), and by default those
    are the guard's own default: a port opened on one side only is either refused
    by the guard or dropped by the network, never both in step."""
    docs = built[overlay]
    internet = of_kind(docs, "NetworkPolicy")["erc8004-egress-internet"]["spec"]
    (rule,) = internet["egress"]
    opened = frozenset(int(p["port"]) for p in rule["ports"])
    assert {p.get("protocol", "TCP") for p in rule["ports"]} == {"TCP"}
    assert opened == parse_ports(config_value(docs, "OUTBOUND_ALLOWED_PORTS"))
    # The base's lists are the guard's default (an overlay may change both).
    base = build("base")
    (rule,) = of_kind(base, "NetworkPolicy")["erc8004-egress-internet"]["spec"]["egress"]
    default = parse_ports(DEFAULT_ALLOWED_PORTS)
    assert default == frozenset({80, 443})
    assert frozenset(int(p["port"]) for p in rule["ports"]) == default
    assert parse_ports(config_value(base, "OUTBOUND_ALLOWED_PORTS")) == default
    field = DispatcherSettings.model_fields["outbound_allowed_ports"]
    assert field.default == DEFAULT_ALLOWED_PORTS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_matches_its_release(built: dict[str, list[Doc]], overlay: str) -> None:
    """Applied first (deploy/k8s/deploy.sh): same image and Kafka as the
    services, the migration command, the owner's login."""
    services, migrate = built[overlay], built[f"{overlay}/migrate"]
    (job,) = of_kind(migrate, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "tools.migrate", "up"]
    images = {
        c["image"] for d, c in containers(services) if d["metadata"]["name"] not in THIRD_PARTY
    }
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


# --- production connections: Kafka SASL_SSL, PostgreSQL verify-full -------------

README = ROOT / "deploy" / "README.md"
#: The Kafka clients among the workloads (the indexer uses no Kafka:
#: test_the_indexer_uses_no_kafka), with the Secret key of each one's password.
KAFKA_USERS = {
    "erc8004-ingest": "KAFKA_PASSWORD_INGEST",
    "erc8004-matcher": "KAFKA_PASSWORD_MATCHER",
    "erc8004-dispatcher": "KAFKA_PASSWORD_DISPATCHER",
    "erc8004-api": "KAFKA_PASSWORD_API",
    "erc8004-migrate": "KAFKA_PASSWORD_MIGRATE",
}
#: The brokers' port each overlay talks to (prod: the SASL_SSL listener).
KAFKA_PORT = {"dev": 9092, "prod": 9093}
KAFKA_CA_SECRET = "erc8004-kafka-ca"
PG_CA_SECRET = "erc8004-pg-ca"
#: What every DATABASE_URL_* (and POSTGRES_EXPORTER_DSN) of prod ends in.
PG_TLS_QUERY = "?sslmode=verify-full&sslrootcert=/etc/erc8004/pg-ca/ca.crt"


def kafka_given(config: Doc, container: Doc, files: set[str]) -> KafkaSettings:
    """The Kafka settings a container starts with: its ConfigMap, its env, and a
    stand-in for each of its secret files (they are not in the repository).
    model_validate: the test process's own environment stays out."""
    given: dict[str, str] = dict(config["data"])
    given |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    given |= dict.fromkeys(files, "from-the-secret")
    return KafkaSettings.model_validate(given)


def secret_volume_items(pod: Doc, secret: str) -> dict[str, tuple[str, str]]:
    """File name -> (the Secret key it holds, the volume's name), of a pod's
    volumes from that Secret."""
    return {
        item["path"]: (item["key"], volume["name"])
        for volume in pod.get("volumes", [])
        if volume.get("secret", {}).get("secretName") == secret
        for item in volume["secret"].get("items", [])
    }


def mounted_file(pod: Doc, container: Doc, path: str) -> Doc:
    """The secret volume whose item is the file at ``path`` (its directory a
    read-only mount of that volume), or fail."""
    file = Path(path)
    (mount,) = (m for m in container.get("volumeMounts", []) if Path(m["mountPath"]) == file.parent)
    assert mount.get("readOnly") is True, mount
    volume: Doc
    (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, volume
    assert file.name in {i["path"] for i in volume["secret"]["items"]}, (path, volume)
    return volume


def workloads(docs: list[Doc]) -> dict[str, tuple[Doc, Doc]]:
    """Name -> (pod spec, its one container) of every Deployment, Job and CronJob."""
    found = {}
    for doc, container in containers(docs):
        found[doc["metadata"]["name"]] = (pod_template(doc)["spec"], container)
    return found


def test_the_indexer_uses_no_kafka() -> None:
    """Why the indexer is no Kafka client: nothing under services/indexer imports
    a Kafka library or the platform's Kafka modules (it posts to ingest)."""
    kafka_import = re.compile(
        r"^\s*(from|import)\s+(aiokafka|faststream|kafka|shared\.platform\.kafka\w*)\b", re.M
    )
    sources = sorted((ROOT / "services" / "indexer").rglob("*.py"))
    assert sources
    for source in sources:
        assert not kafka_import.search(source.read_text()), source
    assert kafka_import.search("from shared.platform.kafka_access import KafkaAccess")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_clients_connect_as_the_overlay_says(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """prod: every Kafka client (the four services and the migration Job) speaks
    SASL_SSL with SCRAM-SHA-512 as a Kafka user of its own, its password the
    secret file kafka_sasl_password under SECRETS_DIR from a Secret key of its
    own (never an environment variable), and KAFKA_SSL_CA_FILE names a file of
    the Secret erc8004-kafka-ca mounted read-only; the settings make a whole
    combination. dev stays on PLAINTEXT with no credentials. The indexer, in
    both, has no Kafka settings."""
    docs, migrate = built[overlay], built[f"{overlay}/migrate"]
    found = {**workloads(docs), **workloads(migrate)}
    users, keys = set(), set()
    for name, key in KAFKA_USERS.items():
        pod, container = found[name]
        config = migrate if name == "erc8004-migrate" else docs
        (config_map,) = (
            d
            for d in config
            if d["kind"] == "ConfigMap"
            and re.fullmatch(r"erc8004-(migrate-)?config-\w+", d["metadata"]["name"])
        )
        env = {e["name"]: e for e in container.get("env", [])}
        assert "KAFKA_SASL_PASSWORD" not in env, name  # a file, not a variable
        files = secret_volume_items(pod, "erc8004-secrets")
        kafka = kafka_given(config_map, container, set(files))
        if overlay == "dev":
            assert kafka.kafka_security_protocol == "PLAINTEXT", name
            assert not {k for k in env if k.startswith("KAFKA_")}, name
            assert "kafka_sasl_password" not in files, name
            continue
        assert kafka.kafka_security_protocol == "SASL_SSL", name
        assert kafka.kafka_sasl_mechanism == "SCRAM-SHA-512", name
        assert kafka.kafka_sasl_username == name, name  # its own user
        users.add(kafka.kafka_sasl_username)
        # The password file, from the workload's own key, in the directory the
        # settings read secret files from.
        secret_key, volume = files["kafka_sasl_password"]
        assert secret_key == key, name
        keys.add(secret_key)
        secrets_dir = (
            env["SECRETS_DIR"]["value"]
            if "SECRETS_DIR" in env
            else (config_map["data"].get("SECRETS_DIR", DEFAULT_SECRETS_DIR))
        )
        (mount,) = (m for m in container["volumeMounts"] if m["name"] == volume)
        assert mount["mountPath"] == secrets_dir, name
        assert mount["readOnly"] is True, name
        # The brokers' CA: a file of erc8004-kafka-ca where KAFKA_SSL_CA_FILE says.
        ca_volume = mounted_file(pod, container, kafka.kafka_ssl_ca_file)
        assert ca_volume["secret"]["secretName"] == KAFKA_CA_SECRET, name
        assert ca_volume["secret"]["items"] == [
            {"key": "ca.crt", "path": Path(kafka.kafka_ssl_ca_file).name}
        ], name
        assert kafka.kafka_ssl_check_hostname is True, name
    if overlay == "prod":
        assert len(users) == len(keys) == len(KAFKA_USERS)  # no two share a user or key
    # Only those: no other workload is given Kafka credentials or a protocol.
    for name, (pod, container) in found.items():
        if name not in KAFKA_USERS:
            names = {e["name"] for e in container.get("env", [])}
            assert not {k for k in names if k.startswith("KAFKA_")}, name
            assert "kafka_sasl_password" not in secret_volume_items(pod, "erc8004-secrets")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_kafka_egress_port_is_the_bootstrap_port(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """The brokers' port of KAFKA_BOOTSTRAP_SERVERS (services and migration Job
    alike) is the one the Kafka egress rule opens, and no other Kafka port is open."""
    docs = built[overlay]
    bootstrap = config_value(docs, "KAFKA_BOOTSTRAP_SERVERS")
    ports = {int(server.rsplit(":", 1)[1]) for server in bootstrap.split(",")}
    assert ports == {KAFKA_PORT[overlay]}
    policy = of_kind(docs, "NetworkPolicy")["erc8004-egress-dns-postgres-kafka"]
    opened = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert opened - {53, 5432} == ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_clients_mount_the_ca_their_urls_name(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """prod: every pod that connects to PostgreSQL (the five services,
    postgres-exporter, the backup CronJob, the migration Job, the restore pod)
    mounts the Secret erc8004-pg-ca's ca.crt read-only where the URLs'
    sslrootcert points (deploy/README.md and the overlay's comments say so). dev
    mounts none (its URLs name no CA); the restore pod's mount is optional, as it
    serves both."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(PG_TLS_QUERY).query)
    assert query["sslmode"] == ["verify-full"]
    (rootcert,) = query["sslrootcert"]
    readme = README.read_text()
    assert f"`{PG_TLS_QUERY}`" in readme
    overlay_text = ROOT / "deploy" / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    assert PG_TLS_QUERY in overlay_text.read_text()
    docs, migrate = built[overlay], built[f"{overlay}/migrate"]
    found = workloads(docs) | workloads(migrate)
    # Every workload here talks to PostgreSQL (the services, the exporter, the
    # backup, the migrations): each is checked.
    assert {f"erc8004-{s}" for s in SERVICES} | {
        "erc8004-postgres-exporter",
        BACKUP_CRONJOB,
        "erc8004-migrate",
    } == set(found)
    restore: Doc = yaml.safe_load((BACKUP / "restore-pod.yaml").read_text())
    (restore_container,) = restore["spec"]["containers"]
    pods = {**found, "erc8004-restore": (restore["spec"], restore_container)}
    for name, (pod, container) in pods.items():
        if overlay == "dev" and name != "erc8004-restore":
            assert not secret_volume_items(pod, PG_CA_SECRET), name
            continue
        volume = mounted_file(pod, container, rootcert)
        assert volume["secret"]["secretName"] == PG_CA_SECRET, name
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], name
        # Readable by the pod's user whatever its group (the exporter has no fsGroup).
        assert volume["secret"]["defaultMode"] & 0o004, name
        assert volume["secret"].get("optional", False) is (name == "erc8004-restore"), name


def readme_secret_keys() -> set[str]:
    """The keys of deploy/README.md's table of the Secret erc8004-secrets."""
    text = README.read_text()
    start = text.index("Secret `erc8004-secrets`")
    table = text[start:].split("\n\n| key |", 1)[1].split("\n\n", 1)[0]
    keys: set[str] = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        keys |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    return keys


def referenced_secret_keys(pods: list[tuple[Doc, Doc]], secret: str) -> set[str]:
    """The keys of that Secret these (pod spec, container) pairs read, as files
    or as environment variables."""
    keys = set()
    for pod, container in pods:
        keys |= {key for key, _ in secret_volume_items(pod, secret).values()}
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] == secret:
                keys.add(ref["key"])
    return keys


def test_the_readme_lists_every_secret_key_prod_references(built: dict[str, list[Doc]]) -> None:
    """The Secret table of deploy/README.md is what prod needs: every key prod's
    manifests (and its migration Job, and the restore pod) read from
    erc8004-secrets is a row, every row is read; the CA Secrets they mount are
    named there and in the set-up checklist."""
    restore: Doc = yaml.safe_load((BACKUP / "restore-pod.yaml").read_text())
    (restore_container,) = restore["spec"]["containers"]
    pods = [
        *workloads(built["prod"]).values(),
        *workloads(built["prod/migrate"]).values(),
        (restore["spec"], restore_container),
    ]
    referenced = referenced_secret_keys(pods, "erc8004-secrets")
    assert set(KAFKA_USERS.values()) <= referenced
    assert readme_secret_keys() == referenced
    text = README.read_text()
    checklist = text[text.index("### Production set-up, end to end") :].split("\n### ", 1)[0]
    for secret in ("erc8004-secrets", KAFKA_CA_SECRET, PG_CA_SECRET):
        assert f"`{secret}`" in checklist, secret
        assert secret in referenced_secret_names(pods), secret


def referenced_secret_names(pods: list[tuple[Doc, Doc]]) -> set[str]:
    names = set()
    for pod, container in pods:
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
    return names


# --- the indexer (services/indexer) ---------------------------------------------

INDEXER = "erc8004-indexer"
#: The indexer's settings that hold credentials: the chains' RPC URLs (API keys)
#: and its bearer token for ingest. Secret files only, never the ConfigMap.
INDEXER_SECRETS = ("INDEXER_CHAINS", "INGEST_TOKEN")
#: What the indexer's pods may reach: DNS, PostgreSQL, ingest, RPC endpoints.
INDEXER_EGRESS = {
    ("UDP", 53),
    ("TCP", 53),
    ("TCP", 5432),
    ("TCP", 8081),
    ("TCP", 443),
    ("TCP", 8545),
}
PRIVATE_NETWORKS = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}


def indexer_pod(docs: list[Doc]) -> tuple[Doc, Doc, Doc]:
    """The indexer's pod template, its pod spec and its one container."""
    template = pod_template(of_kind(docs, "Deployment")[INDEXER])
    (container,) = template["spec"]["containers"]
    return template, template["spec"], container


def secret_files(pod: Doc) -> dict[str, str]:
    """File name -> the Secret key it holds, of a pod's volume of erc8004-secrets."""
    (volume,) = (
        v["secret"]
        for v in pod["volumes"]
        if v.get("secret", {}).get("secretName") == "erc8004-secrets"
    )
    return {item["path"]: item["key"] for item in volume["items"]}


def ingress_rules(docs: list[Doc], labels: dict[str, str]) -> tuple[set[str], list[Doc]]:
    """The ingress policies that select a pod with these labels, and their rules."""
    names, rules = set(), []
    for name, policy in of_kind(docs, "NetworkPolicy").items():
        spec = policy["spec"]
        if "Ingress" in spec["policyTypes"] and selector_matches(spec["podSelector"], labels):
            names.add(name)
            rules.extend(spec.get("ingress", []))
    return names, rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_indexer_chains_and_token_come_from_the_secret(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """INDEXER_CHAINS (RPC URLs often carry an API key) and INGEST_TOKEN reach the
    indexer as files of its secret volume, from keys of the Secret; no ConfigMap
    holds them, no container has them in its environment, and no ConfigMap
    holds a chain list."""
    docs = built[overlay]
    _, pod, container = indexer_pod(docs)
    files = secret_files(pod)
    for name in INDEXER_SECRETS:
        assert files.get(name) == name, (name, files)  # the Secret's key of that name
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert not set(INDEXER_SECRETS) & set(doc.get("data", {})), doc["metadata"]["name"]
            for text in strings(doc.get("data", {})):
                assert "rpc_url" not in text, doc["metadata"]["name"]
    for doc, each in containers(docs):
        env = {e["name"] for e in each.get("env", [])}
        assert not set(INDEXER_SECRETS) & env, doc["metadata"]["name"]
        for source in each.get("envFrom", []):
            assert "secretRef" not in source, doc["metadata"]["name"]  # files, not variables
    # The ConfigMap the indexer reads its other settings from is the services' one.
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"].startswith("erc8004-config-")


def test_dev_secret_gives_the_indexer_valid_settings(built: dict[str, list[Doc]]) -> None:
    """dev's generated Secret and ConfigMap make settings the indexer accepts (at
    least one chain, each with a registry address), with a token ingest accepts;
    its RPC URLs appear nowhere but in the Secret."""
    docs = built["dev"]
    (secret,) = of_kind(docs, "Secret").values()
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    _, pod, container = indexer_pod(docs)
    (config,) = (
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("erc8004-config-")
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    given = {**config["data"], **env} | {
        path: values[key] for path, key in secret_files(pod).items()
    }
    settings = IndexerSettings(**given)
    assert settings.chains
    assert all(chain.contracts for chain in settings.chains)
    assert settings.http_port == 9103
    tokens = values["INGEST_TOKENS"].split(",")
    assert settings.ingest_token.get_secret_value() in tokens
    for chain in settings.chains:
        url = chain.rpc_url.get_secret_value()
        for doc in docs:
            if doc["kind"] != "Secret":
                assert url not in yaml.safe_dump(doc), doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_indexer_posts_to_the_ingest_service(built: dict[str, list[Doc]], overlay: str) -> None:
    """INGEST_URL names ingest's Service of the same namespace, at its port."""
    docs = built[overlay]
    url = urllib.parse.urlsplit(config_value(docs, "INGEST_URL"))
    assert url.scheme == "http"
    assert url.path in ("", "/")
    assert url.hostname
    host = url.hostname.split(".")
    assert host[0] == "erc8004-ingest", url.hostname
    (namespace,) = {d["metadata"]["namespace"] for d in docs}
    assert host[1:2] in ([], [namespace]), url.hostname  # the Service, or in this namespace
    service = of_kind(docs, "Service")["erc8004-ingest"]
    assert url.port in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_indexer_runs_a_follower_and_a_standby(built: dict[str, list[Doc]], overlay: str) -> None:
    """Two replicas (one per chain follows, the other stands by; dev: one), no
    autoscaler, a rollout that starts the new pod before stopping an old one,
    and a disruption budget that keeps one of them."""
    docs = built[overlay]
    deployment = of_kind(docs, "Deployment")[INDEXER]
    assert deployment["spec"]["replicas"] == (1 if overlay == "dev" else 2)
    hpas = of_kind(docs, "HorizontalPodAutoscaler").values()
    assert INDEXER not in {h["spec"]["scaleTargetRef"]["name"] for h in hpas}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert of_kind(docs, "PodDisruptionBudget")[INDEXER]["spec"]["maxUnavailable"] == 1
    template, _, container = indexer_pod(docs)
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "indexer"
    # Its readiness asks ingest, then the RPC endpoints (3 s at most each).
    assert container["readinessProbe"]["timeoutSeconds"] > 2 * 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_indexer_reaches_dns_postgres_ingest_and_rpc_only(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """Egress: DNS (the cluster's resolver), PostgreSQL (the chains' locks; at its
    network in prod, as for the services), ingest's pods on their HTTP port, and
    the RPC endpoints on 443 and 8545 at public addresses (dev: also its own
    namespace's node), no Kafka. Only the indexer gets the RPC egress."""
    docs = built[overlay]
    template, _, _ = indexer_pod(docs)
    labels = template["metadata"]["labels"]
    policies = of_kind(docs, "NetworkPolicy")
    names, rules = egress_rules(docs, labels)
    assert names == {"erc8004-default-deny", "erc8004-indexer-egress", "erc8004-egress-rpc"}
    ingest = pod_template(of_kind(docs, "Deployment")["erc8004-ingest"])
    (ingest_container,) = ingest["spec"]["containers"]
    ingest_ports = {p["containerPort"] for p in ingest_container["ports"]}
    allowed = set()
    for rule in rules:
        assert rule.get("ports"), rule  # a rule without ports would open every port
        ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
        allowed |= ports
        if ports <= {("UDP", 53), ("TCP", 53)}:
            assert rule["to"] == [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ]
        elif ports == {("TCP", 5432)}:
            if overlay == "prod":
                shared = policies["erc8004-egress-dns-postgres-kafka"]
                (postgres,) = (
                    r for r in shared["spec"]["egress"] if {p["port"] for p in r["ports"]} == {5432}
                )
                assert rule["to"] == postgres["to"]
        elif ports == {("TCP", 8081)}:
            (peer,) = rule["to"]
            assert set(peer) == {"podSelector"}, peer  # ingest's pods, nothing else
            assert selector_matches(peer["podSelector"], ingest["metadata"]["labels"])
            assert {p for _, p in ports} <= ingest_ports
        elif all(to.get("ipBlock") for to in rule["to"]):
            assert ports == {("TCP", 443), ("TCP", 8545)}, rule
            for to in rule["to"]:
                block = to["ipBlock"]
                assert ipaddress.ip_network(block["cidr"]).prefixlen == 0, block
                if ipaddress.ip_network(block["cidr"]).version == 4:
                    assert set(block["except"]) >= PRIVATE_NETWORKS, block
                else:
                    assert "fc00::/7" in block["except"], block
        else:  # dev: the node in its own namespace
            assert overlay == "dev", rule
            assert rule["to"] == [{"podSelector": {}}], rule
            assert ports == {("TCP", 8545)}, rule
    assert allowed == INDEXER_EGRESS
    with_rpc = {
        name
        for name, d in of_kind(docs, "Deployment").items()
        if d["spec"]["template"]["metadata"]["labels"].get("erc8004.io/egress-rpc") == "true"
    }
    assert with_rpc == {INDEXER}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_indexer_is_let_in_by_ingest_and_lets_in_the_scrape_only(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """No ingress into the indexer but Prometheus' scrape of its metrics port;
    ingest takes its requests; in dev, the namespace's Hardhat node (none of our
    pods) lets it in on 8545, and that policy opens no pod of ours."""
    docs = built[overlay]
    template, _, container = indexer_pod(docs)
    labels = template["metadata"]["labels"]
    ingest = pod_template(of_kind(docs, "Deployment")["erc8004-ingest"])
    (ingest_container,) = ingest["spec"]["containers"]
    ingest_ports = {p["containerPort"] for p in ingest_container["ports"]}
    names, rules = ingress_rules(docs, labels)
    assert names == {"erc8004-default-deny", "erc8004-ingress-metrics"}
    (scrape,) = rules
    assert scrape["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert {p["name"] for p in container["ports"]} == {"metrics"}
    # ingest takes the indexer's requests on its HTTP port.
    _, ingest_rules = ingress_rules(docs, ingest["metadata"]["labels"])
    assert any(
        "from" not in r and {p["port"] for p in r["ports"]} & {"http", *ingest_ports}
        for r in ingest_rules
    )
    # dev: its Hardhat node (a pod of this namespace, none of ours) lets the
    # indexer in on 8545, and no pod of ours is opened by that.
    node = {"app.kubernetes.io/name": "hardhat"}
    names, rules = ingress_rules(docs, node)
    assert names - {"erc8004-default-deny"} == (
        {"erc8004-dev-rpc-node-ingress"} if overlay == "dev" else set()
    )
    for rule in rules:
        assert {p["port"] for p in rule["ports"]} == {8545}, rule
        (peer,) = rule["from"]
        assert selector_matches(peer["podSelector"], labels), rule
    if overlay == "dev":
        opened = of_kind(docs, "NetworkPolicy")["erc8004-dev-rpc-node-ingress"]["spec"]
        for name, d in of_kind(docs, "Deployment").items():
            pod_labels = d["spec"]["template"]["metadata"]["labels"]
            assert not selector_matches(opened["podSelector"], pod_labels), name


# --- the scheduled logical backup (deploy/k8s/backup) -----------------------------

BACKUP = ROOT / "deploy" / "k8s" / "backup"
BACKUP_CRONJOB = "erc8004-backup"
#: Where the backup is on (dev: suspended, run on demand; deploy/README.md).
BACKUP_SUSPENDED = {"dev": True, "prod": False}
#: What the backup and restore pods may reach: DNS and PostgreSQL, nothing else.
BACKUP_EGRESS = {("UDP", 53), ("TCP", 53), ("TCP", 5432)}
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_QUANTITY = re.compile(r"(\d+)(Ki|Mi|Gi|Ti)?")
_CREDENTIALS_IN_URL = re.compile(r"://[^/@\s]*:[^/@\s]*@")


def cron_field(field: str, low: int, high: int) -> set[int]:
    """The values of one numeric cron field (*, n, a-b, with /step, comma lists);
    anything else (names, macros, out of range) fails the test."""
    values: set[int] = set()
    for part in field.split(","):
        match = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", part)
        assert match, f"not a cron field: {field!r}"
        span, step = match.group(1), int(match.group(2) or 1)
        if span == "*":
            first, last = low, high
        else:
            start, _, end = span.partition("-")
            first = int(start)
            # n/step: from n to the end of the range (Kubernetes' cron parser)
            last = int(end) if end else (high if match.group(2) else first)
        assert low <= first <= last <= high, f"out of range {low}-{high}: {field!r}"
        assert step >= 1, field
        values.update(range(first, last + 1, step))
    return values


def cron_schedule(schedule: str) -> list[set[int]]:
    fields = schedule.split()
    assert len(fields) == 5, f"not a five-field cron schedule: {schedule!r}"
    return [cron_field(f, lo, hi) for f, (lo, hi) in zip(fields, _CRON_RANGES, strict=True)]


def quantity_bytes(quantity: str) -> int:
    match = _QUANTITY.fullmatch(quantity)
    assert match, quantity
    power = {None: 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(match.group(1)) << (10 * power)


def selector_matches(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) on labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[expression["operator"]]:
            return False
    return True


def egress_rules(docs: list[Doc], labels: dict[str, str]) -> tuple[set[str], list[Doc]]:
    """The egress policies that select a pod with these labels, and their rules."""
    names, rules = set(), []
    for name, policy in of_kind(docs, "NetworkPolicy").items():
        spec = policy["spec"]
        if "Egress" in spec["policyTypes"] and selector_matches(spec["podSelector"], labels):
            names.add(name)
            rules.extend(spec.get("egress", []))
    return names, rules


def strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def backup_job(docs: list[Doc]) -> tuple[Doc, Doc, Doc]:
    """The backup CronJob, its pod spec and its one container."""
    cronjob = of_kind(docs, "CronJob")[BACKUP_CRONJOB]
    pod = pod_template(cronjob)["spec"]
    (container,) = pod["containers"]
    return cronjob, pod, container


def assert_restricted(pod: Doc, container: Doc, name: str) -> None:
    """The restricted Pod Security Standard, and a read-only root with /tmp apart."""
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True, name
    assert context["runAsUser"] > 0, name
    assert context["seccompProfile"]["type"] == "RuntimeDefault", name
    assert pod["automountServiceAccountToken"] is False, name
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False, name
    assert own["readOnlyRootFilesystem"] is True, name
    assert own.get("privileged", False) is False, name
    assert own["capabilities"] == {"drop": ["ALL"]}, name
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = (m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")  # noqa: S108
    assert "emptyDir" in volumes[tmp["name"]], name


def assert_database_login_from_the_secret(container: Doc, name: str) -> None:
    """The schema owner's login comes from the Secret (the migration Job's key);
    no environment variable carries a credential as a literal."""
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "erc8004-secrets",
        "key": "DATABASE_URL_MIGRATE",
    }, name
    for var in env.values():
        if "value" in var:
            assert not re.search(r"PASS|URL|DSN|SECRET|TOKEN", var["name"]), (name, var)
            assert not _CREDENTIALS_IN_URL.search(var["value"]), (name, var)
    assert "PGPASSWORD" not in env, name  # backup.sh sets it from DATABASE_URL
    for arg in (*container.get("command", []), *container.get("args", [])):
        assert "DATABASE_URL" not in arg, (name, arg)  # never expanded on a command line


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backup_runs_daily_one_at_a_time(built: dict[str, list[Doc]], overlay: str) -> None:
    """Present in both overlays (the base has it), suspended in dev only; a valid
    daily schedule, never two runs at once, bounded retries and duration."""
    cronjob, pod, container = backup_job(built[overlay])
    spec = cronjob["spec"]
    assert spec.get("suspend", False) is BACKUP_SUSPENDED[overlay]
    minutes, hours, days, months, weekdays = cron_schedule(spec["schedule"])
    assert len(minutes) == len(hours) == 1, spec["schedule"]  # once a day
    assert days == set(range(1, 32))
    assert months == set(range(1, 13))
    assert weekdays >= set(range(7))
    zoneinfo.ZoneInfo(spec["timeZone"])  # a real time zone name
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 86400
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1  # a failed run's pod and log stay
    job = spec["jobTemplate"]["spec"]
    assert 1 <= job["backoffLimit"] <= 5
    assert 0 < job["activeDeadlineSeconds"] < 86400  # over before the next run
    assert pod["restartPolicy"] == "Never"
    assert_restricted(pod, container, BACKUP_CRONJOB)
    # The official postgres image, pinned to a major that dumps PostgreSQL 15+.
    match = re.fullmatch(r"postgres:(\d+)(?:\.\d+)*-alpine[\d.]*", container["image"])
    assert match, container["image"]
    assert int(match.group(1)) >= 15
    assert container["command"] == ["/bin/sh", "/scripts/backup.sh"]
    assert container["args"] == ["dump"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backup_runs_the_script_and_retention_of_its_config_map(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    docs = built[overlay]
    _, pod, container = backup_job(docs)
    configs = of_kind(docs, "ConfigMap")
    volumes = {v["name"]: v for v in pod["volumes"]}
    (scripts,) = (m for m in container["volumeMounts"] if m["mountPath"] == "/scripts")
    config = volumes[scripts["name"]]["configMap"]
    assert config["items"] == [{"key": "backup.sh", "path": "backup.sh"}]
    assert configs[config["name"]]["data"]["backup.sh"] == (BACKUP / "backup.sh").read_text()
    (retention,) = (e for e in container["env"] if e["name"] == "BACKUP_RETENTION_DAYS")
    ref = retention["valueFrom"]["configMapKeyRef"]
    assert int(configs[ref["name"]]["data"][ref["key"]]) >= 1


def test_backup_retention_defaults_to_fourteen_days() -> None:
    (config,) = (d for d in build("backup") if d["kind"] == "ConfigMap")
    assert config["data"]["BACKUP_RETENTION_DAYS"] == "14"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backup_password_comes_from_the_secret_only(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    docs = built[overlay]
    cronjob, _, container = backup_job(docs)
    assert_database_login_from_the_secret(container, BACKUP_CRONJOB)
    backup_objects = [
        cronjob,
        *(d for d in docs if d["metadata"]["name"].startswith("erc8004-backup")),
    ]
    for doc in backup_objects:
        data = {k: v for k, v in doc.get("data", {}).items() if k != "backup.sh"}  # code
        for text in strings(dict(doc, data=data)):
            assert not _CREDENTIALS_IN_URL.search(text), text
    if overlay == "dev":  # the one Secret in the repository: its password appears nowhere else
        (secret,) = of_kind(docs, "Secret").values()
        url = base64.b64decode(secret["data"]["DATABASE_URL_MIGRATE"]).decode()
        password = urllib.parse.urlsplit(url).password
        assert password
        for doc in backup_objects:  # (the dev namespace is named like the password)
            content = doc.get("spec", doc.get("data"))
            assert password not in yaml.safe_dump(content), doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backup_writes_to_a_claim_of_the_same_build(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    docs = built[overlay]
    _, pod, container = backup_job(docs)
    claims = of_kind(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = (
        m for m in container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]
    )
    claim = claims[volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]]
    assert mount["mountPath"] == env["BACKUP_DIR"]
    assert not mount.get("readOnly", False)
    assert "ReadWriteOnce" in claim["spec"]["accessModes"]
    size = quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
    assert size >= (50 * 1024**3 if overlay == "prod" else 1024**3), size  # set by the overlay
    # The non-root user writes to the volume through the pod's fsGroup.
    context = pod["securityContext"]
    assert context["fsGroup"] == context["runAsGroup"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backup_pods_reach_postgres_and_dns_only(built: dict[str, list[Doc]], overlay: str) -> None:
    docs = built[overlay]
    cronjob, _, _ = backup_job(docs)
    labels = pod_template(cronjob)["metadata"]["labels"]
    names, rules = egress_rules(docs, labels)
    assert "erc8004-default-deny" in names
    assert "erc8004-egress-internet" not in names
    allowed = set()
    for rule in rules:
        assert rule.get("ports"), rule  # a rule without ports would open every port
        ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
        allowed |= ports
        if ports <= {("UDP", 53), ("TCP", 53)}:  # DNS: the cluster's resolver only
            assert rule["to"] == [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ]
        elif overlay == "prod":  # PostgreSQL at its network, as for the services
            shared = of_kind(docs, "NetworkPolicy")["erc8004-egress-dns-postgres-kafka"]
            (postgres,) = (
                r for r in shared["spec"]["egress"] if {p["port"] for p in r["ports"]} == {5432}
            )
            assert rule["to"] == postgres["to"]
    assert allowed == BACKUP_EGRESS
    # The services and the migration Job keep DNS, PostgreSQL and Kafka (the
    # indexer needs no Kafka: test_indexer_reaches_dns_postgres_ingest_and_rpc_only).
    migrate = built[f"{overlay}/migrate"]
    for doc, _ in (*containers(docs), *containers(migrate)):
        if doc is not cronjob:
            pod_labels = pod_template(doc)["metadata"]["labels"]
            names, _ = egress_rules(docs, pod_labels)
            in_shared = "erc8004-egress-dns-postgres-kafka" in names
            assert in_shared is (doc["metadata"]["name"] != INDEXER), doc["metadata"]["name"]


def test_restore_pod_matches_the_backup(built: dict[str, list[Doc]]) -> None:
    """deploy/k8s/backup/restore-pod.yaml (applied by hand, deploy/README.md):
    valid, restricted, the CronJob's image, login and claim (read-only), and the
    backup's network policy."""
    pod_doc: Doc = yaml.safe_load((BACKUP / "restore-pod.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod_doc, version, strict=True)
    pod = pod_doc["spec"]
    (container,) = pod["containers"]
    assert_restricted(pod, container, "erc8004-restore")
    assert_database_login_from_the_secret(container, "erc8004-restore")
    assert 0 < pod["activeDeadlineSeconds"] <= 86400  # a forgotten pod goes away
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/backups"]["readOnly"] is True
    assert volumes[mounts["/backups"]["name"]]["persistentVolumeClaim"]["readOnly"] is True
    for overlay in OVERLAYS:
        docs = built[overlay]
        cronjob, job_pod, job_container = backup_job(docs)
        assert container["image"] == job_container["image"], overlay
        job_volumes = {v["name"]: v for v in job_pod["volumes"]}
        job_mounts = {m["mountPath"]: m["name"] for m in job_container["volumeMounts"]}
        claim = job_volumes[job_mounts["/backups"]]["persistentVolumeClaim"]["claimName"]
        assert volumes[mounts["/backups"]["name"]]["persistentVolumeClaim"]["claimName"] == claim
        scripts = job_volumes[job_mounts["/scripts"]]["configMap"]
        assert volumes[mounts["/scripts"]["name"]]["configMap"] == scripts, overlay
        assert (
            pod["securityContext"]["runAsUser"] == job_pod["securityContext"]["runAsUser"]
        )  # reads the dumps (mode 0600) the job wrote
        names, _ = egress_rules(docs, pod_doc["metadata"]["labels"])
        assert names == egress_rules(docs, pod_template(cronjob)["metadata"]["labels"])[0]


# --- lag-based autoscaling (deploy/k8s/components/lag-autoscaling) ----------------

LAG_AUTOSCALING = ROOT / "deploy" / "k8s" / "components" / "lag-autoscaling"
ADAPTER_RULES = LAG_AUTOSCALING / "prometheus-adapter-rules.yaml"
#: Where the component is enabled (deploy/README.md, "Autoscaling").
LAG_AUTOSCALED = {"dev": False, "prod": True}
#: The metric definitions each consumer registers (its metrics.py).
CONSUMER_METRICS: dict[str, Callable[[CollectorRegistry], object]] = {
    "erc8004-matcher": MatcherMetrics.create,
    "erc8004-dispatcher": DispatcherMetrics.create,
}
#: The fields of a prometheus-adapter rule (its pkg/config/config.go, DiscoveryRule).
ADAPTER_RULE_FIELDS = {
    "seriesQuery", "seriesFilters", "resources", "name", "metricsQuery", "labelValueReplacements",
}  # fmt: skip
_DECIMAL_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|k|M)?")


def registered(deployment: str) -> dict[str, Family]:
    """The metric families the consumer of this Deployment registers."""
    registry = CollectorRegistry()
    CONSUMER_METRICS[deployment](registry)
    return families(registry)


def quantity_value(quantity: str | int) -> float:
    match = _DECIMAL_QUANTITY.fullmatch(str(quantity))
    assert match, quantity
    return float(match.group(1)) * {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6}[match.group(2)]


def metrics_by_type(hpa: Doc) -> dict[str, Doc]:
    """An HPA's metrics by type (each type at most once)."""
    types = [m["type"] for m in hpa["spec"]["metrics"]]
    assert len(types) == len(set(types)), (hpa["metadata"]["name"], types)
    return {m["type"]: m for m in hpa["spec"]["metrics"]}


def external_metric(hpa: Doc) -> str:
    name: str = metrics_by_type(hpa)["External"]["external"]["metric"]["name"]
    return name


def adapter_rules() -> tuple[Doc, list[Doc]]:
    """The ConfigMap fragment and its externalRules."""
    config_map: Doc = yaml.safe_load(ADAPTER_RULES.read_text())
    (key,) = config_map["data"]
    assert key == "config.yaml"  # the key the adapter's --config points at
    config = yaml.safe_load(config_map["data"][key])
    assert set(config) == {"externalRules"}  # merged into the platform's, nothing else
    rules: list[Doc] = config["externalRules"]
    return config_map, rules


def series_of(rule: Doc) -> str:
    """The one metric a rule's seriesQuery (a series selector) finds."""
    selector = promql_parser.parse(rule["seriesQuery"])
    assert isinstance(selector, promql_parser.VectorSelector), rule["seriesQuery"]
    names = [m.value for m in selector.matchers.matchers if m.name == "__name__"]
    name = selector.name or (names[0] if len(names) == 1 else None)
    assert name, rule["seriesQuery"]
    assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), rule["seriesQuery"]
    return str(name)


def namespace_label(rule: Doc) -> str:
    """The label the adapter maps to the HPA's namespace."""
    overrides = rule["resources"]["overrides"]
    (label,) = (k for k, v in overrides.items() if v["resource"] in ("namespace", "namespaces"))
    return str(label)


def render_external_query(rule: Doc, *, namespace: str) -> str:
    """The query prometheus-adapter sends for an HPA's External metric without a
    selector, in `namespace` (its pkg/naming/metrics_query.go, BuildExternal:
    <<.LabelMatchers>> holds the selector's matchers and the namespace, <<.GroupBy>>
    is empty for external metrics)."""
    args = {
        "Series": series_of(rule),
        "LabelMatchers": f'{namespace_label(rule)}="{namespace}"',
        "GroupBy": "",
    }
    query = re.sub(r"<<\s*\.(\w+)\s*>>", lambda m: args[m.group(1)], rule["metricsQuery"])
    assert "<<" not in query, query
    assert ">>" not in query, query
    return query


def alert_threshold(metric: str) -> float:
    """The lag alert's threshold on this metric (deploy/prometheus/erc8004-rules.yaml)."""
    rules = yaml.safe_load(RULES.read_text())
    (expr,) = (
        r["expr"]
        for g in rules["groups"]
        for r in g["rules"]
        if "alert" in r and re.search(rf"\b{metric}\b", r["expr"])
    )
    match = re.fullmatch(rf"max by \(namespace, cluster\) \({metric}\) > (\d+)", expr.strip())
    assert match, expr
    return float(match.group(1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumers_scale_on_cpu_and_where_enabled_on_their_lag(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """CPU everywhere (the base); the External lag metric where the overlay lists
    the component: prod, not dev."""
    hpas = of_kind(built[overlay], "HorizontalPodAutoscaler")
    assert set(hpas) == set(CONSUMER_METRICS)
    for name, hpa in hpas.items():
        metrics = metrics_by_type(hpa)
        cpu = metrics["Resource"]["resource"]
        assert cpu["name"] == "cpu", name
        assert cpu["target"]["type"] == "Utilization", name
        assert 0 < cpu["target"]["averageUtilization"] <= 100, name
        expected = {"Resource", "External"} if LAG_AUTOSCALED[overlay] else {"Resource"}
        assert set(metrics) == expected, (overlay, name)
    kustomization = yaml.safe_load(
        (ROOT / "deploy" / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text()
    )
    listed = "../../components/lag-autoscaling" in kustomization.get("components", [])
    assert listed is LAG_AUTOSCALED[overlay]


def test_lag_metrics_are_the_gauges_the_consumers_register(built: dict[str, list[Doc]]) -> None:
    """The External metric of each HPA is its own service's consumer-lag gauge, by
    the exact name services/<name>/metrics.py registers, about the topic the
    Deployment consumes; the target is a positive lag per replica, low enough
    that the HPA has added replicas by the time the lag alert fires."""
    hpas = of_kind(built["prod"], "HorizontalPodAutoscaler")
    for name, hpa in hpas.items():
        external = metrics_by_type(hpa)["External"]["external"]
        metric = external["metric"]["name"]
        definitions = registered(name)
        assert metric in definitions, (name, metric, sorted(definitions))
        gauge = definitions[metric]
        assert gauge.type == "gauge", (metric, gauge.type)
        assert CONSUMES[name] in gauge.documentation, (metric, gauge.documentation)
        # A selector may only name labels the series carries.
        selector = external["metric"].get("selector", {})
        assert not selector.get("matchExpressions"), metric
        assert set(selector.get("matchLabels", {})) <= gauge.labels | TARGET_LABELS, metric
        # Per replica: the HPA wants ceil(lag / averageValue) replicas.
        target = external["target"]
        assert set(target) == {"type", "averageValue"}, target
        assert target["type"] == "AverageValue", target
        per_replica = quantity_value(target["averageValue"])
        assert per_replica >= 1, target
        assert alert_threshold(metric) / per_replica > hpa["spec"]["minReplicas"], (
            metric,
            per_replica,
        )
        assert hpa["spec"]["maxReplicas"] <= PARTITIONS[CONSUMES[name]], name


def test_lag_autoscaling_behaviour_is_set(built: dict[str, list[Doc]]) -> None:
    """Both directions set: up only on a lag that lasted (it reaches the HPA late,
    and a rebalance makes it jump), down slowly and one pod at a time (each step
    rebalances the group)."""
    for name, hpa in of_kind(built["prod"], "HorizontalPodAutoscaler").items():
        behavior = hpa["spec"]["behavior"]
        assert set(behavior) == {"scaleUp", "scaleDown"}, name
        for direction in behavior.values():
            assert direction["policies"], name
            assert direction["selectPolicy"] in ("Max", "Min"), name
            for policy in direction["policies"]:
                assert policy["type"] in ("Pods", "Percent"), (name, policy)
                assert policy["value"] > 0, (name, policy)
                assert 0 < policy["periodSeconds"] <= 1800, (name, policy)
        up, down = behavior["scaleUp"], behavior["scaleDown"]
        assert 60 <= up["stabilizationWindowSeconds"] <= 600, name
        assert down["stabilizationWindowSeconds"] >= 300, name
        assert down["stabilizationWindowSeconds"] > up["stabilizationWindowSeconds"], name
        assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}], name
        # Up to the partitions within the lag alerts' 10 minutes (a step per period).
        (step,) = up["policies"]
        assert step["type"] == "Pods", name
        steps = -(-(hpa["spec"]["maxReplicas"] - hpa["spec"]["minReplicas"]) // step["value"])
        assert up["stabilizationWindowSeconds"] + (steps - 1) * step["periodSeconds"] < 600, name


def test_adapter_rules_expose_exactly_the_hpas_lag_metrics(built: dict[str, list[Doc]]) -> None:
    """prometheus-adapter-rules.yaml: a valid ConfigMap, whose external rules use
    only the adapter's fields, find the consumers' gauges (with labels they have)
    and serve each under the name the HPA asks for."""
    config_map, rules = adapter_rules()
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(config_map, version, strict=True)
    hpas = of_kind(built["prod"], "HorizontalPodAutoscaler")
    wanted = {external_metric(hpa): name for name, hpa in hpas.items()}
    served = []
    for rule in rules:
        assert set(rule) <= ADAPTER_RULE_FIELDS, sorted(set(rule) - ADAPTER_RULE_FIELDS)
        assert {"seriesQuery", "resources", "metricsQuery"} <= set(rule), rule
        # No name mapping: the external metric keeps the series' name.
        assert "name" not in rule, rule
        series = series_of(rule)
        served.append(series)
        assert series in wanted, (series, sorted(wanted))
        gauge = registered(wanted[series])[series]
        selector = promql_parser.parse(rule["seriesQuery"])
        assert isinstance(selector, promql_parser.VectorSelector), rule["seriesQuery"]
        labels = {m.name for m in selector.matchers.matchers} - {"__name__"}
        assert labels <= gauge.labels | TARGET_LABELS, (series, labels)
        # The namespace: a label every scraped series gets from its target.
        assert namespace_label(rule) in TARGET_LABELS - gauge.labels, rule
    assert sorted(served) == sorted(wanted)  # each HPA metric by exactly one rule


def test_adapter_queries_are_promql_giving_the_groups_lag_once(
    built: dict[str, list[Doc]],
) -> None:
    """Each metricsQuery, rendered as the adapter renders it for an HPA in prod's
    namespace, parses as PromQL (promql-parser) and is max() without grouping
    over the gauge in that namespace: every replica reports the whole group's
    lag and the HPA sums what an external metric returns, so it must be one
    value, not one per replica."""
    _, rules = adapter_rules()
    hpas = of_kind(built["prod"], "HorizontalPodAutoscaler")
    (namespace,) = {hpa["metadata"]["namespace"] for hpa in hpas.values()}
    consumer = {external_metric(hpa): name for name, hpa in hpas.items()}
    for rule in rules:
        series = series_of(rule)
        query = render_external_query(rule, namespace=namespace)
        try:
            expr = promql_parser.parse(query)
        except ValueError as exc:
            pytest.fail(f"{series}: {exc}: {query}")
        assert isinstance(expr, promql_parser.AggregateExpr), query
        assert str(expr.op) == "max", query
        assert expr.modifier is None, query  # no by/without: one series
        assert expr.param is None, query
        selector = expr.expr
        assert isinstance(selector, promql_parser.VectorSelector), query
        assert selector.name == series, query
        matchers = {(m.name, str(m.op), m.value) for m in selector.matchers.matchers}
        assert matchers == {(namespace_label(rule), "MatchOp.Equal", namespace)}, matchers
        # The repository's reading of a query's metrics and labels agrees.
        analysed = analyse(series, query)
        assert analysed.metrics == {series}, analysed
        assert analysed.labels <= registered(consumer[series])[series].labels, analysed
        # Unrendered, the template is not PromQL: the parse above is not vacuous.
        with pytest.raises(ValueError):  # noqa: PT011 (promql-parser raises ValueError)
            promql_parser.parse(rule["metricsQuery"])


KUBECTL_STUB = """#!/bin/sh
# kubectl for deploy.sh's test: logs its arguments, reads what is applied, and
# serves the external metrics API only when KUBECTL_SERVES=1.
printf '%s\\n' "$*" >> "$KUBECTL_LOG"
case "$*" in
  "get --raw "*) [ "$KUBECTL_SERVES" = 1 ] && echo '{"items": []}' && exit 0; exit 1 ;;
  "apply -f -") cat > /dev/null ;;
esac
exit 0
"""


@pytest.mark.parametrize(("overlay", "served"), [("dev", False), ("prod", False), ("prod", True)])
def test_deploy_script_checks_the_external_metrics_first(
    built: dict[str, list[Doc]], tmp_path: Path, overlay: str, served: bool
) -> None:
    """deploy.sh asks the external metrics API for each External metric of the
    overlay's HPAs before it applies anything, and warns (does not stop) when one
    is not served: such an HPA would never scale down. A stub kubectl records the
    calls; nothing reaches a cluster."""
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text(KUBECTL_STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "kubectl.log"
    env = {
        **os.environ,
        "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
        "KUSTOMIZE": str(tool("kustomize")),
        "KUBECTL_LOG": str(log),
        "KUBECTL_SERVES": "1" if served else "0",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "k8s" / "deploy.sh"), overlay],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    hpas = of_kind(built[overlay], "HorizontalPodAutoscaler")
    (namespace,) = {hpa["metadata"]["namespace"] for hpa in hpas.values()}
    external = sorted(
        m["external"]["metric"]["name"]
        for hpa in hpas.values()
        for m in hpa["spec"]["metrics"]
        if m["type"] == "External"
    )
    asked = [c.removeprefix("get --raw ") for c in calls if c.startswith("get --raw ")]
    assert asked == [
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{m}" for m in external
    ]
    assert bool(asked) is LAG_AUTOSCALED[overlay]
    first_apply = next(i for i, c in enumerate(calls) if c == "apply -f -")
    assert all(calls.index(f"get --raw {a}") < first_apply for a in asked)
    assert calls.count("apply -f -") == 2  # the migration Job, then the services
    warned = [m for m in external if f"external metric {m} is not served" in result.stderr]
    assert warned == ([] if served else external), result.stderr


DASHBOARD = ROOT / "deploy" / "grafana" / "erc8004-backend.json"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_alerts_and_the_dashboard_deploy_with_the_rest(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """The PrometheusRule carries the rule file promtool tests, every alert of it;
    the dashboard is a ConfigMap Grafana's sidecar picks up by its label; prod
    labels the rule for the Operator's selector like its ServiceMonitors."""
    docs = built[overlay]
    (rule,) = of_kind(docs, "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = yaml.safe_load(RULES.read_text())
    assert rule["spec"] == rules
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert len(alerts) > 10
    dashboard = of_kind(docs, "ConfigMap")["erc8004-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["erc8004-backend.json"]) == json.loads(
        DASHBOARD.read_text()
    )
    if overlay == "prod":
        monitors = of_kind(docs, "ServiceMonitor").values()
        release = {m["metadata"]["labels"]["release"] for m in monitors}
        assert rule["metadata"]["labels"]["release"] in release


def test_the_committed_prometheus_rule_is_the_rule_file() -> None:
    """deploy/prometheus/prometheusrule.yaml is generated (make manifests)."""
    prometheus_rule.main(["--check"])  # raises SystemExit(1) when stale
    assert prometheus_rule.RESOURCE.read_text() == prometheus_rule.render()


def test_an_overlay_can_point_every_runbook_at_its_own_docs(tmp_path: Path) -> None:
    """The example of deploy/README.md ("Monitoring"): a replacement puts a base URL
    in front of every alert's runbook anchor."""
    base = "https://docs.example/erc8004/runbooks.md"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    prod = ROOT / "deploy" / "k8s" / "overlays" / "prod"
    (overlay / "kustomization.yaml").write_text(
        RUNBOOK_OVERLAY.format(prod=os.path.relpath(prod, overlay), base=base)
    )
    result = run("kustomize", "build", str(overlay), timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (rule,) = of_kind(docs, "PrometheusRule").values()
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    wanted = [
        f"{base}#{r['annotations']['runbook_url'].partition('#')[2]}"
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
    ]
    assert urls == wanted


#: The overlay of deploy/README.md's example, to the letter but for the paths.
RUNBOOK_OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {prod}
configMapGenerator:
  - name: erc8004-config
    behavior: merge
    literals:
      - RUNBOOK_BASE_URL={base}
replacements:
  - source:
      kind: ConfigMap
      name: erc8004-config
      fieldPath: data.RUNBOOK_BASE_URL
    targets:
      - select:
          kind: PrometheusRule
        fieldPaths:
          - spec.groups.*.rules.*.annotations.runbook_url
        options:
          delimiter: "#"
          index: 0
"""
