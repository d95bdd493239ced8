"""The accounts' models: registration, login and its access token, API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, Strict, StringConstraints

from services.api.models._shared import _Body, _Out

#: Query and path strings: printable, no NUL (PostgreSQL refuses it in text).
_SAFE = r"^[^\x00-\x1f\x7f]*$"

Username = Annotated[
    str,
    Strict(),
    StringConstraints(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
]
_EMAIL = r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$"
Email = Annotated[str, Strict(), StringConstraints(max_length=254, pattern=_EMAIL)]


class RegisterIn(_Body):
    username: Username
    email: Email
    password: Annotated[SecretStr, Field(min_length=10, max_length=1024)]


class UserOut(_Out):
    id: str
    username: str
    email: str
    created_at: datetime | None


class LoginIn(_Body):
    username: Annotated[str, Strict(), Field(max_length=256)]
    password: Annotated[SecretStr, Field(max_length=1024)]


class PasswordChangeIn(_Body):
    current_password: Annotated[SecretStr, Field(max_length=1024)]
    new_password: Annotated[SecretStr, Field(min_length=10, max_length=1024)]
    #: Revoke every API key of the user too (a leaked password may have made some).
    revoke_api_keys: bool = False


class LogoutQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Revoke every API key of the user too.
    api_keys: bool = False


class TokenOut(_Out):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the scheme's name, not a secret)
    expires_in: int


class ApiKeyIn(_Body):
    name: Annotated[str, Strict(), StringConstraints(max_length=100, pattern=_SAFE)] | None = None


class ApiKeyOut(_Out):
    id: str
    name: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    #: The key itself: shown this once, stored only as a hash.
    key: str
