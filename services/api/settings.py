"""API settings (environment names from DESIGN.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    service_name: ClassVar[str] = "api"

    database_role: str = Field(default="erc8004_api", validation_alias="DATABASE_ROLE")
    http_port: int = Field(default=8080, ge=0, le=65535, validation_alias="HTTP_PORT")
    jwt_secret: SecretStr = Field(validation_alias="JWT_SECRET", min_length=16)
    secrets_key: SecretStr = Field(validation_alias="SECRETS_KEY")
