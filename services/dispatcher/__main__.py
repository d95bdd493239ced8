"""Entrypoint: ``python -m services.dispatcher``."""

from __future__ import annotations

import argparse

from services.dispatcher.app import create_app
from services.dispatcher.settings import DispatcherSettings
from shared.platform.entrypoint import run_service, service_parser


def build_parser() -> argparse.ArgumentParser:
    return service_parser(
        "services.dispatcher",
        "The dispatcher: runs the jobs of erc8004.actions (Telegram, REST, MCP), with "
        "retries, a dead-letter topic and an audit row per attempt.",
    )


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    run_service(DispatcherSettings, create_app)


if __name__ == "__main__":
    main()
