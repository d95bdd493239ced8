"""Triggers as the API accepts them and the matcher evaluates them.

A `Condition` mirrors a `trigger_conditions` row (condition_type, field, operator,
value, config) and is validated and normalized per type; typed views of its parsed
value and config are available as properties. Actions carry a per-type config model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self, cast
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializationInfo,
    Strict,
    StrictBool,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.contract.events import EVENT_REGISTRY, EVENT_TYPES, INT32_MAX, INT63_MAX, Registry


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


class ActionType(StrEnum):
    """trigger_actions.action_type."""

    telegram = "telegram"
    rest = "rest"
    mcp = "mcp"


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
#: Serialization context that writes secrets in clear text (storage, job messages).
REVEAL_SECRETS: Final[dict[str, bool]] = {"reveal_secrets": True}

_EQ_OPS: Final = frozenset({"=", "!=", "in", "not_in"})
_NUMERIC_OPS: Final = frozenset({"=", "!=", "<", "<=", ">", ">="})
_ORDER_OPS: Final = frozenset({"<", "<=", ">", ">="})
_LIST_OPS: Final = frozenset({"in", "not_in"})
_WHITELIST_OPS: Final = frozenset({"in", "not_in", "="})
_GROUP_OPS: Final = frozenset(op.value for op in GroupOperator)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")
_UINT = re.compile(r"[0-9]{1,19}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_./-]{1,128}")
_CHAT_ID = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31}")

#: The event field each condition type reads, where it is fixed ('' fills it in).
_FIELDS: Final[dict[ConditionType, frozenset[str]]] = {
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
        {"client_address", "endpoint", "owner", "responder", "metadata_key"}
    ),
}
#: The field a condition reads when ``field`` is left empty, where it has several.
_DEFAULT_FIELD: Final[dict[ConditionType, str]] = {ConditionType.score_threshold: "score"}
#: field_equals fields holding addresses (compared in lower case).
ADDRESS_FIELDS: Final = frozenset({"client_address", "owner", "responder"})
#: The arithmetic of EMAs: alpha = 2/(N+1) is rounded to it too.
EMA_DIGITS: Final = 40
_OPERATORS: Final[dict[ConditionType, frozenset[str]]] = {
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


def _decimal(s: str) -> Decimal | None:
    """A finite decimal of sane size from a string, else None."""
    if len(s) > 80 or _DECIMAL.fullmatch(s) is None:
        return None
    d = Decimal(s)
    return d if d == 0 or d.adjusted() <= 60 else None


def _number(v: object) -> Decimal | None:
    """A JSON number (not bool) or a decimal string as Decimal, else None."""
    if type(v) is int:
        return Decimal(v)
    if type(v) is float:
        return _decimal(repr(v))
    if type(v) is str:
        return _decimal(v.strip())
    return None


def _has_nul(v: object) -> bool:
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


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return v


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _joined(items: list[str]) -> str:
    return ",".join(items)


def _opts(v: frozenset[str]) -> str:
    return ", ".join(sorted(v))


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


class _Errors:
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


def _depth(info: ValidationInfo) -> int:
    context = info.context
    depth = context.get("condition_depth", 1) if isinstance(context, dict) else 1
    return depth if isinstance(depth, int) else 1


class Condition(BaseModel):
    """One trigger_conditions row, validated and normalized for its condition_type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    condition_type: ConditionType
    field: Annotated[str, Strict(), Field(max_length=64)] = ""
    operator: Annotated[str, Strict(), Field(max_length=16)]
    value: Annotated[str, Strict(), Field(max_length=65536), AfterValidator(_no_nul)] = ""
    config: dict[str, Any] = Field(default_factory=dict)

    _values: tuple[str, ...] = PrivateAttr(default=())
    _number: Decimal | None = PrivateAttr(default=None)
    _ema: EmaConfig | None = PrivateAttr(default=None)
    _rate: RateLimitConfig | None = PrivateAttr(default=None)
    _absence: AbsenceConfig | None = PrivateAttr(default=None)
    _children: tuple[Condition, ...] = PrivateAttr(default=())

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, v: Any) -> Any:
        return {} if v is None else v

    @property
    def values(self) -> tuple[str, ...]:
        """The normalized value items (several for in/not_in and validator_whitelist)."""
        return self._values

    @property
    def number(self) -> Decimal | None:
        """The numeric threshold of score_threshold, ema_threshold and rate_limit."""
        return self._number

    @property
    def ema(self) -> EmaConfig | None:
        """Parsed config of an ema_threshold condition."""
        return self._ema

    @property
    def rate(self) -> RateLimitConfig | None:
        """Parsed config of a rate_limit condition."""
        return self._rate

    @property
    def absence(self) -> AbsenceConfig | None:
        """Parsed value and config of an absence condition."""
        return self._absence

    @property
    def children(self) -> tuple[Condition, ...]:
        """Nested conditions of a group."""
        return self._children

    @property
    def is_stateful(self) -> bool:
        """True for ema_threshold/rate_limit, or a group containing one."""
        if self.condition_type in STATEFUL_TYPES:
            return True
        return any(child.is_stateful for child in self._children)

    def walk(self) -> list[Condition]:
        """This condition and all nested ones, depth first."""
        out: list[Condition] = [self]
        for child in self._children:
            out.extend(child.walk())
        return out

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        errors = _Errors()
        kind = self.condition_type
        if self.operator not in _OPERATORS[kind]:
            errors.add(
                ("operator",), f"must be one of {_opts(_OPERATORS[kind])} for {kind}", self.operator
            )
        if kind is ConditionType.group:
            self._check_group(errors, info)
            errors.raise_any("Condition")
            return self
        field = self._check_field(errors)
        is_list = self.operator in _LIST_OPS or (
            kind is ConditionType.validator_whitelist and self.operator == "="
        )
        items = self._check_value(errors, is_list)
        config = self._check_config(errors)
        errors.raise_any("Condition")
        self._values = tuple(items)
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "value", _joined(items) if is_list else items[0])
        object.__setattr__(self, "config", config)
        return self

    def _check_field(self, errors: _Errors) -> str:
        fields = _FIELDS[self.condition_type]
        if self.field == "" and len(fields) == 1:
            return next(iter(fields))
        if self.field == "" and self.condition_type in _DEFAULT_FIELD:
            return _DEFAULT_FIELD[self.condition_type]
        if self.field not in fields:
            errors.add(
                ("field",), f"must be one of {_opts(fields)} for {self.condition_type}", self.field
            )
        return self.field

    def _check_value(self, errors: _Errors, is_list: bool) -> list[str]:
        value = self.value
        if not is_list:
            verbatim = self.condition_type in (ConditionType.tag_equals, ConditionType.field_equals)
            items = [value if verbatim else value.strip()]
        else:
            items = _items(value)
            if len(items) > MAX_LIST_ITEMS:
                errors.add(("value",), f"must list at most {MAX_LIST_ITEMS} items", value)
                return items
            if any(item == "" for item in items):
                errors.add(("value",), "must be a comma-separated list without empty items", value)
                return items
        check: Callable[[Condition, _Errors, list[str]], list[str]] = _VALUE_CHECKS[
            self.condition_type
        ]
        return check(self, errors, items)

    def _check_config(self, errors: _Errors) -> dict[str, Any]:
        if self.condition_type is ConditionType.ema_threshold:
            return self._ema_config(errors)
        if self.condition_type is ConditionType.rate_limit:
            return self._rate_config(errors)
        if self.condition_type is ConditionType.absence:
            self._unknown_keys(errors, frozenset({"scope"}))
            scope = self._scope(errors)
            if self._number is not None and not errors.items:
                self._absence = AbsenceConfig(int(self._number), scope)
            return {"scope": scope}
        for key in self.config:
            errors.add(("config", key), f"unknown key for {self.condition_type}", self.config[key])
        return {}

    def _agent_ids(self, errors: _Errors, items: list[str]) -> list[str]:
        out: list[str] = []
        for item in items:
            if _UINT.fullmatch(item) is None or int(item) > INT63_MAX:
                errors.add(("value",), f"not an agent id (0..2^63-1): {item}", self.value)
                return items
            out.append(str(int(item)))
        return out

    def _tags(self, errors: _Errors, items: list[str]) -> list[str]:
        if any(len(item) > 256 for item in items):
            errors.add(("value",), "tags are at most 256 characters", self.value)
        return items

    def _field_values(self, errors: _Errors, items: list[str]) -> list[str]:
        if self.field in ADDRESS_FIELDS:
            return self._addresses(errors, [item.strip() for item in items])
        if any(len(item) > 8192 for item in items):
            errors.add(("value",), "values are at most 8192 characters", self.value)
        return items

    def _addresses(self, errors: _Errors, items: list[str]) -> list[str]:
        bad = [item for item in items if _ADDRESS.fullmatch(item) is None]
        if bad:
            errors.add(("value",), f"not an address (0x + 40 hex): {bad[0]}", self.value)
        return [item.lower() for item in items]

    def _event_types(self, errors: _Errors, items: list[str]) -> list[str]:
        unknown = [item for item in items if item not in EVENT_REGISTRY]
        if unknown:
            errors.add(("value",), f"unknown event type {unknown[0]}", self.value)
        return items

    def _flag(self, errors: _Errors, items: list[str]) -> list[str]:
        flag = items[0].lower()
        if flag not in ("true", "false"):
            errors.add(("value",), "must be true or false", self.value)
        return [flag]

    def _count(self, errors: _Errors, items: list[str]) -> list[str]:
        if _UINT.fullmatch(items[0]) is None:
            errors.add(("value",), "must be an integer >= 0", self.value)
            return items
        self._number = Decimal(int(items[0]))
        return [str(int(items[0]))]

    def _silence(self, errors: _Errors, items: list[str]) -> list[str]:
        try:
            seconds = parse_duration(items[0])
        except ValueError:
            errors.add(("value",), "must be a duration like 30s, 15m, 1h or 7d", self.value)
            return items
        if not 1 <= seconds <= MAX_DURATION:
            errors.add(("value",), "must be between 1s and 30d", self.value)
            return items
        self._number = Decimal(seconds)
        return items

    def _threshold(self, errors: _Errors, items: list[str]) -> list[str]:
        self._number = _decimal(items[0])
        if self._number is None:
            errors.add(("value",), "must be a decimal number", self.value)
        return items

    def _check_group(self, errors: _Errors, info: ValidationInfo) -> None:
        depth = _depth(info)
        if depth > MAX_GROUP_DEPTH:
            errors.add((), f"groups nest at most {MAX_GROUP_DEPTH} deep", self.operator)
            return
        if self.field != "":
            errors.add(("field",), "must be empty for a group", self.field)
        if self.value != "":
            errors.add(("value",), "must be empty for a group", self.value)
        for key in self.config:
            if key != "conditions":
                errors.add(("config", key), "unknown key for group", self.config[key])
        raw = self.config.get("conditions")
        if not isinstance(raw, list) or not raw:
            errors.add(("config", "conditions"), "must be a non-empty list of conditions", raw)
            return
        if self.operator == GroupOperator.not_ and len(raw) != 1:
            errors.add(("config", "conditions"), "a not group takes exactly one condition", raw)
        if len(raw) > MAX_CONDITIONS:
            errors.add(("config", "conditions"), f"at most {MAX_CONDITIONS} conditions", raw)
            return
        context = dict(info.context) if isinstance(info.context, dict) else {}
        context["condition_depth"] = depth + 1
        children: list[Condition] = []
        for i, item in enumerate(raw):
            try:
                children.append(Condition.model_validate(item, context=context))
            except ValidationError as exc:
                errors.nested(exc, ("config", "conditions", i))
        if errors.items:
            return
        self._children = tuple(children)
        object.__setattr__(
            self, "config", {"conditions": [c.model_dump(mode="json") for c in children]}
        )

    def _scope(self, errors: _Errors) -> Scope:
        scope = self.config.get("scope")
        if scope is None:
            return "trigger"
        if scope in ("trigger", "agent"):
            return cast(Scope, scope)
        errors.add(("config", "scope"), "must be trigger or agent", scope)
        return "trigger"

    def _unknown_keys(self, errors: _Errors, known: frozenset[str]) -> None:
        for key in self.config:
            if key not in known:
                errors.add(("config", key), f"unknown key for {self.condition_type}", None)

    def _ema_config(self, errors: _Errors) -> dict[str, Any]:
        config = self.config
        self._unknown_keys(
            errors, frozenset({"window_size", "alpha", "scope", "hysteresis", "fire_on"})
        )
        window, alpha_in = config.get("window_size"), config.get("alpha")
        out: dict[str, Any] = {}
        alpha: Decimal | None = None
        warmup = 1
        if window is None and alpha_in is None:
            errors.add(("config",), "window_size or alpha is required", config)
        if window is not None:
            if type(window) is not int:
                errors.add(("config", "window_size"), "must be an integer", window)
            elif not 1 <= window <= MAX_WINDOW_SIZE:
                errors.add(
                    ("config", "window_size"), f"must be between 1 and {MAX_WINDOW_SIZE}", window
                )
            else:
                # Both given: alpha smooths, window_size is the warm-up.
                alpha = Context(prec=EMA_DIGITS, rounding=ROUND_HALF_EVEN).divide(
                    Decimal(2), Decimal(window + 1)
                )
                out["window_size"] = window
                if alpha_in is not None:
                    warmup = window
        if alpha_in is not None:
            alpha = _number(alpha_in)
            if alpha is None or not 0 < alpha <= 1:
                errors.add(("config", "alpha"), "must be a number with 0 < alpha <= 1", alpha_in)
                alpha = None
            else:
                out["alpha"] = alpha_in
        scope = self._scope(errors)
        hysteresis_in = config.get("hysteresis")
        hysteresis = Decimal(0) if hysteresis_in is None else _number(hysteresis_in)
        if hysteresis is None or hysteresis < 0:
            errors.add(("config", "hysteresis"), "must be a number >= 0", hysteresis_in)
        fire_on = config.get("fire_on", "crossing")
        if fire_on not in ("crossing", "every"):
            errors.add(("config", "fire_on"), "must be crossing or every", fire_on)
        if alpha is None or hysteresis is None or hysteresis < 0 or errors.items:
            return out
        out.update(
            scope=scope, hysteresis=0 if hysteresis_in is None else hysteresis_in, fire_on=fire_on
        )
        self._ema = EmaConfig(alpha, out.get("window_size"), scope, hysteresis, fire_on, warmup)
        return out

    def _rate_config(self, errors: _Errors) -> dict[str, Any]:
        config = self.config
        self._unknown_keys(errors, frozenset({"time_window", "reset_on_trigger", "scope"}))
        window = config.get("time_window")
        seconds = 0
        if not isinstance(window, str):
            errors.add(("config", "time_window"), "required, like 30s, 15m, 1h or 7d", window)
        else:
            try:
                seconds = parse_duration(window)
            except ValueError:
                errors.add(("config", "time_window"), "must look like 30s, 15m, 1h or 7d", window)
            else:
                if not 1 <= seconds <= MAX_DURATION:
                    errors.add(("config", "time_window"), "must be between 1s and 30d", window)
        reset = config.get("reset_on_trigger", False)
        if type(reset) is not bool:
            errors.add(("config", "reset_on_trigger"), "must be true or false", reset)
        scope = self._scope(errors)
        if errors.items or not isinstance(window, str) or type(reset) is not bool:
            return {}
        self._rate = RateLimitConfig(window, seconds, reset, scope)
        return {"time_window": window, "reset_on_trigger": reset, "scope": scope}


