"""The indexer's side of ingest's HTTP contract: events, heartbeats, reorgs and the
checkpoint, each call retried until ingest acknowledges it (posting is idempotent).

Only two answers end a call without success: ``409`` (:class:`ConflictError`: ingest holds
another version of an event, the caller must announce a reorg) and ``422``
(:class:`RefusedError`: a bug of ours or a contract change; retried slowly, loudly, so
the chain stops here rather than skipping events).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import orjson
import structlog

log = structlog.get_logger(__name__)

#: Ingest's own limits (README): 1,000 events and 5 MiB per request.
MAX_EVENTS_PER_POST: Final = 1000
MAX_POST_BYTES: Final = 4 * 1024 * 1024


class ConflictError(Exception):
    """409: events stored in another block, and no reorg announced."""

    def __init__(
        self, details: list[dict[str, Any]], events: Sequence[dict[str, Any]] = ()
    ) -> None:
        super().__init__(f"ingest holds other versions of {len(details)} events")
        self.details = details
        #: The request's events, which the details' indexes point into.
        self.events = list(events)

    def events_of_details(self) -> list[dict[str, Any]]:
        """The posted events ingest named as conflicting."""
        indexes = {d.get("index") for d in self.details if isinstance(d, dict)}
        return [e for i, e in enumerate(self.events) if i in indexes]


class RefusedError(Exception):
    """422: ingest refused the body (every problem listed in ``details``)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"ingest refused with {status}: {str(body)[:500]}")
        self.body = body


@dataclass(frozen=True)
class Checkpoint:
    block_number: int
    block_hash: str


@dataclass
class Backoff:
    """Doubling waits with jitter, ``first`` to ``cap`` seconds."""

    first: float = 0.2
    cap: float = 10.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        jitter = random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
        return float(delay) * jitter

    def reset(self) -> None:
        self.attempt = 0


Sleep = Callable[[float], Awaitable[None]]


#: Why a call to ingest is tried again: no answer in time, no connection, the
#: token refused (401, 403), or another HTTP status class.
RetryReason = Literal["timeout", "connection", "unauthorized", "http_3xx", "http_4xx", "http_5xx"]
_STATUS_CLASSES: Final[dict[int, RetryReason]] = {3: "http_3xx", 4: "http_4xx", 5: "http_5xx"}


class IngestClient:
    """Ingest at ``base_url`` with an indexer's bearer token. ``on_retry(reason)`` is
    told of every failed attempt (metrics); ``guard()`` is awaited before every
    attempt and raises to stop (the chain's lock is gone)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        on_retry: Callable[[RetryReason], None] = lambda _reason: None,
        sleep: Sleep = asyncio.sleep,
        guard: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._on_retry = on_retry
        self._sleep = sleep
        self._guard = guard

    async def checkpoint(self, chain_id: int) -> Checkpoint | None:
        status, body = await self._until_answered("GET", f"/v1/checkpoints/{chain_id}", None)
        if status == 404:
            return None
        return Checkpoint(int(body["last_block_number"]), str(body["last_block_hash"]))

    async def post_events(self, events: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Post in order, in requests within ingest's limits: (accepted, duplicates)."""
        accepted = duplicates = 0
        for chunk in chunks(events):
            try:
                _status, body = await self._until_answered("POST", "/v1/events", chunk)
            except ConflictError as conflict:
                raise ConflictError(conflict.details, chunk) from None
            accepted += int(body["accepted"])
            duplicates += int(body["duplicates"])
        return accepted, duplicates

    async def heartbeat(
        self, chain_id: int, block_number: int, block_hash: str, timestamp: int
    ) -> None:
        body = {
            "chain_id": chain_id,
            "block_number": block_number,
            "block_hash": block_hash,
            "timestamp": timestamp,
        }
        await self._until_answered("POST", "/v1/checkpoints", body)

    async def reorg(self, chain_id: int, from_block: int, reason: str) -> list[str]:
        body = {"chain_id": chain_id, "from_block": from_block, "reason": reason[:1000]}
        _status, answer = await self._until_answered("POST", "/v1/reorgs", body)
        return list(answer.get("released_event_ids", []))

    async def _until_answered(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        backoff = Backoff()
        data = None if body is None else orjson.dumps(body)
        while True:
            if self._guard is not None:
                await self._guard()  # a replica that lost its chain's lock stops here
            try:
                async with self._session.request(
                    method,
                    self._base + path,
                    data=data,
                    headers=self._headers,
                    timeout=self._timeout,
                ) as response:
                    status = response.status
                    raw = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure: RetryReason = "timeout" if isinstance(exc, TimeoutError) else "connection"
                await self._wait(backoff, path, failure, type(exc).__name__)
                continue
            answer = _json(raw)
            if status < 300 or (status == 404 and method == "GET"):
                return status, answer
            if status == 409:
                details = answer.get("details", []) if isinstance(answer, dict) else []
                raise ConflictError(list(details))
            if status in (400, 413, 422):
                raise RefusedError(status, answer)
            reason: RetryReason = (
                "unauthorized" if status in (401, 403) else _STATUS_CLASSES[min(status // 100, 5)]
            )
            await self._wait(backoff, path, reason, f"HTTP {status}")

    async def _wait(self, backoff: Backoff, path: str, reason: RetryReason, detail: str) -> None:
        self._on_retry(reason)
        delay = backoff.next()
        log.warning("ingest call failed, retrying", path=path, reason=detail, retry_in=delay)
        await self._sleep(delay)


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def chunks(events: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive runs of at most MAX_EVENTS_PER_POST events and about MAX_POST_BYTES
    of JSON each, cut between blocks where a block fits (a reorg announced after a
    409 of one request then never releases what an earlier request stored)."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for block in _by_block(events):
        lengths = [len(orjson.dumps(e)) + 1 for e in block]  # each event serialised once
        fits = (
            len(current) + len(block) <= MAX_EVENTS_PER_POST
            and size + sum(lengths) <= MAX_POST_BYTES
        )
        if current and not fits:
            out.append(current)
            current, size = [], 0
        for event, length in zip(block, lengths, strict=True):  # a block too large is cut
            if current and (len(current) >= MAX_EVENTS_PER_POST or size + length > MAX_POST_BYTES):
                out.append(current)
                current, size = [], 0
            current.append(event)
            size += length
    if current:
        out.append(current)
    return out


def _by_block(events: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: list[list[dict[str, Any]]] = []
    for event in events:
        if groups and groups[-1][0].get("block_number") == event.get("block_number"):
            groups[-1].append(event)
        else:
            groups.append([event])
    return groups
