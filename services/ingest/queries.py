"""Ingest's SQL: one function per statement group, transactions opened by callers
unless the function is itself the unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.db import Conn
from shared.events import EVENT_COLUMNS, Event, event_row
from shared.jobs import EventMessage, ReorgIn, RetractionMessage, dump_message
from shared.topics import EVENTS, event_key

#: pg_try_advisory_xact_lock key that serialises relay batches across replicas,
#: so messages reach Kafka in outbox order (per key) whoever relays them.
RELAY_LOCK = 8004_0001

OUTBOX_COLUMNS = ("topic", "msg_key", "payload")


@dataclass(frozen=True)
class Stored:
    accepted: list[Event]
    duplicates: list[Event]


async def store_events(conn: Conn, events: Sequence[Event], *, topic: str = EVENTS) -> Stored:
    """Store the events not seen before, their outbox messages and the chains'
    checkpoints, in one transaction. Ids are claimed in sorted order so that
    concurrent posters of overlapping batches wait on each other, never deadlock."""
    first: dict[str, Event] = {}
    for event in events:
        first.setdefault(event.id, event)
    ids = sorted(first)
    async with conn.transaction():
        rows = await conn.fetch(
            """
            INSERT INTO event_ids (id, block_time)
            SELECT id, block_time FROM unnest($1::text[], $2::timestamptz[]) AS t(id, block_time)
            ORDER BY id
            ON CONFLICT (id) DO NOTHING
            RETURNING id, now() AS ingested_at
            """,
            ids,
            [first[i].block_time for i in ids],
        )
        new_ids = {r["id"] for r in rows}
        # Input order (the indexers' chain order) for the events and their messages.
        accepted = [e for i, e in first.items() if i in new_ids]
        if accepted:
            ingested_at = rows[0]["ingested_at"]  # now(): the transaction's time, as created_at
            await conn.copy_records_to_table(
                "events", records=[event_row(e) for e in accepted], columns=list(EVENT_COLUMNS)
            )
            await conn.copy_records_to_table(
                "event_outbox",
                records=[
                    (
                        topic,
                        event_key(e.chain_id, e.agent_id).decode(),
                        dump_message(EventMessage(kind="event", event=e, ingested_at=ingested_at)),
                    )
                    for e in accepted
                ],
                columns=list(OUTBOX_COLUMNS),
            )
        await _advance_checkpoints(conn, events)
    accepted_ids = {id(e) for e in accepted}
    duplicates = [e for e in events if id(e) not in accepted_ids]
    return Stored(accepted=accepted, duplicates=duplicates)


async def _advance_checkpoints(conn: Conn, events: Sequence[Event]) -> None:
    """The highest block seen per chain; never moves backwards."""
    top: dict[int, Event] = {}
    for event in events:
        best = top.get(event.chain_id)
        if best is None or event.block_number > best.block_number:
            top[event.chain_id] = event
    chains = sorted(top)
    await conn.execute(
        """
        INSERT INTO checkpoints AS c (chain_id, last_block_number, last_block_hash, updated_at)
        SELECT chain_id, block_number, block_hash, now()
        FROM unnest($1::int[], $2::bigint[], $3::text[]) AS t(chain_id, block_number, block_hash)
        ORDER BY chain_id
        ON CONFLICT (chain_id) DO UPDATE
            SET last_block_number = EXCLUDED.last_block_number,
                last_block_hash = EXCLUDED.last_block_hash,
                updated_at = now()
            WHERE c.last_block_number < EXCLUDED.last_block_number
        """,
        chains,
        [top[c].block_number for c in chains],
        [top[c].block_hash for c in chains],
    )


async def get_checkpoint(conn: Conn, chain_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT chain_id, last_block_number, last_block_hash, updated_at"
        " FROM checkpoints WHERE chain_id = $1",
        chain_id,
    )


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    topic: str
    key: bytes
    payload: bytes
    broadcast: bool


async def lock_outbox_batch(conn: Conn, limit: int) -> list[OutboxRow] | None:
    """Inside the caller's transaction: take the relay lock and the oldest rows.
    None when another relay holds the lock."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
        return None
    rows = await conn.fetch(
        """
        SELECT seq, topic, msg_key, payload, broadcast FROM event_outbox
        ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [
        OutboxRow(r["seq"], r["topic"], r["msg_key"].encode(), r["payload"], r["broadcast"])
        for r in rows
    ]


async def delete_outbox(conn: Conn, seqs: list[int]) -> None:
    await conn.execute("DELETE FROM event_outbox WHERE seq = any($1::bigint[])", seqs)


async def outbox_stats(conn: Conn) -> tuple[int, float]:
    """(depth, age in seconds of the oldest message)."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS depth,
               coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS lag
        FROM event_outbox
        """
    )
    assert row is not None
    return int(row["depth"]), float(row["lag"])


@dataclass(frozen=True)
class ReorgResult:
    reorg_id: str
    released: list[str]


async def record_reorg(conn: Conn, reorg: ReorgIn, *, topic: str = EVENTS) -> ReorgResult:
    """Record the reorg, release the replaced events' ids (so the canonical events
    at the same positions can be posted) and queue a retraction for every
    partition of erc8004.events, all in one transaction. ``events`` rows stay."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO reorgs (chain_id, from_block, to_block, new_block_hash, reason)
            VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at
            """,
            reorg.chain_id,
            reorg.from_block,
            reorg.to_block,
            reorg.new_block_hash,
            reorg.reason,
        )
        assert row is not None
        released = await conn.fetch(
            """
            DELETE FROM event_ids WHERE id IN (
                SELECT id FROM events
                WHERE chain_id = $1 AND block_number >= $2
                  AND ($3::bigint IS NULL OR block_number <= $3))
            RETURNING id
            """,
            reorg.chain_id,
            reorg.from_block,
            reorg.to_block,
        )
        message = RetractionMessage(
            kind="retraction",
            chain_id=reorg.chain_id,
            from_block=reorg.from_block,
            to_block=reorg.to_block,
            reorg_id=row["id"],
            created_at=row["created_at"],
        )
        await conn.execute(
            "INSERT INTO event_outbox (topic, msg_key, payload, broadcast)"
            " VALUES ($1, $2, $3, true)",
            topic,
            f"{reorg.chain_id}:",
            dump_message(message),
        )
    return ReorgResult(reorg_id=row["id"], released=sorted(r["id"] for r in released))
