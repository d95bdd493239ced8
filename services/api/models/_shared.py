"""What the API's models share: their two bases (bodies refuse unknown fields,
answers are frozen), the error body, and cursor pages with the query that asks
for one (optionally within a time range)."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

T = TypeVar("T")

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
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
