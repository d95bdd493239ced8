"""Templates rendered outside the event loop, in worker processes with hard limits.

A user's template can ask for a lot of work from a short source (a filter chain over
a long string, a huge ``center`` width, a format width): rendered in the
dispatcher's own process it would stall every other job and the health checks.
So every template that has anything to render (a ``{`` in its source) is compiled
and rendered in a pool of worker processes (pebble's ProcessPool, forked from a
fork server that holds the rendering code and nothing of the dispatcher's state), each
worker's address space capped (``TEMPLATE_MEMORY_MB`` beyond what it holds at
start) and each rendering bounded in time (``TEMPLATE_RENDER_SECONDS``): a
rendering past its time has its worker killed and replaced. Every such failure is
a :class:`TemplateRenderError`: the job fails once, it is not retried. A rendering
that waits too long for a worker (:class:`RendererBusyError`) is deferred instead,
and a broken pool (:class:`RendererUnavailableError`) is replaced while its batch
is redelivered.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import resource
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError
from typing import Any, TypeVar

import pebble

from services.dispatcher.templates import TemplateRenderError

T = TypeVar("T")


def has_templates(*templates: Any) -> bool:
    """Whether any string in ``templates`` (nested in dicts and lists) has a ``{``:
    sources without one render to themselves and skip the workers."""
    for t in templates:
        if isinstance(t, str):
            if "{" in t:
                return True
        elif isinstance(t, dict):
            if has_templates(*t.values()):
                return True
        elif isinstance(t, list | tuple) and has_templates(*t):
            return True
    return False


def _limit_worker(memory_bytes: int) -> None:
    """In each worker, once: a lower CPU priority than the dispatcher's event loop,
    the rendering code imported, then its address space capped at what it holds
    now plus the budget (an allocation beyond raises MemoryError inside the
    rendering)."""
    os.nice(10)
    for module in _RENDER_MODULES:
        importlib.import_module(module)
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


#: What the workers run: imported before their memory is capped.
_RENDER_MODULES = (
    "services.dispatcher.templates",
    "services.dispatcher.kinds.rest",
    "services.dispatcher.kinds.telegram",
)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    """In a worker: ``fn(*args)``, or the reason it failed as a template's failure."""
    try:
        return True, fn(*args)
    except TemplateRenderError as exc:
        return False, str(exc)
    except MemoryError:
        return False, "template error: out of memory"


class RendererUnavailableError(RuntimeError):
    """The workers cannot render now (they could not start, or the pool broke and is
    being replaced): the dispatcher's trouble, not the template's, so the batch is
    redelivered."""


class RendererBusyError(Exception):
    """A rendering waited longer than its queue limit for a worker: the job is
    retried later, and its destination is not to blame."""


def _noop() -> None:
    return None


def _warm(pool: pebble.ProcessPool) -> None:
    """Start the pool's workers (pebble starts them on the first schedule, and a
    start waits for the fork server: never on the event loop)."""
    pool.schedule(_noop).result(timeout=60)


def _reap(pool: pebble.ProcessPool) -> None:
    pool.stop()  # type: ignore[no-untyped-call]
    pool.join(timeout=5)


class Renderer:
    """The pool of template workers; one per dispatcher."""

    def __init__(self, *, workers: int, seconds: float, memory_mb: int) -> None:
        self.seconds = seconds
        #: Longest a rendering waits for a worker plus renders: beyond, the job is
        #: deferred (RendererBusyError) instead of eating its attempt's time limit.
        self.queue_limit = 2 * seconds + 1.0
        self._workers = workers
        self._memory_bytes = memory_mb * 1024 * 1024
        self._pool = self._new_pool()
        self._reaping: asyncio.Future[None] | None = None
        self._warming: asyncio.Future[None] | None = None

    def _new_pool(self) -> pebble.ProcessPool:
        context = multiprocessing.get_context("forkserver")
        # The fork server imports the rendering code once: a worker that replaces a
        # killed one starts in milliseconds (forked), not after seconds of imports.
        context.set_forkserver_preload(list(_RENDER_MODULES))
        return pebble.ProcessPool(
            max_workers=self._workers,
            initializer=_limit_worker,
            initargs=(self._memory_bytes,),
            context=context,
        )

    async def call(
        self, fn: Callable[..., T], *args: Any, templates: tuple[Any, ...] | None = None
    ) -> T:
        """``fn(*args)`` in a worker, within the time limit; TemplateRenderError when
        it fails, runs out of memory or time, or its worker dies; RendererBusyError
        when no worker took it in time; RendererUnavailableError when the pool is
        broken (it is replaced). When ``templates`` (the sources ``fn`` renders) have
        nothing to render, ``fn`` runs here."""
        if templates is not None and not has_templates(*templates):
            return fn(*args)
        pool = self._pool
        try:
            future = pool.schedule(_call, args=(fn, args), timeout=self.seconds)
        except (BrokenExecutor, RuntimeError) as exc:
            raise self._replace(pool, exc) from None
        wrapped = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({wrapped}, timeout=self.queue_limit)
            if not done and not future.running():
                # still queued behind other renderings: try again later
                future.cancel()  # type: ignore[no-untyped-call]
                raise RendererBusyError(f"no template worker free within {self.queue_limit:g}s")
            # running (or done): pebble's own time limit bounds it
            ok, value = await wrapped
        except asyncio.CancelledError:
            future.cancel()  # type: ignore[no-untyped-call]
            raise
        except TimeoutError:
            raise TemplateRenderError(
                f"template took more than {self.seconds:g}s to render"
            ) from None
        except pebble.ProcessExpired as exc:
            raise TemplateRenderError(
                f"template rendering ended its worker (exit code {exc.exitcode})"
            ) from None
        except CancelledError:
            raise asyncio.CancelledError from None
        except (BrokenExecutor, RuntimeError) as exc:
            raise self._replace(pool, exc) from None
        if not ok:
            raise TemplateRenderError(value)
        return value  # type: ignore[no-any-return]

    async def start(self) -> None:
        """Start the workers before the first job needs them."""
        await asyncio.to_thread(_warm, self._pool)

    def _replace(self, pool: pebble.ProcessPool, exc: BaseException) -> RendererUnavailableError:
        """pebble's "All workers expired" (an idle worker was killed) or workers that
        cannot start: the pool is replaced once (the old one reaped off the event
        loop) and the caller's batch is redelivered."""
        if self._pool is pool:
            self._pool = fresh = self._new_pool()
            loop = asyncio.get_running_loop()
            self._reaping = loop.run_in_executor(None, _reap, pool)
            self._warming = loop.run_in_executor(None, _warm, fresh)
        return RendererUnavailableError(f"template workers failed: {exc}")

    def close(self) -> None:
        """Stop the workers (a rendering in flight is abandoned)."""
        _reap(self._pool)
