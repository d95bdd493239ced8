"""What each service's ``__main__`` runs: settings from the environment, logging,
then the app on uvloop until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web
from faststream import FastStream

from shared.platform.logging import configure_logging
from shared.platform.loop import new_event_loop
from shared.platform.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def run_service(
    settings_type: type[S], create_app: Callable[[S], web.Application | FastStream]
) -> None:
    """Run the service built by ``create_app``: an aiohttp app (api, ingest) serves
    the service's port, a FastStream app (matcher, dispatcher) consumes (its lifespan
    serves the operational endpoints)."""
    settings = settings_type.from_env()
    configure_logging(settings.log_level, service=settings.service_name)
    app = create_app(settings)
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
