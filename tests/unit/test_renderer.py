"""The template workers: renderings in other processes, bounded in time and memory,
with the event loop free meanwhile; a worker past its time is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from services.dispatcher.renderer import (
    Renderer,
    RendererBusyError,
    RendererUnavailableError,
    has_templates,
)
from services.dispatcher.templates import TemplateRenderError, render_text

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

HEAVY = '{{ ("a" * 65536)|list|unique|list|length }}' * 400
MEMORY_HOG = '{{ ("a" * 65536)|list|map("center", 65536)|list|length }}'


@pytest.fixture
async def renderer() -> AsyncIterator[Renderer]:
    r = Renderer(workers=2, seconds=1.0, memory_mb=128)
    try:
        await r.start()
        yield r
    finally:
        await asyncio.to_thread(r.close)


def test_has_templates_looks_into_objects() -> None:
    assert not has_templates("plain", {"a": ["b", {"c": "d"}]}, None, 3)
    assert has_templates("plain", {"a": ["b", {"c": "{{ x }}"}]})


async def test_renders_in_a_worker(renderer: Renderer) -> None:
    out = await renderer.call(render_text, "agent {{ a }}", {"a": 7}, templates=("x{",))
    assert out == "agent 7"


@pytest.mark.serial  # bounds the event loop's gaps to 0.1 s and the time limit's error
async def test_a_costly_template_is_stopped_and_the_loop_stays_free(renderer: Renderer) -> None:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(TemplateRenderError, match=r"took more than 1s to render"):
        await renderer.call(render_text, HEAVY, {})
    took = time.monotonic() - started
    stop.set()
    await ticking
    assert 0.9 < took < 3.0
    assert max(gaps) < 0.1  # the event loop was never held
    # the killed worker was replaced: the pool still renders
    assert await renderer.call(render_text, "{{ 1 + 1 }}", {}) == "2"


async def test_memory_is_capped_in_the_worker(renderer: Renderer) -> None:
    with pytest.raises(TemplateRenderError, match="out of memory"):
        # 65,536 strings of 65,536 characters: each piece passes the sandbox's checks
        await renderer.call(render_text, MEMORY_HOG, {})
    assert await renderer.call(render_text, "{{ 'ok' }}", {}) == "ok"


async def test_template_errors_come_back_as_they_are(renderer: Renderer) -> None:
    with pytest.raises(TemplateRenderError, match="template error: 'nope' is undefined"):
        await renderer.call(render_text, "{{ nope }}", {})


async def test_nothing_to_render_skips_the_workers() -> None:
    closed = Renderer(workers=1, seconds=1.0, memory_mb=64)
    await asyncio.to_thread(closed.close)
    # a stopped pool would fail any scheduled call: these never reach it
    assert await closed.call(render_text, "plain text", {}, templates=("plain text",)) == (
        "plain text"
    )


async def test_a_killed_idle_worker_costs_one_redelivery_not_the_renderer() -> None:
    renderer = Renderer(workers=2, seconds=1.0, memory_mb=128)
    try:
        assert await renderer.call(render_text, "{{ 1 }}", {}) == "1"
        workers = renderer._pool._pool_manager.worker_manager.workers  # pebble's own table
        for process in list(workers.values()):
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        outcomes: list[str] = []
        for _ in range(3):
            try:
                outcomes.append(await renderer.call(render_text, "{{ 2 }}", {}))
            except RendererUnavailableError:
                outcomes.append("unavailable")  # this batch is redelivered
        assert outcomes[-1] == "2"  # replaced: renders again
        assert outcomes.count("unavailable") <= 1
    finally:
        await asyncio.to_thread(renderer.close)


@pytest.mark.serial  # bounds the deferral's delay to 0.5 s
async def test_a_rendering_queued_too_long_is_deferred_not_timed_out() -> None:
    renderer = Renderer(workers=1, seconds=1.0, memory_mb=128)
    try:
        heavy = [asyncio.create_task(renderer.call(render_text, HEAVY, {})) for _ in range(5)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(RendererBusyError):
            await renderer.call(render_text, "{{ 'light' }}", {})
        assert time.monotonic() - started < renderer.queue_limit + 0.5
        results = await asyncio.gather(*heavy, return_exceptions=True)
        assert all(isinstance(r, TemplateRenderError | RendererBusyError) for r in results)
        assert await renderer.call(render_text, "{{ 'light' }}", {}) == "light"
    finally:
        await asyncio.to_thread(renderer.close)


def test_the_workers_fork_server_does_not_import_the_mcp_client() -> None:
    """What the template workers' fork server preloads stays clear of the MCP client
    (about 1 s of imports, paid at every dispatcher start before it is ready)."""
    code = (
        "import importlib, sys\n"
        "from services.dispatcher.renderer import _RENDER_MODULES\n"
        "for m in _RENDER_MODULES: importlib.import_module(m)\n"
        "print(sorted(k for k in sys.modules if k == 'mcp' or k.startswith('mcp.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]", out
