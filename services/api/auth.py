"""Credentials: argon2 password hashes, JWT access tokens, API keys, and the login
attempt limiter. Plain functions and small classes, no I/O but the hashing."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: API keys start with this, so a bearer token is told apart from a JWT at a glance
#: (and secret scanners can find leaked keys).
API_KEY_PREFIX: Final = "e8k_"
JWT_ALGORITHM: Final = "HS256"
JWT_ISSUER: Final = "erc8004-api"


class PasswordsBusyError(Exception):
    """Too many password hashes waiting: answered 503 with Retry-After."""


class Passwords:
    """argon2id hashes (argon2-cffi's defaults, RFC 9106's low-memory profile),
    computed in a worker thread: a hash takes tens of milliseconds of CPU."""

    def __init__(
        self, hasher: PasswordHasher | None = None, *, concurrency: int = 2, queue: int = 32
    ) -> None:
        self._hasher = hasher or PasswordHasher()
        # Verified against when the user does not exist: the same work either way.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        # Each hash takes ~64 MiB and a core for tens of ms: a few at once, a bounded
        # queue behind them, and "busy" beyond (memory stays bounded under a flood).
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = concurrency + queue
        self._waiting = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._waiting >= self._queue:
            raise PasswordsBusyError
        self._waiting += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(fn, *args)
        finally:
            self._waiting -= 1

    async def hash(self, password: str) -> str:
        result: str = await self._run(self._hasher.hash, password)
        return result

    async def verify(self, stored: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored or self._dummy, password) and stored is not None
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        ok: bool = await self._run(check)
        return ok

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)


@dataclass(frozen=True)
class Tokens:
    """HS256 access tokens signed with JWT_SECRET."""

    secret: str
    ttl: int

    def issue(self, user_id: str, *, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "sub": user_id,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.ttl,
            "iss": JWT_ISSUER,
            "typ": "access",
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm=JWT_ALGORITHM)

    def user_id(self, token: str) -> str | None:
        """The user a valid, unexpired access token names; None otherwise."""
        verified = self.verify(token)
        return None if verified is None else verified[0]

    def verify(self, token: str) -> tuple[str, int] | None:
        """(user, issued at) of a valid, unexpired access token; None otherwise."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[JWT_ALGORITHM],
                issuer=JWT_ISSUER,
                options={"require": ["sub", "exp", "iat", "iss"]},
                leeway=5,
            )
        except jwt.PyJWTError:
            return None
        sub, iat = claims.get("sub"), claims.get("iat")
        if claims.get("typ") != "access" or not isinstance(sub, str) or not 0 < len(sub) <= 200:
            return None
        if not isinstance(iat, int):
            return None
        return sub, iat


def new_api_key() -> tuple[str, str, str]:
    """(key, prefix shown to tell keys apart, hash stored)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:12], api_key_hash(key)


def api_key_hash(key: str) -> str:
    """sha256 of the key: keys have 256 bits of entropy, so a fast hash is enough
    (and lets the database find a key by its hash)."""
    return hashlib.sha256(key.encode()).hexdigest()


class WindowCounter:
    """Events per key in a sliding window, with a limit per kind of key; in memory,
    per process, bounded to ``max_keys`` keys (expired ones are pruned first, then
    the oldest half is forgotten)."""

    def __init__(self, *, limits: dict[str, int], window: float, max_keys: int = 100_000) -> None:
        self.window = window
        self._limits = limits
        self._events: dict[tuple[str, str], deque[float]] = {}
        self._max_keys = max_keys

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        entries = self._events.get(key)
        if entries is None:
            return deque()
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if not entries:
            del self._events[key]
        return entries

    def retry_after(self, keys: list[tuple[str, str]], *, now: float | None = None) -> int:
        """Seconds until every key is below its limit again (0: now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            entries = self._recent(key, now)
            if len(entries) >= self._limits[key[0]]:
                wait = max(wait, entries[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def add(self, keys: list[tuple[str, str]], *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._events) >= self._max_keys:
            self._prune(now)
        for key in keys:
            self._events.setdefault(key, deque()).append(now)

    def take(self, keys: list[tuple[str, str]]) -> int:
        """Count an event now if every key allows it: 0, else the seconds to wait."""
        wait = self.retry_after(keys)
        if not wait:
            self.add(keys)
        return wait

    def forget(self, key: tuple[str, str]) -> None:
        self._events.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in list(self._events):
            self._recent(key, now)
        if len(self._events) >= self._max_keys:  # still full: forget the oldest half
            for key in list(self._events)[: self._max_keys // 2]:
                del self._events[key]


class LoginLimiter:
    """Failed logins per username and per client address in a sliding window.

    In memory, per process: with several replicas an attacker gets the limit once
    per replica, which still bounds guessing to a handful per window."""

    def __init__(
        self,
        *,
        max_failures: int,
        window: float,
        per_address_factor: int = 10,
        max_keys: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._counter = WindowCounter(
            limits={"user": max_failures, "addr": max_failures * per_address_factor},
            window=window,
            max_keys=max_keys,
        )

    def _keys(self, username: str, address: str) -> list[tuple[str, str]]:
        return [("user", username.strip().lower()), ("addr", address)]

    def reserve(self, username: str, address: str) -> int:
        """Take an attempt before the password is checked: 0 when allowed (the attempt
        counts as a failure until :meth:`succeeded` refunds it), else the seconds to
        wait. Counting first means concurrent guesses cannot all pass the check."""
        return self._counter.take(self._keys(username, address))

    def retry_after(self, username: str, address: str, *, now: float | None = None) -> int:
        """Seconds until another attempt is allowed (0: allowed now)."""
        return self._counter.retry_after(self._keys(username, address), now=now)

    def failed(self, username: str, address: str, *, now: float | None = None) -> None:
        self._counter.add(self._keys(username, address), now=now)

    def succeeded(self, username: str) -> None:
        self._counter.forget(("user", username.strip().lower()))
