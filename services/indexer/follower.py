"""Following one chain: read the registries' logs, decode them, post them to ingest
in chain order, announce reorgs, and post heartbeats while blocks bring no
registry event.

Blocks deeper than ``confirmations`` behind the head are final: they are read in
ranges as large as the provider allows (one ``eth_getLogs`` over the range, then
the headers of the blocks with logs). Blocks of the window, within
``confirmations`` of the head, are read block by block: every header, each
checked to follow the one before, then each block's logs asked for by its hash,
so the logs are those of exactly the blocks checked, and a node of a provider
that lags behind the others cannot answer a range it has only in part.

The follower keeps the hashes of the window's blocks. A range is taken only when
its first block follows the last one taken and every log belongs to the block the
node names at its height. When a check fails, or the newest kept block has
another hash once the head is reached, the follower walks the window back to the
newest block that still matches, announces the reorg from the block after it
(``POST /v1/reorgs``) and reads again from there. Only another hash counts: a
block the node lacks (it is behind) is waited for. A ``409`` from ingest (it holds
another version of an event: the chain changed while no follower watched) is
answered the same way, after checking the chain agrees with what was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import structlog

from services.indexer.abi import TOPIC0S, UndecodableLogError, event_from_log
from services.indexer.ingest_client import MAX_POST_BYTES, Backoff, ConflictError, IngestClient
from services.indexer.metrics import IndexerMetrics, SkipReason
from services.indexer.rpc import Block, JsonRpc, RpcError, as_block
from services.indexer.settings import ChainConfig
from shared.contract.events import parse_events

log = structlog.get_logger(__name__)

#: Successful ranges in a row before a shrunk range is doubled again.
GROW_AFTER = 4


class ChainMoved(Exception):  # noqa: N818 (a signal to read again, not an error)
    """The chain changed while a range was read: read it again."""


class WrongChainError(Exception):
    """The RPC endpoint serves another chain than the one configured."""


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
    """One chain. Its ingest client checks the chain's lock before every call."""

    def __init__(
        self,
        chain: ChainConfig,
        *,
        rpc: JsonRpc,
        ingest: IngestClient,
        metrics: IndexerMetrics,
        batch_size: int = 100,
        heartbeat_interval: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.chain = chain
        self.rpc = rpc
        self.ingest = ingest
        self.metrics = metrics
        self.batch_size = batch_size
        self.heartbeat_interval = heartbeat_interval
        self.sleep = sleep
        self.range = chain.max_block_range
        self._successes = 0
        self._label = str(chain.chain_id)
        self._contracts = chain.contracts
        self._addresses = sorted(self._contracts)
        self._backoff = Backoff(first=0.5, cap=30.0)
        self.state: _State | None = None
        self.last_progress: Progress | None = None

    # ------------------------------------------------------------------ start

    async def resume(self) -> int:
        """Set the first block to read from ingest's checkpoint of the chain (or the
        configured start block); returns it. The checkpoint's block is read again
        (a block cut across two requests may have been posted in part), and the
        window is filled with its ancestors' hashes."""
        await self._check_chain_id()
        checkpoint = await self.ingest.checkpoint(self.chain.chain_id)
        if checkpoint is None:
            self.state = _State(next_block=self.chain.start_block)
            log.info("no checkpoint: starting at the start block", block=self.chain.start_block)
            return self.state.next_block
        number = max(checkpoint.block_number, self.chain.start_block)
        block = await self._wait_for_block(number)
        if checkpoint.block_hash in ("", block.hash) or number != checkpoint.block_number:
            # '' : ingest moved the checkpoint back to before a reorg, to a block it
            # holds nothing of: its hash is unknown, the blocks before it were checked.
            self.state = _State(next_block=number, posted_time=block.timestamp)
            await self._fill_window(number)
            log.info("resuming at the checkpoint", checkpoint=number)
            return number
        # The checkpoint's block was replaced while nobody followed the chain: its fork
        # point is unknown, so announce the whole window before it as replaced (a block
        # that did not change is then read and posted again, as a duplicate).
        from_block = max(self.chain.start_block, number - self.chain.confirmations)
        log.warning(
            "checkpoint's block was replaced while stopped",
            checkpoint=number,
            known_hash=checkpoint.block_hash,
            chain_hash=block.hash,
            from_block=from_block,
        )
        self.state = _State(next_block=from_block)
        await self._announce(from_block, number, "checkpoint's block replaced")
        return from_block

    def start_at(self, block: int) -> None:
        """Read from ``block`` on, with nothing known of the blocks before it (a
        backfill's ``--from``)."""
        self.state = _State(next_block=block)

    async def _check_chain_id(self) -> None:
        found = await self._rpc(self.rpc.chain_id)
        if found != self.chain.chain_id:
            raise WrongChainError(
                f"the RPC endpoint of chain {self.chain.chain_id} serves chain {found}"
            )

    async def _wait_for_block(self, number: int) -> Block:
        """The node's block at this height, once it has one (a node behind the others
        of a provider answers null for a while; a chain restarted from scratch until
        it grows back to that height)."""
        waited = 0.0
        while True:
            block = await self._rpc(self.rpc.block, number)
            if block is not None:
                return cast(Block, block)
            if waited == 0.0 or waited >= 60:
                log.warning("the node has no block at the checkpoint's height yet", block=number)
                waited = 0.0
            await self.sleep(1.0)
            waited += 1.0

    async def _fill_window(self, number: int) -> None:
        """The hashes of the blocks up to ``number - 1`` over the window: ancestors of a
        block just checked, so the ones whatever was posted belongs to."""
        state = self.state
        assert state is not None
        low = max(self.chain.start_block, number - self.chain.confirmations)
        blocks = await self._headers(list(range(low, number)))
        state.window.update({n: b.hash for n, b in blocks.items()})

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
        near = first > head - self.chain.confirmations
        if near:  # within the window: block by block, every header checked
            last = min(target, first + self.batch_size - 1)
        else:  # final blocks: ranges as large as the provider allows
            last = min(target, first + self.range - 1, head - self.chain.confirmations)
        try:
            await (self._read_near if near else self._read_far)(first, last, head)
        except ChainMoved as moved:
            log.info("chain moved during the read: reading again", reason=str(moved))
            if not await self._find_fork():
                await self.sleep(0.5)  # the node is between two views of the chain
            return False
        return False

    async def _read_far(self, first: int, last: int, head: int) -> None:
        """Blocks deeper than the window: one eth_getLogs over the range, then the
        headers of its first and last block and of every block with a log."""
        try:
            logs = await self.rpc.logs(self._addresses, TOPIC0S, first, last)
        except RpcError as exc:
            await self._failed(exc)
            return
        numbers = sorted({int(str(e["blockNumber"]), 16) for e in logs} | {first, last})
        blocks = await self._headers(numbers)
        self._grow()
        await self._take(first, last, head, logs, blocks)

    async def _read_near(self, first: int, last: int, head: int) -> None:
        """Blocks of the window: every header, each following the one before, then
        each block's logs asked for by its hash (EIP-234), so a node that lags behind
        its provider's others cannot answer with a range it has only in part, and the
        logs are those of exactly the blocks checked."""
        numbers = list(range(first, last + 1))
        blocks = await self._headers(numbers)
        for number in numbers[1:]:
            if blocks[number].parent_hash != blocks[number - 1].hash:
                raise ChainMoved(f"block {number} does not follow block {number - 1}")
        try:
            answers = await self._batched(
                "eth_getLogs",
                [
                    [
                        {
                            "blockHash": blocks[n].hash,
                            "address": self._addresses,
                            "topics": [list(TOPIC0S)],
                        }
                    ]
                    for n in numbers
                ],
            )
        except RpcError as exc:
            await self._failed(exc)
            return
        logs = [entry for answer in answers for entry in (answer or [])]
        await self._take(first, last, head, logs, blocks)

    async def _take(
        self,
        first: int,
        last: int,
        head: int,
        logs: list[dict[str, Any]],
        blocks: dict[int, Block],
    ) -> None:
        """Check what was read, post it, move on."""
        state = self.state
        assert state is not None
        for entry in logs:
            number = int(str(entry["blockNumber"]), 16)
            if str(entry["blockHash"]).lower() != blocks[number].hash:
                raise ChainMoved(f"block {number}'s hash changed during the read")
        before = state.window.get(first - 1)
        if before is not None and blocks[first].parent_hash != before:
            raise ChainMoved(f"block {first} no longer follows block {first - 1}")
        events = self._decode(logs, blocks)
        # Known before posting: a reorg found while posting walks back over them.
        for block in blocks.values():
            state.window[block.number] = block.hash
        if events:
            await self._post(events, blocks)
            state.posted_time = max(state.posted_time, events[-1]["timestamp"])
        tail = blocks[last]
        quiet = not events or events[-1]["block_number"] < last
        if quiet and tail.timestamp - state.posted_time >= self.heartbeat_interval:
            await self.ingest.heartbeat(self.chain.chain_id, last, tail.hash, tail.timestamp)
            self.metrics.heartbeats.labels(self._label).inc()
            state.posted_time = tail.timestamp
        floor = last - self.chain.confirmations
        for number in [n for n in state.window if n < floor]:
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
        raws = await self._batched("eth_getBlockByNumber", [[hex(n), False] for n in numbers])
        found = {b.number: b for b in (as_block(r) for r in raws if r is not None)}
        missing = [n for n in numbers if n not in found]
        if missing:
            raise ChainMoved(
                f"the node lacks block {missing[0]} (behind, or the chain got shorter)"
            )
        return found

    async def _batched(self, method: str, params: list[list[Any]]) -> list[Any]:
        """Calls of one method in JSON-RPC batches of ``batch_size``, each retried until
        answered; a provider that refuses a batch (or its size) gets smaller ones, down
        to single calls."""
        results: list[Any] = []
        at = 0
        while at < len(params):
            part = params[at : at + self.batch_size]
            try:
                if len(part) == 1:
                    results.append(await self.rpc.call(method, part[0]))
                else:
                    results.extend(await self.rpc.batch(method, part))
            except RpcError as exc:
                if exc.kind in ("invalid", "too_large") and len(part) > 1:
                    self.batch_size = max(1, len(part) // 2)
                    log.info("JSON-RPC batches shrunk", size=self.batch_size, reason=str(exc))
                    self.metrics.rpc_errors.labels(self._label, exc.kind).inc()
                    continue
                if method == "eth_getLogs":
                    raise
                await self._wait_after(exc)
                continue
            at += len(part)
        return results

    def _decode(self, logs: list[dict[str, Any]], blocks: dict[int, Block]) -> list[dict[str, Any]]:
        decoded: list[dict[str, Any]] = []
        for entry in logs:
            if entry.get("removed"):
                continue
            address = str(entry.get("address", "")).lower()
            if address not in self._contracts:
                continue
            registry, agent_registry = self._contracts[address]
            number = int(str(entry["blockNumber"]), 16)
            try:
                event = event_from_log(
                    entry,
                    chain_id=self.chain.chain_id,
                    registry=registry,
                    timestamp=blocks[number].timestamp,
                    agent_registry=agent_registry,
                )
            except UndecodableLogError as exc:
                self._skip("undecodable", entry, str(exc))
                continue
            if event is not None:
                decoded.append(event)
        decoded.sort(key=lambda e: (e["block_number"], e["log_index"]))
        _valid, errors = parse_events(list(decoded))
        bad = {e.index for e in errors}
        for error in errors:
            self._skip("invalid", decoded[error.index], f"{error.field}: {error.message}")
        for index, event in enumerate(decoded):
            # One request carries at most 5 MiB; JSON escapes can make a text six times
            # its characters, so an event within the model's limits may still not fit.
            size = len(orjson.dumps(event))
            if index not in bad and size > MAX_POST_BYTES:
                bad.add(index)
                self._skip("too_large", event, f"{size} bytes of JSON, over {MAX_POST_BYTES}")
        return [e for i, e in enumerate(decoded) if i not in bad]

    def _skip(self, reason: SkipReason, entry: dict[str, Any], detail: str) -> None:
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
                await self._announce(
                    first, events[-1]["block_number"], "ingest holds another version"
                )
        for event in events:
            self.metrics.events.labels(self._label, event["registry"]).inc()

    async def _check_tip(self) -> None:
        """At the head: has the newest block seen been replaced? (A node that answers
        null for it is behind, not evidence of a reorg.)"""
        state = self.state
        assert state is not None
        if not state.window:
            return
        newest = max(state.window)
        block = await self._rpc(self.rpc.block, newest)
        if block is not None and block.hash != state.window[newest]:
            await self._find_fork()

    async def _find_fork(self) -> bool:
        """Walk the window back to the newest block that still matches; announce the
        reorg from the block after it, and read again from there. Only another hash
        at a height counts: a block the node lacks (behind, or a chain that got
        shorter and will grow back) ends the walk without a verdict."""
        state = self.state
        assert state is not None
        replaced: list[int] = []
        fork: int | None = None
        for number in sorted(state.window, reverse=True):
            block = await self._rpc(self.rpc.block, number)
            if block is None:
                if replaced:
                    break
                return False
            if block.hash == state.window[number]:
                fork = number
                break
            replaced.append(number)
        if not replaced:
            return False  # a read that raced the node's own update: nothing kept changed
        if fork is None and len(replaced) == len(state.window):
            from_block = min(replaced)
            log.error(
                "reorg deeper than the window: blocks before it may be stale",
                from_block=from_block,
                confirmations=self.chain.confirmations,
            )
        elif fork is None:
            return False  # the walk stopped at a block the node lacks: again later
        else:
            from_block = fork + 1
        newest = state.next_block - 1
        await self._announce(from_block, newest, f"block {max(replaced)}'s hash changed")
        for number in [n for n in state.window if n >= from_block]:
            del state.window[number]
        state.next_block = from_block
        state.posted_time = 0  # the canonical branch's first range posts a heartbeat
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
        """An eth_getLogs that failed: a range too large shrinks, the rest waits."""
        if exc.kind == "too_large" and self.range > 1:
            self.metrics.rpc_errors.labels(self._label, exc.kind).inc()
            self.range = max(1, self.range // 2)
            self._successes = 0
            self.metrics.block_range.labels(self._label).set(self.range)
            log.info("eth_getLogs range shrunk", blocks=self.range, reason=str(exc))
            return
        await self._wait_after(exc)

    async def _wait_after(self, exc: RpcError) -> None:
        self.metrics.rpc_errors.labels(self._label, exc.kind).inc()
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
                await self._wait_after(exc)
                continue
            self._backoff.reset()
            return result
