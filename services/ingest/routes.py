"""Ingest's HTTP routes: POST /v1/events, GET /v1/checkpoints/{chain_id},
POST /v1/checkpoints (heartbeats), POST /v1/reorgs."""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from itertools import accumulate
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError

from services.ingest import queries
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from shared.contract.events import Event, ItemError, Registry, parse_events
from shared.contract.jobs import CheckpointIn, ReorgIn
from shared.platform.db import Conn

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_EVENTS = 1000

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", IngestSettings)
METRICS = web.AppKey("metrics", IngestMetrics)

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    return web.json_response({"error": message, "details": details or []}, status=status)


def _authorized(request: web.Request, tokens: Iterable[str]) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    given = presented.strip().encode()
    # Compare against every token, without stopping early: constant time over the set.
    matches = [hmac.compare_digest(given, t.encode()) for t in tokens]
    return any(matches)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in every log line, auth on /v1, duration metric per route."""
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id[:64])
    started = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        if request.path.startswith("/v1/"):
            settings = request.app[SETTINGS]
            if not _authorized(request, (t.get_secret_value() for t in settings.ingest_tokens)):
                response: web.StreamResponse = error(401, "missing or invalid bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                status = 401
                return response
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        # aiohttp's own answer to an unhandled error is plain text (with the traceback
        # in debug mode): ours is JSON and says nothing of the error, which is logged.
        log.exception("request failed", route=route_name, method=request.method)
        return error(500, "internal error")
    finally:
        if route_name.startswith("/v1/"):
            request.app[METRICS].request_seconds.labels(route_name, str(status)).observe(
                time.perf_counter() - started
            )
        structlog.contextvars.unbind_contextvars("request_id")


_REGISTRIES = frozenset(r.value for r in Registry)


def _labels(item: object) -> tuple[str, str]:
    """Bounded metric labels from a raw item (rejected items may be anything)."""
    chain, registry = "invalid", "invalid"
    if isinstance(item, dict):
        value = item.get("chain_id")
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
            chain = str(value)
        given = item.get("registry")
        if isinstance(given, str) and given in _REGISTRIES:  # a dict is unhashable
            registry = given
    return chain, registry


def _count(counter: Any, labels: Iterable[tuple[str, str]]) -> None:
    for (chain, registry), n in Counter(labels).items():
        counter.labels(chain, registry).inc(n)


def _event_labels(events: Iterable[Event]) -> Iterable[tuple[str, str]]:
    return ((str(e.chain_id), e.registry.value) for e in events)


#: Fields that take integers wider than 64 bits (feedback values are int128).
_WIDE_FIELDS = ("value", "score")


#: Deepest nesting a body may have (orjson's own limit).
MAX_DEPTH = 1024
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _too_deep(body: bytes) -> bool:
    """Whether the body nests deeper than MAX_DEPTH (strings left out; C-speed)."""
    brackets = _STRINGS.sub(b"", body).translate(None, _BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH


def _loads(body: bytes) -> Any:
    """The body as JSON, integers exact: orjson reads an integer beyond 64 bits as a
    float, so a body whose feedback value came out as a float is read again by the
    standard parser (a float that really was one is refused by the model either way),
    and so is one with an integer too long even for a float. Nesting deeper than
    MAX_DEPTH is refused before the standard parser sees it: its limit is the
    interpreter's recursion limit, which a library may have raised far enough for
    the C stack to overflow first."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or _too_deep(body):
            raise RecursionError(str(exc)) from exc
        return json.loads(body)
    items = payload if isinstance(payload, list) else (payload,)
    for item in items:
        if isinstance(item, dict) and any(type(item.get(f)) is float for f in _WIDE_FIELDS):
            return json.loads(body)  # orjson parsed it: nested at most MAX_DEPTH
    return payload


