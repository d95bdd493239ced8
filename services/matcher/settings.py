"""Matcher settings (the environment names the README's settings table lists)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from shared.contract.topics import ACTIONS, EVENTS, MATCHER_GROUP
from shared.platform.settings import ServiceSettings


class MatcherSettings(ServiceSettings):
    service_name: ClassVar[str] = "matcher"

    database_role: str = Field(default="erc8004_matcher", validation_alias="DATABASE_ROLE")
    http_port: int = Field(default=9101, ge=0, le=65535, validation_alias="HTTP_PORT")
    events_topic: str = Field(default=EVENTS, min_length=1, validation_alias="EVENTS_TOPIC")
    actions_topic: str = Field(default=ACTIONS, min_length=1, validation_alias="ACTIONS_TOPIC")
    group_id: str = Field(default=MATCHER_GROUP, min_length=1, validation_alias="MATCHER_GROUP")
    #: Messages per consumed batch (one transaction, one commit).
    batch_max_records: int = Field(
        default=500, ge=1, le=10_000, validation_alias="MATCHER_BATCH_MAX_RECORDS"
    )
    #: Full resync of the trigger index, behind the NOTIFY updates (at most 60 s).
    #: Jobs one event version may produce for one user (their triggers' actions
    #: together); beyond, the rest are not produced (counted and logged).
    max_jobs_per_event_per_user: int = Field(
        default=100, ge=1, le=100_000, validation_alias="MATCHER_MAX_JOBS_PER_EVENT_PER_USER"
    )
    resync_interval: float = Field(
        default=60.0, gt=0, le=60, validation_alias="MATCHER_RESYNC_INTERVAL"
    )
    #: Programs compiled between two settles (one collection, then a freeze: they
    #: leave the cyclic GC's sight; services/matcher/keeper.py, ProgramSettler).
    settle_every: int = Field(
        default=5000, ge=1, le=100_000_000, validation_alias="MATCHER_SETTLE_EVERY"
    )
