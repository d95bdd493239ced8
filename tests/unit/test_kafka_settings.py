"""The Kafka security settings refuse an incomplete or contradictory combination at
start, naming the setting; KafkaAccess turns a valid one into the options every
aiokafka client and FastStream's broker take."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from faststream.security import BaseSecurity, SASLOAuthBearer, SASLScram512
from pydantic import SecretStr, ValidationError

from shared.platform.kafka_access import KafkaAccess, KafkaSettingsError, TokenFile, TokenHook
from shared.platform.settings import KafkaSettings, ServiceSettings
from shared.platform.stream import new_broker

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def settings(**env: str) -> KafkaSettings:
    return KafkaSettings(**env)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM is required"),
        (
            {
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "needs KAFKA_SECURITY_PROTOCOL SASL_SSL or SASL_PLAINTEXT",
        ),
        ({"KAFKA_SSL_CA_FILE": "/ca.pem"}, "KAFKA_SSL_CA_FILE set, but KAFKA_SECURITY_PROTOCOL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "/c.pem"},
            "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
            "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            "OAUTHBEARER needs one of",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                "KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER": "no_colon_here",
            },
            "package.module:callable",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
                "KAFKA_SASL_OAUTHBEARER_TOKEN_FILE": "/t",
            },
            "KAFKA_SASL_MECHANISM is not",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"}, "PLAIN"),
    ],
)
def test_an_incomplete_combination_is_refused_naming_the_setting(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**env)


def test_plaintext_is_the_default_and_passes_only_the_brokers() -> None:
    access = KafkaAccess.from_settings(settings(KAFKA_BOOTSTRAP_SERVERS="k:9092"))
    assert access.client_options() == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert access.broker_options() == {"security": None}


def test_scram_over_tls_reaches_every_client_and_the_broker() -> None:
    ca = str(ROOT / ".run" / "tls" / "ca.pem")
    env: dict[str, Any] = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "secret-password",
    }
    if Path(ca).is_file():
        env["KAFKA_SSL_CA_FILE"] = ca
    access = KafkaAccess.from_settings(settings(**env))
    options = access.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == "secret-password"
    assert options["ssl_context"].check_hostname
    security = access.broker_options()["security"]
    assert isinstance(security, SASLScram512)
    assert security.use_ssl
    assert security.ssl_context is options["ssl_context"]
    assert "secret-password" not in repr(access)  # never in a log line of the settings
    assert "secret-password" not in repr(settings(**env))


def test_tls_without_sasl_uses_the_base_security() -> None:
    access = KafkaAccess.from_settings(settings(KAFKA_SECURITY_PROTOCOL="SSL"))
    security = access.broker_options()["security"]
    assert type(security) is BaseSecurity
    assert security.use_ssl
    assert "sasl_mechanism" not in access.client_options()


def test_a_missing_file_is_named_at_start(tmp_path: Path) -> None:
    with pytest.raises(KafkaSettingsError, match=r"KAFKA_SSL_CA_FILE .*no such file"):
        KafkaAccess.from_settings(
            settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CA_FILE=str(tmp_path / "nope.pem"))
        )
    with pytest.raises(KafkaSettingsError, match="KAFKA_SASL_OAUTHBEARER_TOKEN_FILE"):
        KafkaAccess.from_settings(
            settings(
                KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                KAFKA_SASL_MECHANISM="OAUTHBEARER",
                KAFKA_SASL_OAUTHBEARER_TOKEN_FILE=str(tmp_path / "token"),
            )
        )


def test_a_hook_that_does_not_import_is_named_at_start() -> None:
    with pytest.raises(KafkaSettingsError, match="no_such_module_here"):
        KafkaAccess.from_settings(
            settings(
                KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                KAFKA_SASL_MECHANISM="OAUTHBEARER",
                KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER="no_such_module_here:token",
            )
        )


def test_the_token_file_is_read_again_for_each_connection(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    access = KafkaAccess.from_settings(
        settings(
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISM="OAUTHBEARER",
            KAFKA_SASL_OAUTHBEARER_TOKEN_FILE=str(path),
        )
    )
    provider = access.client_options()["sasl_oauth_token_provider"]
    assert isinstance(provider, TokenFile)
    assert isinstance(access.broker_options()["security"], SASLOAuthBearer)
    assert access.broker_options()["sasl_oauth_token_provider"] is provider
    assert asyncio.run(provider.token()) == "first"
    path.write_text("rotated")
    assert asyncio.run(provider.token()) == "rotated"
    path.write_text("  \n")  # a sidecar caught rewriting it: this connection fails, retried
    with pytest.raises(KafkaConnectionError, match="empty"):
        asyncio.run(provider.token())
    path.unlink()
    with pytest.raises(KafkaConnectionError, match="FileNotFoundError"):
        asyncio.run(provider.token())


def test_a_hook_may_be_sync_or_async_and_must_return_a_token() -> None:
    async def later() -> str:
        return "async-token"

    def fails() -> str:
        raise RuntimeError("the identity provider is away")

    assert asyncio.run(TokenHook(lambda: "sync-token").token()) == "sync-token"
    assert asyncio.run(TokenHook(later).token()) == "async-token"
    # failures are connection errors, which aiokafka retries (anything else would
    # kill its background tasks)
    with pytest.raises(KafkaConnectionError, match="returned no token"):
        asyncio.run(TokenHook(lambda: "").token())
    with pytest.raises(KafkaConnectionError, match="RuntimeError"):
        asyncio.run(TokenHook(fails).token())


def test_a_refused_combination_does_not_print_the_values_read() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISM="PLAIN",
            KAFKA_SASL_PASSWORD="pw-8f3a1c-secret",
        )
    assert "KAFKA_SASL_USERNAME" in str(caught.value)
    assert "pw-8f3a1c-secret" not in str(caught.value)


def test_faststreams_consumers_get_every_broker_and_the_security() -> None:
    """FastStream takes a comma-separated string for one host: the broker is given
    the servers one by one, and its consumers the SASL options."""
    access = KafkaAccess.from_settings(
        settings(
            KAFKA_BOOTSTRAP_SERVERS="k0:9093, k1:9093,k2:9093",
            KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
            KAFKA_SASL_USERNAME="svc",
            KAFKA_SASL_PASSWORD="pw",
        )
    )
    assert access.servers() == ["k0:9093", "k1:9093", "k2:9093"]
    service = ServiceSettings(database_url=SecretStr("postgresql://x/y"))
    broker = new_broker(service, access)
    consumer_options = broker.config.broker_config.builder.keywords  # type: ignore[attr-defined]
    assert consumer_options["bootstrap_servers"] == ["k0:9093", "k1:9093", "k2:9093"]
    assert consumer_options["security_protocol"] == "SASL_PLAINTEXT"
    assert consumer_options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert consumer_options["sasl_plain_username"] == "svc"
