"""Settings every service shares, read from the environment (pydantic-settings).

Names are the ones the README's settings table lists (``DATABASE_URL``,
``KAFKA_BOOTSTRAP_SERVERS``, ...); each service subclasses :class:`ServiceSettings`
with its own fields and defaults. Settings are built once in ``__main__`` and passed down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Kubernetes mounts secret files here (one file per variable name, lower case).
DEFAULT_SECRETS_DIR = "/run/secrets/erc8004"

KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class KafkaSettings(BaseSettings):
    """How to reach Kafka: the brokers and the connection's security, the same for
    every producer, consumer and admin client of a process (the services and
    ``tools.migrate``). Turned into client options by
    :class:`shared.platform.kafka_access.KafkaAccess`."""

    #: hide_input_in_errors: a refused combination must not print the values read
    #: (pydantic's error shows the whole input, passwords and keys included).
    model_config = SettingsConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    kafka_security_protocol: KafkaProtocol = Field(
        default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    #: PEM file of the CA(s) that signed the brokers' certificates ('' = the system's).
    kafka_ssl_ca_file: str = Field(default="", validation_alias="KAFKA_SSL_CA_FILE")
    #: The client's own certificate and key (PEM), for brokers that require one.
    kafka_ssl_cert_file: str = Field(default="", validation_alias="KAFKA_SSL_CERT_FILE")
    kafka_ssl_key_file: str = Field(default="", validation_alias="KAFKA_SSL_KEY_FILE")
    kafka_ssl_key_password: SecretStr = Field(
        default=SecretStr(""), validation_alias="KAFKA_SSL_KEY_PASSWORD"
    )
    #: Whether the broker's certificate must name the host connected to.
    kafka_ssl_check_hostname: bool = Field(
        default=True, validation_alias="KAFKA_SSL_CHECK_HOSTNAME"
    )
    kafka_sasl_mechanism: KafkaMechanism | None = Field(
        default=None, validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str = Field(default="", validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""), validation_alias="KAFKA_SASL_PASSWORD"
    )
    #: OAUTHBEARER: a file holding the token, read again for every new connection
    #: (a projected service-account token, or one a sidecar keeps fresh).
    kafka_sasl_oauthbearer_token_file: str = Field(
        default="", validation_alias="KAFKA_SASL_OAUTHBEARER_TOKEN_FILE"
    )
    #: OAUTHBEARER: ``package.module:callable``, called (sync or async, no arguments)
    #: for every new connection, returning the token.
    kafka_sasl_oauthbearer_token_provider: str = Field(
        default="", validation_alias="KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER"
    )

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> Self:
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")
        if sasl and mechanism is None:
            raise ValueError(f"KAFKA_SASL_MECHANISM is required with {protocol}")
        if mechanism is not None and not sasl:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SECURITY_PROTOCOL "
                f"SASL_SSL or SASL_PLAINTEXT, not {protocol}"
            )
        tls_files = {
            "KAFKA_SSL_CA_FILE": self.kafka_ssl_ca_file,
            "KAFKA_SSL_CERT_FILE": self.kafka_ssl_cert_file,
            "KAFKA_SSL_KEY_FILE": self.kafka_ssl_key_file,
        }
        if not tls and any(tls_files.values()):
            named = ", ".join(k for k, v in tls_files.items() if v)
            raise ValueError(f"{named} set, but KAFKA_SECURITY_PROTOCOL={protocol} has no TLS")
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together")
        password = self.kafka_sasl_password.get_secret_value()
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.kafka_sasl_username and password
        ):
            raise ValueError(f"{mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        sources = [
            s
            for s in (
                self.kafka_sasl_oauthbearer_token_file,
                self.kafka_sasl_oauthbearer_token_provider,
            )
            if s
        ]
        if mechanism == "OAUTHBEARER" and len(sources) != 1:
            raise ValueError(
                "OAUTHBEARER needs one of KAFKA_SASL_OAUTHBEARER_TOKEN_FILE and "
                "KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER"
            )
        if mechanism != "OAUTHBEARER" and sources:
            raise ValueError("an OAUTHBEARER token source is set, but KAFKA_SASL_MECHANISM is not")
        provider = self.kafka_sasl_oauthbearer_token_provider
        if provider and (provider.count(":") != 1 or not all(provider.split(":"))):
            raise ValueError("KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER is package.module:callable")
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Build from the environment, reading secret files when the directory exists."""
        secrets_dir = os.environ.get("SECRETS_DIR", DEFAULT_SECRETS_DIR)
        if Path(secrets_dir).is_dir():
            return cls(_secrets_dir=secrets_dir, **overrides)
        return cls(**overrides)


class ServiceSettings(KafkaSettings):
    """Settings common to the four services."""

    #: The name logs and metrics use for this service.
    service_name: ClassVar[str] = "service"

    database_url: SecretStr = Field(validation_alias="DATABASE_URL")
    #: Role the service narrows itself to after connecting ('' keeps the login's own).
    database_role: str = Field(default="", validation_alias="DATABASE_ROLE")
    database_pool_max: int = Field(default=10, ge=1, le=200, validation_alias="DATABASE_POOL_MAX")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    http_host: str = Field(default="127.0.0.1", validation_alias="HTTP_HOST")
    http_port: int = Field(default=0, ge=0, le=65535, validation_alias="HTTP_PORT")
    #: Seconds a stopping service waits for work in flight (below Kubernetes' 30 s grace).
    shutdown_timeout: float = Field(default=8.0, gt=0, le=25, validation_alias="SHUTDOWN_TIMEOUT")
