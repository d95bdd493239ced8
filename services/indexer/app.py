"""Builds the indexer: ``create_app(settings)``, an aiohttp app that serves the
operational endpoints and, while it runs, follows every configured chain whose lock
it holds (services/indexer/lease.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from services.indexer.follower import Follower, LeaseLostError
from services.indexer.ingest_client import Backoff, IngestClient
from services.indexer.lease import ChainLease
from services.indexer.metrics import IndexerMetrics
from services.indexer.rpc import JsonRpc
from services.indexer.settings import ChainConfig, IndexerSettings
from shared.platform.db import connector
from shared.platform.metrics import new_registry
from shared.platform.ops import add_ops_routes

log = structlog.get_logger(__name__)

SESSION = web.AppKey("session", aiohttp.ClientSession)


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=20), raise_for_status=False, trust_env=False
    )


def ingest_client(
    session: aiohttp.ClientSession,
    settings: IndexerSettings,
    metrics: IndexerMetrics,
    lease: ChainLease,
) -> IngestClient:
    return IngestClient(
        session,
        settings.ingest_url,
        settings.ingest_token.get_secret_value(),
        on_retry=lambda reason: metrics.ingest_retries.labels(reason).inc(),
        guard=lease.check,
    )


def follower_of(
    chain: ChainConfig,
    *,
    settings: IndexerSettings,
    session: aiohttp.ClientSession,
    metrics: IndexerMetrics,
    lease: ChainLease,
) -> Follower:
    return Follower(
        chain,
        rpc=JsonRpc(session, chain.rpc_url.get_secret_value(), timeout=settings.rpc_timeout),
        ingest=ingest_client(session, settings, metrics, lease),
        metrics=metrics,
        batch_size=settings.rpc_batch_size,
        heartbeat_interval=settings.heartbeat_interval,
    )


async def follow(
    chain: ChainConfig,
    *,
    settings: IndexerSettings,
    session: aiohttp.ClientSession,
    metrics: IndexerMetrics,
    stopping: asyncio.Event,
) -> None:
    """Hold the chain's lock and follow it, or stand by, until ``stopping``."""
    label = str(chain.chain_id)
    connect = connector(settings, f"lease-{chain.chain_id}")
    bound = log.bind(chain_id=chain.chain_id)
    backoff = Backoff(first=1.0, cap=30.0)
    while not stopping.is_set():
        lease = ChainLease(connect, chain.chain_id)
        wait = settings.standby_interval
        try:
            if await lease.acquire():
                bound.info("following the chain (lock held)")
                metrics.leader.labels(label).set(1)
                follower = follower_of(
                    chain, settings=settings, session=session, metrics=metrics, lease=lease
                )
                with structlog.contextvars.bound_contextvars(chain_id=chain.chain_id):
                    await follower.run(stopping, poll_interval=settings.poll_interval)
                backoff.reset()
            else:
                bound.debug("another replica follows the chain: standing by")
        except LeaseLostError as exc:
            bound.warning("lock lost: stopped posting, queueing again", reason=str(exc))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            wait = backoff.next()
            bound.warning("cannot take the chain's lock", error=type(exc).__name__, retry_in=wait)
        except Exception:  # noqa: BLE001 (a bug must not end the chain's task: logged, retried)
            wait = backoff.next()
            bound.exception("following the chain failed", retry_in=wait)
        finally:
            metrics.leader.labels(label).set(0)
            await lease.release()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), wait)


def create_app(settings: IndexerSettings) -> web.Application:
    app = web.Application()
    registry = new_registry()
    metrics = IndexerMetrics.create(registry, tuple(c.chain_id for c in settings.chains))

    async def check_ingest() -> None:
        async with app[SESSION].get(settings.ingest_url.rstrip("/") + "/healthz") as response:
            response.raise_for_status()

    async def check_rpc() -> None:
        for chain in settings.chains:
            rpc = JsonRpc(app[SESSION], chain.rpc_url.get_secret_value(), timeout=2.5)
            await rpc.head()

    add_ops_routes(app, registry=registry, checks={"ingest": check_ingest, "rpc": check_rpc})

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = new_session()
        stopping = asyncio.Event()
        tasks = [
            asyncio.create_task(
                follow(
                    chain,
                    settings=settings,
                    session=app[SESSION],
                    metrics=metrics,
                    stopping=stopping,
                ),
                name=f"follow-{chain.chain_id}",
            )
            for chain in settings.chains
        ]
        log.info(
            "indexer started",
            port=settings.http_port,
            chains=[c.chain_id for c in settings.chains],
        )
        yield
        stopping.set()  # a range in flight finishes (its post is idempotent anyway)
        _done, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout / 2)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app[SESSION].close()

    app.cleanup_ctx.append(lifespan)
    return app
