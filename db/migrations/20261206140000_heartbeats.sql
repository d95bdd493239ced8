-- Heartbeats of the indexers (POST /v1/checkpoints, docs/semantics.md section 5a):
-- the indexer scanned its chain up to this block and found no registry event, so
-- the chain's clock advances without one (absence triggers fire on block time).
-- Ingest stores each heartbeat once (a re-post of the same block number and hash
-- is a duplicate) with an outbox row (a tick message in the chain's partition of
-- erc8004.events), under the chain's advisory lock taken shared, like events.
-- created_at defaults to clock_timestamp() (taken after the chain lock, like
-- events.created_at). Reorgs do not retract heartbeats: the chain's clock did pass
-- that time. The index (chain_id, block_time) serves backtests, which replay a
-- chain's ticks over a time range.

-- migrate:up
CREATE TABLE heartbeats (
    chain_id INTEGER NOT NULL CHECK (chain_id > 0),
    block_number BIGINT NOT NULL CHECK (block_number >= 0),
    block_hash TEXT NOT NULL,
    block_time TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (chain_id, block_number, block_hash)
);
CREATE INDEX idx_heartbeats_chain_id_block_time ON heartbeats (chain_id, block_time);
GRANT SELECT, INSERT ON heartbeats TO erc8004_ingest;
GRANT SELECT ON heartbeats TO erc8004_api, erc8004_matcher;

-- migrate:down
DROP TABLE IF EXISTS heartbeats;
