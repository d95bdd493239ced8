"""The dispatcher's batch and attempt stages built on fakes: a store of dicts, a
``send`` that records what would go to Kafka, and action kinds that answer as told.
No Kafka, no PostgreSQL, no HTTP: the rules of docs/reliability.md one by one."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.dispatcher.batch import Dispatcher, StoppingError
from services.dispatcher.handlers import JobHandler
from services.dispatcher.kinds.base import (
    ActionRow,
    AgentToken,
    Deferral,
    Exchange,
    Outcome,
    Target,
)
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.results import ResultRow
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.store import Lookups, Recorded
from shared.contract.actions import ActionConfig, ActionType
from shared.contract.events import Event
from shared.contract.jobs import ActionJob, DeadLetter, UnreadableLetter, job_id
from tools.eventgen import make_event

pytestmark = pytest.mark.unit

RETRY, DLQ = "t.retry", "t.dlq"
#: Columns of a result row (INSERT_RESULT's order) the tests read.
STATUS, ERROR, ATTEMPT = 5, 7, 10


@dataclass
class FakeStore:
    actions: dict[int, ActionRow] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)  # event id -> reorg id
    rows: list[ResultRow] = field(default_factory=list)
    fail_lookups: BaseException | None = None
    looked_up: list[str] = field(default_factory=list)

    async def recorded(self, job_ids: Sequence[str]) -> list[Recorded]:
        wanted = set(job_ids)
        return [
            Recorded(str(r[0]), r[11] if isinstance(r[11], str) else None, int(r[10]), str(r[5]))  # type: ignore[call-overload]
            for r in self.rows
            if r[0] in wanted
        ]

    async def lookups(self, jobs: Sequence[ActionJob]) -> Lookups:
        if self.fail_lookups is not None:
            raise self.fail_lookups
        self.looked_up += [j.job_id for j in jobs]
        replaced = {
            i: self.replaced[j.event.id] for i, j in enumerate(jobs) if j.event.id in self.replaced
        }
        return Lookups(dict(self.actions), replaced)

    async def agent_token(
        self, chain_id: int, agent_id: int, agent_registry: str | None = None
    ) -> AgentToken | None:
        return None

    async def record(self, row: ResultRow) -> None:
        self.rows.append(row)

    def statuses(self, job: ActionJob) -> list[str]:
        return [str(r[STATUS]) for r in self.rows if r[0] == job.job_id]


@dataclass
class FakeKind:
    """Answers each attempt with the next scripted outcome, after ``delay`` seconds."""

    outcomes: list[Outcome] = field(default_factory=list)
    delay: float = 0.0
    limit: float = 5.0
    defer: Deferral | None = None
    target_error: BaseException | None = None
    calls: list[str] = field(default_factory=list)

    def time_limit(self, job: ActionJob) -> float:
        return self.limit

    async def target(self, job: ActionJob, cfg: ActionConfig, action: ActionRow) -> Target:
        if self.target_error is not None:
            raise self.target_error
        return Target(destination="https://hooks.example")

    def wait_before(self, cfg: ActionConfig, target: Target) -> Deferral | None:
        return self.defer

    async def prepare(
        self, job: ActionJob, cfg: ActionConfig, target: Target
    ) -> Exchange | Outcome:
        return functools.partial(self.attempt, job, cfg, target)

    async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome:
        self.calls.append(job.job_id)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.outcomes.pop(0) if self.outcomes else Outcome.ok()


@dataclass
class Sent:
    messages: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        self.messages.append((topic, key, value))

    def on(self, topic: str) -> list[bytes]:
        return [v for t, _, v in self.messages if t == topic]


def settings(**kw: Any) -> DispatcherSettings:
    base: dict[str, Any] = {
        "database_url": "postgresql://unused@127.0.0.1/unused",
        "secrets_key": "k" * 44,
        "retry_topic": RETRY,
        "dlq_topic": DLQ,
        "batch_deadline": 0.5,
        "backoff_base": 0.01,
        "backoff_cap": 0.02,
        "breaker_threshold": 5,
        "breaker_pause": 60.0,
        "retry_hold": 5.0,
    }
    return DispatcherSettings(**{**base, **kw})


def build(
    kind: FakeKind, store: FakeStore | None = None, **kw: Any
) -> tuple[Dispatcher, FakeStore, Sent]:
    store = store or FakeStore({1: ActionRow("t1", None, enabled=True)})
    sent = Sent()
    dispatcher = Dispatcher(
        settings=settings(**kw),
        store=store,
        send=sent,
        metrics=DispatcherMetrics.create(CollectorRegistry()),
        kinds={ActionType.rest: kind},
    )
    return dispatcher, store, sent


def a_job(n: int = 1, **kw: Any) -> ActionJob:
    event = Event.model_validate(
        make_event(random.Random(n), chain_id=8453, agent_id=7, block_number=100 + n, log_index=0)
    )
    fields: dict[str, Any] = {
        "job_id": job_id("t1", event.id, 1),
        "trigger_id": "t1",
        "trigger_name": "t",
        "user_id": "u1",
        "action_id": 1,
        "action_type": ActionType.rest,
        "config": {"url": "https://hooks.example/x", "max_attempts": 3},
        "event": event,
        "created_at": datetime.now(UTC),
        "explain": {},
    }
    return ActionJob(**{**fields, **kw})


async def test_duplicates_in_a_batch_are_attempted_once_and_recorded_jobs_skipped() -> None:
    kind = FakeKind()
    dispatcher, store, _ = build(kind)
    job, other = a_job(1), a_job(2)
    await dispatcher.handle_batch([job, job, other])
    assert sorted(store.looked_up) == sorted([job.job_id, other.job_id])  # deduplicated first
    assert sorted(kind.calls) == sorted([job.job_id, other.job_id])
    assert store.statuses(job) == ["success"]
    await dispatcher.handle_batch([job, other])  # a redelivery after a crash
    assert len(kind.calls) == 2
    assert len(store.rows) == 2


@dataclass
class MeetingStore(FakeStore):
    """Each read waits until the other one has started: read one after the other,
    they never meet."""

    started: dict[str, asyncio.Event] = field(
        default_factory=lambda: {"recorded": asyncio.Event(), "lookups": asyncio.Event()}
    )

    async def recorded(self, job_ids: Sequence[str]) -> list[Recorded]:
        self.started["recorded"].set()
        await self.started["lookups"].wait()
        return await super().recorded(job_ids)

    async def lookups(self, jobs: Sequence[ActionJob]) -> Lookups:
        self.started["lookups"].set()
        await self.started["recorded"].wait()
        return await super().lookups(jobs)


async def test_a_batch_reads_what_is_recorded_and_its_lookups_at_once() -> None:
    kind = FakeKind()
    store = MeetingStore({1: ActionRow("t1", None, enabled=True)})
    dispatcher, _, _ = build(kind, store)
    job = a_job(1)
    async with asyncio.timeout(5):
        await dispatcher.handle_batch([job])
    assert kind.calls == [job.job_id]
    # A redelivery: looked up again, but found recorded and not attempted.
    async with asyncio.timeout(5):
        await dispatcher.handle_batch([job])
    assert kind.calls == [job.job_id]
    assert store.statuses(job) == ["success"]


async def test_transient_goes_to_the_retry_topic_then_the_dlq_after_max_attempts() -> None:
    kind = FakeKind([Outcome.transient("HTTP 503")] * 3)
    dispatcher, store, sent = build(kind)
    job = a_job()
    await dispatcher.handle_batch([job])
    assert store.statuses(job) == ["retrying"]
    (retry,) = sent.on(RETRY)
    again = ActionJob.parse(retry)
    assert again.attempt == 2
    assert again.due_at is not None
    assert again.due_at > job.created_at
    await dispatcher.handle_batch([again], from_retry=True)
    third = ActionJob.parse(sent.on(RETRY)[-1])
    assert third.attempt == 3
    await dispatcher.handle_batch([third], from_retry=True)
    assert store.statuses(job) == ["retrying", "retrying", "dead"]
    (letter,) = sent.on(DLQ)
    dead = DeadLetter.model_validate_json(letter)
    assert dead.attempts == 3
    assert dead.error == "HTTP 503"


async def test_permanent_failure_ends_the_job_without_follow_up() -> None:
    dispatcher, store, sent = build(FakeKind([Outcome.permanent("HTTP 404")]))
    job = a_job()
    await dispatcher.handle_batch([job])
    assert store.statuses(job) == ["failed"]
    assert sent.messages == []


async def test_slow_attempt_gets_a_guard_copy_due_after_its_time_limit() -> None:
    kind = FakeKind(delay=1.0, limit=3.0)
    dispatcher, store, sent = build(kind, batch_deadline=0.2)
    job = a_job()
    before = datetime.now(UTC)
    await asyncio.wait_for(dispatcher.handle_batch([job]), timeout=1.0)
    after = datetime.now(UTC)
    assert store.rows == []  # the batch returned before the attempt ended
    (copy,) = (ActionJob.parse(m) for m in sent.on(RETRY))
    assert copy.attempt == job.attempt
    assert copy.due_at is not None
    # due after the kind's time limit plus the guard margin (10 s), not later
    assert before + timedelta(seconds=13) <= copy.due_at <= after + timedelta(seconds=13)
    # the job redelivered while its attempt still runs joins it: no second call
    await asyncio.wait_for(dispatcher.handle_batch([job]), timeout=1.0)
    await dispatcher.drain(5.0)
    assert kind.calls == [job.job_id]
    assert store.statuses(job) == ["success"]


async def test_retry_job_due_beyond_the_hold_is_parked_unchanged() -> None:
    kind = FakeKind()
    dispatcher, store, sent = build(kind, retry_hold=1.0)
    far = a_job(attempt=2, due_at=datetime.now(UTC) + timedelta(minutes=10))
    soon = a_job(2, attempt=2, due_at=datetime.now(UTC) + timedelta(seconds=0.2))
    await dispatcher.handle_batch([far, soon], from_retry=True)
    assert kind.calls == [soon.job_id]
    assert [ActionJob.parse(m) for m in sent.on(RETRY)] == [far]
    assert store.statuses(far) == []


async def test_handover_puts_back_jobs_not_yet_due() -> None:
    kind = FakeKind()
    dispatcher, _, sent = build(kind)
    job = a_job(attempt=2, due_at=datetime.now(UTC) + timedelta(seconds=3))
    interrupt = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, interrupt.set)
    await asyncio.wait_for(
        dispatcher.handle_batch([job], from_retry=True, interrupt=interrupt), timeout=2.0
    )
    assert kind.calls == []
    assert [ActionJob.parse(m) for m in sent.on(RETRY)] == [job]


async def test_stopping_leaves_a_waiting_retry_batch_uncommitted() -> None:
    dispatcher, _, _ = build(FakeKind())
    job = a_job(attempt=2, due_at=datetime.now(UTC) + timedelta(seconds=3))
    asyncio.get_running_loop().call_later(0.1, dispatcher.stopping.set)
    with pytest.raises(StoppingError):
        await asyncio.wait_for(dispatcher.handle_batch([job], from_retry=True), timeout=2.0)


async def test_open_breaker_defers_without_spending_an_attempt() -> None:
    kind = FakeKind([Outcome.transient("timeout")] * 2)
    dispatcher, store, sent = build(kind, breaker_threshold=2)
    first, second, third = a_job(1), a_job(2), a_job(3)
    await dispatcher.handle_batch([first])
    await dispatcher.handle_batch([second])
    await dispatcher.handle_batch([third])
    assert kind.calls == [first.job_id, second.job_id]  # the breaker opened
    assert store.statuses(third) == []
    deferred = ActionJob.parse(sent.on(RETRY)[-1])
    assert deferred.job_id == third.job_id
    assert deferred.attempt == 1  # same attempt
    assert deferred.due_at is not None
    assert deferred.due_at > datetime.now(UTC) + timedelta(seconds=30)


async def test_kind_deferral_goes_back_on_the_retry_topic() -> None:
    kind = FakeKind(defer=Deferral(4.0, "chat_rate"))
    dispatcher, store, sent = build(kind)
    job = a_job()
    await dispatcher.handle_batch([job])
    assert kind.calls == []
    assert store.rows == []
    (back,) = (ActionJob.parse(m) for m in sent.on(RETRY))
    assert back.attempt == 1
    assert back.due_at is not None
    assert back.due_at >= datetime.now(UTC) + timedelta(seconds=3)


async def test_attempt_beyond_its_time_limit_is_transient() -> None:
    kind = FakeKind(delay=2.0, limit=0.1)
    dispatcher, store, _ = build(kind)
    job = a_job()
    await dispatcher.handle_batch([job])
    assert store.statuses(job) == ["retrying"]
    assert store.rows[0][ERROR] == "attempt exceeded its time limit"


@pytest.mark.parametrize(
    ("action", "replaced", "status", "error"),
    [
        (None, False, "failed", "the trigger or action was deleted"),
        (ActionRow("another", None, enabled=True), False, "failed", "deleted"),
        (ActionRow("t1", None, enabled=False), False, "failed", "the trigger is disabled"),
        (ActionRow("t1", None, enabled=True), True, "retracted", "reorg r9"),
    ],
)
async def test_checks_before_the_attempt(
    action: ActionRow | None, replaced: bool, status: str, error: str
) -> None:
    kind = FakeKind()
    job = a_job()
    store = FakeStore({1: action} if action else {}, {job.event.id: "r9"} if replaced else {})
    dispatcher, _, sent = build(kind, store)
    await dispatcher.handle_batch([job])
    assert kind.calls == []
    assert store.statuses(job) == [status]
    assert error in str(store.rows[0][ERROR])
    assert sent.messages == []


async def test_database_failure_raises_so_the_batch_is_redelivered() -> None:
    store = FakeStore({1: ActionRow("t1", None, enabled=True)}, fail_lookups=OSError("down"))
    kind = FakeKind()
    dispatcher, _, _ = build(kind, store)
    with pytest.raises(OSError, match="down"):
        await dispatcher.handle_batch([a_job()])
    assert kind.calls == []


async def test_infrastructure_failure_during_an_attempt_is_raised_not_recorded() -> None:
    # e.g. the MCP token lookup losing its database connection
    kind = FakeKind(target_error=ConnectionResetError("connection lost"))
    dispatcher, store, sent = build(kind)
    with pytest.raises(ConnectionResetError):
        await dispatcher.handle_batch([a_job()])
    assert store.rows == []
    assert sent.messages == []


async def test_destination_retry_after_is_honoured() -> None:
    kind = FakeKind([Outcome.transient("HTTP 429", retry_after=30.0, destination_fault=False)])
    dispatcher, _, sent = build(kind, backoff_cap=300.0)
    await dispatcher.handle_batch([a_job()])
    (retry,) = (ActionJob.parse(m) for m in sent.on(RETRY))
    assert retry.due_at is not None
    assert retry.due_at >= datetime.now(UTC) + timedelta(seconds=29)


async def test_job_deferred_past_its_max_age_is_dead() -> None:
    kind = FakeKind(defer=Deferral(4.0, "chat_rate"))
    dispatcher, store, sent = build(kind, max_job_age=60.0)
    job = a_job(created_at=datetime.now(UTC) - timedelta(seconds=120))
    await dispatcher.handle_batch([job])
    assert store.statuses(job) == ["dead"]
    assert str(store.rows[0][ERROR]).startswith("expired: still deferred (chat_rate)")
    assert len(sent.on(DLQ)) == 1
    assert sent.on(RETRY) == []


async def test_an_unsent_outcome_leaves_the_breaker_as_it_was() -> None:
    # fault, nothing sent (e.g. a rate-limit wait), fault: two consecutive faults of
    # the destination open its breaker; the unsent attempt says nothing of its health
    kind = FakeKind(
        [
            Outcome.transient("timeout"),
            Outcome.transient("rate limited", destination_fault=False, sent=False),
            Outcome.transient("timeout"),
        ]
    )
    dispatcher, _, sent = build(kind, breaker_threshold=2)
    jobs = [a_job(n) for n in range(1, 5)]
    for job in jobs:
        await dispatcher.handle_batch([job])
    assert kind.calls == [j.job_id for j in jobs[:3]]
    assert ActionJob.parse(sent.on(RETRY)[-1]).job_id == jobs[3].job_id  # deferred


async def test_unreadable_message_goes_to_the_dead_letter_topic() -> None:
    kind = FakeKind()
    dispatcher, store, sent = build(kind)
    handler = JobHandler(dispatcher.settings, send=sent)
    handler.dispatcher = dispatcher
    job = a_job()
    rest = await handler.handle(
        [b'{"job_id": 1}', job.dump()], from_retry=False, interrupt=asyncio.Event()
    )
    assert rest is not None
    await rest
    assert store.statuses(job) == ["success"]
    (letter,) = sent.on(DLQ)
    unreadable = UnreadableLetter.model_validate_json(letter)
    assert unreadable.raw == b'{"job_id": 1}'
    assert "job_id" in unreadable.error


async def test_a_batch_whose_end_fails_raises_at_once_and_the_next_batch_waits_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Overlapping batches: the failure of a batch's end is raised without a pause (its
    partitions are rewound before more work begins behind it); the pause, growing
    with the failures in a row, comes before the handler's next batch."""
    pauses: list[int] = []

    async def pause(attempt: int) -> None:
        pauses.append(attempt)

    monkeypatch.setattr("services.dispatcher.handlers.with_backoff", pause)
    kind = FakeKind(target_error=ConnectionResetError("connection lost"))
    dispatcher, _, sent = build(kind)
    handler = JobHandler(dispatcher.settings, send=sent)
    handler.dispatcher = dispatcher
    for n in (1, 2):
        rest = await handler.handle([a_job(n).dump()], from_retry=False, interrupt=asyncio.Event())
        assert rest is not None
        with pytest.raises(ConnectionResetError):
            await rest
    assert pauses == [1]  # before the second batch, none after the second failure yet
    kind.target_error = None
    rest = await handler.handle([a_job(3).dump()], from_retry=False, interrupt=asyncio.Event())
    assert rest is not None
    await rest
    assert pauses == [1, 2]
    rest = await handler.handle([a_job(4).dump()], from_retry=False, interrupt=asyncio.Event())
    assert rest is not None
    await rest
    assert pauses == [1, 2]  # a batch ended well: no more pauses


