"""The events' and statistics' models: the filters of stored events and of the
hourly statistics, and the statistics' rows (events are
shared.contract.events.Event)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from services.api.models._shared import _Out, _TimeRange
from shared.contract.actions import ActionType
from shared.contract.event_fields import (
    INT32_MAX,
    INT63_MAX,
    Address,
)
from shared.contract.events import (
    Registry,
)

QChainId = Annotated[int, Field(ge=1, le=INT32_MAX)]
QUint63 = Annotated[int, Field(ge=0, le=INT63_MAX)]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z]+$")]


class EventsQuery(_TimeRange):
    """Filters of GET /v1/events (``since``/``until``: block time, ``until`` exclusive)."""

    chain_id: QChainId | None = None
    registry: Registry | None = None
    event_type: EventType | None = None
    agent_id: QUint63 | None = None
    #: The agent's Identity registry (events that name one; with agent_id, that agent).
    agent_registry: Address | None = None
    from_block: QUint63 | None = None
    to_block: QUint63 | None = None

    @model_validator(mode="after")
    def _blocks_of_a_chain(self) -> Self:
        # block numbers mean something on one chain only (and are indexed with it)
        if (self.from_block is not None or self.to_block is not None) and self.chain_id is None:
            raise PydanticCustomError("chain_required", "from_block and to_block need chain_id")
        return self


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
