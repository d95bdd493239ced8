"""Indexer metrics, on the app's own registry. Labels are bounded: chain ids come from
the settings, registries and error kinds are fixed sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.indexer.ingest_client import RetryReason
from shared.contract.events import Registry

RPC_ERROR_KINDS = ("too_large", "rate_limited", "timeout", "connection", "server", "invalid")
#: Why a log was not posted (erc8004_indexer_events_skipped_total).
SkipReason = Literal["undecodable", "invalid", "too_large"]
DEPTH_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 500, 1000)


@dataclass(frozen=True)
class IndexerMetrics:
    head: Gauge
    indexed: Gauge
    lag_blocks: Gauge
    lag_seconds: Gauge
    blocks: Counter
    events: Counter
    skipped: Counter
    heartbeats: Counter
    rpc_errors: Counter
    block_range: Gauge
    reorgs: Counter
    reorg_depth: Histogram
    ingest_retries: Counter
    leader: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, chain_ids: tuple[int, ...]) -> IndexerMetrics:
        chain = ("chain_id",)
        metrics = cls(
            head=Gauge(
                "erc8004_indexer_head_block", "The chain's newest block.", chain, registry=registry
            ),
            indexed=Gauge(
                "erc8004_indexer_indexed_block",
                "The newest block read and posted to ingest.",
                chain,
                registry=registry,
            ),
            lag_blocks=Gauge(
                "erc8004_indexer_head_lag_blocks",
                "Blocks between the chain's head and the newest block posted.",
                chain,
                registry=registry,
            ),
            lag_seconds=Gauge(
                "erc8004_indexer_head_lag_seconds",
                "Seconds since the block time of the newest block posted.",
                chain,
                registry=registry,
            ),
            blocks=Counter(
                "erc8004_indexer_blocks_total", "Blocks read.", chain, registry=registry
            ),
            events=Counter(
                "erc8004_indexer_events_total",
                "Registry events decoded and acknowledged by ingest (duplicates included).",
                ("chain_id", "registry"),
                registry=registry,
            ),
            skipped=Counter(
                "erc8004_indexer_events_skipped_total",
                "Registry logs not posted: their data does not decode (undecodable), the event"
                " is outside what ingest holds (invalid) or larger than one request"
                " (too_large); each is logged with the log's position.",
                ("chain_id", "reason"),
                registry=registry,
            ),
            heartbeats=Counter(
                "erc8004_indexer_heartbeats_total",
                "Heartbeats posted (blocks without registry events passed).",
                chain,
                registry=registry,
            ),
            rpc_errors=Counter(
                "erc8004_indexer_rpc_errors_total",
                "Failed JSON-RPC calls by kind: too_large (range shrunk), rate_limited,"
                " timeout, connection, server, invalid.",
                ("chain_id", "kind"),
                registry=registry,
            ),
            block_range=Gauge(
                "erc8004_indexer_block_range",
                "Blocks per eth_getLogs call now (shrinks while the provider refuses).",
                chain,
                registry=registry,
            ),
            reorgs=Counter(
                "erc8004_indexer_reorgs_total",
                "Reorgs announced to ingest.",
                chain,
                registry=registry,
            ),
            reorg_depth=Histogram(
                "erc8004_indexer_reorg_depth_blocks",
                "Blocks replaced per reorg (from the first changed block to the newest read).",
                chain,
                buckets=DEPTH_BUCKETS,
                registry=registry,
            ),
            ingest_retries=Counter(
                "erc8004_indexer_ingest_retries_total",
                "Calls to ingest that failed and were retried, by reason.",
                ("reason",),
                registry=registry,
            ),
            leader=Gauge(
                "erc8004_indexer_leader",
                "1 while this replica holds the chain's lock and follows it.",
                chain,
                registry=registry,
            ),
        )
        for chain_id in chain_ids:  # known label values start at 0 (increase() sees the first)
            label = str(chain_id)
            for kind in RPC_ERROR_KINDS:
                metrics.rpc_errors.labels(label, kind)
            for registry_name in Registry:
                metrics.events.labels(label, registry_name.value)
            for reason in get_args(SkipReason):
                metrics.skipped.labels(label, reason)
            metrics.reorgs.labels(label)
            metrics.blocks.labels(label)
            metrics.heartbeats.labels(label)
            metrics.leader.labels(label).set(0)
        for retry in get_args(RetryReason):
            metrics.ingest_retries.labels(retry)
        return metrics
