"""The action kinds, one module each over :mod:`.base`: :mod:`.rest` (webhooks),
:mod:`.telegram` (the operator's bot) and :mod:`.mcp` (a tool on the agent's own MCP
server). :func:`.table.build_kinds` makes the dispatcher's table of them.

Nothing is imported here: the template workers' fork server imports :mod:`.rest`
and :mod:`.telegram` (their rendering) and must not pay for the MCP client's
imports (~1 s) to start."""
