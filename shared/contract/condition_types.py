"""The vocabulary of trigger conditions: condition types and operators, the event
fields and operators each type takes, the limits on conditions, how durations and
numbers in condition values are read, and the parsed configs of the stateful types
(ema_threshold, rate_limit, absence). The `Condition` model that checks a condition
against these rules is in shared.contract.conditions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Final, Literal

from shared.contract.patterns import DECIMAL_RE


class Operator(StrEnum):
    """Comparison operators of a leaf condition (`in`/`not_in` take a comma list)."""

    eq = "="
    ne = "!="
    lt = "<"
    le = "<="
    gt = ">"
    ge = ">="
    in_ = "in"
    not_in = "not_in"


class GroupOperator(StrEnum):
    """Operators of a `group` condition."""

    any = "any"
    all = "all"
    not_ = "not"


class ConditionType(StrEnum):
    """The condition types of trigger_conditions.condition_type."""

    agent_id_equals = "agent_id_equals"
    score_threshold = "score_threshold"
    tag_equals = "tag_equals"
    validator_whitelist = "validator_whitelist"
    event_type_equals = "event_type_equals"
    ema_threshold = "ema_threshold"
    rate_limit = "rate_limit"
    file_uri_exists = "file_uri_exists"
    field_equals = "field_equals"
    absence = "absence"
    group = "group"


Scope = Literal["trigger", "agent"]
FireOn = Literal["crossing", "every"]

STATEFUL_TYPES: Final = frozenset(
    {ConditionType.ema_threshold, ConditionType.rate_limit, ConditionType.absence}
)
MAX_GROUP_DEPTH: Final = 4
MAX_CONDITIONS: Final = 50
MAX_CONDITION_NODES: Final = 200
MAX_LIST_ITEMS: Final = 1000
MAX_DURATION: Final = 30 * 86400
MAX_WINDOW_SIZE: Final = 10000

_EQ_OPS: Final = frozenset({"=", "!=", "in", "not_in"})
_NUMERIC_OPS: Final = frozenset({"=", "!=", "<", "<=", ">", ">="})
_ORDER_OPS: Final = frozenset({"<", "<=", ">", ">="})
#: Operators whose value is a comma-separated list.
LIST_OPERATORS: Final = frozenset({"in", "not_in"})
_WHITELIST_OPS: Final = frozenset({"in", "not_in", "="})
_GROUP_OPS: Final = frozenset(op.value for op in GroupOperator)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")

#: The event field each condition type reads, where it is fixed ('' fills it in).
CONDITION_FIELDS: Final[dict[ConditionType, frozenset[str]]] = {
    ConditionType.agent_id_equals: frozenset({"agent_id"}),
    ConditionType.score_threshold: frozenset({"score", "response", "value_decimals"}),
    ConditionType.tag_equals: frozenset({"tag1", "tag2", "tag"}),
    ConditionType.validator_whitelist: frozenset({"validator_address"}),
    ConditionType.event_type_equals: frozenset({"event_type"}),
    ConditionType.ema_threshold: frozenset({"score"}),
    ConditionType.rate_limit: frozenset({"count"}),
    ConditionType.absence: frozenset({"silence"}),
    ConditionType.file_uri_exists: frozenset({"file_uri"}),
    ConditionType.field_equals: frozenset(
        {
            "client_address",
            "endpoint",
            "owner",
            "responder",
            "metadata_key",
            "registry_address",
            "agent_registry",
        }
    ),
}
#: The field a condition reads when ``field`` is left empty, where it has several.
DEFAULT_FIELD: Final[dict[ConditionType, str]] = {ConditionType.score_threshold: "score"}
#: field_equals fields holding addresses (compared in lower case).
ADDRESS_FIELDS: Final = frozenset(
    {"client_address", "owner", "responder", "registry_address", "agent_registry"}
)
#: The arithmetic of EMAs: alpha = 2/(N+1) is rounded to it too.
EMA_DIGITS: Final = 40
#: The operators each condition type takes.
CONDITION_OPERATORS: Final[dict[ConditionType, frozenset[str]]] = {
    ConditionType.agent_id_equals: _EQ_OPS,
    ConditionType.score_threshold: _NUMERIC_OPS,
    ConditionType.tag_equals: _EQ_OPS,
    ConditionType.validator_whitelist: _WHITELIST_OPS,
    ConditionType.event_type_equals: _EQ_OPS,
    ConditionType.ema_threshold: _ORDER_OPS,
    ConditionType.rate_limit: _NUMERIC_OPS,
    ConditionType.file_uri_exists: frozenset({"="}),
    ConditionType.field_equals: _EQ_OPS,
    ConditionType.absence: frozenset({">"}),
    ConditionType.group: _GROUP_OPS,
}


def parse_duration(s: str) -> int:
    """'90s', '15m', '1h', '7d' -> seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(s)
    if match is None:
        raise ValueError(f"invalid duration {s!r}: expected digits and s, m, h or d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_decimal(s: str) -> Decimal | None:
    """A finite decimal of sane size from a string, else None."""
    if len(s) > 80 or DECIMAL_RE.fullmatch(s) is None:
        return None
    d = Decimal(s)
    return d if d == 0 or d.adjusted() <= 60 else None


def parse_number(v: object) -> Decimal | None:
    """A JSON number (not bool) or a decimal string as Decimal, else None."""
    if type(v) is int:
        return Decimal(v)
    if type(v) is float:
        return parse_decimal(repr(v))
    if type(v) is str:
        return parse_decimal(v.strip())
    return None


@dataclass(frozen=True, slots=True)
class EmaConfig:
    """Parsed config of an ema_threshold condition."""

    alpha: Decimal
    window_size: int | None
    scope: Scope
    hysteresis: Decimal
    fire_on: FireOn
    #: Values the EMA must average before the condition can hold (window_size when
    #: alpha is given as well; else 1).
    warmup: int = 1


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Parsed config of a rate_limit condition."""

    time_window: str
    window_seconds: int
    reset_on_trigger: bool
    scope: Scope


@dataclass(frozen=True, slots=True)
class AbsenceConfig:
    """Parsed value and config of an absence condition."""

    seconds: int  # D: the silence fires when it lasts longer than this
    scope: Scope
