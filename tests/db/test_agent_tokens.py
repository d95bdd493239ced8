"""The dispatcher's read of an agent's MCP token (services/dispatcher/store.py) when
two Identity registries of a chain hold an agent of the same id (issue 15): the
token of the job's agent's own registry first, else one set without a registry,
and either only while its setter owns that registry's agent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.dispatcher.store import PgJobStore
from shared.platform.db import create_pool
from tests.apiutil import an_event, store_events

pytestmark = pytest.mark.db

CHAIN = 84532
OLD, NEW = "0x" + "01" * 20, "0x" + "02" * 20
ALICE, BOB = "0x" + "a1" * 20, "0x" + "b0" * 20


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PgJobStore]:
    pool = await create_pool(
        database_url,
        role="erc8004_dispatcher",
        application_name="test-agent-tokens",
        min_size=1,
        max_size=2,
    )
    try:
        yield PgJobStore(pool)
    finally:
        await pool.close()


async def token(db: asyncpg.Connection, registry: str, owner: str, text: str) -> None:
    await db.execute(
        "INSERT INTO agent_mcp_tokens (chain_id, agent_id, agent_registry, token_ciphertext,"
        " owner_address) VALUES ($1, 5, $2, $3, $4)",
        CHAIN,
        registry,
        text.encode(),
        owner,
    )


async def test_an_agents_token_is_read_in_its_own_registry(
    db: asyncpg.Connection, store: PgJobStore
) -> None:
    await store_events(
        db,
        [
            an_event(CHAIN, 10, event_type="Registered", agent_id=5, owner=ALICE,
                     registry_address=OLD),
            an_event(CHAIN, 11, event_type="Registered", agent_id=5, owner=BOB,
                     registry_address=NEW),
        ],
    )  # fmt: skip
    await token(db, "", ALICE, "unnamed")
    await token(db, NEW, BOB, "bobs")

    mine = await store.agent_token(CHAIN, 5, NEW)
    assert mine is not None
    assert (mine.ciphertext, mine.agent_registry) == (b"bobs", NEW)
    # the old registry's agent: no token of its own, so the unnamed one, set by its owner
    old = await store.agent_token(CHAIN, 5, OLD)
    assert old is not None
    assert (old.ciphertext, old.agent_registry) == (b"unnamed", "")
    # a job whose event names no registry: the newest owner of any agent 5 is bob's,
    # so alice's unnamed token does not go
    assert await store.agent_token(CHAIN, 5, None) is None
    await db.execute("DELETE FROM agent_mcp_tokens WHERE agent_registry = $1", NEW)
    assert await store.agent_token(CHAIN, 5, NEW) is None  # alice's token is not bob's
