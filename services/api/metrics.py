"""API metrics, on the app's own registry. ``route`` is the route template (or
``unmatched``), so label sets stay bounded whatever paths clients send."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.contract.actions import ActionType

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class ApiMetrics:
    requests: Counter
    request_seconds: Histogram
    login_failures: Counter
    logins_limited: Counter
    registrations: Counter
    jobs_redriven: Counter
    backtest_events: Counter
    backtest_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ApiMetrics:
        metrics = cls._create(registry)
        # Known label values exported at 0 from the start, so that increase() sees
        # the first increment (route, method and status of requests are not known
        # before they are served).
        for action_type in ActionType:
            metrics.jobs_redriven.labels(action_type.value)
        return metrics

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> ApiMetrics:
        return cls(
            requests=Counter(
                "erc8004_api_requests_total",
                "API requests by route template, method and status.",
                ("route", "method", "status"),
                registry=registry,
            ),
            request_seconds=Histogram(
                "erc8004_api_request_duration_seconds",
                "API request duration.",
                ("route", "method"),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            login_failures=Counter(
                "erc8004_api_login_failures_total",
                "Logins refused for a wrong username or password.",
                registry=registry,
            ),
            logins_limited=Counter(
                "erc8004_api_login_limited_total",
                "Logins refused with 429 by the attempt limiter.",
                registry=registry,
            ),
            registrations=Counter(
                "erc8004_api_registrations_total",
                "Users registered.",
                registry=registry,
            ),
            jobs_redriven=Counter(
                "erc8004_api_jobs_redriven_total",
                "Failed or dead-lettered jobs produced again to the actions topic.",
                ("action_type",),
                registry=registry,
            ),
            backtest_events=Counter(
                "erc8004_api_backtest_events_total",
                "Stored events replayed by backtests.",
                registry=registry,
            ),
            backtest_seconds=Histogram(
                "erc8004_api_backtest_duration_seconds",
                "Backtest duration.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )
