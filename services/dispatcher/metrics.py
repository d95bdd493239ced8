"""Dispatcher metrics, on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.contract.actions import ActionType

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

#: An attempt's recorded status (action_results.status).
ActionStatus = Literal["success", "failed", "retrying", "dead", "retracted"]
#: Why a job went back on the retry topic without an attempt: its destination is
#: busy, its breaker open, its Telegram chat at its rate; or the batch handed its
#: partitions over, or the job is not due yet.
DeferReason = Literal["busy", "breaker_open", "chat_rate", "handover", "not_due"]
TelegramLinkOutcome = Literal["linked", "refused", "invalid_code", "bot_removed"]


@dataclass(frozen=True)
class DispatcherMetrics:
    actions: Counter
    duration: Histogram
    delay: Histogram
    retries: Counter
    dlq: Counter
    deferred: Counter
    skipped: Counter
    guards: Counter
    open_breakers: Gauge
    inflight: Gauge
    consumer_lag: Gauge
    dlq_messages: Gauge
    telegram_links: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DispatcherMetrics:
        metrics = cls._create(registry)
        # Every known label value exported at 0 from the start, so that increase()
        # sees the first increment.
        for action_type in ActionType:
            for status in get_args(ActionStatus):
                metrics.actions.labels(action_type.value, status)
            metrics.retries.labels(action_type.value)
            metrics.dlq.labels(action_type.value)
        for reason in get_args(DeferReason):
            metrics.deferred.labels(reason)
        for outcome in get_args(TelegramLinkOutcome):
            metrics.telegram_links.labels(outcome)
        return metrics

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> DispatcherMetrics:
        return cls(
            actions=Counter(
                "erc8004_dispatcher_actions_total",
                "Attempts recorded, by action type and status (success, failed, retrying, dead).",
                ["action_type", "status"],
                registry=registry,
            ),
            duration=Histogram(
                "erc8004_dispatcher_action_duration_seconds",
                "Duration of one attempt (the outbound call), by action type.",
                ["action_type"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            delay=Histogram(
                "erc8004_dispatcher_job_delay_seconds",
                "From the job's creation (or its due time) to the end of its attempt.",
                ["action_type"],
                buckets=DELAY_BUCKETS,
                registry=registry,
            ),
            retries=Counter(
                "erc8004_dispatcher_retries_total",
                "Attempts that failed transiently and were scheduled again.",
                ["action_type"],
                registry=registry,
            ),
            dlq=Counter(
                "erc8004_dispatcher_dlq_total",
                "Jobs sent to the dead-letter topic after their last attempt.",
                ["action_type"],
                registry=registry,
            ),
            deferred=Counter(
                "erc8004_dispatcher_deferred_total",
                "Jobs put back on the retry topic without an attempt (open breaker, busy "
                "destination, not yet due, partitions handed over).",
                ["reason"],
                registry=registry,
            ),
            skipped=Counter(
                "erc8004_dispatcher_duplicates_skipped_total",
                "Redelivered jobs whose attempt was already recorded.",
                registry=registry,
            ),
            guards=Counter(
                "erc8004_dispatcher_guard_copies_total",
                "Jobs still running at the batch deadline, covered by a copy on the retry topic.",
                registry=registry,
            ),
            open_breakers=Gauge(
                "erc8004_dispatcher_open_breakers",
                "Circuit breakers open (one per user and destination).",
                registry=registry,
            ),
            inflight=Gauge(
                "erc8004_dispatcher_inflight_jobs",
                "Jobs being attempted or waiting for their destination.",
                registry=registry,
            ),
            consumer_lag=Gauge(
                "erc8004_dispatcher_consumer_lag_messages",
                "Jobs on erc8004.actions not yet committed by the dispatcher group.",
                registry=registry,
            ),
            dlq_messages=Gauge(
                "erc8004_dispatcher_dlq_messages",
                "Messages held by the dead-letter topic.",
                registry=registry,
            ),
            telegram_links=Counter(
                "erc8004_dispatcher_telegram_links_total",
                "Link commands the bot read, by outcome (linked; refused: not an "
                "administrator; invalid_code: unknown, used or expired), and chats "
                "unlinked because the bot left them (bot_removed).",
                ["outcome"],
                registry=registry,
            ),
        )
