"""Following one chain: read the registries' logs in block ranges, decode them, post
them to ingest in chain order, announce reorgs, and post heartbeats while blocks
bring no registry event.

The follower keeps the hash of every block it posted something for, and of each
range's first and last block, over the last ``confirmations`` blocks (the window).
A range is posted only when it continues what was posted before (the parent hash
of its first block is the hash kept for the block before) and every log of it
belongs to the block the node now names at that height (the chain did not move
during the read). When either check fails, or the newest kept block has another
hash once the head is reached, the follower walks its window back to the newest
block that still matches, announces the reorg from the block after it
(``POST /v1/reorgs``) and reads again from there. A ``409`` from ingest (it holds
another version of an event: the chain changed while no follower watched) is
answered the same way, after checking the chain agrees with what was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from services.indexer.abi import TOPIC0S, UndecodableLogError, event_from_log
from services.indexer.ingest_client import Backoff, ConflictError, IngestClient
from services.indexer.metrics import IndexerMetrics
from services.indexer.rpc import Block, JsonRpc, RpcError
from services.indexer.settings import ChainConfig
from shared.contract.events import parse_events

log = structlog.get_logger(__name__)

#: Successful ranges in a row before a shrunk range is doubled again.
GROW_AFTER = 4


class ChainMoved(Exception):  # noqa: N818 (a signal to read again, not an error)
    """The chain changed while a range was read: read it again."""


class LeaseLostError(Exception):
    """This replica no longer holds the chain's lock: stop posting."""


@dataclass
class Progress:
    """What a backfill reports after each range."""

    first_block: int
    last_block: int
    head: int
    events: int
    block_time: int


@dataclass
class _State:
    next_block: int
    #: block number → hash, for the blocks of the window the follower has seen.
    window: dict[int, str] = field(default_factory=dict)
    #: Block time of the newest event or heartbeat posted.
    posted_time: int = 0


