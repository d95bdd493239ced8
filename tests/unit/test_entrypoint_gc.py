"""A service puts what it made before serving out of the cyclic GC's sight: a full
collection then walks only what came after (a stall of the event loop otherwise)."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from shared.platform import entrypoint

pytestmark = pytest.mark.unit


def test_the_heap_is_frozen_before_the_app_serves(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    class Settings:
        @classmethod
        def from_env(cls) -> Any:
            return SimpleNamespace(
                log_level="WARNING",
                service_name="test",
                http_host="127.0.0.1",
                http_port=0,
                shutdown_timeout=1.0,
            )

    made: list[object] = []

    def create_app(_settings: Any) -> web.Application:
        seen["tracked_before"] = len(gc.get_objects())
        # long-lived containers made at start, as a service's app and caches are
        made.extend([i] for i in range(20_000))
        return web.Application()

    def run_app(app: web.Application, **_kwargs: Any) -> None:
        seen["frozen"] = gc.get_freeze_count()

    monkeypatch.setattr(web, "run_app", run_app)
    monkeypatch.setattr(entrypoint, "configure_logging", lambda *_a, **_k: None)
    assert gc.get_freeze_count() == 0
    gc.collect()
    entrypoint.run_service(Settings, create_app)  # type: ignore[type-var]
    # What was alive when the app was made, and the app's 20,000 objects, are frozen
    # by the time it runs (a little slack: temporaries freed in between).
    assert seen["frozen"] >= seen["tracked_before"] + 20_000 - 500, seen
