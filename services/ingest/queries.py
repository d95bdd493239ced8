"""Ingest's SQL: one function per statement group, transactions opened by callers
unless the function is itself the unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.contract.event_rows import (
    EVENT_COLUMNS,
    event_row,
)
from shared.contract.events import (
    Event,
)
from shared.contract.jobs import (
    CheckpointIn,
    ReorgIn,
    RetractionMessage,
    TickMessage,
    dump_event_messages,
    dump_message,
)
from shared.contract.topics import EVENTS, partition_key
from shared.platform.db import Conn

#: pg_try_advisory_xact_lock key that serialises relay batches across replicas,
#: so messages reach Kafka in outbox order (per key) whoever relays them.
RELAY_LOCK = 8004_0001
#: Advisory lock class of a chain (second key: the chain id): storing events or a
#: heartbeat takes it shared, recording a reorg exclusive. So every store of that
#: chain is wholly before the reorg (its outbox rows have smaller seqs, and the
#: reorg sees its ids) or wholly after it: a retraction never overtakes a replaced
#: event, and a tick keeps its place among the chain's events and retractions.
CHAIN_LOCK = 8004_0002

OUTBOX_COLUMNS = ("topic", "msg_key", "payload")


@dataclass(frozen=True)
class Stored:
    accepted: list[Event]
    duplicates: list[Event]


@dataclass(frozen=True)
class Conflict:
    """A posted event whose id is stored (or posted earlier in the batch) in another
    block: ``index`` in the batch, the block hashes of the versions known."""

    index: int
    event: Event
    known: list[str]


class ConflictingVersions(Exception):  # noqa: N818 (a refusal, not a failure of ours)
    """Events whose id is stored in another block, with no reorg announced: the
    batch is refused whole (a silent duplicate would drop the new version)."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        super().__init__(f"{len(conflicts)} events conflict with stored versions")
        self.conflicts = conflicts


#: The block hashes of every stored version of these ids.
STORED_VERSIONS = """
SELECT id, block_hash FROM events WHERE id = ANY($1::text[])
"""


#: Claim the ids not claimed yet (in id order: concurrent posters of overlapping
#: batches wait on each other, never deadlock).
CLAIM = """
INSERT INTO event_ids (id, block_time)
SELECT id, block_time
FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS t(id, block_time, block_hash)
ORDER BY id
ON CONFLICT (id) DO NOTHING
RETURNING id, now() AS ingested_at
"""
#: The same, skipping events whose very version (id, block time, block hash) is
#: stored already: after a reorg released an id, a re-post of the replaced block
#: is a duplicate, not a new event. Used when the fast path met that case.
CLAIM_CAREFULLY = """
INSERT INTO event_ids (id, block_time)
SELECT t.id, t.block_time
FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS t(id, block_time, block_hash)
WHERE NOT EXISTS (
    SELECT 1 FROM events e
    WHERE e.id = t.id AND e.block_time = t.block_time AND e.block_hash = t.block_hash)
ORDER BY t.id
ON CONFLICT (id) DO NOTHING
RETURNING id, now() AS ingested_at
"""