_VALUE_CHECKS: Final[dict[ConditionType, Callable[[Condition, _Errors, list[str]], list[str]]]] = {
    ConditionType.agent_id_equals: Condition._agent_ids,
    ConditionType.score_threshold: Condition._threshold,
    ConditionType.tag_equals: Condition._tags,
    ConditionType.validator_whitelist: Condition._addresses,
    ConditionType.event_type_equals: Condition._event_types,
    ConditionType.ema_threshold: Condition._threshold,
    ConditionType.rate_limit: Condition._count,
    ConditionType.file_uri_exists: Condition._flag,
    ConditionType.field_equals: Condition._field_values,
    ConditionType.absence: Condition._silence,
}


# --- actions -------------------------------------------------------------------------------


def _http_url(v: str) -> str:
    if len(v) > 2048 or any(c.isspace() or ord(c) < 32 for c in v):
        raise PydanticCustomError("url", "must be an http(s) URL of at most 2048 characters")
    try:
        parts = urlsplit(v)
        _ = parts.port
    except ValueError as exc:
        raise PydanticCustomError("url", "not a valid URL: {reason}", {"reason": str(exc)}) from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("url", "must be an http or https URL with a host")
    return v


UrlText = Annotated[str, Strict()]
TimeoutMs = Annotated[int, Strict(), Field(ge=100, le=60000)]
MaxAttempts = Annotated[int, Strict(), Field(ge=1, le=20)]
Template = str | dict[str, Any]


