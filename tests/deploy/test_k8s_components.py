"""The opt-in Kustomize components for Kafka- and cluster-native deployments, built
offline on top of the base (and the migration kustomization) the way an overlay
lists them: components/strimzi (KafkaTopics from shared/contract/topics.py, a
KafkaUser per service whose ACLs are exactly what the service uses, the clients
wired to their user's Secret and the cluster CA) and components/keda
(ScaledObjects on the consumers' lag, in place of the base's HPAs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml

from services.api.settings import ApiSettings
from services.dispatcher.settings import DispatcherSettings
from services.ingest.settings import IngestSettings
from services.matcher.settings import MatcherSettings
from shared.contract.topics import TOPICS
from shared.platform.settings import KafkaSettings, ServiceSettings
from tests.deploy.test_k8s import (
    CONSUMER_METRICS,
    CONSUMES,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    PARTITIONS,
    build,
    config_value,
    metrics_by_type,
    of_kind,
    pod_template,
    quantity_value,
    registered,
)
from tests.deploy.tools import ROOT, run
from tools.migrate import topics_wanted

pytestmark = [pytest.mark.unit, pytest.mark.xdist_group("k8s-components")]

Doc = dict[str, Any]
K8S = ROOT / "deploy" / "k8s"
CRD_KINDS = {"KafkaTopic", "KafkaUser", "ScaledObject", "ServiceMonitor", "PrometheusRule"}
#: The services that use Kafka, by Deployment, with their settings.
KAFKA_CLIENTS: dict[str, type[ServiceSettings]] = {
    "erc8004-ingest": IngestSettings,
    "erc8004-matcher": MatcherSettings,
    "erc8004-dispatcher": DispatcherSettings,
    "erc8004-api": ApiSettings,
}
READ, WRITE, DESCRIBE = "Read", "Write", "Describe"


def build_with(tmp_path: Path, base: str, *components: str) -> list[Doc]:
    """``kustomize build`` of a kustomization that lists ``base`` (a path under
    deploy/k8s) and ``components``, as an overlay would."""
    here = tmp_path / "overlay"
    here.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "erc8004",
        "resources": [os.path.relpath(K8S / base, here)],
        "components": [os.path.relpath(K8S / c, here) for c in components],
    }
    (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = run(
        "kustomize", "build", "--load-restrictor", "LoadRestrictionsNone", str(here), timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def strimzi(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    return build_with(tmp_path_factory.mktemp("strimzi"), "base", "components/strimzi")


@pytest.fixture(scope="module")
def keda(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    return build_with(tmp_path_factory.mktemp("keda"), "base", "components/keda")


def field_default(settings: type[ServiceSettings], name: str) -> str:
    value = settings.model_fields[name].default
    assert isinstance(value, str), (settings, name)
    return value


def expected_acls() -> dict[str, dict[tuple[str, str], set[str]]]:
    """What each service's KafkaUser must be allowed, from the services' settings:
    Read on what it consumes and its groups, Write on what it produces, Describe on
    each (metadata, offsets of the lag probes); nothing else."""
    ingest = field_default(IngestSettings, "events_topic")
    events = field_default(MatcherSettings, "events_topic")
    matcher_out = field_default(MatcherSettings, "actions_topic")
    actions = field_default(DispatcherSettings, "actions_topic")
    retry = field_default(DispatcherSettings, "retry_topic")
    dlq = field_default(DispatcherSettings, "dlq_topic")
    group = field_default(DispatcherSettings, "group_id")
    return {
        "erc8004-ingest": {("topic", ingest): {WRITE, DESCRIBE}},
        "erc8004-matcher": {
            ("topic", events): {READ, DESCRIBE},
            ("group", field_default(MatcherSettings, "group_id")): {READ, DESCRIBE},
            ("topic", matcher_out): {WRITE, DESCRIBE},
        },
        "erc8004-dispatcher": {
            ("topic", actions): {READ, DESCRIBE},
            ("group", group): {READ, DESCRIBE},
            ("topic", retry): {READ, WRITE, DESCRIBE},
            ("group", f"{group}.retry"): {READ, DESCRIBE},
            ("topic", dlq): {WRITE, DESCRIBE},
        },
        "erc8004-api": {("topic", field_default(ApiSettings, "actions_topic")): {WRITE, DESCRIBE}},
    }


def acls_of(user: Doc) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource.get("patternType", "literal") == "literal", acl  # no prefixes
        assert acl.get("type", "allow") == "allow", acl
        assert acl.get("host", "*") == "*", acl
        key = (resource["type"], resource["name"])
        assert key not in granted, key  # one entry per resource
        granted[key] = set(acl["operations"])
    return granted


def container_of(docs: list[Doc], deployment: str) -> tuple[Doc, Doc]:
    pod = pod_template(of_kind(docs, "Deployment")[deployment])["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_every_object_of_the_components_validates(
    strimzi: list[Doc], keda: list[Doc], tmp_path: Path
) -> None:
    """Kubernetes' own kinds against the schemas; the custom resources by the tests below."""
    migrate = build_with(tmp_path, "migrate", "components/strimzi/migrate")
    for doc in (*strimzi, *keda, *migrate):
        assert doc["metadata"]["namespace"] == "erc8004"
        if doc["kind"] not in CRD_KINDS:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


