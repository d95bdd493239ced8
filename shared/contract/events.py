"""One normalized on-chain event of an ERC-8004 registry, as indexers post it.

Field names are the `events` columns of docs/decisions.md. `Event` validates and
normalizes one event (hex lower-cased, both feedback layouts mapped onto score/value);
`parse_events` validates an ingest batch and reports every error of every item.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.contract.event_fields import (
    MAX_ABS_VALUE,
    Address,
    ChainId,
    Hash,
    HexBytes,
    Key,
    Percent,
    Tag,
    Timestamp,
    Uint31,
    Uint63,
    Uri,
    ValueDecimals,
    as_integer,
    scaled,
)
from shared.contract.patterns import DECIMAL_RE


class Registry(StrEnum):
    """The three ERC-8004 registries."""

    identity = "identity"
    reputation = "reputation"
    validation = "validation"


EVENT_TYPES: Final[dict[Registry, frozenset[str]]] = {
    Registry.identity: frozenset(
        {"Registered", "URIUpdated", "MetadataSet", "Transfer", "MetadataUpdate"}
    ),
    Registry.reputation: frozenset({"NewFeedback", "FeedbackRevoked", "ResponseAppended"}),
    Registry.validation: frozenset({"ValidationRequest", "ValidationResponse"}),
}

#: Every known event type, mapped to its registry.
EVENT_REGISTRY: Final[dict[str, Registry]] = {
    event_type: registry for registry, types in EVENT_TYPES.items() for event_type in types
}

#: Fields an event type needs besides the common ones (NewFeedback: also its value).
REQUIRED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "Registered": ("agent_id", "token_uri", "owner"),
    "URIUpdated": ("agent_id", "token_uri"),
    "MetadataSet": ("agent_id", "metadata_key"),
    "Transfer": ("agent_id", "owner"),
    "MetadataUpdate": ("agent_id",),
    "NewFeedback": ("agent_id", "client_address"),
    "FeedbackRevoked": ("agent_id", "client_address", "feedback_index"),
    "ResponseAppended": ("agent_id", "client_address", "feedback_index", "responder"),
    "ValidationRequest": ("validator_address", "agent_id", "request_hash"),
    "ValidationResponse": ("validator_address", "agent_id", "request_hash", "response"),
}

_FEEDBACK_NEEDS = "NewFeedback needs score (legacy layout) or value and value_decimals"


class _Missing:
    """Placed by Event's before-validator where a required field is absent."""

    __slots__ = ("error",)

    def __init__(self, error: PydanticCustomError) -> None:
        self.error = error


def _required_for(event_type: str) -> _Missing:
    return _Missing(
        PydanticCustomError("missing", "required for {event_type}", {"event_type": event_type})
    )


