"""Entrypoint: ``python -m services.dispatcher``."""

from __future__ import annotations

import asyncio
import logging

from services.dispatcher.app import create_app
from services.dispatcher.settings import DispatcherSettings
from shared.platform.logging import configure_logging
from shared.platform.loop import new_event_loop


def main() -> None:
    settings = DispatcherSettings.from_env()
    configure_logging(settings.log_level, service=settings.service_name)
    level = logging.getLevelName(settings.log_level.upper())
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(create_app(settings).run(log_level=level))


if __name__ == "__main__":
    main()
