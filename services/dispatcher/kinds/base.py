"""What every action kind shares: the :class:`ActionKind` protocol the attempt stage
drives, the :class:`Outcome` an attempt comes to, the :class:`Target` it is sent to,
and the turning of HTTP answers and exceptions into outcomes.

Nothing here logs or raises for a destination's behaviour: every failure becomes an
Outcome whose error text is free of secrets (bot tokens, bearer tokens, signing
secrets, URL credentials and queries).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import aiohttp
import orjson

from services.dispatcher.metrics import DeferReason
from shared.contract.actions import ActionConfig
from shared.contract.jobs import ActionJob
from shared.outbound.policy import OutboundError, OutboundTimeoutError, RefusedDestination

EXCERPT_CHARS = 500
USER_AGENT = "erc8004-backend-dispatcher/1"


#: How an attempt ended: success, a transient failure (retried), a permanent one (not).
Kind = Literal["success", "transient", "permanent", "retracted"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt. ``response`` is a short, secret-free excerpt kept in
    ``action_results.response_data``; ``retry_after`` (seconds) is the destination's
    own request to wait (429 Retry-After, Telegram's ``retry_after``)."""

    kind: Kind
    error: str | None = None
    response: dict[str, Any] | None = None
    retry_after: float | None = None
    #: Whether the failure says something about the destination's health (timeouts,
    #: connection errors, 5xx): only those count toward its circuit breaker.
    destination_fault: bool = False
    #: Whether a request reached (or was tried on) the destination at all: template
    #: errors, refused addresses and rate-limit waits say nothing about its health.
    sent: bool = True
    #: Telegram: parts of the split message delivered so far in this run (the next
    #: attempt starts after them) and the digest of the message's text; None when
    #: the action has no parts.
    parts: tuple[int, str] | None = None

    @classmethod
    def ok(cls, response: dict[str, Any] | None = None) -> Outcome:
        return cls("success", response=response)

    @classmethod
    def transient(
        cls,
        error: str,
        *,
        response: dict[str, Any] | None = None,
        retry_after: float | None = None,
        destination_fault: bool = True,
        sent: bool = True,
    ) -> Outcome:
        return cls(
            "transient",
            error=error,
            response=response,
            retry_after=retry_after,
            destination_fault=destination_fault and sent,
            sent=sent,
        )

    @classmethod
    def retracted(cls, error: str) -> Outcome:
        """Not attempted: the firing's event version was replaced by a reorg."""
        return cls("retracted", error=error, sent=False)

    @classmethod
    def permanent(
        cls, error: str, *, response: dict[str, Any] | None = None, sent: bool = True
    ) -> Outcome:
        return cls("permanent", error=error, response=response, sent=sent)


def is_transient_status(status: int) -> bool:
    """HTTP statuses worth retrying: 408, 425, 429 and every 5xx."""
    return status in (408, 425, 429) or status >= 500


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class ActionRow:
    """What the database says of a job's action when its batch is read."""

    trigger_id: str
    secret_ciphertext: bytes | None
    enabled: bool
    headers_ciphertext: bytes | None = None
    #: Telegram: the numeric id of the chat the action names, when the trigger's
    #: owner linked it (None: not linked, the job is refused).
    telegram_chat: str | None = None


@dataclass(frozen=True)
class AgentToken:
    """An agent's encrypted MCP token and what its owner allowed it for (None: any)."""

    ciphertext: bytes
    allowed_tools: frozenset[str] | None
    allowed_users: frozenset[str] | None
    #: The Identity registry its row names ('' : set without one).
    agent_registry: str = ""

    def allows(self, *, user_id: str, tool: str) -> bool:
        return (self.allowed_users is None or user_id in self.allowed_users) and (
            self.allowed_tools is None or tool in self.allowed_tools
        )


@dataclass(frozen=True)
class Target:
    """Where an attempt goes: ``destination`` (an origin, the key of breakers and
    concurrency slots), the URL when the kind resolved one, and the decrypted secret
    (signing secret, bearer token) and secret headers it carries."""

    destination: str
    url: str | None = None
    secret: str | None = None
    headers: dict[str, str] | None = None
    #: Telegram: the linked chat's numeric id, where the message goes.
    chat: str | None = None


