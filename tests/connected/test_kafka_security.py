"""The Kafka security settings against the local broker's secured listeners
(deploy/local/kafka.sh): SASL_SSL on 9094 with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
and OAUTHBEARER (a token file, a token hook), mutual TLS on 9095. Every kind of
client the project makes (admin, producer, consumer, metadata probe, lag probe,
FastStream's broker inside a running service, tools.migrate) connects through
:class:`KafkaAccess`; wrong credentials, a missing client certificate and an
unknown CA are refused."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from shared.contract.jobs import ActionJob
from shared.contract.topics import TopicSpec
from shared.platform.kafka import (
    KafkaProbe,
    LagProbe,
    ensure_topics,
    started_producer,
    stop_producer,
)
from shared.platform.kafka_access import KafkaAccess
from shared.platform.settings import KafkaSettings
from tests import kafkautil
from tests.conftest import ENV, ROOT, StartService
from tests.ingestutil import AUTH, ingest_client, settings_for
from tests.kafkautil import read_topic
from tests.matcherutil import insert_trigger, insert_user, random_chain
from tools.eventgen import make_event

pytestmark = [
    pytest.mark.xdist_group("kafka-security"),
    pytest.mark.kafka,
    pytest.mark.skipif(
        not ENV.get("LOCAL_KAFKA_SASL_SSL") or ENV["KAFKA_BOOTSTRAP_SERVERS"] != "127.0.0.1:9092",
        reason="needs the local broker's secured listeners (deploy/local/kafka.sh)",
    ),
]

TLS = ROOT / ".run" / "tls"
BROKER_LOG = ROOT / ".run" / "kafka" / "kafka.log"
SASL_SSL = ENV.get("LOCAL_KAFKA_SASL_SSL", "")
MTLS = ENV.get("LOCAL_KAFKA_MTLS", "")
USER = ENV.get("LOCAL_KAFKA_SASL_USERNAME", "")
PASSWORD = ENV.get("LOCAL_KAFKA_SASL_PASSWORD", "")


def sasl_env(mechanism: str, **extra: str) -> dict[str, str]:
    """The environment of a client of the SASL_SSL listener."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": SASL_SSL,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_FILE": str(TLS / "ca.pem"),
        "KAFKA_SASL_MECHANISM": mechanism,
    }
    if mechanism != "OAUTHBEARER":
        env |= {"KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": PASSWORD}
    return env | extra


def mtls_env(**extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": MTLS,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": str(TLS / "ca.pem"),
        "KAFKA_SSL_CERT_FILE": str(TLS / "client.pem"),
        "KAFKA_SSL_KEY_FILE": str(TLS / "client-key.pem"),
    } | extra


def access(env: dict[str, str]) -> KafkaAccess:
    return KafkaAccess.from_settings(KafkaSettings(**env))  # type: ignore[arg-type]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(kafkautil.unsecured_token("erc8004-file") + "\n")
    return path


def secured(name: str, token_file: Path) -> KafkaAccess:
    match name:
        case "oauthbearer-file":
            env = sasl_env("OAUTHBEARER", KAFKA_SASL_OAUTHBEARER_TOKEN_FILE=str(token_file))
        case "oauthbearer-hook":
            env = sasl_env(
                "OAUTHBEARER",
                KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER="tests.kafkautil:unsecured_token",
            )
        case "mtls":
            env = mtls_env()
        case mechanism:
            env = sasl_env(mechanism)
    return access(env)


@pytest.fixture
async def scratch() -> AsyncIterator[str]:
    """A topic name of the test's own, deleted afterwards (through the plaintext listener)."""
    name = f"test.secure.{uuid.uuid4().hex[:10]}"
    yield name
    await kafkautil.delete_topic(ENV["KAFKA_BOOTSTRAP_SERVERS"], name)


@pytest.mark.parametrize(
    "kind",
    ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "oauthbearer-file", "oauthbearer-hook", "mtls"],
)
async def test_every_client_works_through_each_kind_of_security(
    kind: str, token_file: Path, scratch: str
) -> None:
    kafka = secured(kind, token_file)
    calls_before = kafkautil.TOKENS_MADE
    # admin: the topic is created through the secured listener
    spec = TopicSpec(name=scratch, partitions=2, configs=(("retention.ms", "3600000"),))
    assert await ensure_topics(kafka, topics=(spec,)) == [scratch]
    # probe
    probe = KafkaProbe(kafka)
    try:
        await probe.check()
    finally:
        await probe.close()
    # producer
    producer = await started_producer(kafka, f"test-{kind}")
    try:
        for i in range(5):
            await producer.send_and_wait(scratch, value=f"m{i}".encode(), key=b"k")
    finally:
        await stop_producer(producer)
    # lag probes: the group has not read anything yet; the topic holds 5
    group = f"test-{uuid.uuid4().hex[:8]}"
    lag, held = LagProbe(kafka, group, scratch), LagProbe(kafka, None, scratch)
    try:
        assert await measured(lag, 5) == 5
        assert await measured(held, 5) == 5
        await read_as_group(kafka, scratch, group)
        assert await measured(lag, 0) == 0  # its commit is seen
        assert await measured(held, 5) == 5
    finally:
        await lag.close()
        await held.close()
    if kind == "oauthbearer-hook":
        # the hook is asked for a token for each new connection, never cached by us
        assert kafkautil.TOKENS_MADE - calls_before >= 4


