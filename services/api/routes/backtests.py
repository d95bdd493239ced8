"""The backtests resource: a stored or an unsaved trigger replayed over stored
events, within one of BACKTEST_CONCURRENCY slots (the replay engine itself is
services/api/backtest.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from services.api.backtest import run_backtest, unsaved_spec
from services.api.common import (
    BACKTESTS,
    METRICS,
    POOL,
    SETTINGS,
    ApiError,
    SlotsBusyError,
    json_ok,
    not_found,
    parse_body,
    path_id,
    user_id,
)
from services.api.models import BacktestIn, BacktestOut, BacktestTriggerIn
from services.api.queries import as_user
from services.api.queries import triggers as trigger_sql
from services.api.routes._shared import _spec, log
from shared.engine.evaluate import TriggerSpec


async def backtest_trigger(request: web.Request) -> web.Response:
    trigger_id = path_id(request, "trigger_id")
    body = await parse_body(request, BacktestIn)
    started = time.perf_counter()
    async with as_user(request.app[POOL], user_id(request)) as conn:
        row = await trigger_sql.get_trigger(conn, trigger_id)
        if row is None:
            raise not_found("no such trigger")
        spec = _spec(row)
        if spec is None:
            raise ApiError(409, "the stored trigger does not validate; update it first")
    return await _backtest(request, spec, body, trigger_id=trigger_id, started=started)


@contextlib.asynccontextmanager
async def _backtest_slot(request: web.Request) -> AsyncIterator[None]:
    """One of BACKTEST_CONCURRENCY slots; 503 when as many wait already."""
    try:
        async with request.app[BACKTESTS].take():
            yield
    except SlotsBusyError:
        raise ApiError(
            503, "too many backtests at once; try again shortly", headers={"Retry-After": "5"}
        ) from None


async def backtest_unsaved(request: web.Request) -> web.Response:
    body = await parse_body(request, BacktestTriggerIn)
    started = time.perf_counter()
    spec = unsaved_spec(body.trigger, user_id=user_id(request))
    return await _backtest(request, spec, body, trigger_id=None, started=started)


async def _backtest(
    request: web.Request,
    spec: TriggerSpec,
    body: BacktestIn,
    *,
    trigger_id: str | None,
    started: float,
) -> web.Response:
    """Run a backtest in a slot, as the user, within the configured bounds."""
    settings = request.app[SETTINGS]
    async with (
        _backtest_slot(request),
        as_user(request.app[POOL], user_id(request)) as conn,
    ):
        out = await run_backtest(
            conn,
            spec,
            body,
            trigger_id=trigger_id,
            max_events=settings.backtest_max_events,
            time_limit=settings.backtest_seconds,
        )
    return _backtest_done(request, out, started)


def _backtest_done(request: web.Request, out: BacktestOut, started: float) -> web.Response:
    metrics = request.app[METRICS]
    metrics.backtest_events.inc(out.events_scanned)
    elapsed = time.perf_counter() - started
    metrics.backtest_seconds.observe(elapsed)
    log.info(
        "backtest",
        trigger_id=out.trigger_id,
        events=out.events_scanned,
        fired=out.fired,
        seconds=round(elapsed, 3),
    )
    return json_ok(out)
