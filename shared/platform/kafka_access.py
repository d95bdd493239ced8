"""How every Kafka client of a process connects: the brokers, TLS and SASL.

:class:`KafkaAccess` is built once from :class:`~shared.platform.settings.KafkaSettings`
and handed to whatever makes a client (producers, consumers, admin clients,
metadata probes, FastStream's broker): each asks it for its options, so no client
can be made without the security the deployment configured.

OAUTHBEARER tokens come from a file read again for every new connection, or from
a callable named in the settings (``package.module:callable``, sync or async),
called the same way: a short-lived token is never cached by us.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context
from faststream.security import (
    BaseSecurity,
    SASLOAuthBearer,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from shared.platform.settings import KafkaSettings

TokenSource = Callable[[], "str | Awaitable[str]"]


class KafkaSettingsError(ValueError):
    """A file or hook the Kafka settings name cannot be used (the message names the setting)."""


class TokenFile(AbstractTokenProvider):  # type: ignore[misc]
    """An OAUTHBEARER token read from a file at each connection. A file that cannot
    be read or is empty (a sidecar rewriting it) fails that connection as a
    connection error, which the client retries, rather than its background tasks."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    async def token(self) -> str:
        setting = f"KAFKA_SASL_OAUTHBEARER_TOKEN_FILE {self._path}"
        try:
            text = await asyncio.to_thread(self._path.read_text)
        except OSError as exc:
            raise KafkaConnectionError(f"{setting}: {type(exc).__name__}") from None
        if not text.strip():
            raise KafkaConnectionError(f"{setting} is empty")
        return text.strip()


class TokenHook(AbstractTokenProvider):  # type: ignore[misc]
    """An OAUTHBEARER token from a callable, at each connection (a synchronous one
    in a thread: it may call an identity provider). Whatever it raises fails that
    connection as a connection error, which the client retries."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def token(self) -> str:
        setting = "KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER"
        try:
            if inspect.iscoroutinefunction(self._source):
                token = await self._source()
            else:
                token = await asyncio.to_thread(self._source)
                if inspect.isawaitable(token):
                    token = await token
        except Exception as exc:
            raise KafkaConnectionError(f"{setting} failed: {type(exc).__name__}") from exc
        if not isinstance(token, str) or not token:
            raise KafkaConnectionError(f"{setting} returned no token")
        return token


def load_hook(reference: str) -> TokenSource:
    """The callable ``package.module:callable`` names."""
    module_name, _, name = reference.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise KafkaSettingsError(
            f"KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER {reference}: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(target):
        raise KafkaSettingsError(f"KAFKA_SASL_OAUTHBEARER_TOKEN_PROVIDER {reference}: not callable")
    return target  # type: ignore[no-any-return]


def _readable(setting: str, path: str) -> str:
    if not Path(path).is_file():
        raise KafkaSettingsError(f"{setting} {path}: no such file")
    return path


def tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The client's TLS context: the brokers' CA (the system's when none is
    named), the client's own certificate when set; hostnames checked unless
    turned off."""
    cert = settings.kafka_ssl_cert_file
    key = settings.kafka_ssl_key_file
    context: ssl.SSLContext = create_ssl_context(
        cafile=_readable("KAFKA_SSL_CA_FILE", settings.kafka_ssl_ca_file)
        if settings.kafka_ssl_ca_file
        else None,
        certfile=_readable("KAFKA_SSL_CERT_FILE", cert) if cert else None,
        keyfile=_readable("KAFKA_SSL_KEY_FILE", key) if key else None,
        password=settings.kafka_ssl_key_password.get_secret_value() or None,
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


@dataclass(frozen=True)
class KafkaAccess:
    """The brokers and the options that secure a connection to them."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    token_provider: AbstractTokenProvider | None = None

    def servers(self) -> list[str]:
        """The bootstrap servers one by one."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @classmethod
    def plain(cls, bootstrap_servers: str) -> KafkaAccess:
        return cls(bootstrap_servers)

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> KafkaAccess:
        """Files and hooks are checked here, so a service with a wrong path stops at
        start with the setting's name rather than failing each connection."""
        protocol = settings.kafka_security_protocol
        mechanism = settings.kafka_sasl_mechanism
        provider: AbstractTokenProvider | None = None
        if mechanism == "OAUTHBEARER":
            if settings.kafka_sasl_oauthbearer_token_file:
                path = settings.kafka_sasl_oauthbearer_token_file
                provider = TokenFile(_readable("KAFKA_SASL_OAUTHBEARER_TOKEN_FILE", path))
            else:
                provider = TokenHook(load_hook(settings.kafka_sasl_oauthbearer_token_provider))
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            security_protocol=protocol,
            ssl_context=tls_context(settings) if protocol.endswith("SSL") else None,
            sasl_mechanism=mechanism,
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            token_provider=provider,
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin, the
        low-level client), the bootstrap servers included."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            if self.token_provider is not None:
                options["sasl_oauth_token_provider"] = self.token_provider
            else:
                options["sasl_plain_username"] = self.username
                options["sasl_plain_password"] = self.password
        return options

    def broker_options(self) -> dict[str, Any]:
        """Keyword arguments for FastStream's ``KafkaBroker`` (its ``security`` object
        carries what aiokafka's options do), the bootstrap servers excluded."""
        options: dict[str, Any] = {"security": self._security()}
        if self.token_provider is not None:
            options["sasl_oauth_token_provider"] = self.token_provider
        return options

    def _security(self) -> BaseSecurity | None:
        tls = self.security_protocol.endswith("SSL")
        context = self.ssl_context
        match self.sasl_mechanism:
            case None:
                return BaseSecurity(ssl_context=context, use_ssl=True) if tls else None
            case "PLAIN":
                return SASLPlaintext(self.username, self.password, ssl_context=context, use_ssl=tls)
            case "SCRAM-SHA-256":
                return SASLScram256(self.username, self.password, ssl_context=context, use_ssl=tls)
            case "SCRAM-SHA-512":
                return SASLScram512(self.username, self.password, ssl_context=context, use_ssl=tls)
            case "OAUTHBEARER":
                return SASLOAuthBearer(ssl_context=context, use_ssl=tls)
        raise KafkaSettingsError(f"KAFKA_SASL_MECHANISM {self.sasl_mechanism} is not supported")


def kafka_access(kafka: KafkaAccess | str) -> KafkaAccess:
    """An access as it is, or plaintext access to the brokers a string names (the
    local broker of tools and tests)."""
    return kafka if isinstance(kafka, KafkaAccess) else KafkaAccess.plain(kafka)
