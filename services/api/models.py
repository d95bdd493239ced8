"""The API's own request and response models. Trigger bodies are the contract models
of shared.contract.triggers (conditions and actions: shared.contract.conditions and
shared.contract.actions); events are shared.contract.events.Event. The OpenAPI document is
generated from these same classes (services/api/openapi.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    StringConstraints,
    model_validator,
)

from shared.contract.actions import REVEAL_SECRETS, Action, ActionType
from shared.contract.condition_types import MAX_CONDITIONS
from shared.contract.conditions import Condition
from shared.contract.events import INT32_MAX, INT63_MAX, Registry
from shared.contract.triggers import TriggerCreate, TriggerUpdate

T = TypeVar("T")

#: Query and path strings: printable, no NUL (PostgreSQL refuses it in text).
_SAFE = r"^[^\x00-\x1f\x7f]*$"
Cursor = Annotated[str, StringConstraints(max_length=1024, pattern=r"^[A-Za-z0-9_-]*$")]
QChainId = Annotated[int, Field(ge=1, le=INT32_MAX)]
QUint63 = Annotated[int, Field(ge=0, le=INT63_MAX)]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z]+$")]
ResultStatus = Literal["success", "failed", "retrying", "dead", "retracted"]


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


# --- accounts ------------------------------------------------------------------------------

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


# --- triggers ------------------------------------------------------------------------------


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


class Page(_Out, Generic[T]):
    items: list[T]
    #: Pass as ``cursor`` for the next page; null on the last one.
    next_cursor: str | None


class StateItem(_Out):
    scope_key: str
    state_data: dict[str, Any]
    last_updated: datetime | None


class StatePage(Page[StateItem]):
    trigger_id: str
    is_stateful: bool
    #: A state row's ``conditions`` are keyed by each condition's identity; this maps
    #: every identity to the paths of its conditions (``"0"``, ``"2.1"``).
    condition_paths: dict[str, list[str]] = {}


class ResultOut(_Out):
    id: str
    job_id: str
    trigger_id: str | None
    event_id: str | None
    action_type: str
    status: str
    executed_at: datetime | None
    duration_ms: int | None
    error_message: str | None
    response_data: Any = None
    retry_count: int | None
    attempt: int
    #: The event version the action ran on, ``{id}@{block_hash}`` (null in rows
    #: written before versions were recorded).
    event_version: str | None = None
    #: The trigger's version when it fired (compare with the trigger's ``version``).
    trigger_version: int | None = None
    #: Why the action ran: the firing's explain (each condition's input and verdict,
    #: the state before and after; docs/semantics.md section 8). Null when neither
    #: recorded nor recomputable.
    explain: dict[str, Any] | None = None
    #: ``recorded``: what the matcher recorded for the firing (stateful triggers);
    #: ``recomputed``: evaluated again from the stored event (a stateless trigger's
    #: explain depends on the trigger and the event only, and the trigger is still at
    #: ``trigger_version``); null with a null ``explain``.
    explain_source: Literal["recorded", "recomputed"] | None = None


class RetryOut(_Out):
    job_id: str
    trigger_id: str
    action_id: int
    event_id: str
    attempt: int
    topic: str


# --- queries -------------------------------------------------------------------------------


class PageQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Cursor | None = None


class _TimeRange(PageQuery):
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class EventsQuery(_TimeRange):
    """Filters of GET /v1/events (``since``/``until``: block time, ``until`` exclusive)."""

    chain_id: QChainId | None = None
    registry: Registry | None = None
    event_type: EventType | None = None
    agent_id: QUint63 | None = None
    from_block: QUint63 | None = None
    to_block: QUint63 | None = None


class ResultsQuery(_TimeRange):
    status: ResultStatus | None = None
    action_type: ActionType | None = None


class StatsEventsQuery(_TimeRange):
    chain_id: QChainId | None = None
    registry: Registry | None = None
    event_type: EventType | None = None


class StatsActionsQuery(_TimeRange):
    action_type: ActionType | None = None


class EventStatOut(_Out):
    hour: datetime
    chain_id: int
    registry: str
    event_type: str
    event_count: int


class ActionStatOut(_Out):
    hour: datetime
    action_type: str
    total_executions: int
    success_count: int
    failure_count: int
    avg_duration_ms: float | None
    p95_duration_ms: float | None


# --- backtests -----------------------------------------------------------------------------

MAX_BACKTEST_DAYS = 366


class BacktestIn(_Body):
    """A block-time range [from, to) to replay the trigger over."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    from_: Annotated[AwareDatetime, Field(alias="from")]
    to: AwareDatetime
    #: How many explain blocks of the first firings to return.
    explain_limit: Annotated[int, Strict(), Field(ge=0, le=100)] = 10

    @model_validator(mode="after")
    def _ordered(self) -> BacktestIn:
        if self.to <= self.from_:
            raise ValueError("to must be after from")
        if (self.to - self.from_).days > MAX_BACKTEST_DAYS:
            raise ValueError(f"the range may span at most {MAX_BACKTEST_DAYS} days")
        return self


