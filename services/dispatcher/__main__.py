"""Entrypoint: ``python -m services.dispatcher``."""

from __future__ import annotations

import asyncio
import logging

from services.dispatcher.app import create_app
from services.dispatcher.settings import DispatcherSettings
from shared.logging import configure_logging


def main() -> None:
    settings = DispatcherSettings.from_env()
    configure_logging(settings.log_level, service=settings.service_name)
    asyncio.run(
        create_app(settings).run(log_level=logging.getLevelName(settings.log_level.upper()))
    )


if __name__ == "__main__":
    main()
