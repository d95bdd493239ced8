"""Validation helpers the condition, action and trigger models share: an error
collector that reports every problem of a model at once, and the checks for NUL
characters (PostgreSQL refuses NUL in text)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


def has_nul(v: object) -> bool:
    """True if a string anywhere in a JSON-like value contains NUL (PostgreSQL refuses it)."""
    stack = [v]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def no_nul(v: str) -> str:
    """The string itself; a validation error if it contains NUL."""
    if "\x00" in v:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return v


class Errors:
    """Collects errors at locations relative to the model being validated."""

    def __init__(self) -> None:
        self.items: list[InitErrorDetails] = []

    def add(self, loc: tuple[str | int, ...], message: str, value: Any) -> None:
        self.items.append(
            InitErrorDetails(
                type=PydanticCustomError("invalid_condition", message), loc=loc, input=value
            )
        )

    def nested(self, exc: ValidationError, prefix: tuple[str | int, ...]) -> None:
        for err in exc.errors(include_url=False):
            self.items.append(
                InitErrorDetails(
                    type=PydanticCustomError(err["type"], err["msg"]),
                    loc=prefix + tuple(err["loc"]),
                    input=err["input"],
                )
            )

    def raise_any(self, title: str) -> None:
        if self.items:
            raise ValidationError.from_exception_data(title, self.items)
