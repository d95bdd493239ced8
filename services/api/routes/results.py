"""The results resource: a trigger's action results (each with its firing's
explain, recorded or evaluated again) and the redrive of a failed or dead-lettered
job through Kafka."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from services.api.common import (
    METRICS,
    POOL,
    SETTINGS,
    ApiError,
    cursor_time,
    decode_cursor,
    json_ok,
    not_found,
    parse_query,
    path_id,
    user_id,
)
from services.api.models import Page, ResultOut, ResultsQuery, RetryOut
from services.api.queries import as_user
from services.api.queries import results as result_sql
from services.api.queries import triggers as trigger_sql
from services.api.redrive import KafkaUnavailableError
from services.api.routes._shared import PRODUCER, _page, _spec, log
from shared.contract.event_rows import (
    EVENT_COLUMNS,
    event_from_row,
)
from shared.contract.events import (
    version_key,
)
from shared.contract.jobs import build_job, job_id
from shared.engine.evaluate import TriggerSpec, evaluate


def _iso(value: datetime | None) -> str:
    return "-infinity" if value is None else value.isoformat()


async def list_trigger_results(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    query = parse_query(request, ResultsQuery)
    after = decode_cursor(query.cursor, (str, str))
    async with as_user(request.app[POOL], user_id(request)) as conn:
        trigger = await trigger_sql.get_trigger(conn, trigger_id)
        if trigger is None:
            raise not_found("no such trigger")
        # A stateless trigger records no evaluation: its explain is a pure function of
        # the trigger and the event, so the firings of its current version can be
        # evaluated again (an earlier version's explain would be another definition's).
        spec = _spec(trigger)
        stateless = spec if spec is not None and not spec.is_stateful else None
        rows = await result_sql.list_results(
            conn,
            trigger_id,
            status=query.status,
            action_type=None if query.action_type is None else query.action_type.value,
            since=query.since,
            until=query.until,
            after=None if after is None else (cursor_time(after[0]), after[1]),
            limit=query.limit,
            events_of_version=None if stateless is None else stateless.version,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [_iso(r["executed_at"]), r["id"]])
    return json_ok(
        Page[ResultOut](items=[_result_out(r, stateless) for r in rows], next_cursor=cursor)
    )


def _result_out(row: asyncpg.Record, stateless: TriggerSpec | None) -> ResultOut:
    """A result with its firing's explain: the recorded one, else (a stateless trigger
    still at the version that fired, its event version stored) the one evaluated again."""
    out = {name: row[name] for name in result_sql.RESULT_FIELDS}
    explain: dict[str, Any] | None = row["recorded_explain"]
    if explain is not None:
        return ResultOut(**out, explain=explain, explain_source="recorded")
    if stateless is not None and row["ev_id"] is not None:
        event = event_from_row({c: row[f"ev_{c}"] for c in EVENT_COLUMNS})
        outcome = evaluate(stateless, event, states={})
        if outcome.fired:
            return ResultOut(**out, explain=outcome.explain, explain_source="recomputed")
    return ResultOut(**out)


async def retry_result(request: web.Request) -> web.Response:
    """Produce a failed or dead-lettered job again, as attempt 1 with the same job id,
    rebuilt from the trigger's current action config and the stored event."""
    trigger_id = path_id(request, "trigger_id")
    wanted = path_id(request, "job_id")
    async with as_user(request.app[POOL], user_id(request)) as conn:
        trigger = await trigger_sql.get_trigger(conn, trigger_id)
        if trigger is None:
            raise not_found("no such trigger")
        result = await result_sql.latest_result(conn, trigger_id, wanted)
        if result is None or result["event_id"] is None:
            raise not_found("no results of this job")
        if result["status"] not in ("failed", "dead"):
            raise ApiError(
                409, f"the job's latest attempt is {result['status']}: nothing to redrive"
            )
        event_id: str = result["event_id"]
        row = await result_sql.get_canonical_event(conn, event_id)
        if row is None:
            raise ApiError(409, "the job's event is no longer stored")
        event = event_from_row(row)
        # Jobs of the previous release were named after the event id, not its version.
        versions = (version_key(event), event_id)
        actions = await result_sql.get_actions(conn, trigger_id)
        found = next(
            ((a, v) for a in actions for v in versions if job_id(trigger_id, v, a["id"]) == wanted),
            None,
        )
        if found is None:
            raise ApiError(
                409,
                "the job's action no longer exists, or a reorg replaced the job's event"
                " (the canonical event's firing is another job)",
            )
        action, version = found
        explain = await result_sql.get_evaluation_explain(conn, trigger_id, version_key(event))
        if explain is None:
            # A stateless trigger records no evaluation: its explain is a pure function
            # of the trigger and the event, so evaluate again.
            spec = _spec(trigger)
            if spec is not None and not spec.is_stateful:
                explain = evaluate(spec, event, states={}).explain
        # The same job id (``version`` gave it), as attempt 1 of a run of its own: the
        # dispatcher records (and deduplicates) attempts per run, so the earlier run's
        # rows do not make it skip this one.
        run_id = uuid.uuid4().hex
        job = build_job(
            trigger_id=trigger_id,
            trigger_name=trigger["name"],
            user_id=trigger["user_id"],
            action_id=action["id"],
            action_type=action["action_type"],
            config=action["config"],
            event=event,
            event_version=version,
            explain=explain or {},
            created_at=datetime.now(UTC),
            run_id=run_id,
        )
        interval = request.app[SETTINGS].redrive_interval
        wait = await result_sql.claim_redrive(conn, wanted, user_id(request), run_id, interval)
        if wait > 0:
            raise ApiError(
                429,
                f"this job was redriven less than {interval:g} s ago",
                headers={"Retry-After": str(math.ceil(wait))},
            )
    # Produced after the claim committed (no connection held while Kafka answers);
    # a failed send takes its own claim back, so the next try is not refused.
    try:
        await request.app[PRODUCER].send(job)
    except KafkaUnavailableError:
        log.warning("redrive failed: Kafka unavailable", job_id=wanted)
        async with as_user(request.app[POOL], user_id(request)) as conn:
            await result_sql.release_redrive(conn, wanted, run_id)
        raise ApiError(503, "Kafka is unavailable; the job was not redriven") from None
    request.app[METRICS].jobs_redriven.labels(job.action_type.value).inc()
    log.info("job redriven", job_id=wanted, trigger_id=trigger_id, previous=result["status"])
    return json_ok(
        RetryOut(
            job_id=wanted,
            trigger_id=trigger_id,
            action_id=action["id"],
            event_id=event_id,
            attempt=1,
            topic=request.app[PRODUCER].topic,
        ),
        status=202,
    )
