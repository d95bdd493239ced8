-- An agent's MCP token may name the Identity registry its agent belongs to (issue 15):
-- on a chain with two deployments agent 7 of each is another agent, with another
-- owner and another server. '' is a token set without a registry (the chain's only
-- deployment, as before); the dispatcher prefers the row of the job's agent's own
-- registry and falls back to ''. Nonces are per agent id and registry alike.

-- migrate:up
ALTER TABLE agent_mcp_tokens ADD COLUMN agent_registry text NOT NULL DEFAULT '';
ALTER TABLE agent_mcp_tokens DROP CONSTRAINT agent_mcp_tokens_pkey;
ALTER TABLE agent_mcp_tokens ADD PRIMARY KEY (chain_id, agent_registry, agent_id);
ALTER TABLE agent_mcp_token_nonces ADD COLUMN agent_registry text NOT NULL DEFAULT '';
ALTER TABLE agent_mcp_token_nonces DROP CONSTRAINT agent_mcp_token_nonces_pkey;
ALTER TABLE agent_mcp_token_nonces ADD PRIMARY KEY (chain_id, agent_registry, agent_id, nonce);

-- migrate:down
DELETE FROM agent_mcp_token_nonces WHERE agent_registry <> '';
ALTER TABLE agent_mcp_token_nonces DROP CONSTRAINT agent_mcp_token_nonces_pkey;
ALTER TABLE agent_mcp_token_nonces ADD PRIMARY KEY (chain_id, agent_id, nonce);
ALTER TABLE agent_mcp_token_nonces DROP COLUMN agent_registry;
DELETE FROM agent_mcp_tokens WHERE agent_registry <> '';
ALTER TABLE agent_mcp_tokens DROP CONSTRAINT agent_mcp_tokens_pkey;
ALTER TABLE agent_mcp_tokens ADD PRIMARY KEY (chain_id, agent_id);
ALTER TABLE agent_mcp_tokens DROP COLUMN agent_registry;
