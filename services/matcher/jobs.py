"""A firing's jobs: one ActionJob per action of the trigger, built the same way for
a stateless firing, a stateful one, a firing tick and one produced again after a
redelivery (only a new firing counts in the fired metric)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.matcher.metrics import NO_CONDITION, MatcherMetrics
from shared.contract.events import Event, version_key
from shared.contract.jobs import ActionJob, build_job
from shared.engine.evaluate import TriggerSpec


def fire(
    metrics: MatcherMetrics,
    trigger: TriggerSpec,
    event: Event,
    explain: dict[str, Any],
    *,
    count: bool = True,
) -> list[ActionJob]:
    if count:
        types = {c.condition_type.value for c in trigger.conditions} or {NO_CONDITION}
        for condition_type in types:
            metrics.fired.labels(condition_type).inc()
    now = datetime.now(UTC)
    # A firing recorded by the previous release (its explain has no event_version)
    # and produced again after a redelivery keeps the job id it had then (the
    # event id), so the dispatcher and receivers recognise it.
    version = version_key(event) if "event_version" in explain else event.id
    return [
        build_job(
            trigger_id=trigger.id,
            trigger_name=trigger.name,
            user_id=trigger.user_id,
            action_id=action.id,
            action_type=action.action_type,
            config=action.config,
            event=event,
            event_version=version,
            explain=explain,
            created_at=now,
        )
        for action in trigger.actions
    ]
