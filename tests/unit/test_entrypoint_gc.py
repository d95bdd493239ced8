"""A service puts what it made before serving out of the cyclic GC's sight: a full
collection then walks only what came after (a stall of the event loop otherwise)."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from services.dispatcher import __main__ as dispatcher_main
from shared.platform import entrypoint

pytestmark = pytest.mark.unit


class Settings:
    """What run_service reads of a service's settings."""

    @classmethod
    def from_env(cls) -> Any:
        return SimpleNamespace(
            log_level="WARNING",
            service_name="test",
            http_host="127.0.0.1",
            http_port=0,
            shutdown_timeout=1.0,
        )


def test_the_heap_is_frozen_before_the_app_serves(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

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


def test_a_service_may_collect_its_young_objects_less_often(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def run_app(app: web.Application, **_kwargs: Any) -> None:
        seen["thresholds"] = gc.get_threshold()

    monkeypatch.setattr(web, "run_app", run_app)
    monkeypatch.setattr(entrypoint, "configure_logging", lambda *_a, **_k: None)
    before = gc.get_threshold()
    try:
        entrypoint.run_service(
            Settings,  # type: ignore[type-var]
            lambda _s: web.Application(),
            young_collection_every=12_345,
        )
        assert seen["thresholds"] == (12_345, 20, 20)
        gc.set_threshold(*before)
        entrypoint.run_service(Settings, lambda _s: web.Application())  # type: ignore[type-var]
        assert seen["thresholds"] == before  # left alone unless asked
        with pytest.raises(ValueError, match="at least 1"):
            entrypoint.run_service(
                Settings,  # type: ignore[type-var]
                lambda _s: web.Application(),
                young_collection_every=0,  # would turn the collector off
            )
    finally:
        gc.set_threshold(*before)


def test_the_dispatcher_collects_its_young_objects_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: dict[str, Any] = {}
    monkeypatch.setattr(dispatcher_main, "run_service", lambda *_a, **kw: asked.update(kw))
    dispatcher_main.main([])
    assert asked["young_collection_every"] == dispatcher_main.YOUNG_COLLECTION_EVERY > 700