def _template(v: Any) -> Any:
    if v is not None and not isinstance(v, str | dict):
        raise PydanticCustomError("template", "must be a string, an object or null")
    if isinstance(v, str) and len(v) > 65536:
        raise PydanticCustomError("template", "must be at most 65536 characters")
    if _has_nul(v):
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return v


def _reveal(info: SerializationInfo) -> bool:
    context = info.context
    return isinstance(context, dict) and context.get("reveal_secrets") is True


class TelegramConfig(BaseModel):
    """Config of a telegram action."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chat_id: str
    message_template: Annotated[
        str, Strict(), Field(min_length=1, max_length=4096 * 4), AfterValidator(_no_nul)
    ]
    parse_mode: Literal["MarkdownV2", "HTML", "Markdown"] | None = None

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat_id(cls, v: Any) -> Any:
        if type(v) is int:
            v = str(v)
        if type(v) is not str or _CHAT_ID.fullmatch(v) is None:
            raise PydanticCustomError(
                "chat_id", "must be a numeric chat id or an @channel username"
            )
        return v


#: Headers a REST action may not set: message framing and routing (a user-chosen
#: Transfer-Encoding or Content-Length next to the client's own would let a body
#: smuggle a second request onto a shared keep-alive connection), and the ones the
#: dispatcher sets itself.
RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "keep-alive",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


def is_reserved_header(name: str) -> bool:
    lower = name.lower()
    return lower in RESERVED_HEADERS or lower.startswith("proxy-")


#: Header names whose values are credentials: the API takes them only in a REST
#: action's ``secret_headers`` (encrypted at rest, never returned, never on Kafka).
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "api-key",
        "x-api-key",
        "x-auth-token",
        "x-access-token",
        "private-token",
    }
)


def _check_headers(errors: _Errors, items: dict[str, str]) -> None:
    for name, text in items.items():
        if _TOKEN.fullmatch(name) is None:
            errors.add((name,), "not a valid header name", name)
        elif is_reserved_header(name):
            errors.add((name,), "set by the dispatcher itself (framing, routing or signing)", name)
        elif len(text) > 8192 or any(c in text for c in "\r\n\x00"):
            errors.add((name,), "header values are one line of at most 8192 characters", None)


class RestConfig(BaseModel):
    """Config of a rest (webhook) action."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: UrlText
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    body_template: Template | None = None
    timeout_ms: TimeoutMs = 10000
    #: Statuses counted as success; None means any 2xx.
    expected_status: (
        Annotated[list[Annotated[int, Strict(), Field(ge=100, le=599)]], Field(min_length=1)] | None
    ) = None
    signing_secret: Annotated[SecretStr, Field(min_length=1, max_length=1024)] | None = None
    #: Headers that carry credentials (Authorization, API keys): sent like ``headers``
    #: but literal (not templates), stored encrypted, write-only in the API.
    secret_headers: dict[str, SecretStr] | None = Field(default=None, max_length=20)
    max_attempts: MaxAttempts = 5

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)

    @field_validator("body_template", mode="before")
    @classmethod
    def _body(cls, v: Any) -> Any:
        return _template(v)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        errors = _Errors()
        _check_headers(errors, v)
        errors.raise_any("RestConfig")
        return v

    @field_validator("secret_headers")
    @classmethod
    def _secret_headers(cls, v: dict[str, SecretStr] | None) -> dict[str, SecretStr] | None:
        if v is None:
            return v
        errors = _Errors()
        _check_headers(errors, {k: s.get_secret_value() for k, s in v.items()})
        for name, text in v.items():
            if not text.get_secret_value():
                errors.add((name,), "empty: leave the header out instead", None)
        errors.raise_any("RestConfig")
        return v

    @model_validator(mode="after")
    def _one_place_per_header(self) -> RestConfig:
        """A header name (in any case) once: in headers or in secret_headers."""
        errors = _Errors()
        for field, names in (("headers", self.headers), ("secret_headers", self.secret_headers)):
            seen: set[str] = set()
            for name in names or {}:
                if name.lower() in seen:
                    errors.add((field, name), "the same header twice (names ignore case)", None)
                seen.add(name.lower())
        clear = {k.lower() for k in self.headers}
        for name in self.secret_headers or {}:
            if name.lower() in clear:
                errors.add(
                    ("secret_headers", name),
                    "header named in both headers and secret_headers",
                    None,
                )
        errors.raise_any("RestConfig")
        return self

    @field_serializer("signing_secret")
    def _secret(self, v: SecretStr | None, info: SerializationInfo) -> str | None:
        if v is None:
            return None
        return v.get_secret_value() if _reveal(info) else str(v)

    @field_serializer("secret_headers")
    def _secret_header_values(
        self, v: dict[str, SecretStr] | None, info: SerializationInfo
    ) -> dict[str, str] | None:
        if v is None:
            return None
        return {k: s.get_secret_value() if _reveal(info) else str(s) for k, s in v.items()}


