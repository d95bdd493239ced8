"""The `Condition` model: one trigger_conditions row (condition_type, field, operator,
value, config), validated and normalized for its condition type, with typed views of
its parsed value and config as properties; groups hold nested conditions. The rules
it applies (fields, operators, limits, parsed configs) are in
shared.contract.condition_types."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Annotated, Any, ClassVar, Final, Literal, Self, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from pydantic_core.core_schema import definition_reference_schema

from shared.contract.condition_schema import (
    CONFIG_SCHEMAS,
    OPTIONAL_CONFIG,
    OPTIONAL_VALUE,
    VALUE_SCHEMAS,
)
from shared.contract.condition_types import (
    ADDRESS_FIELDS,
    CONDITION_FIELDS,
    CONDITION_OPERATORS,
    DEFAULT_FIELD,
    EMA_DIGITS,
    LIST_OPERATORS,
    MAX_CONDITIONS,
    MAX_DURATION,
    MAX_GROUP_DEPTH,
    MAX_LIST_ITEMS,
    MAX_WINDOW_SIZE,
    STATEFUL_TYPES,
    AbsenceConfig,
    ConditionType,
    EmaConfig,
    GroupOperator,
    RateLimitConfig,
    Scope,
    parse_decimal,
    parse_duration,
    parse_number,
)
from shared.contract.event_fields import (
    INT63_MAX,
)
from shared.contract.events import (
    EVENT_REGISTRY,
)
from shared.contract.patterns import ADDRESS_RE, UINT_RE
from shared.contract.validation import Errors, no_nul


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _joined(items: list[str]) -> str:
    return ",".join(items)


def _opts(v: frozenset[str]) -> str:
    return ", ".join(sorted(v))


def _depth(info: ValidationInfo) -> int:
    context = info.context
    depth = context.get("condition_depth", 1) if isinstance(context, dict) else 1
    return depth if isinstance(depth, int) else 1


class Condition(BaseModel):
    """One trigger_conditions row, validated and normalized for its condition_type.

    Its JSON Schema is a union discriminated by ``condition_type`` of one object
    schema per type (``AgentIdEqualsCondition``, …, ``GroupCondition``; a subclass's
    variants are named after it) naming the fields and operators the type takes; a
    group's config holds its conditions, and each type's value and config carry the
    patterns and object schemas of shared.contract.condition_schema. What a value and
    a config hold per type is checked here and described in docs/semantics.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Set on the per-type models the JSON Schema is generated from.
    _schema_variant: ClassVar[bool] = False

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if cls._schema_variant:
            return handler(core_schema)
        generator = handler.generate_json_schema  # type: ignore[attr-defined]
        refs = {
            kind.value: generator.generate_inner(
                _schema_variant(cls, kind).__pydantic_core_schema__
            )
            for kind in ConditionType
        }
        # a group's conditions are Conditions (a reference, not a second expansion)
        if cls is not Condition:
            generator.generate_inner(Condition.__pydantic_core_schema__)
        nested = generator.generate_inner(
            definition_reference_schema(Condition.__pydantic_core_schema__["ref"])
        )
        group = handler.resolve_ref_schema(refs[ConditionType.group.value])
        group["properties"]["config"] = {
            "type": "object",
            "properties": {
                "conditions": {
                    "type": "array",
                    "items": nested,
                    "minItems": 1,
                    "maxItems": MAX_CONDITIONS,
                }
            },
            "required": ["conditions"],
            "additionalProperties": False,
        }
        group.setdefault("required", []).append("config")
        return {
            "oneOf": list(refs.values()),
            "discriminator": {
                "propertyName": "condition_type",
                "mapping": {kind: ref["$ref"] for kind, ref in refs.items()},
            },
        }

    condition_type: ConditionType
    field: Annotated[str, Strict(), Field(max_length=64)] = ""
    operator: Annotated[str, Strict(), Field(max_length=16)]
    value: Annotated[str, Strict(), Field(max_length=65536), AfterValidator(no_nul)] = ""
    config: dict[str, Any] = Field(default_factory=dict)

    _values: tuple[str, ...] = PrivateAttr(default=())
    _number: Decimal | None = PrivateAttr(default=None)
    _ema: EmaConfig | None = PrivateAttr(default=None)
    _rate: RateLimitConfig | None = PrivateAttr(default=None)
    _absence: AbsenceConfig | None = PrivateAttr(default=None)
    _children: tuple[Condition, ...] = PrivateAttr(default=())

    @property
    def _private(self) -> dict[str, Any]:
        """The private attributes, read directly: pydantic's own way to them (its
        ``__getattr__``, after the normal lookup failed) costs about 3 µs a read."""
        return cast(dict[str, Any], self.__pydantic_private__)

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, v: Any) -> Any:
        return {} if v is None else v

    @property
    def values(self) -> tuple[str, ...]:
        """The normalized value items (several for in/not_in and validator_whitelist)."""
        return self._private["_values"]  # type: ignore[no-any-return]

    @property
    def number(self) -> Decimal | None:
        """The numeric threshold of score_threshold, ema_threshold and rate_limit."""
        return self._private["_number"]  # type: ignore[no-any-return]

    @property
    def ema(self) -> EmaConfig | None:
        """Parsed config of an ema_threshold condition."""
        return self._private["_ema"]  # type: ignore[no-any-return]

    @property
    def rate(self) -> RateLimitConfig | None:
        """Parsed config of a rate_limit condition."""
        return self._private["_rate"]  # type: ignore[no-any-return]

    @property
    def absence(self) -> AbsenceConfig | None:
        """Parsed value and config of an absence condition."""
        return self._private["_absence"]  # type: ignore[no-any-return]

    @property
    def children(self) -> tuple[Condition, ...]:
        """Nested conditions of a group."""
        return self._private["_children"]  # type: ignore[no-any-return]

    @property
    def is_stateful(self) -> bool:
        """True for ema_threshold/rate_limit, or a group containing one."""
        if self.condition_type in STATEFUL_TYPES:
            return True
        return any(child.is_stateful for child in self.children)

    def walk(self) -> list[Condition]:
        """This condition and all nested ones, depth first."""
        out: list[Condition] = [self]
        for child in self.children:
            out.extend(child.walk())
        return out

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        errors = Errors()
        kind = self.condition_type
        if self.operator not in CONDITION_OPERATORS[kind]:
            errors.add(
                ("operator",),
                f"must be one of {_opts(CONDITION_OPERATORS[kind])} for {kind}",
                self.operator,
            )
        if kind is ConditionType.group:
            self._check_group(errors, info)
            errors.raise_any("Condition")
            return self
        field = self._check_field(errors)
        is_list = self.operator in LIST_OPERATORS or (
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

    def _check_field(self, errors: Errors) -> str:
        fields = CONDITION_FIELDS[self.condition_type]
        if self.field == "" and len(fields) == 1:
            return next(iter(fields))
        if self.field == "" and self.condition_type in DEFAULT_FIELD:
            return DEFAULT_FIELD[self.condition_type]
        if self.field not in fields:
            errors.add(
                ("field",), f"must be one of {_opts(fields)} for {self.condition_type}", self.field
            )
        return self.field

    def _check_value(self, errors: Errors, is_list: bool) -> list[str]:
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
        check: Callable[[Condition, Errors, list[str]], list[str]] = _VALUE_CHECKS[
            self.condition_type
        ]
        return check(self, errors, items)

    def _check_config(self, errors: Errors) -> dict[str, Any]:
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

    def _agent_ids(self, errors: Errors, items: list[str]) -> list[str]:
        out: list[str] = []
        for item in items:
            if UINT_RE.fullmatch(item) is None or int(item) > INT63_MAX:
                errors.add(("value",), f"not an agent id (0..2^63-1): {item}", self.value)
                return items
            out.append(str(int(item)))
        return out

    def _tags(self, errors: Errors, items: list[str]) -> list[str]:
        if any(len(item) > 256 for item in items):
            errors.add(("value",), "tags are at most 256 characters", self.value)
        return items

    def _field_values(self, errors: Errors, items: list[str]) -> list[str]:
        if self.field in ADDRESS_FIELDS:
            return self._addresses(errors, [item.strip() for item in items])
        if any(len(item) > 8192 for item in items):
            errors.add(("value",), "values are at most 8192 characters", self.value)
        return items

    def _addresses(self, errors: Errors, items: list[str]) -> list[str]:
        bad = [item for item in items if ADDRESS_RE.fullmatch(item) is None]
        if bad:
            errors.add(("value",), f"not an address (0x + 40 hex): {bad[0]}", self.value)
        return [item.lower() for item in items]

    def _event_types(self, errors: Errors, items: list[str]) -> list[str]:
        unknown = [item for item in items if item not in EVENT_REGISTRY]
        if unknown:
            errors.add(("value",), f"unknown event type {unknown[0]}", self.value)
        return items

    def _flag(self, errors: Errors, items: list[str]) -> list[str]:
        flag = items[0].lower()
        if flag not in ("true", "false"):
            errors.add(("value",), "must be true or false", self.value)
        return [flag]

    def _count(self, errors: Errors, items: list[str]) -> list[str]:
        if UINT_RE.fullmatch(items[0]) is None:
            errors.add(("value",), "must be an integer >= 0", self.value)
            return items
        self._number = Decimal(int(items[0]))
        return [str(int(items[0]))]

    def _silence(self, errors: Errors, items: list[str]) -> list[str]:
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

    def _threshold(self, errors: Errors, items: list[str]) -> list[str]:
        self._number = parse_decimal(items[0])
        if self._number is None:
            errors.add(("value",), "must be a decimal number", self.value)
        return items

    def _check_group(self, errors: Errors, info: ValidationInfo) -> None:
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

    def _scope(self, errors: Errors) -> Scope:
        scope = self.config.get("scope")
        if scope is None:
            return "trigger"
        if scope in ("trigger", "agent"):
            return cast(Scope, scope)
        errors.add(("config", "scope"), "must be trigger or agent", scope)
        return "trigger"

    def _unknown_keys(self, errors: Errors, known: frozenset[str]) -> None:
        for key in self.config:
            if key not in known:
                errors.add(("config", key), f"unknown key for {self.condition_type}", None)

    def _ema_config(self, errors: Errors) -> dict[str, Any]:
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
            alpha = parse_number(alpha_in)
            if alpha is None or not 0 < alpha <= 1:
                errors.add(("config", "alpha"), "must be a number with 0 < alpha <= 1", alpha_in)
                alpha = None
            else:
                out["alpha"] = alpha_in
        scope = self._scope(errors)
        hysteresis_in = config.get("hysteresis")
        hysteresis = Decimal(0) if hysteresis_in is None else parse_number(hysteresis_in)
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

    def _rate_config(self, errors: Errors) -> dict[str, Any]:
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


_VALUE_CHECKS: Final[dict[ConditionType, Callable[[Condition, Errors, list[str]], list[str]]]] = {
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


_VARIANTS: dict[tuple[type[Condition], ConditionType], type[Condition]] = {}


def _schema_variant(base: type[Condition], kind: ConditionType) -> type[Condition]:
    """``base`` narrowed to one condition type, for the JSON Schema only."""
    variant = _VARIANTS.get((base, kind))
    if variant is not None:
        return variant
    camel = "".join(part.capitalize() for part in kind.value.split("_"))
    name = base.__name__.replace("Condition", f"{camel}Condition", 1)
    operators = tuple(sorted(CONDITION_OPERATORS[kind]))
    fields: dict[str, Any] = {
        "condition_type": (Literal[kind.value], ...),
        "operator": (Literal[operators], ...),
    }
    if kind is ConditionType.group:  # its config is written in by the JSON Schema hook
        fields["field"] = (Literal[""], "")
        fields["value"] = (Literal[""], "")
    else:
        names = sorted(CONDITION_FIELDS[kind])
        if len(names) == 1 or kind in DEFAULT_FIELD:  # '' reads the type's own field
            fields["field"] = (Literal[("", *names)], "")
        else:
            fields["field"] = (Literal[tuple(names)], ...)
        value = Annotated[str, WithJsonSchema(VALUE_SCHEMAS[kind])]
        fields["value"] = (value, "" if kind in OPTIONAL_VALUE else ...)
        config = Annotated[dict[str, Any], WithJsonSchema(CONFIG_SCHEMAS[kind])]
        fields["config"] = (config, Field(default_factory=dict) if kind in OPTIONAL_CONFIG else ...)
    variant = create_model(name, __base__=base, __doc__=f"A {kind.value} condition.", **fields)
    variant._schema_variant = True
    _VARIANTS[(base, kind)] = variant
    return variant