@dataclass(frozen=True)
class Deferral:
    """Put the job back on the retry topic, same attempt, due in ``seconds``."""

    seconds: float
    reason: DeferReason


#: What an attempt does once it holds its destination's slot: the exchange itself.
Exchange = Callable[[], Awaitable[Outcome]]


class ActionKind(Protocol):
    """One action type (rest, telegram, mcp), as the attempt stage drives it:
    ``target`` resolves where the job goes (raising ResolveError or
    SecretDecryptError), ``wait_before`` may defer the job before its attempt takes a
    slot, ``prepare`` does what needs no destination yet and costs little (a
    webhook without templates built: an Outcome when the attempt ends there), and the
    Exchange it returns is awaited within the destination's slot and ``time_limit``
    seconds. ``attempt`` is the two in one (prepare, then exchange)."""

    def time_limit(self, job: ActionJob) -> float: ...

    async def target(self, job: ActionJob, cfg: ActionConfig, action: ActionRow) -> Target: ...

    def wait_before(self, cfg: ActionConfig, target: Target) -> Deferral | None: ...

    async def prepare(
        self, job: ActionJob, cfg: ActionConfig, target: Target
    ) -> Exchange | Outcome: ...

    async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome: ...


def job_timeout(job: ActionJob, default_ms: int = 10_000) -> float:
    """The action's own timeout_ms, in seconds."""
    return float(job.config.get("timeout_ms", default_ms)) / 1000


# --------------------------------------------------------------------------- outcomes


def excerpt(body: bytes, limit: int = EXCERPT_CHARS) -> str:
    text = body[: limit * 4].decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"


def short(exc: BaseException, *secrets: str | None) -> str:
    """The exception's first line, at most 200 characters, secrets masked first (a
    secret cut in two by the limit would otherwise survive as a prefix)."""
    text = mask(str(exc).split("\n", 1)[0].encode(), [s for s in secrets if s])
    return text.decode(errors="replace")[:200]


def http_outcome(
    status: int, headers: dict[str, str], body: bytes, ok: Iterable[int] | None
) -> Outcome:
    response = {"status": status, "body": excerpt(body)}
    success = status in ok if ok is not None else 200 <= status < 300
    if success:
        return Outcome.ok(response)
    if is_transient_status(status):
        return Outcome.transient(
            f"HTTP {status}",
            response=response,
            retry_after=parse_retry_after(headers.get("retry-after")),
            destination_fault=status != 429,
        )
    return Outcome.permanent(f"HTTP {status}", response=response)


def exception_outcome(exc: BaseException, what: str, *secrets: str | None) -> Outcome:
    if isinstance(exc, RefusedDestination):
        where = f" {exc.address}" if exc.address else ""
        return Outcome.permanent(f"{what}: refused{where}: {exc.reason}", sent=False)
    if isinstance(exc, OutboundTimeoutError | TimeoutError):
        return Outcome.transient(f"{what}: timeout")
    if isinstance(exc, OutboundError):
        return Outcome.permanent(f"{what}: {exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Outcome.transient(f"{what}: {type(exc).__name__}: {short(exc, *secrets)}")
    return Outcome.transient(f"{what}: {type(exc).__name__}")


def mask(body: bytes, secrets: Iterable[str]) -> bytes:
    """``body`` with each secret masked: as it is, and as JSON encoders escape it
    (orjson's, ASCII-only ``\\uXXXX``, and ``\\/`` for slashes)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        forms = {
            secret.encode(),
            orjson.dumps(secret)[1:-1],
            json.dumps(secret)[1:-1].encode(),
            json.dumps(secret)[1:-1].replace("/", "\\/").encode(),
        }
        for form in sorted(forms, key=len, reverse=True):
            body = body.replace(form, b"***")
    return body


def scrub(outcome: Outcome, *secrets: str | None) -> Outcome:
    """The outcome with every occurrence of each secret masked, as it is and as JSON
    escapes it (the bot token sits in the URL path, which redact_url keeps; a REST
    receiver may echo the request's headers)."""
    kept = tuple(s for s in secrets if s)
    if not kept:
        return outcome
    error = outcome.error
    if error:
        for secret in sorted(kept, key=len, reverse=True):
            error = error.replace(secret, "***")
    response = outcome.response
    if response:
        response = orjson.loads(mask(orjson.dumps(response), kept))
    return replace(outcome, error=error, response=response)
