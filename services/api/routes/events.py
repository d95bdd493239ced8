"""The events and statistics resources: stored events, newest first, the events
per hour, and the user's actions per hour."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from services.api.common import (
    POOL,
    SHARED_READS,
    ApiError,
    SlotsBusyError,
    cursor_time,
    decode_cursor,
    encode_cursor,
    json_ok,
    parse_query,
    user_id,
)
from services.api.models import (
    ActionStatOut,
    EventsQuery,
    EventStatOut,
    Page,
    StatsActionsQuery,
    StatsEventsQuery,
)
from services.api.queries import Where, as_user, shared_read
from services.api.queries import events as event_sql
from services.api.routes._shared import _page
from shared.contract.event_rows import (
    event_from_row,
)
from shared.contract.events import (
    Event,
)
from shared.platform.db import Conn


@contextlib.asynccontextmanager
async def _history(request: web.Request) -> AsyncIterator[Conn]:
    """A read of the shared history: one of SHARED_READ_CONCURRENCY slots (503 when
    as many wait already), a connection, a statement limit of a second."""
    try:
        async with request.app[SHARED_READS].take(), shared_read(request.app[POOL]) as conn:
            yield conn
    except SlotsBusyError:
        raise ApiError(
            503,
            "too many reads of the history at once; try again shortly",
            headers={"Retry-After": "1"},
        ) from None


async def list_events(request: web.Request) -> web.Response:
    query = parse_query(request, EventsQuery)
    after = decode_cursor(query.cursor, (str, str, str))
    where = Where()
    for column, value in (
        ("chain_id", query.chain_id),
        ("registry", None if query.registry is None else query.registry.value),
        ("event_type", query.event_type),
        ("agent_id", query.agent_id),
        ("agent_registry", query.agent_registry),
    ):
        if value is not None:
            where.add(f"e.{column} = {{}}", value)
    if query.from_block is not None:
        where.add("e.block_number >= {}", query.from_block)
    if query.to_block is not None:
        where.add("e.block_number <= {}", query.to_block)
    if query.since is not None:
        where.add("e.block_time >= {}", query.since)
    if query.until is not None:
        where.add("e.block_time < {}", query.until)
    async with _history(request) as conn:
        rows, more = await event_sql.list_events(
            conn,
            where,
            after=None if after is None else (cursor_time(after[0]), after[1], after[2]),
            limit=query.limit,
        )
    # A page ends at `limit` events or at 4 MiB of them (at least one event).
    cursor = (
        encode_cursor([rows[-1]["block_time"].isoformat(), rows[-1]["id"], rows[-1]["block_hash"]])
        if more
        else None
    )
    return json_ok(Page[Event](items=[event_from_row(r) for r in rows], next_cursor=cursor))


async def event_stats(request: web.Request) -> web.Response:
    query = parse_query(request, StatsEventsQuery)
    after = decode_cursor(query.cursor, (str, int, str, str))
    where = Where()
    for column, value in (
        ("chain_id", query.chain_id),
        ("registry", None if query.registry is None else query.registry.value),
        ("event_type", query.event_type),
    ):
        if value is not None:
            where.add(f"{column} = {{}}", value)
    if query.since is not None:
        where.add("hour >= {}", query.since)
    if query.until is not None:
        where.add("hour < {}", query.until)
    async with _history(request) as conn:
        rows = await event_sql.list_event_stats(
            conn,
            where,
            after=None if after is None else (cursor_time(after[0]), *after[1:]),
            limit=query.limit,
        )
    rows, cursor = _page(
        rows,
        query.limit,
        lambda r: [r["hour"].isoformat(), r["chain_id"], r["registry"], r["event_type"]],
    )
    return json_ok(
        Page[EventStatOut](items=[EventStatOut(**dict(r)) for r in rows], next_cursor=cursor)
    )


async def action_stats(request: web.Request) -> web.Response:
    query = parse_query(request, StatsActionsQuery)
    after = decode_cursor(query.cursor, (str, str))
    where = Where()
    if query.action_type is not None:
        where.add("action_type = {}", query.action_type.value)
    if query.since is not None:
        where.add("hour >= {}", query.since)
    if query.until is not None:
        where.add("hour < {}", query.until)
    async with as_user(request.app[POOL], user_id(request)) as conn:
        rows = await event_sql.list_action_stats(
            conn,
            where,
            after=None if after is None else (cursor_time(after[0]), after[1]),
            limit=query.limit,
        )
    rows, cursor = _page(rows, query.limit, lambda r: [r["hour"].isoformat(), r["action_type"]])
    return json_ok(
        Page[ActionStatOut](items=[ActionStatOut(**dict(r)) for r in rows], next_cursor=cursor)
    )