async def read_as_group(kafka: KafkaAccess, scratch: str, group: str) -> None:
    consumer = AIOKafkaConsumer(
        scratch, **kafka.client_options(), group_id=group, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            got.extend(r.value for records in batch.values() for r in records if r.value)
        assert sorted(got) == [f"m{i}".encode() for i in range(5)]
        await consumer.commit()
    finally:
        await consumer.stop()


async def measured(probe: LagProbe, want: int, *, within: float = 10.0) -> int:
    """The probe's measure once it reads ``want`` (a new client's metadata may lag)."""
    deadline = time.monotonic() + within
    while (value := await probe.measure()) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return value


#: aiokafka leaves the socket of a refused handshake to the garbage collector; the
#: tests of refusals collect it themselves, so its ResourceWarning falls on them.
leaks_refused_socket = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


async def expect_refused(kafka: KafkaAccess, caplog: pytest.LogCaptureFixture, why: str) -> None:
    """The connection fails, for the reason ``why``, found in what aiokafka logs (the
    broker's or the TLS layer's answer; it then raises a generic connection error)
    or in what the broker logged meanwhile: a listener that is not there at all
    does not pass for a refusal."""
    start = BROKER_LOG.stat().st_size
    probe = KafkaProbe(kafka)
    try:
        with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaError):
            async with asyncio.timeout(20):
                await probe.check()
    finally:
        await probe.close()
        gc.collect()
    await asyncio.sleep(0.3)  # the broker's log line
    with BROKER_LOG.open("rb") as log:
        log.seek(start)
        broker = log.read().decode(errors="replace")
    assert re.search(why, caplog.text + broker), (caplog.text + broker)[-2000:]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@leaks_refused_socket
async def test_a_wrong_password_is_refused(
    mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = access(sasl_env(mechanism, KAFKA_SASL_PASSWORD="not-the-password"))
    await expect_refused(kafka, caplog, "SaslAuthenticationFailed")


@leaks_refused_socket
async def test_a_token_without_the_required_scope_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text(kafkautil.unsecured_token("erc8004", scope="other"))
    kafka = access(sasl_env("OAUTHBEARER", KAFKA_SASL_OAUTHBEARER_TOKEN_FILE=str(path)))
    # (aiokafka misreads the broker's refusal of a token and goes on; the broker
    # closes the connection and says why it refused)
    await expect_refused(
        kafka, caplog, r"Failed authentication with /127\.0\.0\.1 \(channelId=127\.0\.0\.1:9094"
    )


@leaks_refused_socket
async def test_mutual_tls_refuses_a_client_without_a_certificate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = mtls_env()
    del env["KAFKA_SSL_CERT_FILE"], env["KAFKA_SSL_KEY_FILE"]
    await expect_refused(access(env), caplog, r"channelId=127\.0\.0\.1:9095.*SSL handshake failed")


@leaks_refused_socket
async def test_a_broker_certificate_from_an_unknown_ca_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without KAFKA_SSL_CA_FILE the system's CAs are used: the local CA is not one."""
    env = sasl_env("SCRAM-SHA-512")
    del env["KAFKA_SSL_CA_FILE"]
    await expect_refused(access(env), caplog, "CERTIFICATE_VERIFY_FAILED")


def test_tools_migrate_creates_topics_through_the_secured_listener() -> None:
    """``tools.migrate topics`` reads the same settings; with a wrong password it fails."""
    base = {**ENV, **sasl_env("SCRAM-SHA-512")}
    wrong = f"wrong-{uuid.uuid4().hex}"
    ok = subprocess.run(
        [sys.executable, "-m", "tools.migrate", "topics"],
        env=base, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"topics on {SASL_SSL} (SASL_SSL)" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tools.migrate", "topics"],
        env={**base, "KAFKA_SASL_PASSWORD": wrong, "MIGRATE_WAIT_TIMEOUT": "3"},
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "did not answer within 3 s" in bad.stderr
    assert "SaslAuthenticationFailed" in bad.stderr  # why, from the client's log
    assert wrong not in bad.stdout + bad.stderr  # the password is not printed


@pytest.mark.db
async def test_events_flow_through_ingest_and_the_matcher_over_sasl_ssl(
    db: asyncpg.Connection,
    database_url: str,
    matcher_env: dict[str, str],
    start_service: StartService,
    kafka_bootstrap: str,
    topic: str,
    actions_topic: str,
) -> None:
    """Ingest (in process, SCRAM-SHA-256) relays an event; the matcher (its own
    process: FastStream's consumer, its producer, its lag probe; SCRAM-SHA-512)
    turns it into a job. Both services see only the secured listener."""
    chain = random_chain()
    user = await insert_user(db)
    trigger = await insert_trigger(
        db, user_id=user, chain_id=chain, registry="reputation",
        conditions=[{"condition_type": "agent_id_equals", "operator": "=", "value": "42"}],
    )  # fmt: skip
    matcher = start_service("matcher", {**matcher_env, **sasl_env("SCRAM-SHA-512")})
    settings = settings_for(database_url, kafka_bootstrap, topic).model_copy(
        update=KafkaSettings(**sasl_env("SCRAM-SHA-256")).model_dump()  # type: ignore[arg-type]
    )
    assert settings.kafka_bootstrap_servers == SASL_SSL
    rng = random.Random(7)
    events: list[dict[str, Any]] = [
        make_event(rng, chain_id=chain, block_number=10 + i, log_index=0, agent_id=agent)
        for i, agent in enumerate((41, 42, 43))
    ]
    async with ingest_client(settings) as ingest:
        resp = await ingest.post("/v1/events", json=events, headers=AUTH)
        assert resp.status == 200, await resp.text()
        records = await read_topic(kafka_bootstrap, actions_topic, expect=1, within=60)
    jobs = [ActionJob.parse(r.value) for r in records]
    assert [(j.trigger_id, j.event.agent_id) for j in jobs] == [(trigger, 42)]
    assert matcher.proc is not None
    assert matcher.proc.poll() is None