# --- components/strimzi -------------------------------------------------------------


def test_kafka_topics_are_the_contracts_topics(strimzi: list[Doc]) -> None:
    """One KafkaTopic per topic of shared/contract/topics.py, with its partitions and
    every config it lists; replicated so that one broker may go."""
    topics = of_kind(strimzi, "KafkaTopic")
    assert {t["spec"]["topicName"] for t in topics.values()} == {t.name for t in TOPICS}
    by_topic = {t["spec"]["topicName"]: t for t in topics.values()}
    for spec in TOPICS:
        topic = by_topic[spec.name]
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "kafka"
        assert topic["spec"]["partitions"] == spec.partitions, spec.name
        config = {k: str(v) for k, v in topic["spec"]["config"].items()}
        assert dict(spec.configs).items() <= config.items(), spec.name
        replicas = topic["spec"]["replicas"]
        assert 1 <= int(config["min.insync.replicas"]) < replicas, spec.name


def test_each_service_has_a_user_allowed_exactly_what_it_uses(strimzi: list[Doc]) -> None:
    users = of_kind(strimzi, "KafkaUser")
    expected = expected_acls()
    assert set(users) == set(expected) == set(KAFKA_CLIENTS)
    topic_names = {t.name for t in TOPICS}
    for name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "kafka"
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"]["type"] == "simple"
        granted = acls_of(user)
        assert granted == expected[name], name
        for kind, resource in granted:
            assert kind in ("topic", "group"), (name, kind)  # no cluster-wide rights
            if kind == "topic":
                assert resource in topic_names, (name, resource)


