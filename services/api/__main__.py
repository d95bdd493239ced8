"""Entrypoint: ``python -m services.api``."""

from __future__ import annotations

from aiohttp import web

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.platform.logging import configure_logging
from shared.platform.loop import new_event_loop


def main() -> None:
    settings = ApiSettings.from_env()
    configure_logging(settings.log_level, service=settings.service_name)
    web.run_app(
        create_app(settings),
        loop=new_event_loop(),
        host=settings.http_host,
        port=settings.http_port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
