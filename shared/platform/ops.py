"""The operational endpoints every service serves: /healthz, /readyz, /metrics.

``/healthz`` says the process lives; ``/readyz`` runs the service's readiness
checks (PostgreSQL, Kafka) and answers 503 naming the failing one and the kind of
failure only (an exception's text can carry host names and addresses: it goes to
the log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from shared.platform.metrics import render

Check = Callable[[], Awaitable[None]]
log = structlog.get_logger(__name__)


def add_ops_routes(
    app: web.Application,
    *,
    registry: CollectorRegistry,
    checks: Mapping[str, Check],
    informational: Mapping[str, Check] | None = None,
    timeout: float = 3.0,
) -> None:
    """``checks`` decide readiness; ``informational`` ones are reported in the body
    only (ingest stays ready without Kafka: its outbox holds events meanwhile)."""
    informational = informational or {}

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        results: dict[str, str] = {}
        detail: dict[str, str] = {}
        for name, check in {**checks, **informational}.items():
            try:
                async with asyncio.timeout(timeout):
                    await check()
            except Exception as exc:  # noqa: BLE001 (any failure means not ready; reported)
                results[name] = f"error: {type(exc).__name__}"
                detail[name] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                results[name] = "ok"
        ready = all(results[name] == "ok" for name in checks)
        if not ready:
            log.warning("not ready", checks=detail)
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": results},
            status=200 if ready else 503,
        )

    async def metrics(_request: web.Request) -> web.Response:
        body, content_type = render(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on host:port in the background (for services whose main loop
    is not aiohttp); the caller awaits ``runner.cleanup()`` on shutdown."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