async def test_a_bug_in_one_job_is_recorded_not_raised() -> None:
    class Broken(FakeKind):
        async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome:
            raise KeyError("surprise")

    dispatcher, store, _ = build(Broken())
    job = a_job()
    await dispatcher.handle_batch([job])
    assert store.statuses(job) == ["failed"]
    assert store.rows[0][ERROR] == "internal error: KeyError"
    assert store.rows[0][ATTEMPT] == 1


@dataclass
class HeldKind(FakeKind):
    """Attempts wait until ``release`` is set."""

    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome:
        await self.release.wait()
        return await super().attempt(job, cfg, target)


async def test_the_inflight_gauge_counts_attempts_under_way() -> None:
    registry = CollectorRegistry()
    kind = HeldKind()
    store = FakeStore({1: ActionRow("t1", None, enabled=True)})
    dispatcher = Dispatcher(
        settings=settings(),
        store=store,
        send=Sent(),
        metrics=DispatcherMetrics.create(registry),
        kinds={ActionType.rest: kind},
    )

    def inflight() -> float | None:
        return registry.get_sample_value("erc8004_dispatcher_inflight_jobs")

    assert inflight() == 0
    batch = asyncio.create_task(dispatcher.handle_batch([a_job(1), a_job(2), a_job(3)]))
    for _ in range(200):  # the attempts start within a few turns of the loop
        if inflight() == 3:
            break
        await asyncio.sleep(0.001)
    assert inflight() == 3
    assert kind.calls == []  # all three held in their attempts
    kind.release.set()
    await batch
    assert inflight() == 0
    assert len(store.rows) == 3


