"""Where a webhook attempt's CPU goes, layer by layer: the same REST jobs sent to a
local receiver (a process of its own) by one process, six times, each time with one
more of the dispatcher's layers, at the dispatcher's concurrency per destination.

    python -m tools.dispatch_ladder [--jobs N] [--concurrency C]     (make bench-ladder)

1. ``raw POST``: aiohttp (uvloop) POSTs the job's message as it is, nothing else.
2. ``+ job parsed``: each message is read as an ActionJob first (pydantic, the
   event's checks), as the dispatcher reads every job it consumes.
3. ``+ outbound guard``: the POST goes through the outbound client instead
   (``shared.outbound.client.fetch``: the address checks, the capped read, the
   exchange's deadline, its redirects handled by hand).
4. ``+ default body``: the POST carries the body the REST kind sends for an action
   without a body template instead of the job's message (``render_rest`` of
   ``rest_templates``: the event's JSON dumped from the model with its empty and
   derived fields, the job's fields, orjson; the URL's check; about a fifth larger
   than the message).
5. ``+ webhook built``: the REST kind makes the whole attempt (``RestKind.attempt``:
   the target, the same body, the headers, the outcome of the answer; the
   benchmark's action has no signing secret, so nothing is signed).
6. ``+ attempt stage, recorded``: the dispatcher's own batches
   (``Dispatcher.handle_batch`` on batches of 200: the checks against the database,
   a task per attempt, the destination's slot, its breaker, the time limit, the
   metrics, and a row per attempt in PostgreSQL through the group-committing writer).

Each layer's figure is the process's CPU (all threads) per job while its jobs run,
and its rate; ``added_us`` is what the layer adds to the one before. Consuming from
Kafka and committing are not in any layer (``make bench-dispatcher`` measures the
whole service, and the raw dispatch loop, against raw POSTs).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry

from services.dispatcher.__main__ import YOUNG_COLLECTION_EVERY
from services.dispatcher.batch import Dispatcher
from services.dispatcher.kinds.base import ActionRow
from services.dispatcher.kinds.rest import RestKind, render_rest, rest_templates
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.renderer import Renderer
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.store import PgJobStore
from shared.contract.actions import ActionType, RestConfig
from shared.contract.jobs import ActionJob
from shared.outbound.client import fetch, new_session
from shared.outbound.policy import OutboundPolicy
from shared.platform.db import create_pool
from shared.platform.entrypoint import cli_parser, freeze_startup_heap
from shared.platform.loop import new_event_loop
from shared.platform.secrets import SecretBox
from tools.bench_dispatcher import Target, jobs_for, make_trigger
from tools.benchdb import scratch_database
from tools.benchkit import save, stack
from tools.localnet import Receiver, empty_ok, free_port

#: Jobs of one batch in layer 6, as the dispatcher's default batch_max_records.
BATCH = 200
LAYERS = (
    "raw POST",
    "+ job parsed",
    "+ outbound guard",
    "+ default body",
    "+ webhook built",
    "+ attempt stage, recorded",
)
_JSON = {"Content-Type": "application/json"}


def say(msg: str) -> None:
    print(f"[dispatch-ladder] {msg}", flush=True)  # noqa: T201


async def _serve(port: int) -> None:
    """The receiver's process: 200 with an empty body, until killed."""
    await Receiver(respond=empty_ok, keep=False, port=port).start()
    await asyncio.Event().wait()


def _cpu() -> float:
    return time.process_time()


async def _workers(
    bodies: list[bytes], *, concurrency: int, one: Callable[[bytes], Awaitable[None]]
) -> None:
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _timed(name: str, jobs: int, run: Callable[[], Awaitable[None]]) -> dict[str, float]:
    started, cpu = time.perf_counter(), _cpu()
    await run()
    seconds, spent = time.perf_counter() - started, _cpu() - cpu
    figures = {"jobs_per_s": jobs / seconds, "cpu_us_per_job": spent / jobs * 1e6}
    say(f"{name}: {figures['jobs_per_s']:.0f} jobs/s, {figures['cpu_us_per_job']:.1f} µs a job")
    return figures


