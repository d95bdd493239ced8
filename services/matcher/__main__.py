"""Entrypoint: ``python -m services.matcher``."""

from __future__ import annotations

from services.matcher.app import create_app
from services.matcher.settings import MatcherSettings
from shared.platform.entrypoint import run_service


def main() -> None:
    run_service(MatcherSettings, create_app)


if __name__ == "__main__":
    main()
