"""Triggers as the API accepts them and the matcher evaluates them: `TriggerCreate`
(a trigger with its conditions, ANDed, and its actions) and `TriggerUpdate` (a PATCH
body), with the checks that span a trigger's conditions (event types of its registry,
where an absence condition may stand, the number of conditions in all). Conditions are
shared.contract.conditions.Condition, actions shared.contract.actions.Action."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StringConstraints,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.contract.actions import REVEAL_SECRETS, Action
from shared.contract.condition_types import (
    MAX_CONDITION_NODES,
    MAX_CONDITIONS,
    MAX_DURATION,
    ConditionType,
)
from shared.contract.conditions import Condition
from shared.contract.event_fields import (
    INT32_MAX,
)
from shared.contract.events import (
    EVENT_TYPES,
    Registry,
)
from shared.contract.validation import Errors, no_nul

Name = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(no_nul),
]
Description = Annotated[str, Strict(), Field(max_length=4000), AfterValidator(no_nul)]
ChainId = Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)]
Cooldown = Annotated[int, Strict(), Field(ge=0, le=MAX_DURATION)]
Conditions = Annotated[list[Condition], Field(max_length=MAX_CONDITIONS)]
Actions = Annotated[list[Action], Field(min_length=1, max_length=20)]


def _check_registry(
    conditions: list[Condition] | None, registry: Registry | None
) -> list[InitErrorDetails]:
    """Errors for event_type_equals values that are not events of the trigger's registry."""
    errors = Errors()
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


def _check_absence(errors: Errors, conditions: list[Condition]) -> None:
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
