"""A JSON-RPC proxy on 127.0.0.1 in front of a real node, failing calls the way
providers do: HTTP 500, no answer in time, HTTP 429, a JSON-RPC rate-limit error,
and eth_getLogs refused over a range cap ("query returned more than 10000
results"). Faults follow a fixed schedule, so a run is repeatable; each one
served is counted by kind."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

FAULTS = ("http_500", "hang", "http_429", "rate_error")


@dataclass
class FaultPlan:
    """One call in every ``1 / rate`` fails, with each of FAULTS in turn;
    eth_getLogs over more than ``max_range`` blocks is always refused as too large.
    ``hang`` holds the call ``hang_seconds`` (beyond the client's timeout)."""

    rate: float = 0.2
    max_range: int | None = 50
    hang_seconds: float = 3.0
    served: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    enabled: bool = True

    def __post_init__(self) -> None:
        self._count = 0

    def fault_for(self, body: Any) -> str | None:
        if not self.enabled:
            return None
        calls = body if isinstance(body, list) else [body]
        for call in calls:
            self.calls[str(call.get("method"))] += 1
            query = call["params"][0] if call.get("method") == "eth_getLogs" else {}
            if self.max_range is not None and "fromBlock" in query:
                span = int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1
                if span > self.max_range:
                    return "too_many_results"
        self._count += 1
        period = max(1, round(1 / self.rate)) if self.rate > 0 else 0
        if period and self._count % period == 0:
            return FAULTS[(self._count // period) % len(FAULTS)]
        return None


@asynccontextmanager
async def rpc_proxy(upstream: str, plan: FaultPlan) -> AsyncIterator[str]:
    """Serve the proxy; yields its URL."""
    session = aiohttp.ClientSession()

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        fault = plan.fault_for(body)
        if fault is not None:
            plan.served[fault] += 1
        if fault == "http_500":
            return web.Response(status=500, text="upstream failed")
        if fault == "http_429":
            return web.Response(status=429, text="slow down")
        if fault == "hang":
            await asyncio.sleep(plan.hang_seconds)
        if fault in ("rate_error", "too_many_results"):
            code, message = (
                (-32005, "request rate exceeded, too many requests")
                if fault == "rate_error"
                else (-32005, "query returned more than 10000 results")
            )
            first = body[0] if isinstance(body, list) else body
            return web.json_response(
                {
                    "jsonrpc": "2.0",
                    "id": first.get("id"),
                    "error": {"code": code, "message": message},
                }
            )
        async with session.post(
            upstream, data=raw, headers={"Content-Type": "application/json"}
        ) as response:
            return web.Response(
                body=await response.read(), status=response.status, content_type="application/json"
            )

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()
        await session.close()
