"""Ingest metrics, on the app's own registry. Labels are bounded: chain ids are
the indexers' chains (authenticated callers), registries a fixed set."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


@dataclass(frozen=True)
class IngestMetrics:
    received: Counter
    accepted: Counter
    duplicates: Counter
    conflicts: Counter
    rejected: Counter
    request_seconds: Histogram
    outbox_depth: Gauge
    relay_lag: Gauge
    relay_batch: Histogram
    relayed: Counter
    relay_errors: Counter
    reorgs: Counter
    heartbeats: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        labels = ("chain_id", "registry")
        return cls(
            received=Counter(
                "erc8004_ingest_events_received_total",
                "Events posted by indexers (valid or not).",
                labels,
                registry=registry,
            ),
            accepted=Counter(
                "erc8004_ingest_events_accepted_total",
                "Events stored for the first time.",
                labels,
                registry=registry,
            ),
            duplicates=Counter(
                "erc8004_ingest_events_duplicate_total",
                "Events already stored (same id), counted and not stored again.",
                labels,
                registry=registry,
            ),
            conflicts=Counter(
                "erc8004_ingest_events_conflict_total",
                "Events refused with 409: their id is stored in another block and no reorg "
                "was announced (the whole batch is refused).",
                labels,
                registry=registry,
            ),
            rejected=Counter(
                "erc8004_ingest_events_rejected_total",
                "Events of batches refused with 422 (the whole batch is refused).",
                labels,
                registry=registry,
            ),
            request_seconds=Histogram(
                "erc8004_ingest_request_duration_seconds",
                "Ingest HTTP request duration.",
                ("route", "status"),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            outbox_depth=Gauge(
                "erc8004_ingest_outbox_depth",
                "Messages in the outbox, not yet acknowledged by Kafka (counted up to 10,000;"
                " beyond, the span of their sequence numbers).",
                registry=registry,
            ),
            relay_lag=Gauge(
                "erc8004_ingest_relay_lag_seconds",
                "Age of the oldest message in the outbox, the next one the relay sends (0 when"
                " empty).",
                registry=registry,
            ),
            relay_batch=Histogram(
                "erc8004_ingest_relay_batch_size",
                "Messages per relay batch.",
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            relayed=Counter(
                "erc8004_ingest_relayed_messages_total",
                "Messages acknowledged by Kafka and removed from the outbox.",
                registry=registry,
            ),
            relay_errors=Counter(
                "erc8004_ingest_relay_errors_total",
                "Relay batches that failed (rolled back, retried later).",
                ("reason",),
                registry=registry,
            ),
            reorgs=Counter(
                "erc8004_ingest_reorgs_total",
                "Reorgs recorded.",
                ("chain_id",),
                registry=registry,
            ),
            heartbeats=Counter(
                "erc8004_ingest_heartbeats_total",
                "Heartbeats posted by indexers (POST /v1/checkpoints): stored, or a"
                " duplicate of one stored already.",
                ("chain_id", "result"),
                registry=registry,
            ),
        )
