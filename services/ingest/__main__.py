"""Entrypoint: ``python -m services.ingest``."""

from __future__ import annotations

import argparse

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.platform.entrypoint import run_service, service_parser


def build_parser() -> argparse.ArgumentParser:
    return service_parser(
        "services.ingest",
        "Ingest: takes indexers' events, reorgs and checkpoints over HTTP, stores them "
        "with their outbox rows, relays the outbox to Kafka and runs the database "
        "maintenance.",
    )


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    run_service(IngestSettings, create_app)


if __name__ == "__main__":
    main()
