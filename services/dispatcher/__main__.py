"""Entrypoint: ``python -m services.dispatcher``."""

from __future__ import annotations

from services.dispatcher.app import create_app
from services.dispatcher.settings import DispatcherSettings
from shared.platform.entrypoint import run_service


def main() -> None:
    run_service(DispatcherSettings, create_app)


if __name__ == "__main__":
    main()
