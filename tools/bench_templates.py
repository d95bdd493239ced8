"""Template rendering in the dispatcher's worker processes against rendering in the
process itself (the raw baseline): renders/s at 1, 8 and 64 concurrent.

``python -m tools.bench_templates`` (``make bench-templates``). No services needed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.dispatcher.kinds.rest import render_rest
from services.dispatcher.renderer import Renderer

RENDERS = 2000
CONTEXT: dict[str, Any] = {
    "event": {"agent_id": 7, "score": "80"},
    "trigger": {"id": "t", "name": "n"},
    "explain": {},
    "job": {"id": "j", "attempt": 1},
}
#: A REST action with a templated URL and a two-field object body.
ARGS: tuple[Any, ...] = (
    "https://hooks.example/{{event.agent_id}}",
    {},
    {"agent": "{{ event.agent_id }}", "score": "{{ event.score }}"},
    None,
    CONTEXT,
)


async def _one(renderer: Renderer, slots: asyncio.Semaphore) -> None:
    async with slots:
        await renderer.call(render_rest, *ARGS)


async def main() -> None:
    renderer = Renderer(workers=2, seconds=1.0, memory_mb=256)
    try:
        await renderer.call(render_rest, *ARGS)  # workers started
        started = time.perf_counter()
        for _ in range(RENDERS):
            render_rest(*ARGS)
        raw = RENDERS / (time.perf_counter() - started)
        print(f"[bench-templates] in the process itself: {raw:,.0f} renders/s")  # noqa: T201
        for concurrency in (1, 8, 64):
            slots = asyncio.Semaphore(concurrency)
            started = time.perf_counter()
            await asyncio.gather(*(_one(renderer, slots) for _ in range(RENDERS)))
            rate = RENDERS / (time.perf_counter() - started)
            print(  # noqa: T201
                f"[bench-templates] workers, {concurrency} concurrent: {rate:,.0f} renders/s "
                f"({rate / raw:.2f} of in-process), {concurrency / rate * 1000:.2f} ms each"
            )
    finally:
        await asyncio.to_thread(renderer.close)


if __name__ == "__main__":
    asyncio.run(main())
