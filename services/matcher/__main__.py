"""Entrypoint: ``python -m services.matcher``."""

from __future__ import annotations

import asyncio
import logging

from services.matcher.app import create_app
from services.matcher.settings import MatcherSettings
from shared.platform.logging import configure_logging
from shared.platform.loop import new_event_loop


def main() -> None:
    settings = MatcherSettings.from_env()
    configure_logging(settings.log_level, service=settings.service_name)
    level = logging.getLevelName(settings.log_level.upper())
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(create_app(settings).run(log_level=level))


if __name__ == "__main__":
    main()
