"""SQL fragments more than one service reads the events table with (the events table
is append-only: a reorg's replaced versions stay beside their replacements)."""

from __future__ import annotations

from typing import Final

#: A condition on ``events e``: this version is canonical, i.e. no reorg recorded
#: after it was stored covers its block.
CANONICAL: Final = """NOT EXISTS (
    SELECT 1 FROM reorgs r
    WHERE r.chain_id = e.chain_id AND e.block_number >= r.from_block
      AND (r.to_block IS NULL OR e.block_number <= r.to_block)
      AND r.created_at > e.created_at)"""

#: The owner of agent ($2) of chain ($1): named by its latest canonical Registered
#: or Transfer event (of its Identity registry $3 when not NULL).
AGENT_OWNER: Final = f"""SELECT e.owner FROM events e
    WHERE e.chain_id = $1 AND e.agent_id = $2 AND e.registry = 'identity'
      AND e.event_type IN ('Registered', 'Transfer') AND e.owner IS NOT NULL
      AND ($3::text IS NULL OR e.agent_registry = $3)
      AND {CANONICAL}
    ORDER BY e.block_number DESC, e.log_index DESC, e.created_at DESC
    LIMIT 1"""  # noqa: S608 (constants)