@dataclass
class StagedKind(HeldKind):
    """Notes each preparation and each exchange begun (exchanges held until
    ``release``); the jobs named in ``unrenderable`` end in their preparation."""

    steps: list[str] = field(default_factory=list)
    unrenderable: set[str] = field(default_factory=set)

    async def prepare(
        self, job: ActionJob, cfg: ActionConfig, target: Target
    ) -> Exchange | Outcome:
        self.steps.append(f"prepare {job.job_id}")
        if job.job_id in self.unrenderable:
            return Outcome.permanent("template error", sent=False)
        return await super().prepare(job, cfg, target)

    async def attempt(self, job: ActionJob, cfg: ActionConfig, target: Target) -> Outcome:
        self.steps.append(f"exchange {job.job_id}")
        return await super().attempt(job, cfg, target)


async def until(condition: Any, turns: int = 500) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not met in time")


async def test_a_job_waiting_for_its_destinations_slot_is_already_prepared() -> None:
    kind = StagedKind()
    dispatcher, store, _ = build(kind, per_destination_concurrency=1)
    first, second = a_job(1), a_job(2)
    batch = asyncio.create_task(dispatcher.handle_batch([first, second]))
    await until(lambda: len(kind.steps) == 3)
    await asyncio.sleep(0.01)  # nothing more happens while the slot is held
    assert sorted(kind.steps) == sorted(
        [f"prepare {first.job_id}", f"prepare {second.job_id}", f"exchange {first.job_id}"]
    )
    kind.release.set()
    await batch
    assert kind.steps[-1] == f"exchange {second.job_id}"
    assert store.statuses(first) == store.statuses(second) == ["success"]