class BacktestTriggerIn(BacktestIn):
    """An unsaved trigger (the body of POST /v1/triggers) and the range."""

    trigger: TriggerCreate


class FiringOut(_Out):
    event_id: str
    block_number: int
    log_index: int
    agent_id: int | None
    timestamp: int
    block_time: datetime


class BacktestOut(_Out):
    trigger_id: str | None
    from_: Annotated[datetime, Field(serialization_alias="from")]
    to: datetime
    events_scanned: int
    #: Absence triggers: the chain's heartbeats replayed as ticks between the events.
    heartbeats_scanned: int = 0
    #: Events the trigger was evaluated on (its index candidates).
    evaluated: int
    fired: int
    #: The scan stopped at the event limit before reaching ``to``.
    truncated: bool
    #: The first firings (at most 1,000), in chain order.
    firings: list[FiringOut]
    #: The explain blocks of the first ``explain_limit`` firings.
    explains: list[dict[str, Any]]


# --- MCP tokens ----------------------------------------------------------------------------


class McpTokenRemovalIn(_Body):
    """The owner's EIP-191 signature of
    :func:`services.api.signatures.mcp_token_removal_message`."""

    nonce: Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
    expires_at: Annotated[int, Strict(), Field(ge=0, le=INT63_MAX)]
    signature: Annotated[str, Strict(), StringConstraints(pattern=r"^0x[0-9a-fA-F]{130}$")]


class McpTokenIn(McpTokenRemovalIn):
    """The agent's MCP bearer token with the owner's EIP-191 signature of
    :func:`services.api.signatures.mcp_token_message`."""

    token: Annotated[SecretStr, Field(min_length=1, max_length=4096)]


class McpTokenOut(_Out):
    chain_id: int
    agent_id: int
    owner_address: str
    updated_at: datetime | None


# --- the PATCH body, as documented -----------------------------------------------------


class ConditionPatch(Condition):
    """A condition in a PATCH body; the ``id`` a GET returns is accepted and ignored
    (the conditions given replace the trigger's conditions)."""

    id: int | None = Field(default=None, description="Ignored (output of a GET).")


class ActionPatch(Action):
    """An action in a PATCH body: with the ``id`` of one of the trigger's actions it
    changes that action in place (same id, same job ids), without one it is new. The
    other output-only fields of a GET are accepted and ignored."""

    id: int | None = Field(default=None, description="An existing action's id.")
    signing_secret_set: bool | None = Field(default=None, description="Ignored.")
    secret_headers_set: list[str] | None = Field(default=None, description="Ignored.")


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
    is_stateful: bool | None = Field(default=None, description="Ignored (output of a GET).")
    id: str | None = Field(default=None, description="Ignored (the path names the trigger).")
    enabled_at: datetime | None = Field(default=None, description="Ignored (output of a GET).")
    created_at: datetime | None = Field(default=None, description="Ignored (output of a GET).")
    updated_at: datetime | None = Field(default=None, description="Ignored (output of a GET).")
    version: int | None = Field(default=None, description="Ignored (output of a GET).")

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