async def store_events(
    conn: Conn, events: Sequence[Event], *, topic: str = EVENTS, careful: bool = False
) -> Stored:
    """Store the events not seen before, their outbox messages and the chains'
    checkpoints, in one transaction. ``careful`` also counts as duplicates the
    replaced events of a reorg posted again (the fast path fails on them with a
    unique violation; the caller then retries carefully)."""
    first: dict[str, Event] = {}
    for event in events:
        first.setdefault(event.id, event)
    ids = sorted(first)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared($1, c)"
            " FROM unnest($2::int[]) AS c ORDER BY c",  # volatile: evaluated after the sort
            CHAIN_LOCK,
            sorted({e.chain_id for e in first.values()}),
        )
        rows = await conn.fetch(
            CLAIM_CAREFULLY if careful else CLAIM,
            ids,
            [first[i].block_time for i in ids],
            [first[i].block_hash for i in ids],
        )
        new_ids = {r["id"] for r in rows}
        await _no_other_versions(conn, events, first, new_ids)
        # Input order (the indexers' chain order) for the events and their messages.
        accepted = [e for i, e in first.items() if i in new_ids]
        if accepted:
            ingested_at = rows[0]["ingested_at"]  # now(): the transaction's time, as created_at
            await conn.copy_records_to_table(
                "events", records=[event_row(e) for e in accepted], columns=list(EVENT_COLUMNS)
            )
            payloads = dump_event_messages(accepted, ingested_at)
            await conn.copy_records_to_table(
                "event_outbox",
                records=[
                    (topic, partition_key(e.chain_id, e.agent_id).decode(), payload)
                    for e, payload in zip(accepted, payloads, strict=True)
                ],
                columns=list(OUTBOX_COLUMNS),
            )
        await _advance_checkpoints(
            conn, [(e.chain_id, e.block_number, e.block_hash) for e in accepted]
        )
    accepted_ids = {id(e) for e in accepted}
    duplicates = [e for e in events if id(e) not in accepted_ids]
    return Stored(accepted=accepted, duplicates=duplicates)


async def _no_other_versions(
    conn: Conn, events: Sequence[Event], first: dict[str, Event], new_ids: set[str]
) -> None:
    """Raise :class:`ConflictingVersions` for every event that is no duplicate: its
    id is stored, or posted earlier in the batch, but never in its block."""
    known: dict[str, set[str]] = {i: {e.block_hash} for i, e in first.items() if i in new_ids}
    stored_ids = [i for i in first if i not in new_ids]
    if stored_ids:
        for row in await conn.fetch(STORED_VERSIONS, stored_ids):
            known.setdefault(row["id"], set()).add(row["block_hash"])
    conflicts = [
        Conflict(n, e, sorted(known.get(e.id, ())))
        for n, e in enumerate(events)
        if e.block_hash not in known.get(e.id, ())
    ]
    if conflicts:
        raise ConflictingVersions(conflicts)


async def _advance_checkpoints(conn: Conn, blocks: Sequence[tuple[int, int, str]]) -> None:
    """The highest block stored per chain, of (chain_id, block_number, block_hash)
    of stored events or heartbeats; never moves backwards (but for a reorg). Only
    what was stored advances it: a duplicate's block was seen when it was first
    stored, unless a reorg moved the checkpoint back below it since, and then it is
    a replaced version that must not move the checkpoint forward again."""
    if not blocks:
        return
    top: dict[int, tuple[int, str]] = {}
    for chain_id, block_number, block_hash in blocks:
        best = top.get(chain_id)
        if best is None or block_number > best[0]:
            top[chain_id] = (block_number, block_hash)
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
        [top[c][0] for c in chains],
        [top[c][1] for c in chains],
    )


async def record_heartbeat(conn: Conn, checkpoint: CheckpointIn, *, topic: str = EVENTS) -> bool:
    """Store a heartbeat (the indexer scanned its chain up to this block), its tick
    message in the chain's partition of erc8004.events and the chain's checkpoint,
    in one transaction; False when this very heartbeat (chain, block number, block
    hash) is stored already: then nothing is written."""
    async with conn.transaction():
        # Shared, like a store of events: the tick's outbox row takes its place among
        # the chain's events (after those committed before it) and a reorg's
        # retraction (exclusive) never interleaves with it.
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared($1, $2)", CHAIN_LOCK, checkpoint.chain_id
        )
        ingested_at = await conn.fetchval(
            """
            INSERT INTO heartbeats (chain_id, block_number, block_hash, block_time)
            VALUES ($1, $2, $3, to_timestamp($4::bigint))
            ON CONFLICT (chain_id, block_number, block_hash) DO NOTHING
            RETURNING now()
            """,
            checkpoint.chain_id,
            checkpoint.block_number,
            checkpoint.block_hash,
            checkpoint.timestamp,
        )
        if ingested_at is None:
            return False
        message = TickMessage(
            kind="tick",
            chain_id=checkpoint.chain_id,
            block_number=checkpoint.block_number,
            block_hash=checkpoint.block_hash,
            timestamp=checkpoint.timestamp,
            ingested_at=ingested_at,
        )
        await conn.execute(
            "INSERT INTO event_outbox (topic, msg_key, payload, broadcast)"
            " VALUES ($1, $2, $3, false)",
            topic,
            partition_key(checkpoint.chain_id).decode(),
            dump_message(message),
        )
        await _advance_checkpoints(
            conn, [(checkpoint.chain_id, checkpoint.block_number, checkpoint.block_hash)]
        )
    return True


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


