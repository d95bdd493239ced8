"""Settings every service shares, read from the environment (pydantic-settings).

Names are the ones the README's settings table lists (``DATABASE_URL``,
``KAFKA_BOOTSTRAP_SERVERS``, ...); each service subclasses :class:`ServiceSettings`
with its own fields and defaults. Settings are built once in ``__main__`` and passed down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Kubernetes mounts secret files here (one file per variable name, lower case).
DEFAULT_SECRETS_DIR = "/run/secrets/erc8004"


class ServiceSettings(BaseSettings):
    """Settings common to the four services."""

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, populate_by_name=True, case_sensitive=False
    )

    #: The name logs and metrics use for this service.
    service_name: ClassVar[str] = "service"

    database_url: SecretStr = Field(validation_alias="DATABASE_URL")
    #: Role the service narrows itself to after connecting ('' keeps the login's own).
    database_role: str = Field(default="", validation_alias="DATABASE_ROLE")
    database_pool_max: int = Field(default=10, ge=1, le=200, validation_alias="DATABASE_POOL_MAX")
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    http_host: str = Field(default="127.0.0.1", validation_alias="HTTP_HOST")
    http_port: int = Field(default=0, ge=0, le=65535, validation_alias="HTTP_PORT")
    #: Seconds a stopping service waits for work in flight (below Kubernetes' 30 s grace).
    shutdown_timeout: float = Field(default=8.0, gt=0, le=25, validation_alias="SHUTDOWN_TIMEOUT")

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Build from the environment, reading secret files when the directory exists."""
        secrets_dir = os.environ.get("SECRETS_DIR", DEFAULT_SECRETS_DIR)
        if Path(secrets_dir).is_dir():
            return cls(_secrets_dir=secrets_dir, **overrides)
        return cls(**overrides)
