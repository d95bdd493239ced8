"""Entrypoint: ``python -m services.matcher``."""

from __future__ import annotations

import argparse

from services.matcher.app import create_app
from services.matcher.settings import MatcherSettings
from shared.platform.entrypoint import run_service, service_parser


def build_parser() -> argparse.ArgumentParser:
    return service_parser(
        "services.matcher",
        "The matcher: evaluates every enabled trigger on the events of erc8004.events and"
        " produces the jobs it owes on erc8004.actions.",
    )


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    run_service(MatcherSettings, create_app)


if __name__ == "__main__":
    main()