def test_each_client_connects_as_its_user_with_the_cluster_ca(strimzi: list[Doc]) -> None:
    """SASL_SSL with SCRAM-SHA-512 as the service's own KafkaUser: the password from
    the user's Secret (key password), the CA file from the cluster CA Secret (key
    ca.crt) mounted read-only; settings the services accept. The indexer (no
    Kafka) keeps the plain defaults."""
    bootstrap = config_value(strimzi, "KAFKA_BOOTSTRAP_SERVERS")
    for deployment, settings in KAFKA_CLIENTS.items():
        pod, container = container_of(strimzi, deployment)
        env = {e["name"]: e for e in container["env"]}
        assert env["KAFKA_SASL_USERNAME"]["value"] == deployment  # its KafkaUser
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": deployment,
            "key": "password",
        }
        ca_file = Path(env["KAFKA_SSL_CA_FILE"]["value"])
        (mount,) = (m for m in container["volumeMounts"] if ca_file.parent == Path(m["mountPath"]))
        assert mount["readOnly"] is True
        (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "kafka-cluster-ca-cert"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": ca_file.name}]
        given = {k: e["value"] for k, e in env.items() if "value" in e}
        kafka = KafkaSettings(
            **given, KAFKA_SASL_PASSWORD="from-the-secret", KAFKA_BOOTSTRAP_SERVERS=bootstrap
        )
        assert kafka.kafka_security_protocol == "SASL_SSL"
        assert kafka.kafka_sasl_mechanism == "SCRAM-SHA-512"
        assert issubclass(settings, KafkaSettings)
    _, indexer = container_of(strimzi, "erc8004-indexer")
    assert not {e["name"] for e in indexer["env"]} & {
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_USERNAME",
    }


def test_the_kafka_egress_is_the_bootstrap_port(strimzi: list[Doc]) -> None:
    bootstrap = config_value(strimzi, "KAFKA_BOOTSTRAP_SERVERS")
    ports = {int(server.rsplit(":", 1)[1]) for server in bootstrap.split(",")}
    policy = of_kind(strimzi, "NetworkPolicy")["erc8004-egress-dns-postgres-kafka"]
    opened = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports <= opened
    assert 9092 not in opened


def test_the_migration_job_leaves_the_topics_to_strimzi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build_with(tmp_path, "migrate", "components/strimzi/migrate")
    value = config_value(docs, "MIGRATE_KAFKA_TOPICS")
    monkeypatch.setenv("MIGRATE_KAFKA_TOPICS", value)
    assert topics_wanted() is False
    (job,) = of_kind(docs, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "tools.migrate", "up"]


# --- components/keda ----------------------------------------------------------------


def lag_triggers(scaled: Doc) -> Iterator[Doc]:
    for trigger in scaled["spec"]["triggers"]:
        if trigger["type"] == "prometheus":
            yield trigger


def test_keda_replaces_the_hpas_with_scaled_objects(keda: list[Doc]) -> None:
    """No HPA of ours (KEDA makes them); a ScaledObject per consumer, on its
    Deployment, within the topic's partitions, on CPU as the base and on lag."""
    assert not of_kind(keda, "HorizontalPodAutoscaler")
    scaled = of_kind(keda, "ScaledObject")
    deployments = of_kind(keda, "Deployment")
    assert set(scaled) == set(CONSUMES)
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["name"] == name in deployments
        assert "replicas" not in deployments[name]["spec"]  # the HPA owns the count
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["maxReplicaCount"] <= PARTITIONS[CONSUMES[name]]
        assert spec["advanced"]["horizontalPodAutoscalerConfig"]["name"] == name
        (cpu,) = (t for t in spec["triggers"] if t["type"] == "cpu")
        assert cpu["metricType"] == "Utilization"
        assert 0 < int(cpu["metadata"]["value"]) <= 100
        behaviour = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behaviour["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_keda_reads_the_consumers_lag_gauges_like_the_adapter_does(keda: list[Doc]) -> None:
    """Each lag trigger is PromQL over its own service's lag gauge (by the name its
    metrics.py registers), max() over the replicas (each reports the whole group's
    lag) in our namespace, with prod's lag-autoscaling target per replica."""
    prod_hpas = of_kind(build("overlays/prod"), "HorizontalPodAutoscaler")
    for name, obj in of_kind(keda, "ScaledObject").items():
        (trigger,) = lag_triggers(obj)
        assert trigger["metricType"] == "AverageValue"
        query = trigger["metadata"]["query"]
        parsed = promql_parser.parse(query)
        assert isinstance(parsed, promql_parser.AggregateExpr), query
        assert str(parsed.op) == "max", query
        assert isinstance(parsed.expr, promql_parser.VectorSelector), query
        metric = str(parsed.expr.name)
        gauge = registered(name)[metric]  # the consumer registers it, as a gauge
        assert gauge.type == "gauge", metric
        assert CONSUMES[name] in gauge.documentation, metric
        matchers = {(m.name, m.value) for m in parsed.expr.matchers.matchers}
        assert matchers == {("namespace", "erc8004")}, query
        target = metrics_by_type(prod_hpas[name])["External"]["external"]
        assert target["metric"]["name"] == metric
        assert quantity_value(trigger["metadata"]["threshold"]) == quantity_value(
            target["target"]["averageValue"]
        )
        assert trigger["metadata"]["serverAddress"].startswith("http")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_two_lag_autoscalings_are_never_listed_together(overlay: str) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    listed = {Path(c).name for c in kustomization.get("components", [])}
    assert not {"lag-autoscaling", "keda"} <= listed
    assert set(CONSUMER_METRICS) == set(CONSUMES)


# --- components/kafka-sasl-ssl and components/strimzi with prod ----------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_two_kafka_wirings_are_never_listed_together(overlay: str) -> None:
    """kafka-sasl-ssl (a Kafka of one's own) and strimzi each give the clients a
    password source and a CA: an overlay (and its migrate/) lists one at most."""
    for path in (f"overlays/{overlay}", f"overlays/{overlay}/migrate"):
        kustomization = yaml.safe_load((K8S / path / "kustomization.yaml").read_text())
        listed = {
            Path(c).parent.name if Path(c).name == "migrate" else Path(c).name
            for c in kustomization.get("components", [])
        }
        assert not {"kafka-sasl-ssl", "strimzi"} <= listed, path


def prod_on_strimzi(tmp_path: Path, path: str) -> list[Doc]:
    """prod (or prod/migrate) changed as deploy/README.md's "Kafka managed by
    Strimzi" says: the strimzi component in place of kafka-sasl-ssl, no
    KAFKA_BOOTSTRAP_SERVERS of prod's own; everything else as it is."""
    source = K8S / path
    kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())
    here = tmp_path / path.replace("/", "-")
    here.mkdir()

    def moved(entry: str) -> str:
        entry = entry.replace("components/kafka-sasl-ssl", "components/strimzi")
        return os.path.relpath((source / entry).resolve(), here)

    kustomization["resources"] = [moved(r) for r in kustomization["resources"]]
    components = kustomization["components"]
    assert any("kafka-sasl-ssl" in c for c in components), path  # what the README replaces
    kustomization["components"] = [moved(c) for c in components]
    for generator in kustomization["configMapGenerator"]:
        generator["literals"] = [
            literal
            for literal in generator["literals"]
            if not literal.startswith("KAFKA_BOOTSTRAP_SERVERS=")
        ]
    (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = run(
        "kustomize", "build", "--load-restrictor", "LoadRestrictionsNone", str(here), timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_prod_runs_on_strimzi_as_the_readme_says(tmp_path: Path) -> None:
    """prod with the strimzi component in place of its own Kafka wiring: every
    client connects as its KafkaUser (password from the user's Secret, no
    KAFKA_PASSWORD_* key needed), the CA file is the cluster CA's, the bootstrap
    port is the one the egress rule opens; PostgreSQL's CA stays mounted; the
    migration Job leaves Kafka alone; all of it valid."""
    docs = prod_on_strimzi(tmp_path, "overlays/prod")
    migrate = prod_on_strimzi(tmp_path, "overlays/prod/migrate")
    for doc in (*docs, *migrate):
        assert doc["metadata"]["namespace"] == "erc8004"
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    assert set(of_kind(docs, "KafkaUser")) == set(KAFKA_CLIENTS)
    bootstrap = config_value(docs, "KAFKA_BOOTSTRAP_SERVERS")
    assert bootstrap == config_value(
        build_with(tmp_path, "base", "components/strimzi"), "KAFKA_BOOTSTRAP_SERVERS"
    )
    ports = {int(server.rsplit(":", 1)[1]) for server in bootstrap.split(",")}
    policy = of_kind(docs, "NetworkPolicy")["erc8004-egress-dns-postgres-kafka"]
    assert {p["port"] for r in policy["spec"]["egress"] for p in r["ports"]} - {53, 5432} == ports
    for deployment in KAFKA_CLIENTS:
        pod, container = container_of(docs, deployment)
        env = {e["name"]: e for e in container["env"]}
        assert env["KAFKA_SASL_USERNAME"]["value"] == deployment
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == deployment
        ca_file = Path(env["KAFKA_SSL_CA_FILE"]["value"])
        (mount,) = (m for m in container["volumeMounts"] if Path(m["mountPath"]) == ca_file.parent)
        (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "kafka-cluster-ca-cert", deployment
        for each in pod["volumes"]:
            secret = each.get("secret", {})
            assert secret.get("secretName") != "erc8004-kafka-ca", deployment
            assert not any(i["key"].startswith("KAFKA_PASSWORD_") for i in secret.get("items", []))
        assert "/etc/erc8004/pg-ca" in {m["mountPath"] for m in container["volumeMounts"]}
    assert config_value(migrate, "MIGRATE_KAFKA_TOPICS") == "false"
    (job,) = of_kind(migrate, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "/etc/erc8004/pg-ca" in {m["mountPath"] for m in container["volumeMounts"]}
