"""Dispatcher settings (the environment names the README's settings table lists)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.dispatcher.registration import KNOWN_IDENTITY_REGISTRIES
from shared.contract.topics import ACTIONS, ACTIONS_DLQ, ACTIONS_RETRY, DISPATCHER_GROUP
from shared.outbound.policy import (
    DEFAULT_ALLOWED_PORTS,
    OutboundProxy,
    parse_networks,
    parse_ports,
)
from shared.platform.settings import ServiceSettings


class DispatcherSettings(ServiceSettings):
    # A refused value is named, not shown: OUTBOUND_PROXY_URL may hold a password.
    model_config = ServiceSettings.model_config | SettingsConfigDict(hide_input_in_errors=True)
    service_name: ClassVar[str] = "dispatcher"

    database_role: str = Field(default="erc8004_dispatcher", validation_alias="DATABASE_ROLE")
    http_port: int = Field(default=9102, ge=0, le=65535, validation_alias="HTTP_PORT")
    actions_topic: str = Field(default=ACTIONS, min_length=1, validation_alias="ACTIONS_TOPIC")
    retry_topic: str = Field(
        default=ACTIONS_RETRY, min_length=1, validation_alias="ACTIONS_RETRY_TOPIC"
    )
    dlq_topic: str = Field(default=ACTIONS_DLQ, min_length=1, validation_alias="ACTIONS_DLQ_TOPIC")
    group_id: str = Field(
        default=DISPATCHER_GROUP, min_length=1, validation_alias="DISPATCHER_GROUP"
    )
    #: Encrypts webhook signing secrets and agents' MCP tokens at rest (a Fernet key,
    #: or several comma-separated, the first one current).
    secrets_key: SecretStr = Field(validation_alias="SECRETS_KEY")
    telegram_bot_token: SecretStr = Field(
        default=SecretStr(""), validation_alias="TELEGRAM_BOT_TOKEN"
    )
    telegram_api_base: str = Field(
        default="https://api.telegram.org", validation_alias="TELEGRAM_API_BASE"
    )
    #: Telegram's limits: about 30 messages/s per bot, 1 message/s per chat.
    telegram_rate: float = Field(default=30.0, gt=0, le=1000, validation_alias="TELEGRAM_RATE")
    telegram_chat_interval: float = Field(
        default=1.0, ge=0, le=60, validation_alias="TELEGRAM_CHAT_INTERVAL"
    )
    #: Seconds one getUpdates call waits for the bot's next update (Telegram's long
    #: polling), reading the link commands of chats; 0 turns the reading off (no
    #: chat can be linked then).
    telegram_updates_poll: float = Field(
        default=25.0, ge=0, le=50, validation_alias="TELEGRAM_UPDATES_POLL"
    )
    ipfs_gateway: str = Field(default="https://ipfs.io/ipfs/", validation_alias="IPFS_GATEWAY")
    #: CIDRs exempt from the private-address guard ('' = none; development: 127.0.0.0/8).
    outbound_allowed_networks: str = Field(default="", validation_alias="OUTBOUND_ALLOWED_NETWORKS")
    #: Ports reachable outside those networks (comma-separated, * for every port);
    #: keep it equal to the NetworkPolicy erc8004-egress-internet's ports (deploy/k8s).
    outbound_allowed_ports: str = Field(
        default=DEFAULT_ALLOWED_PORTS, validation_alias="OUTBOUND_ALLOWED_PORTS"
    )
    #: An HTTP proxy every outbound connection tunnels through (CONNECT to the
    #: checked address), http://[user:password@]host:port; '' = none.
    outbound_proxy_url: SecretStr = Field(
        default=SecretStr(""), validation_alias="OUTBOUND_PROXY_URL"
    )
    outbound_connect_timeout: float = Field(
        default=5.0, gt=0, le=60, validation_alias="OUTBOUND_CONNECT_TIMEOUT"
    )
    outbound_max_response_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=64 * 1_048_576,
        validation_alias="OUTBOUND_MAX_RESPONSE_BYTES",
    )
    #: Identity registry addresses a registration file may name (comma-separated).
    identity_registries: str = Field(
        default=",".join(KNOWN_IDENTITY_REGISTRIES), validation_alias="IDENTITY_REGISTRIES"
    )
    registration_cache_ttl: float = Field(
        default=300.0, ge=0, le=86400, validation_alias="REGISTRATION_CACHE_TTL"
    )
    #: Template workers (processes): every template with something to render is
    #: compiled and rendered in one, within the time and memory below.
    template_workers: int = Field(default=2, ge=1, le=64, validation_alias="TEMPLATE_WORKERS")
    template_render_seconds: float = Field(
        default=1.0, gt=0, le=30, validation_alias="TEMPLATE_RENDER_SECONDS"
    )
    template_memory_mb: int = Field(
        default=256, ge=32, le=4096, validation_alias="TEMPLATE_MEMORY_MB"
    )
    #: Jobs per consumed batch; a batch commits once every attempt in it was recorded,
    #: or after batch_deadline seconds with guard copies of the slower ones.
    batch_max_records: int = Field(
        default=200, ge=1, le=5000, validation_alias="DISPATCHER_BATCH_MAX_RECORDS"
    )
    batch_deadline: float = Field(
        default=2.0, gt=0, le=60, validation_alias="DISPATCHER_BATCH_DEADLINE"
    )
    per_destination_concurrency: int = Field(
        default=8, ge=1, le=1000, validation_alias="DISPATCHER_DESTINATION_CONCURRENCY"
    )
    #: Jobs of one user waiting for destination slots (all destinations together)
    #: beyond which that user's new jobs that would wait are deferred to the retry
    #: topic (slow destinations do not fill the dispatcher's memory or its in-flight
    #: limit; other users' jobs still get their turn).
    destination_queue: int = Field(
        default=1000, ge=0, le=100_000, validation_alias="DISPATCHER_DESTINATION_QUEUE"
    )
    #: Attempts in flight or waiting, all destinations: a new batch waits below this.
    max_in_flight: int = Field(
        default=5000, ge=1, le=1_000_000, validation_alias="DISPATCHER_MAX_IN_FLIGHT"
    )
    #: Attempts of actions whose config has no max_attempts (telegram).
    default_max_attempts: int = Field(
        default=5, ge=1, le=20, validation_alias="DISPATCHER_MAX_ATTEMPTS"
    )
    backoff_base: float = Field(default=1.0, gt=0, le=600, validation_alias="RETRY_BACKOFF_BASE")
    backoff_cap: float = Field(default=300.0, gt=0, le=3600, validation_alias="RETRY_BACKOFF_CAP")
    #: A retry due later than this is put back on the retry topic instead of held.
    retry_hold: float = Field(default=10.0, gt=0, le=120, validation_alias="RETRY_MAX_HOLD")
    #: A job still deferred (open breaker, busy destination) this long after it was
    #: created is dead-lettered instead of cycling on the retry topic.
    max_job_age: float = Field(
        default=86400.0, gt=0, le=30 * 86400, validation_alias="DISPATCHER_MAX_JOB_AGE"
    )
    breaker_threshold: int = Field(default=5, ge=1, le=1000, validation_alias="BREAKER_THRESHOLD")
    breaker_pause: float = Field(default=30.0, gt=0, le=3600, validation_alias="BREAKER_PAUSE")

    @field_validator("outbound_allowed_networks")
    @classmethod
    def _networks(cls, v: str) -> str:
        parse_networks(v)
        return v

    @field_validator("outbound_allowed_ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        parse_ports(v)
        return v

    @field_validator("outbound_proxy_url")
    @classmethod
    def _proxy(cls, v: SecretStr) -> SecretStr:
        OutboundProxy.parse(v.get_secret_value())
        return v

    def registries(self) -> tuple[str, ...]:
        return tuple(r.strip().lower() for r in self.identity_registries.split(",") if r.strip())
