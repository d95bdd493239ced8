"""Entrypoint: ``python -m services.ingest``."""

from __future__ import annotations

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.platform.entrypoint import run_service


def main() -> None:
    run_service(IngestSettings, create_app)


if __name__ == "__main__":
    main()
