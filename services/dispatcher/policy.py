"""The dispatcher's policies around attempts: backoff with full jitter, a circuit
breaker per destination, per-destination concurrency limits and rate limits."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


def now_utc() -> datetime:
    return datetime.now(UTC)


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^(attempt-1))],
    for the wait after the ``attempt``-th attempt failed."""
    ceiling = min(cap, base * (2 ** min(attempt - 1, 40)))
    return float(ceiling * rng())


# --------------------------------------------------------------------------- breaker


@dataclass
class _BreakerState:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


@dataclass
class Breakers:
    """A circuit breaker per destination. Closed: calls pass, consecutive destination
    faults are counted; at ``threshold`` it opens. Open: calls are refused until
    ``pause`` seconds passed; then half-open: one probe passes, its success closes the
    breaker, its failure opens it for another pause."""

    threshold: int = 5
    pause: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _BreakerState] = field(default_factory=dict)

    def admit(self, destination: str) -> float | None:
        """None when a call may go now; else the seconds until the breaker half-opens."""
        state = self._states.get(destination)
        if state is None or state.opened_at is None:
            return None
        waited = self.clock() - state.opened_at
        if waited < self.pause:
            return self.pause - waited
        if state.probing:
            return max(1.0, self.pause / 4)  # a probe is in flight: ask again later
        state.probing = True
        return None

    def record(self, destination: str, *, fault: bool) -> None:
        """The result of a call that :meth:`admit` let through."""
        state = self._states.setdefault(destination, _BreakerState())
        if not fault:
            self._states.pop(destination, None)
            return
        state.probing = False
        state.failures += 1
        if state.opened_at is not None or state.failures >= self.threshold:
            state.opened_at = self.clock()

    def release(self, destination: str) -> None:
        """A call :meth:`admit` let through made no request (a template error, a
        refused address): it says nothing; a half-open probe may be tried again."""
        state = self._states.get(destination)
        if state is not None:
            state.probing = False

    def open_count(self) -> int:
        return sum(1 for s in self._states.values() if s.opened_at is not None)

    def is_open(self, destination: str) -> bool:
        state = self._states.get(destination)
        return state is not None and state.opened_at is not None


# --------------------------------------------------------------------------- limits


class DestinationLimits:
    """At most ``per_destination`` attempts in flight per destination; at most
    ``queue`` more waiting for a slot. :meth:`slot` returns None when the queue is
    full: the caller defers the job instead of piling up behind a slow host."""

    def __init__(self, per_destination: int, queue: int) -> None:
        self.per_destination = per_destination
        self.queue = queue
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._waiting: dict[str, int] = {}

    def slot(self, destination: str) -> _Slot | None:
        sem = self._sems.get(destination)
        if sem is None:
            sem = self._sems[destination] = asyncio.Semaphore(self.per_destination)
        if sem.locked() and self._waiting.get(destination, 0) >= self.queue:
            return None
        return _Slot(self, destination, sem)

    def in_flight(self) -> int:
        return sum(self.per_destination - s._value for s in self._sems.values())


class _Slot:
    def __init__(self, limits: DestinationLimits, destination: str, sem: asyncio.Semaphore) -> None:
        self._limits = limits
        self._destination = destination
        self._sem = sem

    async def __aenter__(self) -> None:
        waiting = self._limits._waiting
        waiting[self._destination] = waiting.get(self._destination, 0) + 1
        try:
            await self._sem.acquire()
        finally:
            waiting[self._destination] -= 1
            if not waiting[self._destination]:
                del waiting[self._destination]

    async def __aexit__(self, *_exc: object) -> None:
        self._sem.release()


class RateLimiter:
    """Minimum spacing between calls: ``rate`` per second overall (a token bucket of
    ``burst``) and ``per_key_interval`` seconds between calls with the same key
    (Telegram: ~30 messages/s per bot, 1/s per chat). ``pause(key, s)`` honours a
    destination's own retry_after."""

    def __init__(
        self,
        rate: float,
        burst: int,
        per_key_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.per_key_interval = per_key_interval
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._next_for_key: dict[str, float] = {}

    def pause(self, key: str, seconds: float) -> None:
        until = self._clock() + seconds
        self._next_for_key[key] = max(self._next_for_key.get(key, 0.0), until)

    def wait_for(self, key: str) -> float:
        """Seconds until ``key`` may send again (0 when it may now)."""
        return max(0.0, self._next_for_key.get(key, 0.0) - self._clock())

    async def acquire(self, key: str, *, max_wait: float) -> float | None:
        """Wait for a turn; None once it is taken, or the seconds still to wait when
        that exceeds ``max_wait`` (nothing is taken then)."""
        while True:
            # No await between reading and taking a turn: nothing else runs in between.
            now = self._clock()
            if len(self._next_for_key) > 10_000:
                self._next_for_key = {k: t for k, t in self._next_for_key.items() if t > now}
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            key_wait = self._next_for_key.get(key, 0.0) - now
            bucket_wait = (1.0 - self._tokens) / self.rate if self._tokens < 1.0 else 0.0
            wait = max(key_wait, bucket_wait, 0.0)
            if wait <= 0:
                self._tokens -= 1.0
                self._next_for_key[key] = now + self.per_key_interval
                return None
            if wait > max_wait:
                return wait
            await asyncio.sleep(wait)
