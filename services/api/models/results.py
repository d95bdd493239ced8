"""The results' models: a trigger's action results (with their firings' explains)
and the filters that list them, and a redrive's answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from services.api.models._shared import _Out, _TimeRange
from shared.contract.actions import ActionType

ResultStatus = Literal["success", "failed", "retrying", "dead", "retracted"]


class ResultsQuery(_TimeRange):
    status: ResultStatus | None = None
    action_type: ActionType | None = None


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
