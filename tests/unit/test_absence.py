"""Absence conditions in the engine (docs/semantics.md section 5a): silences, ticks,
due times, cooldowns, edits, recomputation; and their validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.contract.events import version_key
from shared.contract.triggers import TriggerCreate
from shared.engine.evaluate import due_at, evaluate, forget_removed, scope_keys, tick
from shared.engine.replay import Replay, scope_order, tick_record, tick_scope
from tests.unit.test_evaluate import BASE, cond, fb, group, revoke, trig

pytestmark = pytest.mark.unit

HOUR = cond("absence", ">", "1h", scope="agent")


def feed(replay: Replay, items: list[Any]) -> list[tuple[str, int | None]]:
    """Events and heartbeats (("hb", time)) through a replay: the firings, as (the
    silence's event version, the tick time)."""
    out: list[tuple[str, int | None]] = []
    for n, item in enumerate(items):
        if isinstance(item, tuple):
            steps = replay.tick(84532, item[1], f"hb:{n}")
        else:
            steps = replay.feed(item)
        for step in steps:
            if step.outcome.fired:
                out.append((version_key(step.event), step.outcome.explain["tick"]["time"]))
    return out


def test_a_silence_fires_once_at_the_first_tick_past_its_deadline() -> None:
    t = trig(HOUR)
    first = fb(1, ts=BASE)
    fired = feed(Replay(t), [first, ("hb", BASE + 3600), ("hb", BASE + 3601), ("hb", BASE + 9000)])
    assert fired == [(version_key(first), BASE + 3601)]  # strictly later, and once


def test_a_matching_event_fires_the_silence_it_ends_then_starts_another() -> None:
    t = trig(HOUR)
    a, b = fb(1, ts=BASE), fb(2, ts=BASE + 4000)
    fired = feed(Replay(t), [a, b, ("hb", BASE + 4000 + 3601)])
    assert fired == [(version_key(a), BASE + 4000), (version_key(b), BASE + 7601)]


def test_events_failing_the_gate_tick_but_do_not_restart_the_silence() -> None:
    t = trig(cond("score_threshold", ">=", "50"), HOUR)
    good, low = fb(1, 90, ts=BASE), fb(2, 10, ts=BASE + 1800)
    fired = feed(Replay(t), [good, low, fb(3, 5, ts=BASE + 3700)])
    assert fired == [(version_key(good), BASE + 3700)]


def test_scopes_are_per_agent_and_no_event_means_no_silence() -> None:
    t = trig(HOUR)
    a, b = fb(1, ts=BASE, agent_id=1), fb(2, ts=BASE + 1000, agent_id=2)
    fired = feed(Replay(t), [("hb", BASE + 10_000), a, b, ("hb", BASE + 3601), ("hb", BASE + 4601)])
    assert fired == [(version_key(a), BASE + 3601), (version_key(b), BASE + 4601)]


def test_a_trigger_scoped_silence_ends_with_any_agents_event() -> None:
    t = trig(cond("absence", ">", "1h"))
    a, b = fb(1, ts=BASE, agent_id=1), fb(2, ts=BASE + 1000, agent_id=2)
    assert feed(Replay(t), [a, b, ("hb", BASE + 3601), ("hb", BASE + 4601)]) == [
        (version_key(b), BASE + 4601)
    ]


def test_a_cooldown_keeps_the_silence_due_until_it_ends() -> None:
    t = trig(cond("absence", ">", "60s"), cooldown=1000)
    a, b = fb(1, ts=BASE), fb(2, ts=BASE + 100)
    # a fires at BASE+100 (b's tick); b's silence is due at BASE+160 but the
    # cooldown runs to BASE+1100
    fired = feed(Replay(t), [a, b, ("hb", BASE + 500), ("hb", BASE + 1099), ("hb", BASE + 1100)])
    assert fired == [(version_key(a), BASE + 100), (version_key(b), BASE + 1100)]


def test_due_at_follows_the_state_and_an_edit_of_the_duration_drops_the_silence() -> None:
    t = trig(HOUR)
    e = fb(1, ts=BASE, agent_id=7)
    out = evaluate(t, e, states=dict.fromkeys(scope_keys(t, e)))
    row = out.states["7"]
    assert not out.fired
    assert row["due_at"] == BASE + 3600 == due_at(t, row)
    assert not tick(t, "7", row, BASE + 3600, "hb").fired
    fired = tick(t, "7", row, BASE + 3601, "hb")
    assert fired.fired
    assert "due_at" not in fired.states["7"]
    assert fired.explain["deadline"] == BASE + 3600
    assert fired.explain["scope"] == "7"
    longer = trig(cond("absence", ">", "2h", scope="agent"))
    assert forget_removed(longer, row) == {}
    assert forget_removed(trig(HOUR, cooldown=10), row)["due_at"] == BASE + 3600


def test_a_revocation_of_the_last_feedback_moves_the_silence_back() -> None:
    t = trig(cond("event_type_equals", "=", "NewFeedback"), HOUR)
    a = fb(1, ts=BASE, feedback_index=1)
    b = fb(2, ts=BASE + 3000, feedback_index=2)
    kept = feed(Replay(t), [a, b, revoke(3, 1, ts=BASE + 3500), ("hb", BASE + 3601)])
    assert kept == []  # a revoked: the silence still starts at b
    moved = feed(Replay(t), [a, b, revoke(3, 2, ts=BASE + 3500), ("hb", BASE + 3601)])
    assert moved == [(version_key(a), BASE + 3601)]


def test_a_retraction_of_the_last_matching_event_makes_the_earlier_silence_due() -> None:
    t = trig(HOUR)
    replay = Replay(t)
    a, b = fb(1, ts=BASE), fb(2, ts=BASE + 3000)
    assert feed(replay, [a, b, ("hb", BASE + 3700)]) == []
    replay.retract(84532, [version_key(b)])
    assert feed(replay, [("hb", BASE + 3701)]) == [(version_key(a), BASE + 3701)]


def test_a_recomputation_keeps_a_firing_tick_and_finds_no_new_one() -> None:
    t = trig(HOUR)
    replay = Replay(t)
    a, b, c = fb(1, ts=BASE), fb(2, ts=BASE + 5000), fb(3, ts=BASE + 5100)
    assert feed(replay, [a, b, c]) == [(version_key(a), BASE + 5000)]
    replay.retract(84532, [version_key(b)])
    # a's firing at b's tick stands (ticks stay); c's silence is not due yet
    assert [r.key for r in replay._records if r.tick is not None] == [
        tick_record("42", version_key(b))
    ]
    assert feed(replay, [("hb", BASE + 5100 + 3601)]) == [(version_key(c), BASE + 8701)]


@pytest.mark.parametrize(
    ("conditions", "where"),
    [
        ([HOUR, HOUR], "conditions.1"),
        ([HOUR, cond("rate_limit", ">=", "3", time_window="1h")], "conditions.1.condition_type"),
        (
            [HOUR, group("any", cond("ema_threshold", "<", "4", window_size=3))],
            "conditions.1.config.conditions.0.condition_type",
        ),
        ([group("all", HOUR)], "conditions.0.config.conditions.0"),
    ],
)
def test_where_an_absence_may_stand(conditions: list[dict[str, Any]], where: str) -> None:
    body = {
        "name": "n",
        "chain_id": 84532,
        "registry": "reputation",
        "conditions": conditions,
        "actions": [{"action_type": "rest", "config": {"url": "https://example.com/h"}}],
    }
    with pytest.raises(ValidationError) as info:
        TriggerCreate.model_validate(body)
    assert where in [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    body["conditions"] = [cond("score_threshold", ">", "5"), HOUR]
    assert TriggerCreate.model_validate(body).is_stateful


def test_an_edit_of_the_cooldown_moves_the_due_time_of_every_row() -> None:
    """The matcher rewrites the rows of an edited trigger when its state signature
    changes: for an absence trigger the cooldown is part of it (due_at counts it)."""
    slow, quick = trig(HOUR, cooldown=7200), trig(HOUR, cooldown=60)
    assert slow.state_signature != quick.state_signature
    rows: dict[str, Any] = {}
    for e in (fb(1, ts=BASE), fb(2, ts=BASE + 3700)):  # fires at the second, restarts
        for key, row in rows.items():
            rows[key] = tick(slow, key, row, e.timestamp, version_key(e)).states[key]
        rows.update(evaluate(slow, e, states={k: rows.get(k) for k in scope_keys(slow, e)}).states)
    assert rows["42"]["last_fired_at"] == BASE + 3700
    assert rows["42"]["due_at"] == BASE + 3700 + 7199
    assert forget_removed(quick, rows["42"])["due_at"] == BASE + 3700 + 3600
    plain = trig(cond("score_threshold", ">", "5"), cooldown=60)
    assert (
        plain.state_signature
        == trig(cond("score_threshold", ">", "5"), cooldown=70).state_signature
    )


def test_a_tick_records_scope_is_read_back_whole_for_agents_of_named_registries() -> None:
    """A firing tick's record names its scope row: with agents of named Identity
    registries (``0x…/7``) the row must come back whole, or a redelivered tick fires
    the silence again (the live differential test caught it with ':' in the row)."""
    registry = "0x" + "ab" * 20
    for scope in ("", "7", f"{registry}/7"):
        for key in ("hb:1-20@0x" + "cd" * 32, "1-20-3@0x" + "ef" * 32):
            assert tick_scope(tick_record(scope, key)) == scope
    rows = [f"{registry}/2", "", "3", f"{registry}/10", "0x" + "00" * 20 + "/99"]
    assert sorted(rows, key=scope_order) == [
        "",
        "3",
        "0x" + "00" * 20 + "/99",
        f"{registry}/2",
        f"{registry}/10",
    ]
