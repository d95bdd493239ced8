"""The operational endpoints: /healthz, /readyz, /metrics.

``/healthz`` says the process lives; ``/readyz`` runs the service's readiness
checks (PostgreSQL, Kafka). Two forms:

* :func:`add_ops_routes`, on a port only the cluster's monitoring reaches (the
  matcher's, dispatcher's and indexer's one port; the API's and ingest's
  ``OPS_PORT``): ``/metrics`` and a ``/readyz`` naming each check and the kind of
  its failure;
* :func:`add_public_health_routes`, beside the API's and ingest's public routes,
  for load balancers: ``/healthz`` and a ``/readyz`` that says ready or not and
  nothing else.

Neither serves an exception's text (it can carry host names and addresses): that
goes to the log (``not ready``).
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


class Readiness:
    """The service's readiness checks; ``informational`` ones are reported but do
    not decide (ingest stays ready without Kafka: its outbox holds events meanwhile)."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        informational: Mapping[str, Check] | None = None,
        *,
        timeout: float = 3.0,
    ) -> None:
        self.checks = dict(checks)
        self.informational = dict(informational or {})
        self.timeout = timeout

    async def run(self) -> tuple[bool, dict[str, str]]:
        """Whether the service is ready, and each check's ``ok`` or ``error: <kind>``."""
        results: dict[str, str] = {}
        detail: dict[str, str] = {}
        for name, check in {**self.checks, **self.informational}.items():
            try:
                async with asyncio.timeout(self.timeout):
                    await check()
            except Exception as exc:  # noqa: BLE001 (any failure means not ready; reported)
                results[name] = f"error: {type(exc).__name__}"
                detail[name] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                results[name] = "ok"
        ready = all(results[name] == "ok" for name in self.checks)
        if not ready:
            log.warning("not ready", checks=detail)
        return ready, results


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_ops_routes(
    app: web.Application,
    *,
    registry: CollectorRegistry,
    checks: Mapping[str, Check] | Readiness,
    informational: Mapping[str, Check] | None = None,
    timeout: float = 3.0,
) -> None:
    """/healthz, /readyz with each check's result, /metrics (``registry``)."""
    readiness = (
        checks
        if isinstance(checks, Readiness)
        else Readiness(checks, informational, timeout=timeout)
    )

    async def readyz(_request: web.Request) -> web.Response:
        ready, results = await readiness.run()
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": results},
            status=200 if ready else 503,
        )

    async def metrics(_request: web.Request) -> web.Response:
        body, content_type = render(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def add_public_health_routes(app: web.Application, readiness: Readiness) -> None:
    """/healthz and a terse /readyz (``{"status": "ready"}`` or 503 ``not ready``)
    on a public port: which dependency fails, and how, is for the ops port."""

    async def readyz(_request: web.Request) -> web.Response:
        ready, _ = await readiness.run()
        return web.json_response(
            {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
        )

    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", readyz)


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on host:port in the background (the ops port of every service);
    the caller awaits ``runner.cleanup()`` on shutdown. Port 0 takes a free one:
    :func:`bound_port` tells which."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a started runner listens on (the first of its addresses)."""
    address = runner.addresses[0]
    return int(address[1])
