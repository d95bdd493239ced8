"""What the API's models share: their two bases (bodies refuse unknown fields,
answers are frozen), the error body, and cursor pages with the query that asks
for one (optionally within a time range)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

T = TypeVar("T")

#: RFC 3339's date-time (JSON Schema's ``format: date-time``): a date, a time and an
#: offset, nothing else (pydantic alone would also take unix seconds such as ``0.5``).
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(v: Any) -> Any:
    if isinstance(v, datetime) or (isinstance(v, str) and _RFC3339.fullmatch(v) is not None):
        return v
    raise PydanticCustomError(
        "date_time", "must be an RFC 3339 date-time with an offset (2026-01-31T12:00:00Z)"
    )


#: A point in time as the document says: an RFC 3339 date-time string with its offset.
DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]

Cursor = Annotated[str, StringConstraints(max_length=1024, pattern=r"^[A-Za-z0-9_-]*$")]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- errors --------------------------------------------------------------------------------


class ErrorDetail(_Out):
    """One problem: where (``loc``: body, query or path, then the field path; ``field``
    the same path dotted without the first part) and what."""

    loc: list[str | int]
    field: str
    message: str


class ErrorOut(_Out):
    error: str
    details: list[ErrorDetail]


# --- pages ---------------------------------------------------------------------------------


class Page(_Out, Generic[T]):
    items: list[T]
    #: Pass as ``cursor`` for the next page; null on the last one.
    next_cursor: str | None


class PageQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Cursor | None = None


class _TimeRange(PageQuery):
    since: DateTime | None = None
    until: DateTime | None = None
