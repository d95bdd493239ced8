"""Ingest settings (environment names from DESIGN.md)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings
from shared.topics import EVENTS


class IngestSettings(ServiceSettings):
    service_name: ClassVar[str] = "ingest"

    database_role: str = Field(default="erc8004_ingest", validation_alias="DATABASE_ROLE")
    http_port: int = Field(default=8081, ge=0, le=65535, validation_alias="HTTP_PORT")
    #: Bearer tokens of the indexers, comma-separated in the environment.
    ingest_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        validation_alias="INGEST_TOKENS", min_length=1
    )

    #: The events topic (tests use a topic of their own).
    events_topic: str = Field(default=EVENTS, min_length=1, validation_alias="EVENTS_TOPIC")
    #: Outbox rows per relay batch, and the poll interval behind the NOTIFY wake-up.
    relay_batch_size: int = Field(
        default=1000, ge=1, le=10_000, validation_alias="RELAY_BATCH_SIZE"
    )
    relay_poll_interval: float = Field(
        default=1.0, gt=0, le=60, validation_alias="RELAY_POLL_INTERVAL"
    )

    @field_validator("ingest_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value
