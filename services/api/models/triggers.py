"""The triggers' models: a trigger as answered (its conditions and actions, the
write-only parts only flagged), its stateful condition state, and the PATCH body
as documented."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr

from services.api.models._shared import DateTime, Page, _Out
from shared.contract.actions import REVEAL_SECRETS, Action
from shared.contract.condition_types import MAX_CONDITIONS
from shared.contract.conditions import Condition
from shared.contract.triggers import TriggerUpdate


class ConditionOut(_Out):
    id: int
    condition_type: str
    field: str
    operator: str
    value: str
    config: dict[str, Any]


class ActionOut(_Out):
    id: int
    action_type: str
    priority: int
    #: The config as stored; a REST action's signing secret and secret headers are
    #: never returned.
    config: dict[str, Any]
    signing_secret_set: bool
    #: The names of the REST action's secret headers (their values are never returned).
    secret_headers_set: list[str]


class TriggerOut(_Out):
    id: str
    name: str
    description: str | None
    chain_id: int
    registry: str
    enabled: bool
    is_stateful: bool
    cooldown_seconds: int | None
    #: Which edit of the trigger this is: 1 when created, one more with every
    #: transaction that changes what the matcher reads (not the description).
    version: int
    enabled_at: datetime
    created_at: datetime | None
    updated_at: datetime | None
    conditions: list[ConditionOut]
    actions: list[ActionOut]


class StateItem(_Out):
    scope_key: str
    state_data: dict[str, Any]
    last_updated: datetime | None


class StatePage(Page[StateItem]):
    trigger_id: str
    is_stateful: bool
    #: A state row's ``conditions`` are keyed by each condition's identity; this maps
    #: every identity to the paths of its conditions (``"0"``, ``"2.1"``).
    condition_paths: dict[str, list[str]] = {}  # noqa: RUF012 (a pydantic field, copied per instance)


# --- the PATCH body, as documented -----------------------------------------------------


class ConditionPatch(Condition):
    """A condition in a PATCH body; the ``id`` a GET returns is accepted and ignored
    (the conditions given replace the trigger's conditions)."""

    id: StrictInt | None = Field(default=None, description="Ignored (output of a GET).")


class ActionPatch(Action):
    """An action in a PATCH body: with the ``id`` of one of the trigger's actions it
    changes that action in place (same id, same job ids), without one it is new. The
    other output-only fields of a GET are accepted and ignored."""

    id: StrictInt | None = Field(default=None, description="An existing action's id.")
    signing_secret_set: StrictBool | None = Field(default=None, description="Ignored.")
    secret_headers_set: list[StrictStr] | None = Field(default=None, description="Ignored.")


def _omit_not_null(schema: dict[str, Any]) -> None:
    """Fields that may be omitted but not null: their schema without the null."""
    for name in ("name", "chain_id", "registry", "enabled", "conditions", "actions"):
        prop = schema["properties"][name]
        options = [o for o in prop.pop("anyOf") if o != {"type": "null"}]
        prop.pop("default", None)
        (only,) = options
        prop.update(only)


class TriggerPatch(TriggerUpdate):
    """PATCH body: only the fields given change; null clears description/cooldown.
    A GET body sent back as it is is a valid PATCH (ids and output-only fields)."""

    model_config = ConfigDict(json_schema_extra=_omit_not_null)

    # Narrower item types than TriggerUpdate's (lists are invariant for mypy; pydantic
    # validates the items as the subclasses, which are Conditions and Actions).
    conditions: Annotated[list[ConditionPatch], Field(max_length=MAX_CONDITIONS)] | None = None  # type: ignore[assignment]
    actions: Annotated[list[ActionPatch], Field(min_length=1, max_length=20)] | None = None  # type: ignore[assignment]
    is_stateful: StrictBool | None = Field(default=None, description="Ignored (output of a GET).")
    id: StrictStr | None = Field(default=None, description="Ignored (the path names the trigger).")
    enabled_at: DateTime | None = Field(default=None, description="Ignored (output of a GET).")
    created_at: DateTime | None = Field(default=None, description="Ignored (output of a GET).")
    updated_at: DateTime | None = Field(default=None, description="Ignored (output of a GET).")
    version: StrictInt | None = Field(default=None, description="Ignored (output of a GET).")

    def action_ids(self) -> list[int | None]:
        return [a.id for a in self.actions or ()]

    def as_update(self) -> TriggerUpdate:
        """The update itself, without the ids and output-only fields."""
        data = self.model_dump(
            mode="json",
            context=REVEAL_SECRETS,
            exclude_unset=True,
            exclude={
                "is_stateful": True,
                "id": True,
                "enabled_at": True,
                "created_at": True,
                "updated_at": True,
                "version": True,
                "conditions": {"__all__": {"id"}},
                "actions": {"__all__": {"id", "signing_secret_set", "secret_headers_set"}},
            },
        )
        return TriggerUpdate.model_validate(data)
