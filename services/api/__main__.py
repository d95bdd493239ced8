"""Entrypoint: ``python -m services.api``."""

from __future__ import annotations

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.platform.entrypoint import run_service


def main() -> None:
    run_service(ApiSettings, create_app)


if __name__ == "__main__":
    main()