#: The outbox is a queue read in key order, and its statistics swing. After a
#: backlog drains and vacuum passes, it holds a handful of rows in a file that kept
#: the backlog's size (it is never truncated). The planner spreads those rows over
#: every page, so for any LIMIT above its row estimate it prices a read through the
#: key above a sequential scan of the whole file and a sort: in `make bench`, after
#: the 750,000-event burst, every relay batch then read 58,000 empty pages, 100-160
#: ms each, where the key reads a few (docs/performance.md, "Issue 17, twelfth
#: session"). The relay's and the statistics' transactions turn sequential scans
#: off (for the transaction only), which leaves the key.
KEY_ORDER_ONLY = "set_config('enable_seqscan', 'off', true)"

#: The next rows' sizes, in the relay's order (under KEY_ORDER_ONLY).
OUTBOX_SIZES = """
    SELECT seq, octet_length(payload) AS size FROM event_outbox
    ORDER BY seq LIMIT $1
"""

#: The rows of one batch, locked (under KEY_ORDER_ONLY).
OUTBOX_LOCK = """
    SELECT seq, topic, msg_key, payload, broadcast FROM event_outbox
    WHERE seq <= $2
    ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
"""

#: Bytes of payload one relay batch takes at most (always at least one row): a
#: batch of large events stays within memory and the send's time limit.
RELAY_BATCH_BYTES = 16 * 1024 * 1024


async def lock_outbox_batch(
    conn: Conn, limit: int, max_bytes: int = RELAY_BATCH_BYTES
) -> list[OutboxRow] | None:
    """Inside the caller's transaction: take the relay lock and the oldest rows, at
    most ``limit`` of them and ``max_bytes`` of payload (but at least one row). None
    when another relay holds the lock."""
    locked = await conn.fetchrow(
        f"SELECT pg_try_advisory_xact_lock($1) AS locked, {KEY_ORDER_ONLY}", RELAY_LOCK
    )
    if locked is None or not locked["locked"]:
        return None
    sizes = await conn.fetch(OUTBOX_SIZES, limit)
    total, last = 0, None
    for row in sizes:
        total += row["size"]
        if total > max_bytes and last is not None:
            break
        last = row["seq"]
    if last is None:
        return []
    rows = await conn.fetch(OUTBOX_LOCK, limit, last)
    return [
        OutboxRow(r["seq"], r["topic"], r["msg_key"].encode(), r["payload"], r["broadcast"])
        for r in rows
    ]


async def delete_outbox(conn: Conn, seqs: list[int]) -> None:
    await conn.execute("DELETE FROM event_outbox WHERE seq = any($1::bigint[])", seqs)


#: Up to this many queued messages the outbox's depth is counted exactly.
EXACT_DEPTH = 10_000

#: The outbox's depth and the age of its next message (the lowest seq: the one the
#: relay sends first), read once a second, through the primary key only. The outbox
#: is never truncated by vacuum (migration 20261212090000), so after a backlog its
#: file keeps the backlog's size in empty pages: a count(*) next to min(created_at)
#: (a column the key does not hold) scanned the whole file, 30,000 pages after a
#: 300,000-event backlog. And a count of a large backlog costs its size every
#: second, just when the relay catches up (a mean of 26 ms in make bench's burst).
#: So the depth is counted up to EXACT_DEPTH (0 is always exact); beyond, it is the
#: span of queued sequence numbers, two probes of the key, which also counts the
#: numbers rolled-back inserts skipped between them (docs/performance.md, "Issue
#: 17, eleventh session").
OUTBOX_STATS = f"""
    SELECT CASE WHEN c.n <= {EXACT_DEPTH} THEN c.n
                ELSE (SELECT max(seq) FROM event_outbox) - (SELECT min(seq) FROM event_outbox) + 1
           END AS depth,
           coalesce(extract(epoch FROM now() - (
               SELECT created_at FROM event_outbox ORDER BY seq LIMIT 1
           )), 0)::float8 AS lag
    FROM (SELECT count(*) AS n FROM (
        SELECT 1 FROM event_outbox ORDER BY seq LIMIT {EXACT_DEPTH + 1}
    ) queued) c
"""  # noqa: S608 (a constant)


