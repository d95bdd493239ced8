"""Matcher settings (environment names from DESIGN.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from shared.settings import ServiceSettings


class MatcherSettings(ServiceSettings):
    service_name: ClassVar[str] = "matcher"

    database_role: str = Field(default="erc8004_matcher", validation_alias="DATABASE_ROLE")
    http_port: int = Field(default=9101, ge=0, le=65535, validation_alias="HTTP_PORT")