class Follower:
    """One chain. ``holding()`` raises LeaseLostError when the chain's lock is gone; it is
    awaited before every post."""

    def __init__(
        self,
        chain: ChainConfig,
        *,
        rpc: JsonRpc,
        ingest: IngestClient,
        metrics: IndexerMetrics,
        holding: Callable[[], Awaitable[None]],
        batch_size: int = 100,
        heartbeat_interval: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.chain = chain
        self.rpc = rpc
        self.ingest = ingest
        self.metrics = metrics
        self.holding = holding
        self.batch_size = batch_size
        self.heartbeat_interval = heartbeat_interval
        self.sleep = sleep
        self.range = chain.max_block_range
        self._successes = 0
        self._label = str(chain.chain_id)
        self._registries = chain.registries
        self._addresses = sorted(self._registries)
        self._backoff = Backoff(first=0.5, cap=30.0)
        self.state: _State | None = None
        self.last_progress: Progress | None = None

    # ------------------------------------------------------------------ start

    async def resume(self) -> int:
        """Set the first block to read from ingest's checkpoint of the chain (or the
        configured start block); returns it."""
        checkpoint = await self.ingest.checkpoint(self.chain.chain_id)
        if checkpoint is None:
            self.state = _State(next_block=self.chain.start_block)
            log.info("no checkpoint: starting at the start block", block=self.chain.start_block)
            return self.state.next_block
        block = await self._rpc(self.rpc.block, checkpoint.block_number)
        if block is not None and block.hash == checkpoint.block_hash:
            self.state = _State(
                next_block=checkpoint.block_number + 1,
                window={block.number: block.hash},
                posted_time=block.timestamp,
            )
            log.info("resuming after the checkpoint", checkpoint=checkpoint.block_number)
            return self.state.next_block
        # The checkpoint's block was replaced while nobody followed the chain: its fork
        # point is unknown, so announce the whole window before it as replaced (a block
        # that did not change is then read and posted again, as a duplicate).
        from_block = max(self.chain.start_block, checkpoint.block_number - self.chain.confirmations)
        log.warning(
            "checkpoint's block was replaced while stopped",
            checkpoint=checkpoint.block_number,
            known_hash=checkpoint.block_hash,
            chain_hash=None if block is None else block.hash,
            from_block=from_block,
        )
        self.state = _State(next_block=from_block)
        await self._announce(from_block, checkpoint.block_number, "checkpoint's block replaced")
        return from_block

    # ------------------------------------------------------------------ loop

    async def run(self, stopping: asyncio.Event, *, poll_interval: float) -> None:
        """Until ``stopping`` is set: read ranges, then poll the head."""
        if self.state is None:
            await self.resume()
        while not stopping.is_set():
            caught_up = await self.step()
            if caught_up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), poll_interval)

    async def step(self, *, until: int | None = None) -> bool:
        """Read and post one range; True when there was nothing to read (head reached,
        or ``until`` passed). Transient failures are waited out here and report False."""
        state = self.state
        if state is None:
            raise RuntimeError("resume() first")
        head = await self._rpc(self.rpc.head)
        self.metrics.head.labels(self._label).set(head)
        target = head if until is None else min(head, until)
        if state.next_block > target:
            self._lag(head)
            if until is None or state.next_block <= until:
                await self._check_tip()
            return True
        first = state.next_block
        last = min(target, first + self.range - 1)
        try:
            await self._read(first, last, head)
        except ChainMoved as moved:
            log.info("chain moved during the read: reading again", reason=str(moved))
            if not await self._find_fork():
                await self.sleep(0.5)  # the node is between two views of the chain
            return False
        return False

    async def _read(self, first: int, last: int, head: int) -> None:
        state = self.state
        assert state is not None
        try:
            logs = await self.rpc.logs(self._addresses, TOPIC0S, first, last)
        except RpcError as exc:
            await self._failed(exc)
            return
        numbers = sorted({int(str(e["blockNumber"]), 16) for e in logs} | {first, last})
        blocks = await self._headers(numbers)
        for entry in logs:
            number = int(str(entry["blockNumber"]), 16)
            if str(entry["blockHash"]).lower() != blocks[number].hash:
                raise ChainMoved(f"block {number}'s hash changed during the read")
        before = state.window.get(first - 1)
        if before is not None and blocks[first].parent_hash != before:
            raise ChainMoved(f"block {first} no longer follows block {first - 1}")
        self._grow()
        events = self._decode(logs, blocks)
        await self.holding()
        if events:
            await self._post(events, blocks)
            state.posted_time = max(state.posted_time, events[-1]["timestamp"])
        tail = blocks[last]
        quiet = not events or events[-1]["block_number"] < last
        if quiet and tail.timestamp - state.posted_time >= self.heartbeat_interval:
            await self.ingest.heartbeat(self.chain.chain_id, last, tail.hash, tail.timestamp)
            self.metrics.heartbeats.labels(self._label).inc()
            state.posted_time = tail.timestamp
        for block in blocks.values():
            state.window[block.number] = block.hash
        floor = last - self.chain.confirmations
        for number in [n for n in state.window if n < floor and n != last]:
            del state.window[number]
        state.next_block = last + 1
        self.metrics.blocks.labels(self._label).inc(last - first + 1)
        self.metrics.indexed.labels(self._label).set(last)
        self._lag(head, tail)
        self.last_progress = Progress(first, last, head, len(events), tail.timestamp)

    def _lag(self, head: int, tail: Block | None = None) -> None:
        state = self.state
        assert state is not None
        self.metrics.lag_blocks.labels(self._label).set(max(0, head - (state.next_block - 1)))
        if tail is not None:
            self.metrics.lag_seconds.labels(self._label).set(max(0.0, time.time() - tail.timestamp))

    # ------------------------------------------------------------------ pieces

    async def _headers(self, numbers: Sequence[int]) -> dict[int, Block]:
        found: dict[int, Block] = {}
        for at in range(0, len(numbers), self.batch_size):
            part = numbers[at : at + self.batch_size]
            found.update(await self._rpc(self.rpc.blocks, part))
        missing = [n for n in numbers if n not in found]
        if missing:
            raise ChainMoved(f"the node lacks block {missing[0]} (the chain got shorter)")
        return found

    def _decode(self, logs: list[dict[str, Any]], blocks: dict[int, Block]) -> list[dict[str, Any]]:
        decoded: list[dict[str, Any]] = []
        for entry in logs:
            if entry.get("removed"):
                continue
            registry = self._registries.get(str(entry.get("address", "")).lower())
            if registry is None:
                continue
            number = int(str(entry["blockNumber"]), 16)
            try:
                event = event_from_log(
                    entry,
                    chain_id=self.chain.chain_id,
                    registry=registry,
                    timestamp=blocks[number].timestamp,
                )
            except UndecodableLogError as exc:
                self._skip("undecodable", entry, str(exc))
                continue
            if event is not None:
                decoded.append(event)
        decoded.sort(key=lambda e: (e["block_number"], e["log_index"]))
        _valid, errors = parse_events(list(decoded))
        if errors:
            bad = {e.index for e in errors}
            for error in errors:
                self._skip("invalid", decoded[error.index], f"{error.field}: {error.message}")
            decoded = [e for i, e in enumerate(decoded) if i not in bad]
        return decoded

    def _skip(self, reason: str, entry: dict[str, Any], detail: str) -> None:
        self.metrics.skipped.labels(self._label, reason).inc()
        log.error(
            "registry log skipped",
            reason=reason,
            detail=detail[:500],
            block=entry.get("blockNumber")
            if "block_number" not in entry
            else entry["block_number"],
            log_index=entry.get("logIndex", entry.get("log_index")),
            transaction=entry.get("transactionHash", entry.get("transaction_hash")),
        )

    async def _post(self, events: list[dict[str, Any]], blocks: dict[int, Block]) -> None:
        announced: set[int] = set()
        while True:
            try:
                await self.ingest.post_events(events)
                break
            except ConflictError as conflict:
                numbers = sorted({e["block_number"] for e in conflict.events_of_details()})
                if not numbers:
                    raise
                current = await self._headers(numbers)
                for number in numbers:
                    if current[number].hash != blocks[number].hash:
                        raise ChainMoved(f"block {number} changed while posting") from conflict
                first = numbers[0]
                if first in announced:
                    log.error("ingest still holds other versions after a reorg", block=first)
                    await self.sleep(self._backoff.next())
                    continue
                announced.add(first)
                await self.holding()
                await self._announce(
                    first, events[-1]["block_number"], "ingest holds another version"
                )
        for event in events:
            self.metrics.events.labels(self._label, event["registry"]).inc()

    async def _check_tip(self) -> None:
        """At the head: has the newest block seen been replaced?"""
        state = self.state
        assert state is not None
        if not state.window:
            return
        newest = max(state.window)
        block = await self._rpc(self.rpc.block, newest)
        if block is None or block.hash != state.window[newest]:
            await self._find_fork()

    async def _find_fork(self) -> bool:
        """Walk the window back to the newest block that still matches; announce the
        reorg from the block after it, and read again from there."""
        state = self.state
        assert state is not None
        replaced = []
        fork: int | None = None
        for number in sorted(state.window, reverse=True):
            block = await self._rpc(self.rpc.block, number)
            if block is not None and block.hash == state.window[number]:
                fork = number
                break
            replaced.append(number)
        if not replaced:
            return False  # a read that raced the node's own update: nothing kept changed
        if fork is None:
            from_block = min(replaced)
            log.error(
                "reorg deeper than the window: blocks before it may be stale",
                from_block=from_block,
                confirmations=self.chain.confirmations,
            )
        else:
            from_block = fork + 1
        newest = state.next_block - 1
        await self.holding()
        await self._announce(from_block, newest, f"block {max(replaced)}'s hash changed")
        for number in [n for n in state.window if n >= from_block]:
            del state.window[number]
        state.next_block = from_block
        return True

    async def _announce(self, from_block: int, newest: int, reason: str) -> None:
        released = await self.ingest.reorg(self.chain.chain_id, from_block, f"indexer: {reason}")
        depth = max(1, newest - from_block + 1)
        self.metrics.reorgs.labels(self._label).inc()
        self.metrics.reorg_depth.labels(self._label).observe(depth)
        log.warning(
            "reorg announced",
            from_block=from_block,
            depth=depth,
            reason=reason,
            released=len(released),
        )

    async def _failed(self, exc: RpcError) -> None:
        self.metrics.rpc_errors.labels(self._label, exc.kind).inc()
        if exc.kind == "too_large" and self.range > 1:
            self.range = max(1, self.range // 2)
            self._successes = 0
            self.metrics.block_range.labels(self._label).set(self.range)
            log.info("eth_getLogs range shrunk", blocks=self.range, reason=str(exc))
            return
        delay = self._backoff.next()
        log.warning("RPC call failed, retrying", kind=exc.kind, error=str(exc), retry_in=delay)
        await self.sleep(delay)

    def _grow(self) -> None:
        self._backoff.reset()
        self._successes += 1
        if self.range < self.chain.max_block_range and self._successes >= GROW_AFTER:
            self.range = min(self.chain.max_block_range, self.range * 2)
            self._successes = 0
        self.metrics.block_range.labels(self._label).set(self.range)

    async def _rpc(self, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """A call other than eth_getLogs, retried with backoff until it answers."""
        while True:
            try:
                result = await call(*args)
            except RpcError as exc:
                self.metrics.rpc_errors.labels(self._label, exc.kind).inc()
                delay = self._backoff.next()
                log.warning(
                    "RPC call failed, retrying", kind=exc.kind, error=str(exc), retry_in=delay
                )
                await self.sleep(delay)
                continue
            return result
