"""The event loop the services run on: uvloop (libuv), which asyncpg recommends and
which makes aiohttp and the Kafka client markedly cheaper per message."""

from __future__ import annotations

import asyncio

import uvloop


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop()