class McpConfig(BaseModel):
    """Config of an mcp action: one tools/call to a fixed or resolved server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server_url: UrlText | None = None
    resolve_endpoint: StrictBool = False
    tool_name: Annotated[str, Strict(), Field(pattern=f"^{_TOOL_NAME.pattern}$")]
    arguments_template: Template | None = None
    verify_file_hash: StrictBool = False
    include_file_content: StrictBool = False
    timeout_ms: TimeoutMs = 10000
    max_attempts: MaxAttempts = 5

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)

    @field_validator("arguments_template", mode="before")
    @classmethod
    def _arguments(cls, v: Any) -> Any:
        return _template(v)

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.server_url is None) == (not self.resolve_endpoint):
            errors = _Errors()
            errors.add(
                ("server_url",),
                "exactly one of server_url or resolve_endpoint=true is required",
                self.server_url,
            )
            errors.raise_any("McpConfig")
        return self


ActionConfig = TelegramConfig | RestConfig | McpConfig
_CONFIGS: Final[dict[ActionType, type[ActionConfig]]] = {
    ActionType.telegram: TelegramConfig,
    ActionType.rest: RestConfig,
    ActionType.mcp: McpConfig,
}


class Action(BaseModel):
    """One trigger_actions row: action_type, priority (lower first) and typed config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action_type: ActionType
    priority: Annotated[int, Strict(), Field(ge=0, le=1000)] = 1
    config: ActionConfig

    @field_validator("config", mode="before")
    @classmethod
    def _typed_config(cls, v: Any, info: ValidationInfo) -> Any:
        action_type = info.data.get("action_type")
        if action_type is None:
            raise PydanticCustomError("action_config", "not checked: action_type is invalid")
        model = _CONFIGS[action_type]
        if isinstance(v, model):
            return v
        if isinstance(v, BaseModel):
            raise PydanticCustomError(
                "action_config", "is not a config of a {kind} action", {"kind": action_type.value}
            )
        return model.model_validate(v, context=info.context)


