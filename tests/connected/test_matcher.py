"""The matcher end to end: erc8004.events -> evaluation -> erc8004.actions, with
real Kafka and PostgreSQL, the matcher running as its own process."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.matcher import queries
from shared.contract.events import Event, version_key
from shared.contract.jobs import (
    RetractionMessage,
    TickMessage,
    dump_message,
    job_id,
)
from shared.engine.evaluate import evaluate, scope_keys
from shared.engine.replay import compile_trigger
from shared.engine.trigger_index import TriggerIndex
from shared.platform.db import register_codecs
from tests.apiutil import store_events
from tests.matcherutil import (
    EMA_BELOW_40,
    Matching,
    chains_over_partitions,
    ema_of,
    insert_trigger,
    insert_user,
    random_chain,
)
from tests.procs import ROOT, ServiceProcess, http_get
from tools.eventgen import make_event

pytestmark = [pytest.mark.db, pytest.mark.kafka]

A = "0x" + "a1" * 20
B = "0x" + "b2" * 20


def metric(proc: ServiceProcess, name: str) -> float:
    _, body = http_get(proc.metrics_url)
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_metric(proc: ServiceProcess, name: str, at_least: float, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while metric(proc, name) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} < {at_least}: {metric(proc, name)}")
        await asyncio.sleep(0.2)


def event(chain: int, block: int, log: int, **fields: Any) -> Event:
    rng = random.Random(f"{chain}:{block}:{log}")
    return Event.model_validate(
        make_event(rng, chain_id=chain, block_number=block, log_index=log, **fields)
    )


def feedback(
    chain: int, block: int, agent: int, *, score: int, tag: str = "starred", **kw: Any
) -> Event:
    fields: dict[str, Any] = {"event_type": "NewFeedback", "agent_id": agent, "tag1": tag}
    fields.update(kw)
    raw = make_event(
        random.Random(block), chain_id=chain, block_number=block, log_index=0, legacy=True, **fields
    )
    raw["score"] = score
    return Event.model_validate(raw)


async def test_every_condition_type_end_to_end(db: asyncpg.Connection, matcher: Matching) -> None:
    chain = random_chain()
    user = await insert_user(db)
    ts = int(time.time()) - 600
    rep = "reputation"

    def trig(name: str, conditions: list[dict[str, Any]], registry: str = rep) -> Any:
        return insert_trigger(
            db, user_id=user, chain_id=chain, registry=registry, conditions=conditions, name=name
        )

    t = {
        "agent": await trig(
            "agent", [{"condition_type": "agent_id_equals", "operator": "=", "value": "42"}]
        ),
        "score": await trig(
            "score",
            [
                {
                    "condition_type": "score_threshold",
                    "field": "score",
                    "operator": ">",
                    "value": "80",
                }
            ],
        ),
        "tag": await trig(
            "tag",
            [
                {
                    "condition_type": "tag_equals",
                    "field": "tag1",
                    "operator": "=",
                    "value": "starred",
                }
            ],
        ),
        "event_type": await trig(
            "event_type",
            [{"condition_type": "event_type_equals", "operator": "=", "value": "FeedbackRevoked"}],
        ),
        "file": await trig(
            "file",
            [
                {"condition_type": "file_uri_exists", "operator": "=", "value": "true"},
                {"condition_type": "agent_id_equals", "operator": "in", "value": "7"},
            ],
        ),
        "any": await trig(
            "any",
            [
                {
                    "condition_type": "group",
                    "operator": "any",
                    "config": {
                        "conditions": [
                            {
                                "condition_type": "agent_id_equals",
                                "field": "agent_id",
                                "operator": "=",
                                "value": "7",
                                "config": {},
                            },
                            {
                                "condition_type": "score_threshold",
                                "field": "score",
                                "operator": "<",
                                "value": "40",
                                "config": {},
                            },
                        ]
                    },
                }
            ],
        ),
        "not": await trig(
            "not",
            [
                {
                    "condition_type": "group",
                    "operator": "not",
                    "config": {
                        "conditions": [
                            {
                                "condition_type": "event_type_equals",
                                "field": "event_type",
                                "operator": "=",
                                "value": "NewFeedback",
                                "config": {},
                            }
                        ]
                    },
                }
            ],
        ),
        "validator": await trig(
            "validator",
            [
                {
                    "condition_type": "validator_whitelist",
                    "field": "validator_address",
                    "operator": "in",
                    "value": A,
                }
            ],
            registry="validation",
        ),
        "ema": await trig(
            "ema",
            [
                {
                    "condition_type": "ema_threshold",
                    "field": "score",
                    "operator": "<",
                    "value": "60",
                    "config": {"alpha": 0.5, "scope": "agent"},
                }
            ],
        ),
        "rate": await trig(
            "rate",
            [
                {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"},
                {
                    "condition_type": "rate_limit",
                    "field": "count",
                    "operator": ">=",
                    "value": "2",
                    "config": {"time_window": "1h", "scope": "agent"},
                },
            ],
        ),
    }
    e1 = feedback(chain, 100, 42, score=30, timestamp=ts)
    e2 = feedback(chain, 101, 42, score=90, tag="uptime", timestamp=ts + 10, file_uri=None)
    e3 = feedback(chain, 102, 7, score=50, timestamp=ts + 20)
    e4 = event(chain, 103, 0, event_type="FeedbackRevoked", agent_id=7, timestamp=ts + 30)
    v1 = event(
        chain,
        104,
        0,
        event_type="ValidationResponse",
        agent_id=42,
        validator_address=A,
        timestamp=ts,
    )
    v2 = event(
        chain,
        105,
        0,
        event_type="ValidationResponse",
        agent_id=42,
        validator_address=B,
        timestamp=ts,
    )
    expected = {
        ("agent", e1.id), ("agent", e2.id),
        ("score", e2.id),
        ("tag", e1.id), ("tag", e3.id),
        ("event_type", e4.id),
        ("file", e3.id),
        ("any", e1.id), ("any", e3.id), ("any", e4.id),
        ("not", e4.id),
        ("validator", v1.id),
        ("ema", e1.id), ("ema", e3.id),  # agent scope: agent 7 starts its own EMA at 50
        ("rate", e2.id),
    }  # fmt: skip
    # an edit before the matcher starts: its jobs name the trigger's version then
    await db.execute("UPDATE triggers SET name = 'rate, renamed' WHERE id = $1", t["rate"])
    versions = {r["id"]: r["version"] for r in await db.fetch("SELECT id, version FROM triggers")}
    assert versions[t["rate"]] == 2
    proc = matcher.start()
    # an event of a chain no trigger watches: counted, not decoded
    elsewhere = feedback(chain + 1, 106, 7, score=5)
    await matcher.produce([e1, e2, e3, elsewhere, e4, v1, v2])
    jobs = await matcher.jobs(expect=len(expected))
    names = {v: k for k, v in t.items()}
    got = {(names[j.trigger_id], j.event.id) for j in jobs}
    assert got == expected
    assert len(jobs) == len(expected), "a firing was produced twice"
    for job in jobs:
        assert job.job_id == job_id(job.trigger_id, version_key(job.event), job.action_id)
        assert job.explain["fired"] is True
        assert job.explain["conditions"], job.explain
        assert job.explain["trigger_version"] == versions[job.trigger_id]
    ema_job = next(j for j in jobs if j.trigger_id == t["ema"])
    assert any(c["type"] == "ema_threshold" for c in ema_job.explain["conditions"])

    # Every metric the issue names, with values that follow from this run.
    assert metric(proc, "erc8004_matcher_events_evaluated_total") == 7
    assert metric(proc, "erc8004_matcher_index_triggers") == len(t)
    _, body = http_get(proc.metrics_url)
    text = body.decode()
    assert "erc8004_matcher_candidates_per_event_count 7.0" in text
    assert 'erc8004_matcher_candidates_per_event_bucket{le="0.0"} 1.0' in text
    assert 'erc8004_matcher_triggers_fired_total{condition_type="ema_threshold"} 2.0' in text
    assert 'erc8004_matcher_jobs_produced_total{action_type="rest"} 15.0' in text
    assert "erc8004_matcher_evaluation_seconds_bucket" in text
    assert "erc8004_matcher_consumer_lag_messages" in text


async def test_index_follows_database_changes_and_skips_history(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    chain = random_chain()
    proc = matcher.start()
    assert metric(proc, "erc8004_matcher_index_triggers") == 0
    trigger = await insert_trigger(
        db,
        chain_id=chain,
        conditions=[{"condition_type": "agent_id_equals", "operator": "=", "value": "99"}],
    )
    await wait_metric(proc, "erc8004_matcher_index_triggers", 1, within=10)
    now = datetime.now(UTC)
    new = feedback(chain, 10, 99, score=1)
    old = feedback(chain, 11, 99, score=2)
    await matcher.produce([new])
    await matcher.produce([old], ingested_at=now - timedelta(hours=1))
    await wait_metric(proc, "erc8004_matcher_events_evaluated_total", 2)
    # Disabled by plain SQL: the database trigger tells the matcher.
    await db.execute("UPDATE triggers SET enabled = false WHERE id = $1", trigger)
    deadline = time.monotonic() + 10
    while metric(proc, "erc8004_matcher_index_triggers") != 0:
        assert time.monotonic() < deadline, "the matcher did not see the trigger disabled"
        await asyncio.sleep(0.1)
    await matcher.produce([feedback(chain, 12, 99, score=3)])
    await wait_metric(proc, "erc8004_matcher_events_evaluated_total", 3)
    jobs = await matcher.jobs(expect=1)
    assert [(j.trigger_id, j.event.id) for j in jobs] == [(trigger, new.id)]


async def test_retraction_takes_events_out_of_rate_windows(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    chain = random_chain()
    trigger = await insert_trigger(
        db, chain_id=chain,
        conditions=[
            {"condition_type": "rate_limit", "field": "count", "operator": ">", "value": "100",
             "config": {"time_window": "1d"}},
        ],
    )  # fmt: skip
    proc = matcher.start()
    ts = int(time.time()) - 600
    events = [feedback(chain, 200 + i, 5, score=50, timestamp=ts + i) for i in range(6)]
    await matcher.produce(events)
    await wait_metric(proc, "erc8004_matcher_events_evaluated_total", 6)
    await wait_all_evaluated(db, 6)

    async def window() -> list[Any]:
        state = await db.fetchval(
            "SELECT state_data FROM trigger_state WHERE trigger_id = $1 AND scope_key = ''",
            trigger,
        )
        return [entry for c in state["conditions"].values() for entry in c.get("window", [])]

    assert len(await window()) == 6
    replaced = events[3:]
    retraction = retraction_of(chain, 203, [version_key(e) for e in replaced])
    # One copy on partition 0 first, then the canonical event at block 203 (same
    # id, other block hash), then the copies of the other partitions: they must
    # not take the canonical event out.
    await produce_raw(matcher.bootstrap, matcher.topic, dump_message(retraction), partitions=[0])
    await wait_metric(proc, "erc8004_matcher_retractions_total", 1)
    assert len(await window()) == 3
    canonical = feedback(chain, 203, 5, score=50, timestamp=ts + 3, block_hash="0x" + "cd" * 32)
    assert canonical.id == replaced[0].id
    await matcher.produce([canonical])
    await wait_all_evaluated(db, 7)
    assert len(await window()) == 4
    await produce_raw(matcher.bootstrap, matcher.topic, dump_message(retraction), partitions=[1, 2])
    await wait_metric(proc, "erc8004_matcher_retractions_total", 3)
    entries = await window()
    assert len(entries) == 4
    assert version_key(canonical) in {entry[1] for entry in entries}
    assert not {version_key(e) for e in replaced} & {entry[1] for entry in entries}


async def test_a_revocation_recomputes_the_ema_and_the_arming(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """An EMA crossing fired by a feedback that is then revoked: the recomputation
    leaves the EMA of the other feedbacks (none) and the trigger armed, so the next
    low feedback fires again with an EMA of its own value alone. (Before: the EMA
    kept the revoked 10 and the trigger stayed disarmed: no second alert.)"""
    chain = random_chain()
    trigger = await insert_trigger(db, chain_id=chain, conditions=EMA_BELOW_40)
    first = feedback(chain, 300, 5, score=10, client_address=A, feedback_index=1)
    revoked = event(  # the address in upper case: compared in lower case
        chain, 301, 0, event_type="FeedbackRevoked", agent_id=5,
        client_address="0x" + A[2:].upper(), feedback_index=1,
    )  # fmt: skip
    second = feedback(chain, 302, 5, score=30, client_address=B, feedback_index=1)
    await store_events(db, [first, revoked, second])
    matcher.start()
    await matcher.produce([first, revoked, second])
    jobs = await matcher.jobs(expect=2)
    assert [j.event.id for j in jobs] == [first.id, second.id]
    await wait_all_evaluated(db, 3)
    assert await ema_of(db, trigger) == 30
    excluded = await db.fetch(
        "SELECT event_id, excluded FROM trigger_evaluations WHERE trigger_id = $1 ORDER BY seq",
        trigger,
    )
    assert [(r["event_id"], r["excluded"]) for r in excluded] == [
        (version_key(first), "revoked"),
        (version_key(revoked), None),
        (version_key(second), None),
    ]


async def test_a_retracted_revocation_and_its_replacement_in_one_batch(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """Found in review: a revocation, then a reorg that replaces it and the canonical
    revocation arriving in one batch. The retraction puts the feedback back; the
    canonical revocation revokes it again, so it must recompute although the batch
    began with the feedback revoked. (Before: the replacement was evaluated as a
    plain event and the feedback's 10 stayed in the EMA.)"""
    chain = random_chain()
    trigger = await insert_trigger(db, chain_id=chain, conditions=EMA_BELOW_40)
    first = feedback(chain, 500, 5, score=10, client_address=A, feedback_index=1)

    def revocation(block_hash: str) -> Event:
        return event(
            chain, 501, 0, event_type="FeedbackRevoked", agent_id=5, client_address=A,
            feedback_index=1, block_hash=block_hash,
        )  # fmt: skip

    replaced, canonical = revocation("0x" + "aa" * 32), revocation("0x" + "bb" * 32)
    later = feedback(chain, 502, 5, score=60, client_address=B, feedback_index=1)
    await store_events(db, [first, replaced, canonical, later])
    proc = matcher.start()
    await matcher.produce_keyed([first, replaced])
    await wait_all_evaluated(db, 2)
    proc.terminate()  # the rest waits on the topic, read in one batch on restart
    retraction = retraction_of(chain, 501, (version_key(replaced),))
    await matcher.produce_keyed([retraction, canonical, later])
    matcher.start()
    await wait_all_evaluated(db, 4)
    assert await ema_of(db, trigger) == 60  # the revoked 10 is not in it


async def test_a_reorg_restores_the_ema_the_arming_and_the_cooldown(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """A crossing fired on an event that a reorg then replaces: the retraction restores
    the state from before it (no EMA, armed, no firing time), so the canonical
    replacement fires under its own cooldown with an EMA of its own value. (Before:
    the EMA averaged both versions and the cooldown and disarming held it back.)"""
    chain = random_chain()
    trigger = await insert_trigger(
        db,
        chain_id=chain,
        conditions=EMA_BELOW_40,
        cooldown_seconds=3600,
    )
    ts = int(time.time()) - 600
    before = feedback(chain, 399, 5, score=50, timestamp=ts - 1)
    replaced = feedback(chain, 400, 5, score=10, timestamp=ts)
    await store_events(db, [before, replaced])
    matcher.start()
    await matcher.produce([before, replaced])
    (fired,) = await matcher.jobs(expect=1)
    assert fired.event.id == replaced.id
    retraction = retraction_of(chain, 400, (version_key(replaced),))
    canonical = feedback(chain, 400, 5, score=20, timestamp=ts, block_hash="0x" + "cd" * 32)
    await store_events(db, [canonical])
    await matcher.produce_keyed([retraction, canonical])
    jobs = await matcher.jobs(expect=2)
    assert [version_key(j.event) for j in jobs] == [version_key(replaced), version_key(canonical)]
    assert await ema_of(db, trigger) == 35  # 20/2 + 50/2: the replaced 10 is gone


async def test_a_firing_recorded_by_the_previous_release_keeps_its_job_id(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """A batch the previous release evaluated but did not commit is redelivered to this
    one: the firing it recorded (an explain without event_version) is produced again
    under the job id it had then, named after the event id, so the dispatcher's and
    the receivers' deduplication still recognise it."""
    chain = random_chain()
    trigger = await insert_trigger(
        db, chain_id=chain,
        conditions=[
            {"condition_type": "rate_limit", "field": "count", "operator": ">=", "value": "1",
             "config": {"time_window": "1h"}},
        ],
    )  # fmt: skip
    (action,) = await db.fetchval(
        "SELECT array_agg(id) FROM trigger_actions WHERE trigger_id = $1", trigger
    )
    old, new = feedback(chain, 300, 5, score=50), feedback(chain, 301, 5, score=50)
    await db.execute(
        "INSERT INTO trigger_evaluations (trigger_id, event_id, fired, explain)"
        " VALUES ($1, $2, true, $3)",
        trigger,
        version_key(old),
        {"trigger_id": trigger, "event_id": old.id, "fired": True},
    )
    matcher.start()
    await matcher.produce([old, new])
    jobs = await matcher.jobs(expect=2)
    assert {j.event.id: j.job_id for j in jobs} == {
        old.id: job_id(trigger, old.id, action),  # as the previous release named it
        new.id: job_id(trigger, version_key(new), action),
    }


async def test_an_edit_clears_what_it_removed_from_every_state_row(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """A condition removed by an edit loses its state in every row, also in rows no
    later event touches, so adding it back starts it afresh (docs/semantics.md, 7)."""
    chain = random_chain()
    rate = {"condition_type": "rate_limit", "field": "count", "operator": ">=", "value": "2",
            "config": {"time_window": "1h", "scope": "agent"}}  # fmt: skip
    trigger = await insert_trigger(db, chain_id=chain, conditions=[rate])
    proc = matcher.start()
    await matcher.produce([feedback(chain, 400, 1, score=50), feedback(chain, 401, 2, score=50)])
    await wait_metric(proc, "erc8004_matcher_events_evaluated_total", 2)
    await wait_all_evaluated(db, 2)

    async def conditions_of(agent: str) -> set[str]:
        state = await db.fetchval(
            "SELECT state_data FROM trigger_state WHERE trigger_id = $1 AND scope_key = $2",
            trigger,
            agent,
        )
        return set(state.get("conditions", {}))

    before = await conditions_of("2")
    assert len(before) == 1
    # another window (plain SQL: the database tells the matcher)
    await db.execute(
        "UPDATE trigger_conditions SET config = $2 WHERE trigger_id = $1",
        trigger,
        {"time_window": "2h", "scope": "agent"},
    )
    deadline = time.monotonic() + 15
    while await conditions_of("2"):
        assert time.monotonic() < deadline, "the edit did not clear agent 2's row"
        await asyncio.sleep(0.2)
    assert await conditions_of("1") == set()


def heartbeat(chain: int, block: int, at: int) -> TickMessage:
    return TickMessage(
        chain_id=chain,
        block_number=block,
        block_hash="0x" + f"{block:064x}",
        timestamp=at,
        ingested_at=datetime.now(UTC),
    )


async def test_an_absence_fires_once_per_silence_on_heartbeats_and_events(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """Agent-scoped silence of 60 s over NewFeedbacks tagged "starred": each silence
    fires once, at the first tick (a heartbeat, or any event of the chain) past its
    deadline, with the silence's last matching event; a redelivery of the whole
    topic to a new consumer group produces the same jobs again, and no new ones."""
    chain = random_chain()
    trigger = await insert_trigger(
        db, chain_id=chain,
        conditions=[
            {"condition_type": "tag_equals", "field": "tag1", "operator": "=", "value": "starred"},
            {"condition_type": "absence", "operator": ">", "value": "60s",
             "config": {"scope": "agent"}},
        ],
    )  # fmt: skip
    t0 = int(time.time()) - 86_400
    a1 = feedback(chain, 100, 5, score=50, timestamp=t0)
    b1 = feedback(chain, 101, 6, score=50, timestamp=t0 + 30)
    other = feedback(chain, 104, 6, score=50, timestamp=t0 + 95, tag="plain")  # ticks only
    a2 = feedback(chain, 106, 5, score=50, timestamp=t0 + 300)
    await store_events(db, [a1, b1, other, a2])
    proc = matcher.start()
    first: list[RetractionMessage | TickMessage | Event] = [a1, b1, heartbeat(chain, 102, t0 + 60)]
    await matcher.produce_keyed(first)  # 60 s exactly: not longer
    await wait_all_evaluated(db, 2)
    later: list[RetractionMessage | TickMessage | Event] = [
        heartbeat(chain, 103, t0 + 61),  # a1's silence: 61 s
        other,  # b1's silence: 65 s; "plain" does not restart it
        heartbeat(chain, 105, t0 + 200),  # nothing new is due
        a2,
        heartbeat(chain, 107, t0 + 360),  # a2's silence: exactly 60 s
        heartbeat(chain, 108, t0 + 361),
    ]
    await matcher.produce_keyed(later)
    jobs = await matcher.jobs(expect=3)
    assert [(j.event.id, j.explain["tick"]["time"]) for j in jobs] == [
        (a1.id, t0 + 61), (b1.id, t0 + 95), (a2.id, t0 + 361),
    ]  # fmt: skip
    assert {j.explain["mode"] for j in jobs} == {"absence"}
    assert [j.explain["scope"] for j in jobs] == ["5", "6", "5"]
    assert jobs[0].job_id == job_id(trigger, version_key(a1), jobs[0].action_id)
    rows = await db.fetch(
        "SELECT scope_key, due_at FROM trigger_state WHERE trigger_id = $1 ORDER BY 1", trigger
    )
    assert [(r["scope_key"], r["due_at"]) for r in rows] == [("5", None), ("6", None)]
    assert metric(proc, "erc8004_matcher_heartbeats_total") == 5
    # Redelivered from the start to a new group: the recorded firings again, no more.
    proc.stop()
    # (one message per batch: a heartbeat's batch holds no event of the scope it fired)
    matcher.start(MATCHER_GROUP=f"again-{uuid.uuid4().hex[:8]}", MATCHER_BATCH_MAX_RECORDS="1")
    again = await matcher.jobs(expect=6)
    assert sorted(j.job_id for j in again) == sorted([j.job_id for j in jobs] * 2)


async def test_a_revocation_ticks_before_it_moves_the_silence_back(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """The revocation of the last matching feedback moves the silence back to the
    feedback before it, already overdue: it fires at the next tick, not at the
    revocation's own (its tick comes first, under the history before it)."""
    chain = random_chain()
    await insert_trigger(
        db, chain_id=chain,
        conditions=[
            {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"},
            {"condition_type": "absence", "operator": ">", "value": "60s",
             "config": {"scope": "agent"}},
        ],
    )  # fmt: skip
    t0 = int(time.time()) - 86_400
    a = feedback(chain, 100, 5, score=50, timestamp=t0, client_address=A, feedback_index=1)
    b = feedback(chain, 101, 5, score=50, timestamp=t0 + 50, client_address=B, feedback_index=1)
    revoked = event(
        chain, 102, 0, event_type="FeedbackRevoked", agent_id=5, client_address=B,
        feedback_index=1, timestamp=t0 + 100,
    )  # fmt: skip
    await store_events(db, [a, b, revoked])
    matcher.start()
    await matcher.produce_keyed([a, b])
    await wait_all_evaluated(db, 2)
    await matcher.produce_keyed([revoked, heartbeat(chain, 103, t0 + 110)])
    jobs = await matcher.jobs(expect=1)
    assert [(j.event.id, j.explain["tick"]["time"]) for j in jobs] == [(a.id, t0 + 110)]


async def test_an_edit_while_no_matcher_runs_moves_the_due_times(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """A cooldown lowered while the matcher was down: on its start the matcher
    rewrites the rows' due times (stored for the old day-long cooldown), so the
    silence fires at the first tick past its deadline, not a day later."""
    chain = random_chain()
    trigger = await insert_trigger(
        db, chain_id=chain, cooldown_seconds=86_400,
        conditions=[{"condition_type": "absence", "operator": ">", "value": "60s",
                     "config": {"scope": "agent"}}],
    )  # fmt: skip
    t0 = int(time.time()) - 3 * 86_400
    a1 = feedback(chain, 100, 5, score=50, timestamp=t0)
    a2 = feedback(chain, 102, 5, score=50, timestamp=t0 + 100)
    await store_events(db, [a1, a2])
    proc = matcher.start()
    await matcher.produce_keyed([a1, heartbeat(chain, 101, t0 + 61), a2])
    first = await matcher.jobs(expect=1)
    assert [j.event.id for j in first] == [a1.id]
    await wait_all_evaluated(db, 3)  # a1, its firing tick, a2
    stored = await db.fetchval(
        "SELECT due_at FROM trigger_state WHERE trigger_id = $1 AND scope_key = '5'", trigger
    )
    assert stored == t0 + 61 + 86_400 - 1
    proc.stop()
    await db.execute("UPDATE triggers SET cooldown_seconds = 60 WHERE id = $1", trigger)
    matcher.start()
    await matcher.produce_keyed([heartbeat(chain, 103, t0 + 200)])
    jobs = await matcher.jobs(expect=2)
    assert [(j.event.id, j.explain["tick"]["time"]) for j in jobs] == [
        (a1.id, t0 + 61), (a2.id, t0 + 200),
    ]  # fmt: skip


async def test_index_survives_losing_its_listen_connection(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """A PostgreSQL restart drops the LISTEN connection: the matcher reconnects,
    resyncs, and keeps following trigger changes."""
    chain = random_chain()
    user = await insert_user(db)
    proc = matcher.start(MATCHER_RESYNC_INTERVAL="60")
    cond = [{"condition_type": "agent_id_equals", "operator": "=", "value": "1"}]
    await insert_trigger(db, user_id=user, chain_id=chain, conditions=cond)
    await wait_metric(proc, "erc8004_matcher_index_triggers", 1, within=10)
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'erc8004-matcher-listen' AND datname = current_database()"
    )
    assert killed == 1
    await asyncio.sleep(0.5)
    await insert_trigger(db, user_id=user, chain_id=chain, conditions=cond)
    await wait_metric(proc, "erc8004_matcher_index_triggers", 2, within=15)
    await insert_trigger(db, user_id=user, chain_id=chain, conditions=cond)
    await wait_metric(proc, "erc8004_matcher_index_triggers", 3, within=5)


def retraction_of(chain: int, from_block: int, replaced: Iterable[str]) -> RetractionMessage:
    """The retraction of a reorg from ``from_block`` on that replaced these versions."""
    return RetractionMessage(
        kind="retraction",
        chain_id=chain,
        from_block=from_block,
        to_block=None,
        reorg_id="r1",
        created_at=datetime.now(UTC),
        event_keys=tuple(replaced),
    )


async def produce_raw(bootstrap: str, topic: str, value: bytes, *, partitions: list[int]) -> None:
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for p in partitions:
            await producer.send_and_wait(topic, value, key=b"r", partition=p)
    finally:
        await producer.stop()


#: The stateful triggers of the crash and replica tests (insert_trigger's arguments).
STATEFUL: list[dict[str, Any]] = [
    {"conditions": [
        {"condition_type": "ema_threshold", "field": "score", "operator": "<",
         "value": "45", "config": {"window_size": 5, "scope": "agent", "hysteresis": "5"}},
    ]},
    {"conditions": [
        {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"},
        {"condition_type": "rate_limit", "field": "count", "operator": ">=", "value": "4",
         "config": {"time_window": "1m", "scope": "agent", "reset_on_trigger": True}},
    ], "cooldown_seconds": 30},
    # trigger-scope state next to agent-scope state: exact only in chain order
    {"conditions": [
        {"condition_type": "ema_threshold", "field": "score", "operator": "<",
         "value": "50", "config": {"alpha": "0.3", "hysteresis": "3"}},
        {"condition_type": "rate_limit", "field": "count", "operator": ">=", "value": "3",
         "config": {"time_window": "30s", "scope": "agent"}},
    ]},
]  # fmt: skip


async def stateful_setup(db: asyncpg.Connection, chain: int) -> list[str]:
    """The STATEFUL triggers on ``chain``, of one new user."""
    user = await insert_user(db)
    return [await insert_trigger(db, user_id=user, chain_id=chain, **t) for t in STATEFUL]


AGENTS = range(1, 11)


def stream_of(chain: int, n: int) -> list[Event]:
    rng = random.Random(chain)
    ts = int(time.time()) - 7200
    out = []
    for i in range(n):
        ts += rng.choice((1, 2, 5, 20))
        out.append(
            feedback(chain, 1000 + i, rng.choice(AGENTS), score=rng.randrange(0, 101), timestamp=ts)
        )
    return out


async def reference(
    db: asyncpg.Connection, trigger_ids: list[str], events: list[Event]
) -> tuple[dict[Any, Any], set[str]]:
    """A clean replay in memory, in chain order (what the topic's chain key preserves)."""
    rows = await queries.list_triggers_by_id(db, trigger_ids)
    triggers = [compile_trigger(r) for r in sorted(rows, key=lambda r: trigger_ids.index(r["id"]))]
    index = TriggerIndex(t for t in triggers if t is not None)
    states: dict[Any, Any] = {}
    fired: set[str] = set()
    for e in events:
        for trig in index.candidates(e):
            keys = scope_keys(trig, e)
            out = evaluate(trig, e, states={k: states.get((trig.id, k), {}) for k in keys})
            for k in keys:
                states[(trig.id, k)] = out.states[k]
            if out.fired:
                fired.update(job_id(trig.id, version_key(e), a.id) for a in trig.actions)
    return states, fired


async def stored_states(db: asyncpg.Connection, trigger_ids: list[str]) -> dict[Any, Any]:
    rows = await db.fetch(
        "SELECT trigger_id, scope_key, state_data FROM trigger_state WHERE trigger_id = any($1)",
        trigger_ids,
    )
    return {(r["trigger_id"], r["scope_key"]): r["state_data"] for r in rows}


async def wait_all_evaluated(db: asyncpg.Connection, expected: int, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while (n := await db.fetchval("SELECT count(*) FROM trigger_evaluations")) < expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {n} of {expected} evaluations")
        await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.serial  # needs 600 evaluations before the producer ends
async def test_kill_9_mid_stream_state_equals_clean_replay(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    chain = random_chain()
    triggers = await stateful_setup(db, chain)
    events = stream_of(chain, 3000)
    proc = matcher.start()

    # the stream keeps coming across the crash
    producing = asyncio.create_task(matcher.produce_slowly(events, 150))
    await wait_metric(proc, "erc8004_matcher_events_evaluated_total", 600)
    proc.kill()
    killed_at = await db.fetchval("SELECT count(*) FROM trigger_evaluations")
    assert not producing.done(), "the kill came after the stream ended"
    matcher.start()
    await producing
    assert killed_at < 3 * len(events)
    await wait_all_evaluated(db, 3 * len(events))
    want_states, want_jobs = await reference(db, triggers, events)
    assert await stored_states(db, triggers) == want_states
    jobs = await matcher.jobs(expect=len(want_jobs))
    assert {j.job_id for j in jobs} == want_jobs  # every firing owed, none invented


@pytest.mark.slow
async def test_two_replicas_give_the_results_of_one(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    chains = chains_over_partitions(3)  # the topic fixture's partitions
    triggers = [t for chain in chains for t in await stateful_setup(db, chain)]
    streams = [stream_of(chain, 700) for chain in chains]
    events = [e for group in zip(*streams, strict=True) for e in group]  # chains interleaved
    one = matcher.start()
    two = matcher.start()
    # Spread over seconds, so the group has rebalanced onto both long before the end.
    await matcher.produce_slowly(events, 100, pause=0.3)
    await wait_all_evaluated(db, 3 * len(events))
    name = "erc8004_matcher_events_evaluated_total"
    assert metric(one, name) > 0, "the first replica got no partition"
    assert metric(two, name) > 0, "the second replica got no partition"
    assert metric(one, name) + metric(two, name) >= len(events)
    want_states, want_jobs = await reference(db, triggers, events)
    assert await stored_states(db, triggers) == want_states
    jobs = await matcher.jobs(expect=len(want_jobs))
    assert {j.job_id for j in jobs} == want_jobs
    assert len(jobs) == len(want_jobs), "two replicas produced a firing twice"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LOCAL_DB", "1" if "DATABASE_URL" not in os.environ else "0") != "1",
    reason="crashes the local cluster; an external one is not ours",
)
@pytest.mark.serial  # stops PostgreSQL
async def test_postgres_crash_mid_stream_state_equals_clean_replay(
    database_url: str, matcher: Matching
) -> None:
    """The database crashes (no checkpoint) under a running matcher: its batches
    fail and are redelivered; after recovery the state equals a clean replay and
    every owed job was produced."""
    chain = random_chain()
    db = await asyncpg.connect(database_url)
    await register_codecs(db)
    try:
        triggers = await stateful_setup(db, chain)
    finally:
        await db.close()
    events = stream_of(chain, 2000)
    proc = matcher.start()

    # ~8 s: the stream goes on across the crash
    producing = asyncio.create_task(matcher.produce_slowly(events, 50))
    await wait_metric(proc, "erc8004_matcher_events_evaluated_total", 200)
    postgres = ROOT / "deploy" / "local" / "postgres.sh"
    stop_env = {**os.environ, "PG_STOP_MODE": "immediate"}
    await asyncio.to_thread(subprocess.run, [str(postgres), "stop"], check=True, env=stop_env)
    try:
        await asyncio.sleep(2)
        stream_went_on = not producing.done()
    finally:
        await asyncio.to_thread(subprocess.run, [str(postgres), "start"], check=True)
    assert stream_went_on, "the crash came after the stream ended"
    await producing
    db = await asyncpg.connect(database_url)
    await register_codecs(db)
    try:
        await wait_all_evaluated(db, 3 * len(events), within=120)
        want_states, want_jobs = await reference(db, triggers, events)
        assert await stored_states(db, triggers) == want_states
    finally:
        await db.close()
    jobs = await matcher.jobs(expect=len(want_jobs))
    assert {j.job_id for j in jobs} == want_jobs
    assert "batch failed; it will be redelivered" in proc.log_text(), "no batch met the crash"


async def test_the_programs_built_by_a_batch_are_frozen_after_it(
    db: asyncpg.Connection, matcher: Matching
) -> None:
    """Between batches, once MATCHER_SETTLE_EVERY programs were built (here one), the
    matcher collects and freezes them: the frozen objects grow after the batch that
    compiled the trigger, and not before."""
    chain = random_chain()
    proc = matcher.start(MATCHER_SETTLE_EVERY="1")
    await insert_trigger(
        db,
        chain_id=chain,
        conditions=[{"condition_type": "agent_id_equals", "operator": "=", "value": "77"}],
    )
    await wait_metric(proc, "erc8004_matcher_index_triggers", 1, within=10)
    before = metric(proc, "erc8004_matcher_gc_frozen_objects_total")
    assert before > 0  # the start's heap
    await asyncio.sleep(1)
    assert metric(proc, "erc8004_matcher_gc_frozen_objects_total") == before  # nothing built yet
    await matcher.produce([feedback(chain, 10, 77, score=1)])
    await wait_metric(proc, "erc8004_matcher_events_evaluated_total", 1)
    deadline = time.monotonic() + 10
    while metric(proc, "erc8004_matcher_gc_frozen_objects_total") <= before:
        assert time.monotonic() < deadline, "the program built was not frozen"
        await asyncio.sleep(0.1)
    assert len(await matcher.jobs(expect=1)) == 1
