"""Templates rendered outside the event loop, in worker processes with hard limits.

A user's template can ask for a lot of work from a short source (a filter chain over
a long string, a huge ``center`` width, a format width): rendered in the
dispatcher's own process it would stall every other job and the health checks.
So every template that has anything to render (a ``{`` in its source) is compiled
and rendered in a pool of worker processes (pebble's ProcessPool, started by
forkserver so that a worker holds nothing of the dispatcher's memory), each
worker's address space capped (``TEMPLATE_MEMORY_MB`` beyond what it holds at
start) and each rendering bounded in time (``TEMPLATE_RENDER_SECONDS``): a
rendering past its time has its worker killed and replaced. Every such failure is
a :class:`TemplateRenderError`: the job fails once, it is not retried.
"""

from __future__ import annotations

import asyncio
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
    and its address space capped at what it holds now plus the budget (an
    allocation beyond raises MemoryError inside the rendering)."""
    os.nice(10)
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    """In a worker: ``fn(*args)``, or the reason it failed as a template's failure."""
    try:
        return True, fn(*args)
    except TemplateRenderError as exc:
        return False, str(exc)
    except MemoryError:
        return False, "template error: out of memory"


class RendererUnavailableError(RuntimeError):
    """The workers could not be started: the dispatcher's trouble, not the template's
    (the batch is redelivered)."""


class Renderer:
    """The pool of template workers; one per dispatcher."""

    def __init__(self, *, workers: int, seconds: float, memory_mb: int) -> None:
        self.seconds = seconds
        self._workers = workers
        self._memory_bytes = memory_mb * 1024 * 1024
        self._pool = self._new_pool()

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(
            max_workers=self._workers,
            initializer=_limit_worker,
            initargs=(self._memory_bytes,),
            context=multiprocessing.get_context("forkserver"),
        )

    async def call(
        self, fn: Callable[..., T], *args: Any, templates: tuple[Any, ...] | None = None
    ) -> T:
        """``fn(*args)`` in a worker, within the time limit; TemplateRenderError when
        it fails, runs out of memory or time, or its worker dies. When ``templates``
        (the sources ``fn`` renders) have nothing to render, ``fn`` runs here."""
        if templates is not None and not has_templates(*templates):
            return fn(*args)
        future = self._pool.schedule(_call, args=(fn, args), timeout=self.seconds)
        try:
            ok, value = await asyncio.wrap_future(future)
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
        except BrokenExecutor as exc:
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool = self._new_pool()
            raise RendererUnavailableError(f"template workers failed: {exc}") from None
        if not ok:
            raise TemplateRenderError(value)
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the workers (a rendering in flight is abandoned)."""
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=5)