# --- triggers ------------------------------------------------------------------------------

Name = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_nul),
]
Description = Annotated[str, Strict(), Field(max_length=4000), AfterValidator(_no_nul)]
ChainId = Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)]
Cooldown = Annotated[int, Strict(), Field(ge=0, le=MAX_DURATION)]
Conditions = Annotated[list[Condition], Field(max_length=MAX_CONDITIONS)]
Actions = Annotated[list[Action], Field(min_length=1, max_length=20)]


def _check_registry(
    conditions: list[Condition] | None, registry: Registry | None
) -> list[InitErrorDetails]:
    """Errors for event_type_equals values that are not events of the trigger's registry."""
    errors = _Errors()
    if conditions is None or registry is None:
        return errors.items
    own = EVENT_TYPES[registry]

    def visit(condition: Condition, loc: tuple[str | int, ...]) -> None:
        if condition.condition_type is ConditionType.event_type_equals:
            foreign = [item for item in condition.values if item not in own]
            if foreign:
                errors.add(
                    (*loc, "value"),
                    f"{foreign[0]} is not an event of the {registry.value} registry",
                    condition.value,
                )
        for i, child in enumerate(condition.children):
            visit(child, (*loc, "config", "conditions", i))

    for i, condition in enumerate(conditions):
        visit(condition, ("conditions", i))
    _check_absence(errors, conditions)
    if sum(len(c.walk()) for c in conditions) > MAX_CONDITION_NODES:
        errors.add(
            ("conditions",), f"at most {MAX_CONDITION_NODES} conditions including groups", None
        )
    return errors.items


