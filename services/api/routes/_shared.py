"""What several of the API's resources share: the job producer's app key, the
logger (still named after the package, as when the routes were one module), cursor
pages, the per-user quotas and a stored trigger in the evaluator's form."""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from aiohttp import web

from services.api.common import SETTINGS, ApiError, encode_cursor, user_id
from services.api.queries import count_for_quota
from services.api.redrive import JobProducer
from shared.engine.evaluate import TriggerSpec
from shared.engine.replay import compile_trigger

log = structlog.get_logger(__package__)

PRODUCER = web.AppKey("producer", JobProducer)


def _page(items: list[Any], limit: int, key: Any) -> tuple[list[Any], str | None]:
    """The first ``limit`` rows and the cursor after them (None on the last page)."""
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, encode_cursor(key(items[-1]))


async def _within_quota(request: web.Request, conn: Any, what: str) -> None:
    settings = request.app[SETTINGS]
    limit = {
        "triggers": settings.max_triggers_per_user,
        "api_keys": settings.max_api_keys_per_user,
        "link_codes": settings.max_link_codes_per_user,
    }[what]
    if await count_for_quota(conn, what, user_id(request)) >= limit:
        log.info("quota reached", quota=what, limit=limit)
        raise ApiError(409, f"quota reached: at most {limit} {what.replace('_', ' ')} per user")


def _spec(row: asyncpg.Record) -> TriggerSpec | None:
    """A stored trigger in the evaluator's form, as the matcher compiles it."""
    form = dict(row)
    form["conditions"] = [{k: v for k, v in c.items() if k != "id"} for c in row["conditions"]]
    return compile_trigger(form)