async def test_a_job_that_ends_in_its_preparation_never_takes_a_slot() -> None:
    # An error in its preparation is the job's own: it does not wait behind the
    # destination.
    kind = StagedKind()
    dispatcher, store, _ = build(kind, per_destination_concurrency=1)
    held, broken = a_job(1), a_job(2)
    kind.unrenderable.add(broken.job_id)
    batch = asyncio.create_task(dispatcher.handle_batch([held, broken]))
    await until(lambda: store.statuses(broken) == ["failed"])
    assert store.statuses(held) == []  # still holding the only slot
    kind.release.set()
    await batch
    assert store.statuses(held) == ["success"]
    assert f"exchange {broken.job_id}" not in kind.steps


async def test_an_open_breaker_does_not_defer_a_job_that_ends_in_its_preparation() -> None:
    # The breaker speaks for the destination; a job that cannot be built says
    # nothing about it and is not put off for it either: it fails now.
    kind = StagedKind(outcomes=[Outcome.transient("HTTP 503")])
    kind.release.set()
    dispatcher, store, sent = build(kind, breaker_threshold=1)
    failing, broken = a_job(1), a_job(2)
    await dispatcher.handle_batch([failing])
    assert dispatcher.attempts.breakers.is_open("u1\nhttps://hooks.example")
    kind.unrenderable.add(broken.job_id)
    await dispatcher.handle_batch([broken])
    assert store.statuses(broken) == ["failed"]
    assert all(ActionJob.parse(m).job_id != broken.job_id for m in sent.on(RETRY))
