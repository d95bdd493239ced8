"""A backtest gives exactly the firings the live matcher produces for the same events:
triggers made through the API, events stored (for the backtest) and produced to
Kafka (for a matcher running as its own process)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.api.backtest import run_backtest, unsaved_spec
from services.api.models import BacktestIn
from shared.contract.events import Event, version_key
from shared.contract.jobs import ActionJob
from shared.contract.triggers import TriggerCreate
from tests.apiutil import Client, an_event, api_client, link_chat, signup, store_events
from tests.connected.test_engine_live import draw_cases, remap, until_first_edit
from tests.engine_strategies import CHAINS
from tests.kafkautil import read_topic
from tests.matcherutil import Matching, random_chain
from tests.reference import reference_firings

pytestmark = [pytest.mark.db, pytest.mark.kafka]

TELEGRAM = {"action_type": "telegram", "config": {"chat_id": "1", "message_template": "x"}}


def triggers(chain: int) -> dict[str, dict[str, Any]]:
    def trigger(name: str, conditions: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        return {"name": name, "chain_id": chain, "registry": "reputation",
                "conditions": conditions, "actions": [TELEGRAM], **kw}  # fmt: skip

    return {
        "ema": trigger("ema", [
            {"condition_type": "ema_threshold", "operator": "<", "value": "45",
             "config": {"window_size": 5, "scope": "agent", "hysteresis": "5"}},
        ]),
        "rate": trigger("rate", [
            {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"},
            {"condition_type": "rate_limit", "operator": ">=", "value": "4",
             "config": {"time_window": "1m", "scope": "agent", "reset_on_trigger": True}},
        ], cooldown_seconds=30),
        "score": trigger("score", [
            {"condition_type": "score_threshold", "operator": ">", "value": "90"},
        ]),
        "group": trigger("group", [
            {"condition_type": "group", "operator": "any", "config": {"conditions": [
                {"condition_type": "agent_id_equals", "operator": "=", "value": "3"},
                {"condition_type": "score_threshold", "operator": "<", "value": "5"},
            ]}},
        ]),
    }  # fmt: skip


def history(chain: int, n: int) -> list[Event]:
    rng = random.Random(chain)
    ts = int(time.time()) - 6 * 3600
    out = []
    for i in range(n):
        ts += rng.choice((1, 2, 5, 20))
        out.append(
            an_event(
                chain,
                1000 + i,
                event_type="NewFeedback",
                agent_id=rng.randrange(1, 8),
                timestamp=ts,
                score=rng.randrange(0, 101),
            )
        )
    return out


@pytest.fixture
async def client(database_url: str, kafka_bootstrap: str) -> AsyncIterator[Client]:
    async with api_client(database_url, kafka_bootstrap) as client:
        yield client


async def test_backtest_fires_exactly_where_the_live_matcher_fires(
    client: Client, db: asyncpg.Connection, matcher: Matching
) -> None:
    chain = random_chain()
    auth = await signup(client)
    await link_chat(db, auth, "1")
    ids: dict[str, str] = {}
    for name, body in triggers(chain).items():
        resp = await client.post("/v1/triggers", json=body, headers=auth)
        assert resp.status == 201, await resp.text()
        ids[name] = (await resp.json())["id"]
    events = history(chain, 600)
    await store_events(db, events)

    matcher.start(MATCHER_BATCH_MAX_RECORDS="100")
    await matcher.produce(events)

    # the backtest, meanwhile, over the same stored events
    first, last = events[0].block_time, events[-1].block_time
    window = {"from": first.isoformat(), "to": (last + timedelta(seconds=1)).isoformat()}
    backtests: dict[str, dict[str, Any]] = {}
    for name, tid in ids.items():
        resp = await client.post(f"/v1/triggers/{tid}/backtest", json=window, headers=auth)
        assert resp.status == 200, await resp.text()
        backtests[name] = await resp.json()
        assert backtests[name]["events_scanned"] == len(events)
        assert not backtests[name]["truncated"]
    expected_jobs = sum(b["fired"] for b in backtests.values())
    assert all(b["fired"] > 0 for b in backtests.values()), {
        k: b["fired"] for k, b in backtests.items()
    }
    assert all(b["fired"] < len(events) for b in backtests.values())

    deadline = time.monotonic() + 90
    while await db.fetchval("SELECT count(*) FROM trigger_evaluations") < 2 * len(events):
        assert time.monotonic() < deadline, "the matcher did not evaluate every event"
        await asyncio.sleep(0.3)
    records = await read_topic(
        matcher.bootstrap, matcher.actions_topic, expect=expected_jobs, settle=2.0
    )
    live: dict[str, list[str]] = {tid: [] for tid in ids.values()}
    for record in records:
        job = ActionJob.parse(record.value)
        live[job.trigger_id].append(job.event.id)

    by_id = {e.id: e for e in events}
    for name, tid in ids.items():
        fired = [f["event_id"] for f in backtests[name]["firings"]]
        assert sorted(live[tid]) == sorted(fired), name
        assert len(fired) == backtests[name]["fired"]
        # the firings come in chain order, with the explain blocks of the first ones
        assert fired == sorted(fired, key=lambda i: by_id[i].block_number)
        explains = backtests[name]["explains"]
        assert len(explains) == min(10, len(fired))
        assert [x["event_id"] for x in explains] == fired[: len(explains)]
    # for stateful triggers the matcher records each firing's explain: the same
    for name in ("ema", "rate"):
        tid = ids[name]
        for explain in backtests[name]["explains"]:
            recorded = await db.fetchval(
                "SELECT explain FROM trigger_evaluations WHERE trigger_id = $1 AND event_id = $2",
                tid,
                version_key(by_id[explain["event_id"]]),
            )
            assert recorded == explain, name

    # an unsaved trigger body gives the same answer as the stored trigger
    body = {**window, "trigger": triggers(chain)["rate"]}
    resp = await client.post("/v1/triggers/backtest", json=body, headers=auth)
    assert resp.status == 200, await resp.text()
    unsaved = await resp.json()
    assert unsaved["trigger_id"] is None
    assert unsaved["firings"] == backtests["rate"]["firings"]

    # a range holding nothing fires nothing; a cap stops the scan and says so
    empty = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}
    resp = await client.post(f"/v1/triggers/{ids['score']}/backtest", json=empty, headers=auth)
    assert (await resp.json())["events_scanned"] == 0
    bad = {"from": window["to"], "to": window["from"]}
    resp = await client.post(f"/v1/triggers/{ids['score']}/backtest", json=bad, headers=auth)
    assert resp.status == 422
    assert datetime.fromisoformat(backtests["score"]["from"]) == first.astimezone(UTC)


async def test_backtest_fires_exactly_where_the_reference_does(
    client: Client, db: asyncpg.Connection
) -> None:
    """The backtest (the API over stored canonical events) against the reference
    evaluator written from docs/semantics.md (tests/reference.py), on random triggers
    and histories (tests/engine_strategies.py): a backtest reads what is canonical, so
    the reference gets the same history with the replaced versions left out."""
    auth = await signup(client)
    await link_chat(db, auth, "1")
    base = random.randrange(10_000_000, 2**31 - 100_000)
    checked = fired = 0
    for n, case in enumerate(draw_cases(80, seed=base)):
        chains = {c: base + 2 * n + i for i, c in enumerate(CHAINS)}
        trigger, steps = remap(case, chains)
        steps = until_first_edit(steps)
        replaced = {key for kind, payload in steps if kind == "retract" for key in payload}
        canonical = [
            payload
            for kind, payload in steps
            if kind == "event" and version_key(payload) not in replaced
        ]
        if not canonical:
            continue
        await store_events(db, canonical)
        expected = reference_firings(trigger, [("event", e) for e in canonical])
        times = [e.block_time for e in canonical]
        body = {
            "trigger": {**trigger, "name": f"case {n}", "actions": [TELEGRAM]},
            "from": min(times).isoformat(),
            "to": (max(times) + timedelta(seconds=1)).isoformat(),
        }
        resp = await client.post("/v1/triggers/backtest", json=body, headers=auth)
        assert resp.status == 200, await resp.text()
        result = await resp.json()
        assert not result["truncated"]
        by_version = {version_key(e): e.id for e in canonical}
        assert [f["event_id"] for f in result["firings"]] == [by_version[v] for v in expected], (
            n,
            trigger,
        )
        checked += 1
        fired += len(expected)
    assert checked >= 50
    assert fired >= 5, "the draw should fire now and then"


async def test_an_absence_backtest_ticks_on_the_chains_events_and_heartbeats(
    client: Client, db: asyncpg.Connection
) -> None:
    """An absence trigger's backtest reads every event of its chain (any registry) and
    the chain's stored heartbeats as ticks, in chain order (a heartbeat after the
    events of its block), and fires where the reference evaluator does."""
    auth = await signup(client)
    await link_chat(db, auth, "1")
    chain = random_chain(10_000_000)
    rng = random.Random(chain)
    ts = int(time.time()) - 6 * 3600
    steps: list[tuple[str, Any]] = []
    events: list[Event] = []
    beats: list[tuple[int, int, str, datetime]] = []
    for block in range(2000, 2120):
        ts += rng.choice((5, 20, 40, 90))
        kind = rng.random()
        if kind < 0.2:  # a heartbeat: no registry event in this block
            block_hash = "0x" + f"{block:064x}"
            beats.append((chain, block, block_hash, datetime.fromtimestamp(ts, UTC)))
            steps.append(("tick", (chain, ts)))
            continue
        registry_event = (
            an_event(chain, block, event_type="NewFeedback", agent_id=rng.randrange(1, 4),
                     timestamp=ts, score=rng.randrange(0, 101))
            if kind < 0.8
            else an_event(chain, block, event_type="Registered", agent_id=9, timestamp=ts)
        )  # fmt: skip
        events.append(registry_event)
        steps.append(("event", registry_event))
    await store_events(db, events)
    await db.executemany(
        "INSERT INTO heartbeats (chain_id, block_number, block_hash, block_time)"
        " VALUES ($1, $2, $3, $4)",
        beats,
    )
    trigger = {
        "name": "silent agents",
        "chain_id": chain,
        "registry": "reputation",
        "cooldown_seconds": 100,
        "conditions": [
            {"condition_type": "score_threshold", "operator": ">=", "value": "30"},
            {"condition_type": "absence", "operator": ">", "value": "2m",
             "config": {"scope": "agent"}},
        ],
        "actions": [TELEGRAM],
    }  # fmt: skip
    expected = reference_firings({**trigger, "conditions": trigger["conditions"]}, steps)
    body = {
        "trigger": trigger,
        "from": min([events[0].block_time, *(b[3] for b in beats)]).isoformat(),
        "to": (datetime.fromtimestamp(ts, UTC) + timedelta(seconds=1)).isoformat(),
        "explain_limit": 100,
    }
    resp = await client.post("/v1/triggers/backtest", json=body, headers=auth)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["events_scanned"] == len(events)  # the Registered events too
    assert result["heartbeats_scanned"] == len(beats)
    by_version = {version_key(e): e.id for e in events}
    assert len(expected) >= 3, "the history should have silences"
    assert [f["event_id"] for f in result["firings"]] == [by_version[v] for v in expected]
    assert {x["mode"] for x in result["explains"]} == {"absence"}
    # heartbeats count in the scan budget: a quiet chain cannot run a backtest long
    spec = unsaved_spec(TriggerCreate.model_validate(trigger), user_id="u")
    window = BacktestIn.model_validate({k: body[k] for k in ("from", "to")})
    async with db.transaction():
        short = await run_backtest(
            db, spec, window, trigger_id=None, max_events=30, time_limit=10.0
        )
    assert short.truncated
    assert short.events_scanned + short.heartbeats_scanned == 30
    assert short.heartbeats_scanned > 0
