"""Entrypoints: ``python -m services.indexer`` follows every configured chain;
``python -m services.indexer backfill --chain-id N [--from B] [--to B]`` reads one
chain's range and exits."""

from __future__ import annotations

import argparse
import asyncio

from services.indexer.app import create_app
from services.indexer.backfill import backfill, progress_stream
from services.indexer.settings import IndexerSettings
from shared.platform.entrypoint import cli_parser, run_service
from shared.platform.logging import configure_logging
from shared.platform.loop import new_event_loop


def build_parser() -> argparse.ArgumentParser:
    top = cli_parser(
        "services.indexer",
        "Follow the chains of INDEXER_CHAINS and post their registry events to ingest"
        " (no arguments), or backfill one chain. Settings come from the environment"
        " (docs/indexer.md).",
    )
    commands = top.add_subparsers(dest="command", title="commands")
    fill = commands.add_parser(
        "backfill",
        help="read one chain from a block to a block, post it to ingest, and exit",
        description="Read one chain of INDEXER_CHAINS and post its registry events to ingest.",
        formatter_class=top.formatter_class,
    )
    fill.add_argument("--chain-id", type=int, required=True, help="a chain of INDEXER_CHAINS")
    fill.add_argument(
        "--from",
        dest="from_block",
        type=int,
        default=None,
        help="first block (default: after ingest's checkpoint, else the chain's start_block)",
    )
    fill.add_argument(
        "--to",
        dest="to_block",
        type=int,
        default=None,
        help="last block (default: the chain's head when the backfill starts)",
    )
    fill.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar on stderr (default: when stderr is a terminal)",
    )
    return top


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command is None:
        run_service(IndexerSettings, create_app)
        return
    settings = IndexerSettings.from_env()
    configure_logging(settings.log_level, service="indexer")
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        status = runner.run(
            backfill(
                settings,
                chain_id=args.chain_id,
                from_block=args.from_block,
                to_block=args.to_block,
                out=progress_stream(args.progress),
            )
        )
    raise SystemExit(status)


if __name__ == "__main__":
    main()
