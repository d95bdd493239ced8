"""The backtests' models: the range (with a stored or an unsaved trigger) and the
replay's report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, Strict, model_validator

from services.api.models._shared import DateTime, _Body, _Out
from shared.contract.triggers import TriggerCreate

MAX_BACKTEST_DAYS = 366


class BacktestIn(_Body):
    """A block-time range [from, to) to replay the trigger over."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    from_: Annotated[DateTime, Field(alias="from")]
    to: DateTime
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
