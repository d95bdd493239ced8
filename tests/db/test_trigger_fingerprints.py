"""A trigger's fingerprint, which the matcher's resync compares, is the versions of
its rows (the trigger's, its conditions', its actions'): every change to any of
them changes it, whoever makes it, and only the trigger changed; vacuum (freeze,
full) leaves it. The three queries that read it (every trigger, by id, by pages)
give the same value for the same trigger, so a resync after a load reads nothing
again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from services.matcher import queries
from tests.matcherutil import NEW_FEEDBACK, insert_trigger, random_chain

pytestmark = [pytest.mark.db]

TWO_CONDITIONS = [
    *NEW_FEEDBACK,
    {"condition_type": "score_threshold", "field": "score", "operator": "<", "value": "10"},
]
TWO_ACTIONS = [
    {"action_type": "rest", "config": {"url": "http://127.0.0.1:9/a", "method": "POST"}},
    {"action_type": "rest", "config": {"url": "http://127.0.0.1:9/b", "method": "POST"}},
]


async def _by_id(db: asyncpg.Connection, ids: list[str]) -> dict[str, int]:
    rows = await queries.list_triggers_by_id(db, ids)
    return {r["id"]: queries.fingerprint(r["fp"]) for r in rows}


async def _by_pages(db: asyncpg.Connection) -> dict[str, int]:
    out: dict[str, int] = {}
    after = ""
    while rows := await queries.list_triggers_after(db, after, 2):
        out.update((r["id"], queries.fingerprint(r["fp"])) for r in rows)
        after = rows[-1]["id"]
    return out


async def _without_actions(db: asyncpg.Connection, trigger_id: str) -> str:
    await db.execute("DELETE FROM trigger_actions WHERE trigger_id = $1", trigger_id)
    return trigger_id


async def _make(db: asyncpg.Connection) -> dict[str, str]:
    chain = random_chain()
    return {
        "plain": await insert_trigger(db, chain_id=chain, conditions=NEW_FEEDBACK),
        "wide": await insert_trigger(
            db, chain_id=chain, conditions=TWO_CONDITIONS, actions=TWO_ACTIONS
        ),
        "bare": await _without_actions(db, await insert_trigger(db, chain_id=chain, conditions=[])),
        "other": await insert_trigger(db, chain_id=chain, conditions=TWO_CONDITIONS),
    }


async def test_every_query_gives_a_trigger_the_same_fingerprint(db: asyncpg.Connection) -> None:
    made = await _make(db)
    disabled = await insert_trigger(
        db, chain_id=random_chain(), conditions=NEW_FEEDBACK, enabled=False
    )
    every = await queries.trigger_fingerprints(db)
    assert disabled not in every
    ids = list(made.values())
    assert await _by_id(db, ids) == {i: every[i] for i in ids}
    assert await _by_pages(db) == every
    assert len({every[i] for i in ids}) == len(ids)


async def test_each_change_moves_the_changed_triggers_fingerprint_only(
    db: asyncpg.Connection,
) -> None:
    made = await _make(db)
    wide, other = made["wide"], made["other"]
    changes: list[tuple[str, set[str], Callable[[], Awaitable[object]]]] = [
        (
            "the trigger's row",
            {wide},
            lambda: db.execute("UPDATE triggers SET name = 'renamed' WHERE id = $1", wide),
        ),
        (
            "a condition's value",
            {wide},
            lambda: db.execute(
                "UPDATE trigger_conditions SET value = '11'"
                " WHERE trigger_id = $1 AND condition_type = 'score_threshold'",
                wide,
            ),
        ),
        (
            "a condition added",
            {wide},
            lambda: db.execute(
                "INSERT INTO trigger_conditions (trigger_id, condition_type, field, operator,"
                " value, config) VALUES ($1, 'agent_id_equals', 'agent_id', '=', '7', '{}')",
                wide,
            ),
        ),
        (
            "a condition removed",
            {wide},
            lambda: db.execute(
                "DELETE FROM trigger_conditions"
                " WHERE trigger_id = $1 AND condition_type = 'agent_id_equals'",
                wide,
            ),
        ),
        (
            "a condition moved to another trigger",
            {wide, other},
            lambda: db.execute(
                "UPDATE trigger_conditions SET trigger_id = $2 WHERE id ="
                " (SELECT min(id) FROM trigger_conditions WHERE trigger_id = $1)",
                wide,
                other,
            ),
        ),
        (
            "an action's config",
            {wide},
            lambda: db.execute(
                'UPDATE trigger_actions SET config = \'{"url": "http://127.0.0.1:9/c"}\''
                " WHERE id = (SELECT min(id) FROM trigger_actions WHERE trigger_id = $1)",
                wide,
            ),
        ),
        (
            "an action removed",
            {wide},
            lambda: db.execute(
                "DELETE FROM trigger_actions"
                " WHERE id = (SELECT min(id) FROM trigger_actions WHERE trigger_id = $1)",
                wide,
            ),
        ),
        (
            "an action added",
            {other},
            lambda: db.execute(
                "INSERT INTO trigger_actions (trigger_id, action_type, config)"
                " VALUES ($1, 'rest', '{}')",
                other,
            ),
        ),
        (
            "a condition written again as it was",
            {wide},
            lambda: db.execute(
                "UPDATE trigger_conditions SET value = value WHERE trigger_id = $1", wide
            ),
        ),
        (
            "an action written again as it was",
            {other},
            lambda: db.execute(
                "UPDATE trigger_actions SET config = config WHERE trigger_id = $1", other
            ),
        ),
        (
            "a row written again as it was",
            {wide},
            lambda: db.execute("UPDATE triggers SET name = name WHERE id = $1", wide),
        ),
    ]
    for what, moved, change in changes:
        before = await queries.trigger_fingerprints(db)
        rows_before = await _trigger_rows(db)
        await change()
        after = await queries.trigger_fingerprints(db)
        if "written again" in what and "row" not in what:
            # the trigger's own row (its version, its xmin) is untouched: the
            # children's versions alone move the fingerprint
            assert await _trigger_rows(db) == rows_before, what
        assert {i for i in made.values() if before[i] != after[i]} == moved, what
        ids = list(made.values())
        assert await _by_id(db, ids) == {i: after[i] for i in ids}, what


async def _trigger_rows(db: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    rows = await db.fetch("SELECT id, version, xmin::text AS x FROM triggers")
    return {r["id"]: (r["version"], r["x"]) for r in rows}


async def test_vacuum_leaves_the_fingerprints_as_they_were(db: asyncpg.Connection) -> None:
    await _make(db)
    before = await queries.trigger_fingerprints(db)
    for table in ("triggers", "trigger_conditions", "trigger_actions"):
        await db.execute(f"VACUUM (FREEZE) {table}")
        await db.execute(f"VACUUM FULL {table}")
    assert await queries.trigger_fingerprints(db) == before
