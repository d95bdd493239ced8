-- The dispatcher resolves an agent's MCP endpoint from its latest canonical
-- Registered/URIUpdated event: an event replaced by a reorg (a reorgs row of its
-- chain covering its block, recorded after it was stored) does not count.

-- migrate:up
GRANT SELECT ON reorgs TO erc8004_dispatcher;

-- migrate:down
REVOKE SELECT ON reorgs FROM erc8004_dispatcher;
