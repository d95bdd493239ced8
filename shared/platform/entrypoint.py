"""What each service's ``__main__`` runs: settings from the environment, logging,
then the app on uvloop until a signal stops it."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web
from faststream import FastStream

from shared.platform import frozen_heap
from shared.platform.logging import configure_logging
from shared.platform.loop import new_event_loop
from shared.platform.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default at the end of its help, unless it has none (``None``, a
    required option): its help says then what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def cli_parser(module: str, description: str) -> argparse.ArgumentParser:
    """The argument parser every command line of the project starts from: a
    description, each option's default in its help, and the name it was started by
    (``python -m <module>``, or a console script's own name)."""
    started_as = sys.argv[0] if sys.argv else ""
    return argparse.ArgumentParser(
        prog=f"python -m {module}" if started_as.endswith(".py") or not started_as else None,
        description=description,
        formatter_class=HelpFormatter,
    )


def service_parser(module: str, what: str) -> argparse.ArgumentParser:
    """A service's command line: no arguments; ``--help`` says what it is and where
    its settings come from."""
    return cli_parser(
        module,
        f"{what} It takes no arguments: every setting comes from the environment"
        " (or files under SECRETS_DIR); README.md lists them.",
    )


def freeze_startup_heap() -> None:
    """Put what the process made before it serves (its modules, classes, settings,
    the app: 80,000-140,000 objects) out of the cyclic GC's sight. Left in it, every
    full collection walks them all: 80-160 ms on 2 busy cores, a stall of the event
    loop that shows in the latency tail (docs/performance.md). One collection first,
    so cyclic garbage of the imports is freed rather than pinned."""
    gc.collect()
    frozen_heap.freeze()


def run_service(
    settings_type: type[S],
    create_app: Callable[[S], web.Application | FastStream],
    *,
    young_collection_every: int | None = None,
) -> None:
    """Run the service built by ``create_app``: an aiohttp app (api, ingest) serves
    the service's port, a FastStream app (matcher, dispatcher) consumes (its lifespan
    serves the operational endpoints). ``young_collection_every``: the cyclic GC's
    first threshold (a young collection each time that many more container objects
    are alive than at the last one; Python's default is 700), for a service that
    keeps many short-lived objects in flight at once (the older generations then
    collect every 20 of the younger's collections). At least 1: 0 would turn the
    collector off."""
    if young_collection_every is not None and young_collection_every < 1:
        raise ValueError("young_collection_every must be at least 1")
    settings = settings_type.from_env()
    configure_logging(settings.log_level, service=settings.service_name)
    app = create_app(settings)
    freeze_startup_heap()
    if young_collection_every is not None:
        gc.set_threshold(young_collection_every, 20, 20)
    if isinstance(app, web.Application):
        web.run_app(
            app,
            loop=new_event_loop(),
            host=settings.http_host,
            port=settings.http_port,
            shutdown_timeout=settings.shutdown_timeout,
            access_log=None,
            print=None,
        )
        return
    level = logging.getLevelName(settings.log_level.upper())
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(app.run(log_level=level))