class Ladder:
    """The layers' jobs, against one receiver, on one scratch database."""

    def __init__(self, args: argparse.Namespace, hook: str, url: str, target: Target) -> None:
        self.args, self.hook = args, hook
        settings = DispatcherSettings(per_destination_concurrency=args.concurrency)
        self.policy = OutboundPolicy.from_setting("127.0.0.0/8")
        self.cfg = RestConfig.model_validate(target.config)
        self.row = ActionRow(target.trigger, None, enabled=True)
        # the benchmark's action has nothing to render: no template worker starts
        self.renderer = Renderer(workers=1, seconds=settings.template_render_seconds, memory_mb=256)
        self.plain = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))
        self.guarded = new_session(self.policy, limit=200, limit_per_host=args.concurrency)
        self.kind = RestKind(
            session=self.guarded,
            policy=self.policy,
            secrets=SecretBox(settings.secrets_key),
            renderer=self.renderer,
        )
        self.url = url
        self.settings = settings
        self.pool: asyncpg.Pool | None = None

    async def close(self) -> None:
        await self.plain.close()
        await self.guarded.close()
        if self.pool is not None:
            await self.pool.close()
        self.renderer.close()

    async def raw(self, body: bytes) -> None:
        async with self.plain.post(self.hook, data=body, headers=_JSON) as resp:
            await resp.read()

    async def parsed(self, body: bytes) -> None:
        ActionJob.parse(body)
        await self.raw(body)

    async def guarded_post(self, body: bytes) -> None:
        ActionJob.parse(body)
        await fetch(self.guarded, "POST", self.hook, policy=self.policy, headers=_JSON, data=body)

    async def bodied(self, body: bytes) -> None:
        job = ActionJob.parse(body)
        rendered = render_rest(*rest_templates(job, self.cfg))
        await fetch(
            self.guarded, "POST", self.hook, policy=self.policy, headers=_JSON, data=rendered.body
        )

    async def built(self, body: bytes) -> None:
        job = ActionJob.parse(body)
        target = await self.kind.target(job, self.cfg, self.row)
        outcome = await self.kind.attempt(job, self.cfg, target)
        assert outcome.kind == "success", outcome

    async def staged(self, bodies: list[bytes]) -> None:
        """The dispatcher's batches, one after the other."""
        if self.pool is None:
            self.pool = await create_pool(self.url, application_name="dispatch-ladder", max_size=4)

        async def send(_topic: str, _key: bytes, _value: bytes) -> None:
            raise AssertionError("every job of the ladder succeeds: nothing goes to Kafka")

        dispatcher = Dispatcher(
            settings=self.settings,
            store=PgJobStore(self.pool),
            send=send,
            metrics=DispatcherMetrics.create(CollectorRegistry()),
            kinds={ActionType.rest: self.kind},
        )
        for i in range(0, len(bodies), BATCH):
            await dispatcher.handle_batch([ActionJob.parse(b) for b in bodies[i : i + BATCH]])

    def layers(self) -> list[tuple[str, Callable[[list[bytes]], Awaitable[None]]]]:
        def each(one: Callable[[bytes], Awaitable[None]]) -> Any:
            return functools.partial(_workers, concurrency=self.args.concurrency, one=one)

        return list(
            zip(
                LAYERS,
                (
                    each(self.raw),
                    each(self.parsed),
                    each(self.guarded_post),
                    each(self.bodied),
                    each(self.built),
                    self.staged,
                ),
                strict=True,
            )
        )

    async def recorded(self) -> int:
        assert self.pool is not None
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM action_results WHERE status = 'success'"
        )
        return count


async def ladder(args: argparse.Namespace, hook: str) -> dict[str, dict[str, float]]:
    admin_url, _ = stack()
    out: dict[str, dict[str, float]] = {}
    async with scratch_database(admin_url, "dispatch_ladder") as url:
        target = await make_trigger(url, hook)
        warm = [j.dump() for j in jobs_for(BATCH, 10_000_000, target)]
        bodies = [j.dump() for j in jobs_for(args.jobs, 0, target)]
        steps = Ladder(args, hook, url, target)
        # the dispatcher's collector: its start frozen, young objects collected seldom
        freeze_startup_heap()
        gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 20)
        try:
            for name, run in steps.layers():
                await run(warm)  # each layer warmed on jobs of its own (connections, caches)
                out[name] = await _timed(name, len(bodies), functools.partial(run, bodies))
            if (recorded := await steps.recorded()) != len(bodies) + len(warm):
                raise SystemExit(f"the dispatcher's layer recorded {recorded} successes")
        finally:
            await steps.close()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.dispatch_ladder", "--serve", str(port)
    )
    try:
        hook = f"http://127.0.0.1:{port}/hook"
        async with aiohttp.ClientSession() as probe:
            for _ in range(200):
                try:
                    async with probe.get(hook) as resp:
                        await resp.read()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise SystemExit("the receiver did not start in 10 s")
        layers = await ladder(args, hook)
    finally:
        receiver.kill()
        await receiver.wait()
    before = 0.0
    for figures in layers.values():
        figures["added_us"] = figures["cpu_us_per_job"] - before
        before = figures["cpu_us_per_job"]
    first, last = layers[LAYERS[0]], layers[LAYERS[-1]]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores; one process sends, the receiver is another",
        "jobs": args.jobs,
        "concurrency_per_destination": args.concurrency,
        "layers": {k: {n: round(v, 1) for n, v in f.items()} for k, f in layers.items()},
        "cpu_ratio_last_to_raw": round(last["cpu_us_per_job"] / first["cpu_us_per_job"], 2),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.dispatch_ladder", (__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=20_000, help="REST jobs of each layer (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="attempts at once, as the dispatcher's per destination (default: %(default)s)",
    )
    parser.add_argument(
        "--serve", type=int, metavar="PORT", help="run only the receiver, on PORT (internal)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # the services' event loop (uvloop), in both processes
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        if args.serve is not None:
            runner.run(_serve(args.serve))
            return
        result = runner.run(run(args))
    print(json.dumps(result, indent=2))  # noqa: T201
    say(f"written to {save('dispatch-ladder', result)}")


if __name__ == "__main__":
    main()