async def _read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _Refused(error(413, f"body larger than {MAX_BODY_BYTES} bytes"))
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _Refused(error(413, f"body larger than {MAX_BODY_BYTES} bytes")) from exc
    try:
        return _loads(body)
    except RecursionError as exc:  # nested deeper than the parser's stack
        raise _Refused(error(400, "body is not valid JSON: nested too deeply")) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        # Where it broke, not the parser's text: no exception text leaves the service.
        where = (
            f" (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise _Refused(error(400, f"body is not valid JSON{where}")) from exc


class _Refused(Exception):  # noqa: N818 (a response, not an error condition of ours)
    def __init__(self, response: web.Response) -> None:
        self.response = response


@routes.post("/v1/events")
async def post_events(request: web.Request) -> web.Response:
    try:
        payload = await _read_json(request)
    except _Refused as refused:
        return refused.response
    if isinstance(payload, dict):
        items: list[object] = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        return error(
            422,
            "body must be an event object or an array of event objects",
            [{"index": None, "field": "", "message": f"got {type(payload).__name__}"}],
        )
    if len(items) > MAX_EVENTS:
        return error(413, f"at most {MAX_EVENTS} events per request, got {len(items)}")
    metrics = request.app[METRICS]
    _count(metrics.received, (_labels(i) for i in items))
    events, errors = parse_events(items)
    if errors:
        _count(metrics.rejected, (_labels(i) for i in items))
        log.info("batch rejected", events=len(items), errors=len(errors))
        return error(
            422,
            f"{len({e.index for e in errors})} of {len(items)} events are invalid; nothing stored",
            [_detail(e) for e in errors],
        )
    if not events:
        return web.json_response({"accepted": 0, "duplicates": 0})
    try:
        async with request.app[POOL].acquire() as conn:
            stored = await _store_with_retry(conn, events, topic=request.app[SETTINGS].events_topic)
    except queries.ConflictingVersions as exc:
        _count(metrics.conflicts, _event_labels(c.event for c in exc.conflicts))
        log.warning("batch refused: events stored in another block", conflicts=len(exc.conflicts))
        return error(
            409,
            f"{len(exc.conflicts)} of {len(events)} events are stored in another block and "
            "no reorg was announced; nothing stored: POST /v1/reorgs from the first block "
            "that changed, then post the new versions",
            [
                {
                    "index": c.index,
                    "field": "block_hash",
                    "message": f"event {c.event.id} (block {c.event.block_number}) is known "
                    f"with block hash {', '.join(c.known)}",
                }
                for c in exc.conflicts
            ],
        )
    _count(metrics.accepted, _event_labels(stored.accepted))
    _count(metrics.duplicates, _event_labels(stored.duplicates))
    log.info(
        "events stored",
        events=len(events),
        accepted=len(stored.accepted),
        duplicates=len(stored.duplicates),
    )
    return web.json_response(
        {"accepted": len(stored.accepted), "duplicates": len(stored.duplicates)}
    )


async def _store_with_retry(conn: Conn, events: list[Event], *, topic: str) -> queries.Stored:
    """A deadlock or serialization failure is retried; the transaction rolled back whole.
    A unique violation means a replaced event of a reorg was posted again: the
    careful path counts it as a duplicate."""
    careful = False
    for attempt in range(3):
        try:
            return await queries.store_events(conn, events, topic=topic, careful=careful)
        except asyncpg.UniqueViolationError:
            if careful:
                raise
            careful = True
            log.info("stored version posted again after a reorg: careful path")
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == 2:
                raise
            log.warning("store retried", attempt=attempt + 1)
    raise AssertionError("unreachable")


def _detail(err: ItemError) -> dict[str, Any]:
    return {"index": err.index, "field": err.field, "message": err.message}


@routes.get("/v1/checkpoints/{chain_id}")
async def get_checkpoint(request: web.Request) -> web.Response:
    raw = request.match_info["chain_id"]
    if not raw.isdigit() or not 0 < int(raw) < 2**31:
        return error(
            422,
            "invalid chain_id",
            [{"field": "chain_id", "message": "a positive integer below 2^31"}],
        )
    async with request.app[POOL].acquire() as conn:
        row = await queries.get_checkpoint(conn, int(raw))
    if row is None:
        return error(404, f"no events seen for chain {raw}")
    return web.json_response(
        {
            "chain_id": row["chain_id"],
            "last_block_number": row["last_block_number"],
            "last_block_hash": row["last_block_hash"],
            "updated_at": row["updated_at"].isoformat(),
        }
    )


def _invalid(message: str, exc: ValidationError) -> web.Response:
    return error(
        422,
        message,
        [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()],
    )


@routes.post("/v1/checkpoints")
async def post_checkpoint(request: web.Request) -> web.Response:
    """A heartbeat: the indexer scanned its chain up to this block without finding
    registry events, so the chain's clock advances (absence triggers)."""
    try:
        payload = await _read_json(request)
    except _Refused as refused:
        return refused.response
    try:
        checkpoint = CheckpointIn.model_validate(payload)
    except ValidationError as exc:
        return _invalid("invalid checkpoint", exc)
    async with request.app[POOL].acquire() as conn:
        stored = await queries.record_heartbeat(
            conn, checkpoint, topic=request.app[SETTINGS].events_topic
        )
    result = "stored" if stored else "duplicate"
    request.app[METRICS].heartbeats.labels(str(checkpoint.chain_id), result).inc()
    if stored:
        log.info(
            "heartbeat stored",
            chain_id=checkpoint.chain_id,
            block_number=checkpoint.block_number,
            timestamp=checkpoint.timestamp,
        )
    return web.json_response(
        {
            "chain_id": checkpoint.chain_id,
            "block_number": checkpoint.block_number,
            "duplicate": not stored,
        },
        status=201 if stored else 200,
    )


@routes.post("/v1/reorgs")
async def post_reorg(request: web.Request) -> web.Response:
    try:
        payload = await _read_json(request)
    except _Refused as refused:
        return refused.response
    try:
        reorg = ReorgIn.model_validate(payload)
    except ValidationError as exc:
        return _invalid("invalid reorg", exc)
    async with request.app[POOL].acquire() as conn:
        result = await queries.record_reorg(conn, reorg, topic=request.app[SETTINGS].events_topic)
    request.app[METRICS].reorgs.labels(str(reorg.chain_id)).inc()
    log.info(
        "reorg recorded",
        reorg_id=result.reorg_id,
        chain_id=reorg.chain_id,
        from_block=reorg.from_block,
        to_block=reorg.to_block,
        released=result.released,
    )
    return web.json_response(
        {"reorg_id": result.reorg_id, "released_event_ids": result.released}, status=201
    )
