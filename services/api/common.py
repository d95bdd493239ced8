"""HTTP plumbing of the API: JSON errors, body and query parsing into the models,
cursors, authentication and the request middleware (metrics, request ids)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.api.auth import (
    API_KEY_PREFIX,
    LoginLimiter,
    Passwords,
    Tokens,
    WindowCounter,
    api_key_hash,
)
from services.api.metrics import ApiMetrics
from services.api.queries import ACQUIRE_SECONDS
from services.api.queries import accounts as account_sql
from services.api.settings import ApiSettings
from shared.outbound.policy import IPNetwork
from shared.platform.secrets import SecretBox

#: Request bodies above this are refused with 413 (a trigger with 50 conditions and
#: 20 actions fits many times over).
MAX_BODY_BYTES = 256 * 1024

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", ApiSettings)
METRICS = web.AppKey("metrics", ApiMetrics)
PASSWORDS = web.AppKey("passwords", Passwords)
TOKENS = web.AppKey("tokens", Tokens)
LIMITER = web.AppKey("limiter", LoginLimiter)
REGISTRATIONS = web.AppKey("registrations", WindowCounter)
SIGNATURE_CHECKS = web.AppKey("signature_checks", WindowCounter)
PROXIES = web.AppKey("trusted_proxies", tuple)
SECRETS = web.AppKey("secrets", SecretBox)


class SlotsBusyError(Exception):
    """As many callers wait as there are slots."""


class Slots:
    """``n`` at once, at most ``n`` more waiting; beyond that :class:`SlotsBusyError`."""

    def __init__(self, n: int) -> None:
        self._sem = asyncio.Semaphore(n)
        self._n = n
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[None]:
        if self._sem.locked() and self._waiting >= self._n:
            raise SlotsBusyError
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._sem.release()


BACKTESTS = web.AppKey("backtests", Slots)
SHARED_READS = web.AppKey("shared_reads", Slots)
USER = web.RequestKey("user_id", str)  # the authenticated user's id
VIA = web.RequestKey("via", str)  # how it authenticated: jwt | api_key

log = structlog.get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Answered as ``{"error": message, "details": [...]}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def detail(loc: tuple[str | int, ...] | list[str | int], message: str) -> dict[str, Any]:
    parts = list(loc)
    return {
        "loc": parts,
        "field": ".".join(str(p) for p in parts[1:]),
        "message": message,
    }


def error_response(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    return web.json_response({"error": message, "details": details or []}, status=status)


def not_found(what: str = "not found") -> ApiError:
    return ApiError(404, what)


def invalid(where: str, exc: ValidationError, *, prefix: tuple[str | int, ...] = ()) -> ApiError:
    """A 422 naming every field (``loc`` starts with body, query or path)."""
    details = [
        detail((where, *prefix, *err["loc"]), err["msg"])
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    return ApiError(422, f"invalid {where}", details)


def json_ok(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=model.__pydantic_serializer__.to_json(model, by_alias=True),
        status=status,
        content_type="application/json",
    )


async def read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes") from exc
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers beyond 64 bits: let the models say why they are wrong
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, "body is not valid JSON") from exc


async def parse_body(request: web.Request, model: type[M]) -> M:
    payload = await read_json(request)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise invalid("body", exc) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    raw: dict[str, str] = {}
    for key, value in request.query.items():
        if key in raw:
            raise ApiError(422, "invalid query", [detail(("query", key), "given more than once")])
        raw[key] = value
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid("query", exc) from None


def path_int(request: web.Request, name: str, *, low: int, high: int) -> int:
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise ApiError(422, "invalid path", [detail(("path", name), f"an integer {low}..{high}")])
    return int(raw)


def path_id(request: web.Request, name: str) -> str:
    """An object id from the path; anything no object can have is simply not found."""
    raw = request.match_info[name]
    if not 0 < len(raw) <= 200 or not raw.isprintable():
        raise not_found()
    return raw


# --- cursors -------------------------------------------------------------------------------


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, kinds: tuple[type, ...]) -> tuple[Any, ...] | None:
    """The values of a cursor made by :func:`encode_cursor`, checked against ``kinds``."""
    if cursor is None or cursor == "":
        return None
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        values = None
    if (
        not isinstance(values, list)
        or len(values) != len(kinds)
        or not all(type(v) is k for v, k in zip(values, kinds, strict=True))
        or any(isinstance(v, str) and (len(v) > 300 or "\x00" in v) for v in values)
    ):
        raise bad_cursor()
    return tuple(values)


def bad_cursor() -> ApiError:
    message = "not a cursor of this list"
    return ApiError(422, "invalid query", [detail(("query", "cursor"), message)])


def cursor_time(value: str) -> str:
    """A timestamp from a cursor (ISO 8601, or -infinity), checked before SQL sees it."""
    if value != "-infinity":
        cursor_datetime(value)
    return value


def cursor_datetime(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise bad_cursor() from None


# --- authentication ------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    user_id: str
    via: str  # jwt | api_key


async def authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    token = presented.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 4096:
        raise unauthorized()
    app = request.app
    if token.startswith(API_KEY_PREFIX):
        async with app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn:
            user_id = await account_sql.authenticate_api_key(conn, api_key_hash(token))
        if user_id is None:
            raise unauthorized()
        return Principal(user_id, "api_key")
    # A token that does not verify is refused without touching the database.
    verified = app[TOKENS].verify(token)
    if verified is None:
        raise unauthorized()
    async with app[POOL].acquire(timeout=ACQUIRE_SECONDS) as conn:
        active = await account_sql.is_active_user(conn, *verified)
    if not active:
        raise unauthorized()
    return Principal(verified[0], "jwt")


def unauthorized() -> ApiError:
    return ApiError(
        401, "missing or invalid bearer token", headers={"WWW-Authenticate": 'Bearer realm="api"'}
    )


def user_id(request: web.Request) -> str:
    value: str = request[USER]
    return value


PUBLIC_PATHS = frozenset({"/v1/auth/register", "/v1/auth/login"})


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in every log line, authentication on /v1, JSON errors, metrics."""
    request_id = request.headers.get("X-Request-ID", "")
    if not request_id.isprintable() or not 0 < len(request_id) <= 64:
        request_id = uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "OTHER"
    status = 500
    try:
        try:
            if request.path.startswith("/v1/") and request.path not in PUBLIC_PATHS:
                principal = await authenticate(request)
                request[USER] = principal.user_id
                request[VIA] = principal.via
                structlog.contextvars.bind_contextvars(user_id=principal.user_id)
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.message, exc.details)
            response.headers.update(exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.reason)
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except (asyncpg.QueryCanceledError, TimeoutError):
            # statement_timeout, or no pool connection in time: busy, not broken.
            log.warning("request timed out", route=route, method=method)
            response = error_response(503, "the request took too long; narrow it or retry")
            response.headers["Retry-After"] = "5"
        except Exception:
            log.exception("request failed", route=route, method=method)
            response = error_response(500, "internal error")
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        metrics = request.app[METRICS]
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.request_seconds.labels(route, method).observe(time.perf_counter() - started)
        structlog.contextvars.unbind_contextvars("request_id", "user_id")


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def client_address(
    peer: str | None, forwarded_for: list[str], trusted: tuple[IPNetwork, ...]
) -> str:
    """Who the client is, for the login limiter: the TCP peer, unless the peer is one
    of the ``trusted`` proxies; then X-Forwarded-For is read from the right, past
    every trusted hop, and the first other address is the client. Entries further
    left were written by the client itself and are never believed."""
    if peer is None:
        return "unknown"
    hops = [_host(h) for line in forwarded_for for h in line.split(",") if h.strip()]
    current = peer
    while _is_trusted(current, trusted) and hops:
        current = hops.pop()
    return current[:64]


def _host(hop: str) -> str:
    """An X-Forwarded-For entry without a port some proxies add (``1.2.3.4:5678``,
    ``[2001:db8::1]:443``): one client, one bucket."""
    hop = hop.strip()
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in trusted)
