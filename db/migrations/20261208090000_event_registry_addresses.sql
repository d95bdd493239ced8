-- Events carry the contract that emitted them and the Identity registry their agent
-- belongs to (issue 15): two deployments of a registry on one chain (an old and a
-- new one, as on Sepolia) no longer make agent 0 of each one agent. Both are NULL
-- for events of indexers that post one registry per chain (an agent is then known
-- by (chain, agent id), as before). Adding nullable columns without defaults is a
-- catalogue change only: no partition is rewritten.

-- migrate:up
ALTER TABLE events ADD COLUMN registry_address text;
ALTER TABLE events ADD COLUMN agent_registry text;
CREATE INDEX idx_events_agent_registry ON events (agent_registry, agent_id, block_time DESC)
    WHERE agent_registry IS NOT NULL;

-- migrate:down
DROP INDEX IF EXISTS idx_events_agent_registry;
ALTER TABLE events DROP COLUMN IF EXISTS agent_registry;
ALTER TABLE events DROP COLUMN IF EXISTS registry_address;
