-- Indexes for every filter GET /v1/events offers, each ending in the listing's
-- order (block_time DESC): a page is read from the newest partition down and stops
-- after its limit, whatever the table holds (issue 14). chain_id is served by
-- idx_events_chain_id_block_time, block ranges (which need chain_id) by
-- idx_events_block_number. The old (registry, event_type) index is superseded (an
-- event type belongs to one registry: the type index serves both).
-- Building them reads every partition and blocks writes to events meanwhile: run
-- the migration while ingest is scaled to 0 or in a quiet hour.

-- migrate:up
CREATE INDEX idx_events_listing ON events (block_time DESC, id DESC, block_hash DESC);
CREATE INDEX idx_events_type_block_time ON events (event_type, block_time DESC);
CREATE INDEX idx_events_registry_block_time ON events (registry, block_time DESC);
CREATE INDEX idx_events_agent_block_time ON events (agent_id, block_time DESC)
    WHERE agent_id IS NOT NULL;
DROP INDEX idx_events_registry_type;

-- migrate:down
CREATE INDEX idx_events_registry_type ON events (registry, event_type);
DROP INDEX IF EXISTS idx_events_agent_block_time;
DROP INDEX IF EXISTS idx_events_registry_block_time;
DROP INDEX IF EXISTS idx_events_type_block_time;
DROP INDEX IF EXISTS idx_events_listing;
