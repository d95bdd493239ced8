"""Builds the API application: ``create_app(settings)``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

from services.api.auth import LoginLimiter, Passwords, Tokens, WindowCounter
from services.api.common import (
    BACKTESTS,
    LIMITER,
    MAX_BODY_BYTES,
    METRICS,
    PASSWORDS,
    POOL,
    PROXIES,
    REGISTRATIONS,
    SECRETS,
    SETTINGS,
    SHARED_READS,
    SIGNATURE_CHECKS,
    TOKENS,
    Slots,
    middleware,
)
from services.api.metrics import ApiMetrics
from services.api.redrive import JobProducer
from services.api.routes import PRODUCER, add_routes
from services.api.settings import ApiSettings
from shared.outbound.policy import parse_networks
from shared.platform.kafka_access import KafkaAccess
from shared.platform.metrics import new_registry
from shared.platform.secrets import SecretBox
from shared.platform.web import frame_web_app, ops_port

log = structlog.get_logger(__name__)


async def _refuse_to_bypass_row_security(pool: asyncpg.Pool) -> None:
    """Tenant isolation rests on row-level security, which does not apply to a table's
    owner or a BYPASSRLS role: the API refuses to start as one (DATABASE_ROLE unset
    with the owner's login, say) instead of silently showing every user's rows."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT r.rolname, r.rolbypassrls OR r.rolsuper AS bypass,
                      EXISTS (SELECT 1 FROM pg_tables t
                              WHERE t.schemaname = 'public' AND t.tablename = 'triggers'
                                AND t.tableowner = current_user) AS owner
               FROM pg_roles r WHERE r.rolname = current_user"""
        )
    if row is None or row["bypass"] or row["owner"]:
        name = row["rolname"] if row is not None else "?"
        raise RuntimeError(
            f"the API connects as {name!r}, which owns the tables or bypasses row-level "
            "security: set DATABASE_ROLE (erc8004_api) so that tenant isolation applies"
        )


def create_app(settings: ApiSettings, *, passwords: Passwords | None = None) -> web.Application:
    """The API app; ``passwords`` lets tests use cheaper hashing parameters."""
    # A little over the body cap so that our own check answers with the JSON 413.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1, middlewares=[middleware])
    registry = new_registry()
    app[SETTINGS] = settings
    app[METRICS] = ApiMetrics.create(registry)
    app[PASSWORDS] = passwords or Passwords()
    app[TOKENS] = Tokens(settings.jwt_secret.get_secret_value(), settings.access_token_ttl)
    app[BACKTESTS] = Slots(settings.backtest_concurrency)
    app[SHARED_READS] = Slots(min(settings.shared_read_concurrency, settings.database_pool_max))
    app[LIMITER] = LoginLimiter(
        max_failures=settings.login_max_failures, window=settings.login_window
    )
    app[REGISTRATIONS] = WindowCounter(
        limits={"addr": settings.register_max_per_address}, window=3600.0
    )
    app[SIGNATURE_CHECKS] = WindowCounter(
        limits={"user": settings.signature_checks_per_minute}, window=60.0
    )
    app[SECRETS] = SecretBox(settings.secrets_key)
    app[PROXIES] = parse_networks(settings.trusted_proxies, "TRUSTED_PROXIES")
    kafka = KafkaAccess.from_settings(settings)
    app[PRODUCER] = JobProducer(kafka, settings.actions_topic)
    # Kafka is informational: only a redrive produces to it (503 without it), so the
    # API stays in its Service while the broker is away (issue 16).
    frame_web_app(
        app,
        settings,
        kafka=kafka,
        ops_port=settings.ops_port,
        pool=POOL,
        registry=registry,
        kafka_required=False,
        on_pool=_refuse_to_bypass_row_security,
    )

    async def producer(app: web.Application) -> AsyncIterator[None]:
        log.info("api started", port=settings.http_port, ops_port=ops_port(app))
        yield
        await app[PRODUCER].close()

    app.cleanup_ctx.append(producer)
    add_routes(app)
    return app
