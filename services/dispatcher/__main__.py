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


#: The cyclic GC's young threshold: a young collection each time this many more
#: container objects are alive than at the last one (Python's default: 700). The
#: dispatcher keeps thousands of short-lived objects in flight (each attempt's task,
#: futures, request and response, its job's models: they die of their reference
#: count within milliseconds); at 700 the collector walked those in flight again and
#: again, and promoted them to the older generations. Measured in the throughput
#: phase of ``make bench-dispatcher``, three rounds each way, twice: 0.359-0.360 of
#: raw POSTs with the default, 0.378-0.402 with this (docs/performance.md, "Issue 17,
#: ninth session").
YOUNG_COLLECTION_EVERY = 20_000


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    run_service(DispatcherSettings, create_app, young_collection_every=YOUNG_COLLECTION_EVERY)


if __name__ == "__main__":
    main()