def _error(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def _raise(errors: list[InitErrorDetails], title: str = "Event") -> None:
    raise ValidationError.from_exception_data(title, errors)


def _check_derived(data: dict[str, Any]) -> list[InitErrorDetails]:
    """Pop id and block_time (derived fields echoed back by dumps); check they agree."""
    errors: list[InitErrorDetails] = []
    given_id = data.pop("id", None)
    chain_id, block, log_index = (
        data.get("chain_id"),
        data.get("block_number"),
        data.get("log_index"),
    )
    if given_id is not None and type(chain_id) is type(block) is type(log_index) is int:
        expected = f"{chain_id}-{block}-{log_index}"
        if given_id != expected:
            errors.append(_error(("id",), "derived_id", f"must be {expected} or absent", given_id))
    given_time = data.pop("block_time", None)
    timestamp = data.get("timestamp")
    if given_time is not None and type(timestamp) is int:
        parsed: datetime | None = given_time if isinstance(given_time, datetime) else None
        if isinstance(given_time, str):
            try:
                parsed = datetime.fromisoformat(given_time)
            except ValueError:
                parsed = None
        if (
            parsed is None
            or parsed.tzinfo is None
            or parsed != datetime.fromtimestamp(timestamp, UTC)
        ):
            errors.append(
                _error(
                    ("block_time",), "derived_time", "must equal timestamp or be absent", given_time
                )
            )
    return errors


class Event(BaseModel):
    """One normalized event; `id` and `block_time` are derived."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chain_id: ChainId
    block_number: Uint63
    block_hash: Hash
    transaction_hash: Hash
    log_index: Uint31
    registry: Registry
    event_type: Annotated[str, Strict(), Field(max_length=64)]
    agent_id: Uint63 | None = None
    timestamp: Timestamp
    owner: Address | None = None
    previous_owner: Address | None = None
    updated_by: Address | None = None
    token_uri: Uri | None = None
    metadata_key: Key | None = None
    metadata_value: HexBytes | None = None
    client_address: Address | None = None
    feedback_index: Uint63 | None = None
    score: Decimal | None = None
    value: Decimal | None = None
    value_decimals: ValueDecimals | None = None
    tag1: Tag | None = None
    tag2: Tag | None = None
    endpoint: Uri | None = None
    file_uri: Uri | None = None
    file_hash: Hash | None = None
    responder: Address | None = None
    validator_address: Address | None = None
    request_uri: Uri | None = None
    request_hash: Hash | None = None
    response: Percent | None = None
    response_uri: Uri | None = None
    response_hash: Hash | None = None
    tag: Tag | None = None
    #: The contract that emitted the event, and the Identity registry its agent belongs
    #: to (``agent_registry``; an Identity registry's own events: its own address).
    #: Absent for indexers that post one registry per chain: an agent is then known
    #: by (chain, agent id) alone.
    registry_address: Address | None = None
    agent_registry: Address | None = None

    # cached_property: each is read several times per event on ingest's hot path
    # (the row, the message, the id claim); the model is frozen, so they never change.
    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def id(self) -> str:
        """`{chain_id}-{block_number}-{log_index}`."""
        return f"{self.chain_id}-{self.block_number}-{self.log_index}"

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def block_time(self) -> datetime:
        """The block timestamp as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp, UTC)

    @model_validator(mode="before")
    @classmethod
    def _mark_missing(cls, data: Any) -> Any:
        """Mark absent required fields (reported on their own field) and drop derived ones."""
        if not isinstance(data, dict):
            return data
        event_type = data.get("event_type")
        marks: dict[str, _Missing] = {}
        if isinstance(event_type, str) and event_type in REQUIRED_FIELDS:
            required = REQUIRED_FIELDS[event_type]
            for name in required:
                if data.get(name) is None:
                    marks[name] = _required_for(event_type)
            if event_type == "NewFeedback":
                has_value = data.get("value") is not None
                has_decimals = data.get("value_decimals") is not None
                if has_value and not has_decimals:
                    marks["value_decimals"] = _Missing(
                        PydanticCustomError("missing", "required with value")
                    )
                elif has_decimals and not has_value:
                    marks["value"] = _Missing(
                        PydanticCustomError("missing", "required with value_decimals")
                    )
                elif not has_value and data.get("score") is None:
                    marks["value"] = _Missing(PydanticCustomError("missing", _FEEDBACK_NEEDS))
        if not marks and "id" not in data and "block_time" not in data:
            return data
        data = dict(data)
        errors = _check_derived(data)
        if errors:
            _raise(errors)
        data.update(marks)
        return data

    @field_validator(
        "agent_id",
        "token_uri",
        "owner",
        "metadata_key",
        "client_address",
        "feedback_index",
        "responder",
        "validator_address",
        "request_hash",
        "response",
        "value_decimals",
        mode="before",
    )
    @classmethod
    def _present(cls, v: Any) -> Any:
        if type(v) is _Missing:
            raise v.error
        return v

    @field_validator("event_type")
    @classmethod
    def _known_event_type(cls, v: str, info: ValidationInfo) -> str:
        registry = EVENT_REGISTRY.get(v)
        if registry is None:
            raise PydanticCustomError(
                "event_type", "unknown event type {event_type}", {"event_type": v}
            )
        given = info.data.get("registry")
        if given is not None and given is not registry:
            raise PydanticCustomError(
                "event_type",
                "{event_type} is an event of the {registry} registry, not {given}",
                {"event_type": v, "registry": registry.value, "given": given.value},
            )
        return v

    @field_validator("value", mode="before")
    @classmethod
    def _integer_value(cls, v: Any) -> Any:
        if v is None:
            return None
        if type(v) is _Missing:
            raise v.error
        n = as_integer(v)
        if n is None:
            raise PydanticCustomError(
                "integer_value", "must be an integer or a decimal string of an integer"
            )
        if abs(n) > MAX_ABS_VALUE:
            raise PydanticCustomError("value_range", "absolute value must be at most 10^38")
        return Decimal(n)

    @field_validator("score", mode="before")
    @classmethod
    def _decimal_score(cls, v: Any) -> Any:
        if v is None:
            return None
        if type(v) is int:
            d = Decimal(v)
        elif type(v) is str and len(v) <= 80 and DECIMAL_RE.fullmatch(v) is not None:
            try:
                d = Decimal(v)
            except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
                d = Decimal("NaN")
        elif isinstance(v, Decimal):
            d = v
        else:
            raise PydanticCustomError("decimal_score", "must be an integer or a decimal string")
        if not d.is_finite() or (d != 0 and abs(d.adjusted()) > 60):
            raise PydanticCustomError("decimal_score", "must be a finite decimal of sane size")
        return d

    @model_validator(mode="after")
    def _identity_agents_are_their_registrys(self) -> Self:
        """An Identity registry's events concern its own agents: agent_registry is its
        address (filled in when only registry_address is given)."""
        if self.registry is not Registry.identity or self.registry_address is None:
            return self
        if self.agent_registry is None:
            object.__setattr__(self, "agent_registry", self.registry_address)
            self.__pydantic_fields_set__.add("agent_registry")
        elif self.agent_registry != self.registry_address:
            _raise(
                [
                    _error(
                        ("agent_registry",),
                        "agent_registry",
                        "an identity event's agent belongs to the registry that emitted it",
                        self.agent_registry,
                    )
                ]
            )
        return self

    @model_validator(mode="after")
    def _normalise_feedback(self) -> Self:
        """Map both feedback layouts onto score (decimal) and value/value_decimals."""
        if self.event_type != "NewFeedback":
            return self
        if self.value is not None and self.value_decimals is not None:
            score = scaled(self.value, self.value_decimals)
            if self.score is not None and self.score != score:
                _raise(
                    [
                        _error(
                            ("score",), "score", "must equal value / 10^value_decimals", self.score
                        )
                    ]
                )
            object.__setattr__(self, "score", score)
        elif self.score is not None:
            score = self.score
            if not (0 <= score <= 100 and score == score.to_integral_value()):
                _raise(
                    [_error(("score",), "score", "legacy score must be an integer 0..100", score)]
                )
            legacy = Decimal(int(score))
            object.__setattr__(self, "score", legacy)
            object.__setattr__(self, "value", legacy)
            object.__setattr__(self, "value_decimals", 0)
        self.__pydantic_fields_set__.update(("score", "value", "value_decimals"))
        return self


@dataclass(frozen=True, slots=True)
class ItemError:
    """One validation error of one item of an ingest batch."""

    index: int
    field: str
    message: str


def error_field(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dotted path ('' for the whole item)."""
    return ".".join(str(part) for part in loc)


def parse_events(items: list[object]) -> tuple[list[Event], list[ItemError]]:
    """Validate a batch; returns the valid events and every error of every item."""
    events: list[Event] = []
    errors: list[ItemError] = []
    validate = Event.model_validate
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(ItemError(index, "", "not an object"))
            continue
        try:
            events.append(validate(item))
        except ValidationError as exc:
            errors.extend(
                ItemError(index, error_field(err["loc"]), err["msg"])
                for err in exc.errors(include_url=False, include_context=False, include_input=False)
            )
    return events, errors


def version_key(e: Event) -> str:
    """The identity of one version of an event: ``{id}@{block_hash}``. The id alone is
    a position; after a reorg the canonical event at that position has the same id
    and another block hash. Windows, idempotency records and retractions use this."""
    return f"{e.id}@{e.block_hash}"


def feedback_value(e: Event) -> Decimal | None:
    """The decimal feedback value of a NewFeedback event, else None."""
    return e.score if e.event_type == "NewFeedback" else None
