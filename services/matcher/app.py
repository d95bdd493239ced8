"""Builds the matcher application: ``create_app(settings)``."""

from __future__ import annotations

from faststream import FastStream

from services.matcher.settings import MatcherSettings
from shared.stream import StreamService, create_stream_app, new_broker


def create_app(settings: MatcherSettings) -> FastStream:
    service = StreamService(settings=settings, broker=new_broker(settings))
    return create_stream_app(service)
