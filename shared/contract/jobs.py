"""Kafka messages: events and retractions on erc8004.events, action jobs on erc8004.actions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Annotated, Any, Final, Literal, Self

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.contract.actions import Action, ActionConfig, ActionType
from shared.contract.event_fields import (
    INT32_MAX,
    INT63_MAX,
    Hash,
    Timestamp,
)
from shared.contract.events import (
    Event,
    Registry,
)


def job_id(trigger_id: str, event_version: str, action_id: int) -> str:
    """Deterministic job id: first 32 hex of sha256("{trigger_id}:{version}:{action_id}"),
    where the event version is ``{id}@{block_hash}`` (shared.contract.events.version_key): after a
    reorg the canonical event at the same position is another version, so its
    firing is another job (the replaced one's may be done already)."""
    return hashlib.sha256(f"{trigger_id}:{event_version}:{action_id}".encode()).hexdigest()[:32]


_Block = Annotated[int, Strict(), Field(ge=0, le=INT63_MAX)]


class EventMessage(BaseModel):
    """A stored event, published on erc8004.events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["event"] = "event"
    event: Event
    #: When ingest committed it (the database's transaction time, the events row's
    #: created_at): the matcher fires a trigger only on events ingested after the
    #: trigger was enabled. None (older producers): treated as new.
    ingested_at: AwareDatetime | None = None


def _check_range(title: str, from_block: int, to_block: int | None) -> None:
    if to_block is not None and to_block < from_block:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(
                    type=PydanticCustomError("block_range", "must be >= from_block"),
                    loc=("to_block",),
                    input=to_block,
                )
            ],
        )


class ReorgIn(BaseModel):
    """Body of ingest's POST /v1/reorgs: blocks from_block..to_block were replaced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chain_id: Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)]
    from_block: _Block
    to_block: _Block | None = None
    new_block_hash: Hash | None = None
    reason: Annotated[str, Strict(), Field(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_range("ReorgIn", self.from_block, self.to_block)
        return self


class RetractionMessage(BaseModel):
    """Blocks from_block..to_block (open-ended when None) of a chain were reorganised away."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["retraction"] = "retraction"
    chain_id: Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)]
    from_block: _Block
    to_block: _Block | None = None
    reorg_id: Annotated[str, Strict(), Field(min_length=1, max_length=200)]
    created_at: AwareDatetime
    #: ``version_key`` of every replaced event: a retraction removes exactly these, so
    #: applying it again (one copy per partition) never touches canonical events.
    event_keys: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_range("RetractionMessage", self.from_block, self.to_block)
        return self


class CheckpointIn(BaseModel):
    """Body of ingest's POST /v1/checkpoints: the indexer scanned its chain up to this
    block (a heartbeat: the chain's clock advances without a registry event)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chain_id: Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)]
    block_number: _Block
    block_hash: Hash
    #: The block's time, unix seconds (as an event's: at most a day ahead, so one
    #: heartbeat cannot move the chain's clock past every absence deadline at once).
    timestamp: Timestamp


def tick_key(chain_id: int, block_number: int, block_hash: str) -> str:
    """A heartbeat's identity, as its evaluations record it (the matcher's and a
    backtest's alike): ``hb:{chain_id}-{block_number}@{block_hash}``."""
    return f"hb:{chain_id}-{block_number}@{block_hash}"


class TickMessage(BaseModel):
    """A heartbeat of a chain (docs/semantics.md section 5a), published on
    erc8004.events in the chain's partition, in order with its events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["tick"] = "tick"
    chain_id: Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)]
    block_number: _Block
    block_hash: Hash
    timestamp: Annotated[int, Strict(), Field(ge=0, le=INT63_MAX)]
    ingested_at: AwareDatetime | None = None

    @property
    def key(self) -> str:
        """The tick's identity (``tick_key``)."""
        return tick_key(self.chain_id, self.block_number, self.block_hash)


AnyTopicMessage = EventMessage | RetractionMessage | TickMessage
TopicMessage = Annotated[AnyTopicMessage, Field(discriminator="kind")]


@cache
def _topic_adapter() -> TypeAdapter[AnyTopicMessage]:
    return TypeAdapter(TopicMessage)


def parse_topic_message(data: bytes) -> AnyTopicMessage:
    """Parse a message of erc8004.events (raises pydantic.ValidationError)."""
    return _topic_adapter().validate_json(data)


_REGISTRIES: Final = frozenset(r.value for r in Registry)


@dataclass(frozen=True, slots=True)
class EventKeys:
    """What the trigger index looks an event up by, read from its message's JSON."""

    chain_id: int
    registry: str
    event_type: str
    agent_id: int | None


def event_keys(body: bytes) -> EventKeys | None:
    """The index keys of an event message of erc8004.events, decoded without building
    its model (a tenth of the cost). None for any other message, and for an event
    message whose keys are missing or not of their types: the full parse
    (:func:`parse_topic_message`) then decides. The rest of the message is not
    checked here."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or data.get("kind") != "event":
        return None
    event = data.get("event")
    if type(event) is not dict:
        return None
    chain_id = event.get("chain_id")
    registry = event.get("registry")
    event_type = event.get("event_type")
    agent_id = event.get("agent_id")
    if (
        type(chain_id) is not int
        or type(registry) is not str
        or registry not in _REGISTRIES
        or type(event_type) is not str
        or (agent_id is not None and type(agent_id) is not int)
    ):
        return None
    return EventKeys(chain_id, registry, event_type, agent_id)


def dump_message(msg: AnyTopicMessage) -> bytes:
    """Compact JSON of a topic message (decimals as strings, absent fields left out:
    every optional field defaults to None, so parsing restores them)."""
    return msg.__pydantic_serializer__.to_json(msg, exclude_none=True)


def dump_event_messages(events: Sequence[Event], ingested_at: datetime) -> list[bytes]:
    """``dump_message(EventMessage(event=e, ingested_at=ingested_at))`` for each event,
    byte for byte, without building a model per event (ingest's hot path)."""
    serialize = Event.__pydantic_serializer__.to_json
    tail = b',"ingested_at":' + _INGESTED_AT.dump_json(ingested_at) + b"}"
    return [b'{"kind":"event","event":' + serialize(e, exclude_none=True) + tail for e in events]


_INGESTED_AT: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


#: ActionJob fields added after the first release, with their defaults.
_LATER_FIELDS: dict[str, Any] = {"run_id": None, "parts_sent": 0, "parts_digest": None}
#: An event's fields that may be absent: absent reads back as None, their default.
_EVENT_OPTIONAL: Final = tuple(n for n, f in Event.model_fields.items() if not f.is_required())
#: An event's fields computed from others (its dump writes them; its parse checks
#: them): a job's event is written without them.
EVENT_DERIVED: Final = tuple(Event.model_computed_fields)


class ActionJob(BaseModel):
    """One action to run for one (trigger, event), published on erc8004.actions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{32}$")]
    trigger_id: Annotated[str, Strict(), Field(min_length=1, max_length=200)]
    trigger_name: Annotated[str, Strict(), Field(max_length=200)]
    user_id: Annotated[str, Strict(), Field(min_length=1, max_length=200)]
    action_id: Annotated[int, Strict(), Field(ge=0, le=INT63_MAX)]
    action_type: ActionType
    #: The validated action config, secrets in clear text.
    config: dict[str, Any]
    event: Event
    #: Why the trigger matched (condition results, EMA values, ...), for templates and history.
    explain: dict[str, Any] = Field(default_factory=dict)
    attempt: Annotated[int, Strict(), Field(ge=1, le=1000)] = 1
    due_at: AwareDatetime | None = None
    created_at: AwareDatetime
    #: Which run of the job this is: None for the matcher's firing, a fresh id for each
    #: redrive through the API. Attempts are recorded (and deduplicated) per run.
    run_id: Annotated[str, Strict(), Field(min_length=1, max_length=64)] | None = None
    #: Telegram: the parts of a split message that earlier attempts of this run
    #: delivered; the next attempt sends the rest, not the whole message again.
    parts_sent: Annotated[int, Strict(), Field(ge=0, le=100)] = 0
    #: Which text those parts were cut from (a template may render differently from
    #: one attempt to the next: then the message is sent whole again).
    parts_digest: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{16}$")] | None = None

    def dump(self) -> bytes:
        """Compact JSON. Fields added since the first release are left out while they
        hold their defaults, so a dispatcher of the previous release (which refuses
        unknown fields) still reads the jobs of a newer matcher during a rollout. The
        event's empty fields and its derived ones (``id``, ``block_time``) are left out
        too: each costs a validator or a check at the dispatcher's parse (a feedback
        event has about 20 empty ones; 48 -> 23 us to parse the event)."""
        exclude: dict[str, Any] = {
            name: True for name in _LATER_FIELDS if getattr(self, name) == _LATER_FIELDS[name]
        }
        event = self.event
        exclude["event"] = {name for name in _EVENT_OPTIONAL if getattr(event, name) is None}
        exclude["event"].update(EVENT_DERIVED)
        return self.__pydantic_serializer__.to_json(self, exclude=exclude)

    @classmethod
    def parse(cls, data: bytes) -> ActionJob:
        """Parse a job message (raises pydantic.ValidationError)."""
        return cls.model_validate_json(data)

    def action_config(self) -> ActionConfig:
        """The config validated as its action type's model (one frozen model per
        distinct config, kept for the jobs of the same action that follow)."""
        try:
            key = orjson.dumps(self.config)
        except TypeError:  # an integer beyond 64 bits: orjson cannot write it
            key = None
        if key is None or len(key) > MAX_CACHED_CONFIG:
            return Action.model_validate(
                {"action_type": self.action_type, "config": self.config}
            ).config
        return _config_of(self.action_type, key)

    def retry(self, *, due_at: datetime, parts: tuple[int, str] | None = None) -> ActionJob:
        """The same job as its next attempt, due at due_at (``parts``: how far the
        attempts so far got through a split message, and the digest of its text)."""
        update: dict[str, Any] = {"attempt": self.attempt + 1, "due_at": due_at}
        if parts is not None:
            update["parts_sent"], update["parts_digest"] = parts
        return self.model_copy(update=update)


#: Configs up to this size (JSON bytes) are kept validated: the cache holds at most
#: 4,096 of them, so a few tens of MiB at worst; a larger config (long templates, up
#: to 64 KiB each) is validated for each attempt.
MAX_CACHED_CONFIG: Final = 4096


@lru_cache(maxsize=4096)
def _config_of(action_type: ActionType, config_json: bytes) -> ActionConfig:
    """A config validated as ``action_type``'s model; keyed by the config's JSON (its
    keys in the job's order: a config reordered is validated once more, no harm).
    A ValidationError is raised each time, not kept."""
    return Action.model_validate(
        {"action_type": action_type, "config": orjson.loads(config_json)}
    ).config


def build_job(
    *,
    trigger_id: str,
    trigger_name: str,
    user_id: str,
    action_id: int,
    action_type: str,
    config: dict[str, Any],
    event: Event,
    event_version: str,
    explain: dict[str, Any],
    created_at: datetime,
    run_id: str | None = None,
) -> ActionJob:
    """The first attempt of one action of a firing, for the matcher and the API's
    redrive alike: its id is ``job_id(trigger_id, event_version, action_id)``, where
    ``event_version`` is the event's ``version_key`` (or, for a firing of the
    previous release, its id: the id the job had then). ``run_id``: None for the
    matcher's run, a fresh one for each redrive."""
    return ActionJob(
        job_id=job_id(trigger_id, event_version, action_id),
        trigger_id=trigger_id,
        trigger_name=trigger_name,
        user_id=user_id,
        action_id=action_id,
        action_type=action_type,
        config=config,
        event=event,
        explain=explain,
        created_at=created_at,
        run_id=run_id,
    )


#: Bytes of an unreadable message a dead letter keeps.
MAX_UNREADABLE_RAW = 1024 * 1024


class UnreadableLetter(BaseModel):
    """A message of erc8004.actions(.retry) that is not a job (a newer producer, a bug):
    kept on erc8004.actions.dlq instead of being dropped (``raw`` base64 in JSON)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    kind: Literal["unreadable"] = "unreadable"
    topic: str
    #: The message's first MAX_UNREADABLE_RAW bytes (all of it when shorter): the
    #: letter, in base64, stays well within the topic's message size.
    raw: bytes
    error: Annotated[str, Field(max_length=2000)]
    failed_at: AwareDatetime
    #: The whole message's length and SHA-256 (hex), when ``raw`` was cut.
    size: Annotated[int, Strict(), Field(ge=0)] | None = None
    sha256: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @classmethod
    def of(cls, topic: str, body: bytes, error: str, failed_at: datetime) -> UnreadableLetter:
        if len(body) <= MAX_UNREADABLE_RAW:
            return cls(topic=topic, raw=body, error=error, failed_at=failed_at)
        return cls(
            topic=topic,
            raw=body[:MAX_UNREADABLE_RAW],
            error=error,
            failed_at=failed_at,
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
        )

    def dump(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)


class DeadLetter(BaseModel):
    """A job whose last attempt failed, published on erc8004.actions.dlq (key trigger_id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: ActionJob
    error: Annotated[str, Field(max_length=2000)]
    attempts: Annotated[int, Strict(), Field(ge=1, le=1000)]
    failed_at: AwareDatetime

    def dump(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)