async def outbox_stats(conn: Conn) -> tuple[int, float]:
    """(depth, age in seconds of the next message the relay sends): OUTBOX_STATS."""
    async with conn.transaction():
        # Inside a caller's transaction this is a savepoint, which a setting outlives:
        # put back what the caller had.
        before = await conn.fetchval(f"SELECT current_setting('enable_seqscan'), {KEY_ORDER_ONLY}")
        row = await conn.fetchrow(OUTBOX_STATS)
        await conn.execute("SELECT set_config('enable_seqscan', $1, true)", before)
    assert row is not None
    return int(row["depth"]), float(row["lag"])


@dataclass(frozen=True)
class ReorgResult:
    reorg_id: str
    released: list[str]


async def record_reorg(conn: Conn, reorg: ReorgIn, *, topic: str = EVENTS) -> ReorgResult:
    """Record the reorg, release the replaced events' ids (so the canonical events
    at the same positions can be posted) and queue a retraction
    in the chain's partition of erc8004.events, all in one transaction. ``events``
    rows stay."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", CHAIN_LOCK, reorg.chain_id)
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
        # The canonical version of each released id is its latest stored row.
        released = await conn.fetch(
            """
            WITH freed AS (
                DELETE FROM event_ids WHERE id IN (
                    SELECT id FROM events
                    WHERE chain_id = $1 AND block_number >= $2
                      AND ($3::bigint IS NULL OR block_number <= $3))
                RETURNING id, block_time)
            SELECT DISTINCT ON (e.id) e.id, e.block_hash
            FROM freed f JOIN events e ON e.id = f.id AND e.block_time = f.block_time
            ORDER BY e.id, e.created_at DESC
            """,
            reorg.chain_id,
            reorg.from_block,
            reorg.to_block,
        )
        # The one backward move of a checkpoint: an indexer resuming from it must
        # re-read the replaced blocks. The hash is the latest stored version of the
        # block before (an event's or a heartbeat's), '' when none was stored.
        await conn.execute(
            """
            UPDATE checkpoints SET
                last_block_number = greatest($2::bigint - 1, 0),
                last_block_hash = coalesce(
                    (SELECT block_hash FROM (
                        SELECT block_hash, created_at FROM events
                        WHERE chain_id = $1 AND block_number = $2::bigint - 1
                        UNION ALL
                        SELECT block_hash, created_at FROM heartbeats
                        WHERE chain_id = $1 AND block_number = $2::bigint - 1) AS seen
                     ORDER BY created_at DESC LIMIT 1), ''),
                updated_at = now()
            WHERE chain_id = $1 AND last_block_number >= $2
            """,
            reorg.chain_id,
            reorg.from_block,
        )
        message = RetractionMessage(
            kind="retraction",
            chain_id=reorg.chain_id,
            from_block=reorg.from_block,
            to_block=reorg.to_block,
            reorg_id=row["id"],
            created_at=row["created_at"],
            event_keys=tuple(sorted(f"{r['id']}@{r['block_hash']}" for r in released)),
        )
        # Keyed like the chain's events: one partition, after the replaced events
        # and before their replacements.
        await conn.execute(
            "INSERT INTO event_outbox (topic, msg_key, payload, broadcast)"
            " VALUES ($1, $2, $3, false)",
            topic,
            partition_key(reorg.chain_id).decode(),
            dump_message(message),
        )
    return ReorgResult(reorg_id=row["id"], released=sorted(r["id"] for r in released))
