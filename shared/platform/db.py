"""asyncpg pool creation and the database readiness check."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import asyncpg
import orjson
import structlog
from asyncpg.pool import PoolConnectionProxy

from shared.platform.settings import ServiceSettings

log = structlog.get_logger(__name__)

#: A connection of our own or one borrowed from a pool: queries take either.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def register_codecs(conn: asyncpg.Connection) -> None:
    """JSON and JSONB as Python values (orjson), in the binary wire format so that
    COPY can carry them too (jsonb's binary form is a version byte, then text)."""
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=orjson.dumps, decoder=orjson.loads, format="binary"
    )
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        format="binary",
    )


async def create_pool(
    dsn: str,
    *,
    role: str = "",
    application_name: str,
    min_size: int = 1,
    max_size: int = 10,
    **kwargs: Any,
) -> asyncpg.Pool:
    """A pool whose connections run as ``role`` (a startup parameter, so it survives
    the pool's ``RESET ALL``) with JSON codecs registered once per connection."""
    server_settings = {"application_name": application_name}
    if role:
        server_settings["role"] = role
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=register_codecs,
        server_settings=server_settings,
        **kwargs,
    )
    assert pool is not None
    return pool


async def check_db(pool: asyncpg.Pool, *, within: float = 2.0) -> None:
    """Raise unless the database answers within ``within`` seconds."""
    async with asyncio.timeout(within):
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")


def pool_from_settings(settings: ServiceSettings, *, min_size: int = 1) -> Awaitable[asyncpg.Pool]:
    """The service's pool, as its role, sized by its settings."""
    return create_pool(
        settings.database_url.get_secret_value(),
        role=settings.database_role,
        application_name=f"erc8004-{settings.service_name}",
        min_size=min_size,
        max_size=settings.database_pool_max,
    )


def connector(
    settings: ServiceSettings, purpose: str
) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """Opens a connection of its own (outside the pool: a LISTEN, a session's
    advisory lock), as the service's role, named ``erc8004-<service>-<purpose>``.
    The server probes it every 10 s after 30 s of silence and drops it after 3
    unanswered probes: a session (and the locks it holds) whose host vanished ends
    within about a minute, not after the system's default two hours."""
    dsn = settings.database_url.get_secret_value()
    server_settings = {
        "application_name": f"erc8004-{settings.service_name}-{purpose}",
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
    if settings.database_role:
        server_settings["role"] = settings.database_role

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn, server_settings=server_settings)

    return connect


async def close_pool(pool: asyncpg.Pool, *, within: float = 3.0) -> None:
    """Close gracefully if that is quick, else terminate: shutdown stays bounded
    (Kubernetes' grace period) even with a connection stuck on a dead server."""
    try:
        async with asyncio.timeout(within):
            await pool.close()
    except TimeoutError:
        pool.terminate()


Notify = Callable[[str], None]


async def listen(
    connect: Callable[[], Awaitable[asyncpg.Connection]], channel: str, on_notify: Notify
) -> asyncpg.Connection:
    """A connection of its own LISTENing on ``channel`` (not a pooled one: the
    pool's reset on release would UNLISTEN)."""
    conn = await connect()
    try:
        await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: on_notify(payload))
    except BaseException:  # cancelled or failed: not left open behind our back
        conn.terminate()
        raise
    return conn


async def keep_listening(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    channel: str,
    on_notify: Notify,
    *,
    on_listening: Callable[[], Awaitable[None]],
    first: asyncpg.Connection | None = None,
) -> None:
    """LISTEN until cancelled. A query every 5 s notices a dead connection (after a
    PostgreSQL restart, say); it is replaced a second later, and ``on_listening``
    runs after every (re)connect to catch up on what was sent while nobody
    listened. ``first``: a connection already listening, caught up by the caller."""
    conn = first
    while True:
        try:
            if conn is None:
                conn = await listen(connect, channel, on_notify)
                await on_listening()
            while True:
                await asyncio.sleep(5.0)
                async with asyncio.timeout(5.0):
                    await conn.fetchval("SELECT 1")
        except Exception as exc:  # noqa: BLE001 (InterfaceError, OSError, ...: reconnect)
            log.warning("listener lost its connection", channel=channel, error=repr(exc))
        finally:
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close(timeout=2.0)
                except asyncio.CancelledError:  # a shutdown mid-close: not left open
                    conn.terminate()
                    raise
                except Exception:  # noqa: BLE001 (a dead connection: drop it)
                    conn.terminate()
            conn = None
        await asyncio.sleep(1.0)