def _check_absence(errors: _Errors, conditions: list[Condition]) -> None:
    """An absence condition stands at the top level, alone of its kind, with no
    ema_threshold or rate_limit anywhere in the trigger (docs/semantics.md 5a)."""
    absent = [i for i, c in enumerate(conditions) if c.condition_type is ConditionType.absence]
    for i in absent[1:]:
        errors.add(("conditions", i), "a trigger has at most one absence condition", None)

    def visit(condition: Condition, loc: tuple[str | int, ...]) -> None:
        if condition.condition_type is ConditionType.absence and len(loc) > 2:
            errors.add(loc, "an absence condition stands at the top level only", None)
        if absent and condition.condition_type in (
            ConditionType.ema_threshold,
            ConditionType.rate_limit,
        ):
            errors.add(
                (*loc, "condition_type"),
                f"{condition.condition_type} cannot be combined with an absence condition",
                condition.condition_type.value,
            )
        for j, child in enumerate(condition.children):
            visit(child, (*loc, "config", "conditions", j))

    for i, condition in enumerate(conditions):
        visit(condition, ("conditions", i))


def _drop_derived(data: Any) -> Any:
    if isinstance(data, dict) and "is_stateful" in data:
        data = dict(data)
        del data["is_stateful"]
    return data


class TriggerCreate(BaseModel):
    """A new trigger with its conditions (ANDed) and actions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    description: Description | None = None
    chain_id: ChainId
    registry: Registry
    enabled: StrictBool = True
    cooldown_seconds: Cooldown | None = None
    conditions: Conditions = Field(default_factory=list)
    actions: Actions

    @computed_field  # type: ignore[prop-decorator]
    @property
    def is_stateful(self) -> bool:
        """True when the matcher keeps state for it: an ema_threshold or rate_limit
        condition (also in groups), or a cooldown (the time of the last firing)."""
        return bool(self.cooldown_seconds) or any(c.is_stateful for c in self.conditions)

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        """is_stateful is read-only: an echoed value is ignored."""
        return _drop_derived(data)

    @model_validator(mode="after")
    def _registry(self) -> Self:
        errors = _check_registry(self.conditions, self.registry)
        if errors:
            raise ValidationError.from_exception_data("TriggerCreate", errors)
        return self

    def storage_dump(self) -> dict[str, Any]:
        """JSON-ready dict with secrets in clear text, for the database."""
        return self.model_dump(mode="json", context=REVEAL_SECRETS)


class TriggerUpdate(BaseModel):
    """PATCH body: only the fields given change; null clears description/cooldown."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name | None = None
    description: Description | None = None
    chain_id: ChainId | None = None
    registry: Registry | None = None
    enabled: StrictBool | None = None
    cooldown_seconds: Cooldown | None = None
    conditions: Conditions | None = None
    actions: Actions | None = None

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        """is_stateful is read-only: an echoed value is ignored."""
        return _drop_derived(data)

    @field_validator(
        "name", "chain_id", "registry", "enabled", "conditions", "actions", mode="before"
    )
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        if v is None:
            raise PydanticCustomError("not_null", "may be omitted but not null")
        return v

    @model_validator(mode="after")
    def _registry(self) -> Self:
        errors = _check_registry(self.conditions, self.registry)
        if errors:
            raise ValidationError.from_exception_data("TriggerUpdate", errors)
        return self

    def storage_dump(self) -> dict[str, Any]:
        """The fields given, JSON-ready, secrets in clear text."""
        return self.model_dump(mode="json", context=REVEAL_SECRETS, exclude_unset=True)

    def apply(self, current: TriggerCreate) -> TriggerCreate:
        """The trigger after this update (validated again as a whole)."""
        merged = current.storage_dump()
        merged.update(self.storage_dump())
        return TriggerCreate.model_validate(merged)
