"""Entrypoint: ``python -m services.matcher``."""

from __future__ import annotations

import asyncio
import logging

from services.matcher.app import create_app
from services.matcher.settings import MatcherSettings
from shared.logging import configure_logging


def main() -> None:
    settings = MatcherSettings.from_env()
    configure_logging(settings.log_level, service=settings.service_name)
    asyncio.run(
        create_app(settings).run(log_level=logging.getLevelName(settings.log_level.upper()))
    )


if __name__ == "__main__":
    main()
