-- What an agent's MCP token may be used for, as its owner signed it (issue 14):
-- allowed_tools, the tool names a call may name; allowed_users, the users whose
-- triggers may send it. NULL stands for everyone / every tool ("*" in the signed
-- message). Tokens stored before scopes existed were signed without one: they are
-- locked (both empty) until their owner signs again, rather than left usable by
-- every user of the service.

-- migrate:up
ALTER TABLE agent_mcp_tokens
    ADD COLUMN allowed_tools TEXT[],
    ADD COLUMN allowed_users TEXT[];
UPDATE agent_mcp_tokens SET allowed_tools = '{}', allowed_users = '{}';

-- migrate:down
ALTER TABLE agent_mcp_tokens DROP COLUMN allowed_tools, DROP COLUMN allowed_users;
