"""Load generator: several indexers on several chains posting realistic ERC-8004
events to ingest, in batches and singly, at a set rate, with duplicates and
occasional reorgs.

    python -m tools.loadgen --events 50000 --rate 1000 --chains 8453,1,10,42161

Each chain has one indexer (as in production: one indexer per chain posts in block
order). An indexer posts a batch of ``--batch`` events, or with probability
``--single`` posts the next few events one request each; with probability
``--duplicates`` it re-posts a batch it already posted (ingest must count them as
duplicates); every ``--reorg-every`` events it reports a reorg of the last
``--reorg-depth`` blocks and posts their replacements (same positions, new block
hash). A request that fails (connection refused, 5xx, timeout) is retried with
backoff until it is acknowledged: only a 2xx counts. A 4xx stops the run.

Programmatic use (benchmarks, chaos runs): :class:`LoadGenerator` with an
``on_ack`` callback receiving each newly acknowledged event and the time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from shared.platform.entrypoint import cli_parser
from tools.eventgen import hex_of, stream

#: Called with (event dict, ack time (time.time())) for each event newly acknowledged.
OnAck = Callable[[dict[str, Any], float], None]
#: Rewrites an event before it is posted (e.g. steer a share of them to watched agents).
Shape = Callable[[dict[str, Any], random.Random], dict[str, Any]]


def event_id(e: dict[str, Any]) -> str:
    return f"{e['chain_id']}-{e['block_number']}-{e['log_index']}"


@dataclass
class Stats:
    posted_events: int = 0
    acked_events: int = 0
    duplicates_answered: int = 0
    requests: int = 0
    retries: int = 0
    reorgs: int = 0
    replaced: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class Settings:
    base: str = "http://127.0.0.1:8081"
    token: str = "dev-indexer-token"  # noqa: S105 (deploy/local/dev.env, development only)
    chains: tuple[int, ...] = (8453, 1, 10, 42161)
    events: int = 10_000
    #: events/s over all chains (0: as fast as ingest answers)
    rate: float = 1000.0
    batch: int = 100
    single: float = 0.05
    duplicates: float = 0.01
    reorg_every: int = 0
    reorg_depth: int = 3
    seed: int = 1
    #: first block of every chain (runs that must not overlap start apart)
    start_block: int = 1_000_000
    #: block time of the first block (None: an hour ago); a later run continues after
    #: an earlier one's last block time (windows do not take events back in time)
    start_timestamp: int | None = None
    #: per request; a slower answer is retried
    timeout: float = 30.0
    #: give up on one request after this long failing
    give_up_after: float = 300.0


class FatalIngestError(Exception):
    """Ingest refused a request with 4xx: the generator's own bug, not a fault."""


