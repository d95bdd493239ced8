-- The dispatcher asks, for each job's event version, for the first reorg of its
-- chain created after the event was stored that covers its block
-- (services/dispatcher/queries.py REPLACED_VERSIONS). With only
-- (chain_id, from_block) that read every earlier reorg of the chain, for every job;
-- by (chain_id, created_at) it reads only the reorgs since the event was stored,
-- usually none.

-- migrate:up
CREATE INDEX idx_reorgs_chain_id_created_at ON reorgs (chain_id, created_at);

-- migrate:down
DROP INDEX IF EXISTS idx_reorgs_chain_id_created_at;
