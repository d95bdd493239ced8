"""``python -m services.indexer backfill``: read one chain from a block to a block
(by default from ingest's checkpoint to the head at start) and exit, with a
progress bar on a terminal and a progress log line every few seconds.

It takes the chain's lock like the service does, so it never posts a chain that a
running indexer follows: stop that one first (or let it do the backfill itself).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

import structlog

from services.indexer.app import follower_of, new_session
from services.indexer.follower import Progress
from services.indexer.lease import ChainLease
from services.indexer.metrics import IndexerMetrics
from services.indexer.settings import IndexerSettings
from shared.platform.db import connector
from shared.platform.metrics import new_registry

log = structlog.get_logger(__name__)
LOG_EVERY = 5.0


@dataclass
class Meter:
    """Blocks/s and the time left, over the whole run."""

    first: int
    last: int
    started: float
    blocks: int = 0
    events: int = 0

    def add(self, progress: Progress) -> None:
        self.blocks += progress.last_block - progress.first_block + 1
        self.events += progress.events

    @property
    def total(self) -> int:
        return max(1, self.last - self.first + 1)

    def rates(self) -> tuple[float, float, float]:
        """(blocks/s, events/s, seconds left)."""
        elapsed = max(1e-9, time.monotonic() - self.started)
        blocks_per_s = self.blocks / elapsed
        left = (self.total - self.blocks) / blocks_per_s if blocks_per_s > 0 else float("inf")
        return blocks_per_s, self.events / elapsed, left

    def bar(self, width: int = 30) -> str:
        done = min(1.0, self.blocks / self.total)
        blocks_per_s, events_per_s, left = self.rates()
        eta = "?" if left == float("inf") else f"{left:,.0f} s"
        filled = int(done * width)
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {done:6.1%} "
            f"{self.blocks:,}/{self.total:,} blocks, {self.events:,} events, "
            f"{blocks_per_s:,.0f} blocks/s, {events_per_s:,.0f} events/s, ETA {eta}"
        )


async def backfill(
    settings: IndexerSettings,
    *,
    chain_id: int,
    from_block: int | None,
    to_block: int | None,
    out: TextIO | None,
) -> int:
    """Exit status: 0 when done, 3 when another indexer holds the chain."""
    chains = {c.chain_id: c for c in settings.chains}
    if chain_id not in chains:
        raise SystemExit(f"chain {chain_id} is not in INDEXER_CHAINS ({sorted(chains)})")
    chain = chains[chain_id]
    metrics = IndexerMetrics.create(new_registry(), (chain_id,))
    lease = ChainLease(connector(settings, f"backfill-{chain_id}"), chain_id)
    if not await lease.acquire():
        log.error("another indexer follows this chain (its lock is held): stop it first")
        return 3
    try:
        async with new_session() as session:
            follower = follower_of(
                chain, settings=settings, session=session, metrics=metrics, lease=lease
            )
            resumed_at = await follower.resume()
            first = resumed_at if from_block is None else from_block
            if first > resumed_at:
                log.warning(
                    "--from is after ingest's checkpoint: the blocks between are not read",
                    from_block=first,
                    resumes_at=resumed_at,
                )
            if first != resumed_at:
                follower.start_at(first)
            head = await follower.rpc.head()
            last = head if to_block is None else to_block
            if last > head:
                log.warning("--to is beyond the chain's head: reading up to the head", head=head)
                last = head
            meter = Meter(first, last, time.monotonic())
            log.info("backfill started", chain_id=chain_id, from_block=first, to_block=last)
            logged = time.monotonic()
            while not await follower.step(until=last):
                progress, follower.last_progress = follower.last_progress, None
                if progress is not None:
                    meter.add(progress)
                if out is not None:
                    out.write("\r" + meter.bar())
                    out.flush()
                if time.monotonic() - logged >= LOG_EVERY:
                    logged = time.monotonic()
                    blocks_per_s, events_per_s, left = meter.rates()
                    log.info(
                        "backfill progress",
                        block=follower.state.next_block - 1 if follower.state else None,
                        to_block=last,
                        blocks_per_s=round(blocks_per_s, 1),
                        events_per_s=round(events_per_s, 1),
                        eta_s=None if left == float("inf") else round(left),
                    )
            if out is not None:
                out.write("\r" + meter.bar() + "\n")
            blocks_per_s, events_per_s, _left = meter.rates()
            log.info(
                "backfill done",
                chain_id=chain_id,
                blocks=meter.blocks,
                events=meter.events,
                seconds=round(time.monotonic() - meter.started, 2),
                blocks_per_s=round(blocks_per_s, 1),
                events_per_s=round(events_per_s, 1),
            )
    finally:
        await lease.release()
    return 0


def progress_stream(requested: bool | None) -> TextIO | None:
    """stderr when it is a terminal (or --progress), None with --no-progress."""
    if requested is None:
        requested = sys.stderr.isatty()
    return sys.stderr if requested else None
