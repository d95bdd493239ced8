"""The outbound guard: every HTTP call the services make to the outside world goes
through :mod:`.policy` (where it may go), :mod:`.client` (aiohttp) or
:mod:`.transport` (httpx2, for MCP)."""
