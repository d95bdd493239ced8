"""The dispatcher's policies around attempts: backoff with full jitter, circuit
breakers (the attempt stage keys them by user and destination), per-destination
concurrency limits shared fairly between users, and rate limits."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
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
        if not fault:
            self._states.pop(destination, None)
            return
        state = self._states.setdefault(destination, _BreakerState())
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
    """At most ``per_destination`` attempts in flight per destination, shared fairly
    between the users whose jobs go there: a freed slot goes to the next user in
    turn (round robin), not to whoever queued first, so one user's flood of slow
    jobs delays another user's by at most one attempt per user ahead of it. Each user
    may have at most ``queue`` jobs waiting for slots, all destinations together:
    :meth:`slot` returns None beyond, and the caller defers the job instead of
    piling up behind slow hosts (nor can one user's waiting jobs fill the
    dispatcher's in-flight limit for everyone)."""

    def __init__(self, per_destination: int, queue: int) -> None:
        self.per_destination = per_destination
        self.queue = queue
        self._places: dict[str, _Place] = {}
        #: jobs waiting for a slot, per user, all destinations together
        self.waiting_of: dict[str, int] = {}

    def slot(self, destination: str, user: str) -> _Slot | None:
        place = self._places.get(destination)
        if place is not None and place.free == 0 and self.waiting_of.get(user, 0) >= self.queue:
            return None
        return _Slot(self, destination, user)

    def _waits(self, user: str, change: int) -> None:
        count = self.waiting_of.get(user, 0) + change
        if count:
            self.waiting_of[user] = count
        else:
            self.waiting_of.pop(user, None)

    def _place(self, destination: str) -> _Place:
        place = self._places.get(destination)
        if place is None:
            place = self._places[destination] = _Place(self.per_destination)
        return place

    def in_flight(self) -> int:
        return sum(self.per_destination - p.free for p in self._places.values())

    def _drop_if_idle(self, destination: str, place: _Place) -> None:
        if place.free == self.per_destination and not place.waiting:
            self._places.pop(destination, None)


class _Place:
    """One destination's free slots and its users' waiting turns, in turn order."""

    def __init__(self, capacity: int) -> None:
        self.free = capacity
        #: user -> waiters (futures resolved when handed a slot); dict order is the
        #: turn order (a user served goes to the back)
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def hand_over(self) -> None:
        """A slot was freed: to the next user's first waiter, else back to the pool."""
        while self.waiting:
            user = next(iter(self.waiting))
            queue = self.waiting.pop(user)
            waiter = queue.popleft()
            if queue:
                self.waiting[user] = queue  # to the back of the turn order
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class _Slot:
    def __init__(self, limits: DestinationLimits, destination: str, user: str) -> None:
        self._limits = limits
        self._destination = destination
        self._user = user
        self._place: _Place | None = None

    async def __aenter__(self) -> None:
        # The destination's place when entering (an idle one is dropped in between).
        place = self._place = self._limits._place(self._destination)
        if place.free > 0 and not place.waiting:
            place.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        place.waiting.setdefault(self._user, deque()).append(waiter)
        self._limits._waits(self._user, +1)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                place.hand_over()  # handed a slot just as it gave up: pass it on
            else:
                queue = place.waiting.get(self._user)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del place.waiting[self._user]
            self._limits._drop_if_idle(self._destination, place)
            raise
        finally:
            self._limits._waits(self._user, -1)

    async def __aexit__(self, *_exc: object) -> None:
        place = self._place
        assert place is not None
        place.hand_over()
        self._limits._drop_if_idle(self._destination, place)


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
