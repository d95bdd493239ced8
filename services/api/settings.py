"""API settings (the environment names the README's settings table lists)."""

from __future__ import annotations

import hashlib
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator

from shared.contract.topics import ACTIONS
from shared.outbound.policy import parse_networks
from shared.platform.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    service_name: ClassVar[str] = "api"

    database_role: str = Field(default="erc8004_api", validation_alias="DATABASE_ROLE")
    http_port: int = Field(default=8080, ge=0, le=65535, validation_alias="HTTP_PORT")
    #: Where /metrics and the detailed /readyz are served (the public port keeps
    #: /healthz and a terse /readyz); 0 takes a free port.
    ops_port: int = Field(default=9104, ge=0, le=65535, validation_alias="OPS_PORT")
    jwt_secret: SecretStr = Field(validation_alias="JWT_SECRET", min_length=32)
    secrets_key: SecretStr = Field(validation_alias="SECRETS_KEY")
    #: Lifetime of an access token, seconds.
    access_token_ttl: int = Field(
        default=3600, ge=60, le=86400, validation_alias="ACCESS_TOKEN_TTL"
    )
    #: Failed logins per username within LOGIN_WINDOW seconds before 429 (ten times
    #: as many per client address).
    login_max_failures: int = Field(default=5, ge=1, le=1000, validation_alias="LOGIN_MAX_FAILURES")
    login_window: float = Field(default=900, gt=0, le=86400, validation_alias="LOGIN_WINDOW")
    #: Where redriven jobs go (tests use a topic of their own).
    actions_topic: str = Field(default=ACTIONS, min_length=1, validation_alias="ACTIONS_TOPIC")
    #: Stored events one backtest replays at most.
    backtest_max_events: int = Field(
        default=200_000, ge=1, le=5_000_000, validation_alias="BACKTEST_MAX_EVENTS"
    )
    #: Seconds one backtest may run before it answers with what it has (truncated).
    backtest_seconds: float = Field(default=20.0, gt=0, le=600, validation_alias="BACKTEST_SECONDS")
    #: Accounts registered per client address per hour (429 beyond).
    register_max_per_address: int = Field(
        default=20, ge=1, le=100_000, validation_alias="REGISTER_MAX_PER_ADDRESS"
    )
    #: Per-user quotas: triggers, and API keys not revoked (409 beyond).
    max_triggers_per_user: int = Field(
        default=1000, ge=1, le=1_000_000, validation_alias="MAX_TRIGGERS_PER_USER"
    )
    max_api_keys_per_user: int = Field(
        default=20, ge=1, le=10_000, validation_alias="MAX_API_KEYS_PER_USER"
    )
    #: Telegram link codes: how long one stays valid (seconds) and how many unused
    #: ones a user may hold (409 beyond).
    telegram_link_code_ttl: int = Field(
        default=900, ge=60, le=86400, validation_alias="TELEGRAM_LINK_CODE_TTL"
    )
    max_link_codes_per_user: int = Field(
        default=10, ge=1, le=1000, validation_alias="MAX_LINK_CODES_PER_USER"
    )
    #: The bot's @username (without the @), for the t.me links a new code comes with;
    #: '' leaves them out.
    telegram_bot_username: str = Field(
        default="",
        pattern=r"^([A-Za-z][A-Za-z0-9_]{3,31})?$",
        validation_alias="TELEGRAM_BOT_USERNAME",
    )
    #: Seconds before the same job may be redriven again through the API.
    redrive_interval: float = Field(
        default=60.0, ge=0, le=86400, validation_alias="REDRIVE_INTERVAL"
    )
    #: Reverse proxies (ingress controllers, load balancers) whose X-Forwarded-For is
    #: believed, as CIDRs ('' = none: the client is the TCP peer). Behind an ingress
    #: without it, every client shares the ingress's address in the login limiter.
    trusted_proxies: str = Field(default="", validation_alias="TRUSTED_PROXIES")
    #: Backtests running at once per process; more wait, and beyond twice that 503.
    backtest_concurrency: int = Field(
        default=2, ge=1, le=64, validation_alias="BACKTEST_CONCURRENCY"
    )
    #: Reads of the shared history (events, hourly statistics) running at once per
    #: process (each at most 1 s); as many more wait, beyond that 503. Below the
    #: pool's size, so that they never hold every connection.
    shared_read_concurrency: int = Field(
        default=4, ge=1, le=64, validation_alias="SHARED_READ_CONCURRENCY"
    )

    #: What the agents' owners sign as ``deployment:`` in MCP token messages, so that a
    #: signature made for this deployment is worthless to any other. '' derives one
    #: from JWT_SECRET (unique per deployment, reveals nothing of the secret);
    #: clients read it from GET /v1/agents/signing-domain.
    signing_domain: str = Field(
        default="", max_length=200, pattern=r"^[\x21-\x7e]*$", validation_alias="SIGNING_DOMAIN"
    )
    #: Owner signatures one user may have checked per minute (429 beyond): their
    #: recovery costs CPU.
    signature_checks_per_minute: int = Field(
        default=30, ge=1, le=10_000, validation_alias="SIGNATURE_CHECKS_PER_MINUTE"
    )

    def deployment(self) -> str:
        """The signing domain in effect (SIGNING_DOMAIN, or one derived from JWT_SECRET)."""
        if self.signing_domain:
            return self.signing_domain
        digest = hashlib.sha256(
            b"erc8004 signing domain\n" + self.jwt_secret.get_secret_value().encode()
        )
        return f"erc8004-{digest.hexdigest()[:16]}"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: str) -> str:
        parse_networks(v, "TRUSTED_PROXIES")
        return v
