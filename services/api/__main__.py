"""Entrypoint: ``python -m services.api``."""

from __future__ import annotations

import argparse

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.platform.entrypoint import run_service, service_parser


def build_parser() -> argparse.ArgumentParser:
    return service_parser(
        "services.api",
        "The API: accounts, API keys, triggers, results and redrives, backtests, events "
        "and stats, agents' MCP tokens, over HTTP.",
    )


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    run_service(ApiSettings, create_app)


if __name__ == "__main__":
    main()
