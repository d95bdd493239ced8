"""The public port of the API and ingest tells load balancers ready or not and
nothing more; /metrics and which check failed are on the ops port; no answer on
the public port carries an exception's text."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import Counter

from services.ingest.routes import request_context
from shared.platform.metrics import new_registry
from shared.platform.ops import Readiness, add_ops_routes, add_public_health_routes

SECRET_TEXT = "broker 10.1.2.3:9092 refused"


async def _up() -> None:
    return None


async def _down() -> None:
    raise ConnectionError(SECRET_TEXT)


@pytest.mark.parametrize(
    ("kafka", "status"),
    [(_up, 200), (_down, 503)],
)
async def test_the_public_readyz_says_only_ready_or_not(kafka: object, status: int) -> None:
    registry = new_registry()
    Counter("erc8004_test_things", "things", registry=registry).inc()
    readiness = Readiness({"postgres": _up, "kafka": kafka})  # type: ignore[dict-item]
    public, ops = web.Application(), web.Application()
    add_public_health_routes(public, readiness)
    add_ops_routes(ops, registry=registry, checks=readiness)
    async with (
        TestClient(TestServer(public, host="127.0.0.1")) as pub,
        TestClient(TestServer(ops, host="127.0.0.1")) as internal,
    ):
        resp = await pub.get("/readyz")
        body = await resp.text()
        assert resp.status == status
        assert json.loads(body) == {"status": "ready" if status == 200 else "not ready"}
        assert (await pub.get("/healthz")).status == 200
        assert (await pub.get("/metrics")).status == 404

        resp = await internal.get("/readyz")
        detail = await resp.json()
        assert resp.status == status
        expected = "ok" if status == 200 else "error: ConnectionError"
        assert detail["checks"] == {"postgres": "ok", "kafka": expected}
        assert SECRET_TEXT not in json.dumps(detail)
        metrics = await internal.get("/metrics")
        assert metrics.status == 200
        assert "erc8004_test_things_total 1.0" in await metrics.text()


async def test_an_informational_check_is_reported_but_does_not_decide() -> None:
    readiness = Readiness({"postgres": _up}, {"kafka": _down})
    assert await readiness.run() == (True, {"postgres": "ok", "kafka": "error: ConnectionError"})


async def test_an_ingest_error_is_answered_without_its_text() -> None:
    """aiohttp's own 500 is plain text, with the traceback in debug mode: ingest's
    middleware answers JSON that says nothing of the error."""

    async def boom(_request: web.Request) -> web.Response:
        raise RuntimeError(SECRET_TEXT)

    app = web.Application(middlewares=[request_context])
    app.router.add_get("/boom", boom)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/boom")
        body = await resp.text()
    assert resp.status == 500
    assert json.loads(body) == {"error": "internal error", "details": []}
    assert "10.1.2.3" not in body
