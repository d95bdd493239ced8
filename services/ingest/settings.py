"""Ingest settings (the environment names the README's settings table lists)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.contract.topics import EVENTS
from shared.platform.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    service_name: ClassVar[str] = "ingest"

    database_role: str = Field(default="erc8004_ingest", validation_alias="DATABASE_ROLE")
    http_port: int = Field(default=8081, ge=0, le=65535, validation_alias="HTTP_PORT")
    #: Where /metrics and the detailed /readyz are served (the public port keeps
    #: /healthz and a terse /readyz); 0 takes a free port.
    ops_port: int = Field(default=9105, ge=0, le=65535, validation_alias="OPS_PORT")
    #: Bearer tokens of the indexers, comma-separated in the environment.
    ingest_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        validation_alias="INGEST_TOKENS", min_length=1
    )

    #: The events topic (tests use a topic of their own).
    events_topic: str = Field(default=EVENTS, min_length=1, validation_alias="EVENTS_TOPIC")
    #: Outbox rows per relay batch, and the poll interval behind the NOTIFY wake-up.
    relay_batch_size: int = Field(
        default=2000, ge=1, le=10_000, validation_alias="RELAY_BATCH_SIZE"
    )
    relay_poll_interval: float = Field(
        default=1.0, gt=0, le=60, validation_alias="RELAY_POLL_INTERVAL"
    )

    # Maintenance (services/ingest/maintenance.py), run by every ingest replica, one at a time.
    maintenance_enabled: bool = Field(default=True, validation_alias="MAINTENANCE_ENABLED")
    #: Days of events kept (monthly partitions entirely older are dropped; floor 30).
    events_retention_days: int = Field(
        default=365, ge=30, le=36_500, validation_alias="EVENTS_RETENTION_DAYS"
    )
    #: Days of action_results kept (the schema document's 90).
    action_results_retention_days: int = Field(
        default=90, ge=1, le=36_500, validation_alias="ACTION_RESULTS_RETENTION_DAYS"
    )
    #: Days of the matcher's per-(trigger, event) idempotency records kept.
    trigger_evaluations_retention_days: int = Field(
        default=30, ge=1, le=3650, validation_alias="TRIGGER_EVALUATIONS_RETENTION_DAYS"
    )
    #: Monthly event partitions created ahead of the current month.
    event_partitions_ahead_months: int = Field(
        default=3, ge=1, le=24, validation_alias="EVENT_PARTITIONS_AHEAD_MONTHS"
    )
    #: Seconds between runs: partitions (create ahead, drop expired), row cleanups,
    #: refresh of the stats views; and before the first run after start.
    maintenance_partitions_interval: float = Field(
        default=3600.0, ge=1, le=86_400, validation_alias="MAINTENANCE_PARTITIONS_INTERVAL"
    )
    maintenance_cleanup_interval: float = Field(
        default=3600.0, ge=1, le=86_400, validation_alias="MAINTENANCE_CLEANUP_INTERVAL"
    )
    maintenance_refresh_interval: float = Field(
        default=300.0, ge=1, le=86_400, validation_alias="MAINTENANCE_REFRESH_INTERVAL"
    )
    maintenance_initial_delay: float = Field(
        default=10.0, ge=0, le=3600, validation_alias="MAINTENANCE_INITIAL_DELAY"
    )

    @field_validator("ingest_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value
