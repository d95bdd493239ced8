"""The backtests' SQL: the canonical events and heartbeats a backtest replays."""

from __future__ import annotations

from services.api.queries import EVENT_SELECT
from shared.contract.sql import CANONICAL


def backtest_events_sql(limit: int) -> str:
    """Canonical events of one chain and registry (every registry when $2 is NULL) in
    a block-time range [$3, $4), in chain order, at most ``limit``."""
    return f"""SELECT {EVENT_SELECT} FROM events e
               WHERE e.chain_id = $1 AND ($2::text IS NULL OR e.registry = $2)
                 AND e.block_time >= $3 AND e.block_time < $4 AND {CANONICAL}
               ORDER BY e.block_number, e.log_index, e.created_at
               LIMIT {int(limit)}"""  # noqa: S608 (constants and an int)


#: A chain's heartbeats in a block-time range [$2, $3), in chain order (a backtest's
#: ticks between events, docs/semantics.md 5a).
BACKTEST_HEARTBEATS = """
SELECT block_number, block_hash, extract(epoch FROM block_time)::bigint AS timestamp
FROM heartbeats
WHERE chain_id = $1 AND block_time >= $2 AND block_time < $3
ORDER BY block_number, created_at
"""