class LoadGenerator:
    def __init__(
        self, settings: Settings, *, on_ack: OnAck | None = None, shape: Shape | None = None
    ) -> None:
        self.s = settings
        self.on_ack = on_ack
        self.shape = shape
        self.stats = Stats()
        self.acked: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    def stop(self) -> None:
        """Finish the requests under way (until acknowledged), then post nothing more."""
        self._stopping = True

    async def run(self, *, progress: bool = False) -> Stats:
        timeout = aiohttp.ClientTimeout(total=self.s.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            per_chain = self._split(self.s.events, len(self.s.chains))
            tasks = [
                asyncio.create_task(self._indexer(chain, n, i))
                for i, (chain, n) in enumerate(zip(self.s.chains, per_chain, strict=True))
            ]
            reporter = asyncio.create_task(self._progress()) if progress else None
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                if reporter is not None:
                    reporter.cancel()
                    self._print_progress(final=True)
        return self.stats

    @staticmethod
    def _split(total: int, parts: int) -> list[int]:
        return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]

    async def _indexer(self, chain: int, n: int, index: int) -> None:
        rng = random.Random(self.s.seed * 1000 + index)
        events: Iterator[dict[str, Any]] = stream(
            rng, chain_id=chain, start_block=self.s.start_block, timestamp=self.s.start_timestamp
        )
        rate = self.s.rate / len(self.s.chains) if self.s.rate > 0 else 0.0
        started = time.perf_counter()
        sent = 0
        history: list[list[dict[str, Any]]] = []
        since_reorg = 0
        while sent < n and not self._stopping:
            if rng.random() < self.s.single:
                chunk = [self._next(events, rng) for _ in range(min(5, n - sent))]
                for e in chunk:
                    await self._post([e])
            else:
                chunk = [self._next(events, rng) for _ in range(min(self.s.batch, n - sent))]
                await self._post(chunk)
            history.append(chunk)
            history = history[-20:]
            sent += len(chunk)
            since_reorg += len(chunk)
            if history and rng.random() < self.s.duplicates:
                await self._post(rng.choice(history))
            if self.s.reorg_every and since_reorg >= self.s.reorg_every:
                since_reorg = 0
                await self._reorg(chain, chunk, rng)
            if rate:
                ahead = started + sent / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)

    def _next(self, events: Iterator[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
        e = next(events)
        return self.shape(e, rng) if self.shape is not None else e

    async def _reorg(self, chain: int, last: list[dict[str, Any]], rng: random.Random) -> None:
        """The last reorg_depth blocks were replaced: report it, post the replacements."""
        top = max(e["block_number"] for e in last)
        start = top - self.s.reorg_depth + 1
        replaced = [e for e in last if e["block_number"] >= start]
        if not replaced:
            return
        await self._request("/v1/reorgs", {"chain_id": chain, "from_block": start})
        self.stats.reorgs += 1
        new_hashes = {b: hex_of(rng, 32) for b in {e["block_number"] for e in replaced}}
        replacements = [
            {**e, "block_hash": new_hashes[e["block_number"]], "transaction_hash": hex_of(rng, 32)}
            for e in replaced
        ]
        self.stats.replaced += len(replacements)
        await self._post(replacements, replacement=True)

    async def _post(self, events: list[dict[str, Any]], *, replacement: bool = False) -> None:
        self.stats.posted_events += len(events)
        body: Any = events[0] if len(events) == 1 and random.random() < 0.5 else events
        answer = await self._request("/v1/events", body)
        self.stats.duplicates_answered += int(answer.get("duplicates", 0))
        now = time.time()
        for e in events:
            key = event_id(e) + ("@" + e["block_hash"] if replacement else "")
            if key not in self.acked:
                self.acked[key] = now
                self.stats.acked_events += 1
                if self.on_ack is not None:
                    self.on_ack(e, now)

    async def _request(self, path: str, body: Any) -> dict[str, Any]:
        assert self._session is not None
        data = orjson.dumps(body)
        headers = {"Authorization": f"Bearer {self.s.token}", "Content-Type": "application/json"}
        deadline = time.monotonic() + self.s.give_up_after
        delay = 0.05
        while True:
            self.stats.requests += 1
            t0 = time.perf_counter()
            try:
                async with self._session.post(self.s.base + path, data=data, headers=headers) as r:
                    text = await r.read()
                    if 200 <= r.status < 300:
                        self.stats.latencies.append(time.perf_counter() - t0)
                        answer = orjson.loads(text)
                        return answer if isinstance(answer, dict) else {}
                    if 400 <= r.status < 500 and r.status not in (408, 429):
                        raise FatalIngestError(f"{path}: {r.status} {text[:500]!r}")
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: not acknowledged within {self.s.give_up_after:g}s")
            self.stats.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _progress(self) -> None:
        while True:
            self._print_progress()
            await asyncio.sleep(0.5)

    def _print_progress(self, *, final: bool = False) -> None:
        total = self.s.events
        done = min(self.stats.acked_events, total)
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        line = (
            f"\r[{bar}] {done}/{total} acked, {self.stats.duplicates_answered} duplicates, "
            f"{self.stats.retries} retries, {self.stats.reorgs} reorgs"
        )
        sys.stderr.write(line + ("\n" if final else ""))
        sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("tools.loadgen", (__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8081", help="ingest base URL")
    parser.add_argument(
        "--token", default="dev-indexer-token", help="bearer token (one of INGEST_TOKENS)"
    )
    parser.add_argument(
        "--chains", default="8453,1,10,42161", help="chain ids, comma-separated: one indexer each"
    )
    parser.add_argument("--events", type=int, default=10_000, help="events to post in all")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s (0: unthrottled)")
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument(
        "--single",
        type=float,
        default=0.05,
        help="probability that the next few events are posted one request each",
    )
    parser.add_argument(
        "--duplicates",
        type=float,
        default=0.01,
        help="probability that a batch already posted is posted again",
    )
    parser.add_argument(
        "--reorg-every", type=int, default=0, help="events between reorgs (0: no reorgs)"
    )
    parser.add_argument("--reorg-depth", type=int, default=3, help="blocks each reorg replaces")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random event stream")
    parser.add_argument(
        "--start-block", type=int, default=1_000_000, help="first block number of every chain"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = Settings(
        base=args.url.rstrip("/"),
        token=args.token,
        chains=tuple(int(c) for c in args.chains.split(",")),
        events=args.events,
        rate=args.rate,
        batch=args.batch,
        single=args.single,
        duplicates=args.duplicates,
        reorg_every=args.reorg_every,
        reorg_depth=args.reorg_depth,
        seed=args.seed,
        start_block=args.start_block,
    )
    gen = LoadGenerator(settings)
    started = time.perf_counter()
    stats = asyncio.run(gen.run(progress=True))
    took = time.perf_counter() - started
    lat = sorted(stats.latencies)
    p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
    print(  # noqa: T201
        f"{stats.acked_events} events acknowledged in {took:.1f}s "
        f"({stats.acked_events / took:.0f}/s); {stats.requests} requests, "
        f"{stats.retries} retries, {stats.duplicates_answered} duplicates answered, "
        f"{stats.reorgs} reorgs ({stats.replaced} replaced); request p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    main()
