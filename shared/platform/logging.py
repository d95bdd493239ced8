"""structlog set-up, done once by each service's ``__main__``.

JSON lines (ISO UTC timestamps, contextvars merged first) when stdout is not a
terminal, a readable console otherwise. The standard library's loggers
(aiokafka, asyncpg, aiohttp, faststream) are routed through the same
processors. Values under secret-looking keys are redacted before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|authorization|api_key|apikey|cookie|private_key|dsn|database_url)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")
REDACTED = "***"


def redact_value(value: str) -> str:
    """Hide the password of any URL inside a string."""
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", value)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank values whose key names a secret, and URL passwords."""
    for key, value in list(event_dict.items()):
        if key != "event" and _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_value(value)
    return event_dict


def shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def configure_logging(level: str = "INFO", *, service: str, json: bool | None = None) -> None:
    """Configure structlog and the standard library's logging for one process."""
    if json is None:
        json = not sys.stdout.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    pre_chain = shared_processors()
    structlog.configure(
        # filter_by_level first: a line below the level costs nothing more.
        processors=[
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries at WARNING unless we debug: their INFO lines are per-connection noise.
    lib_level = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    # httpx2 (the mcp client) logs every request URL, query string included, at INFO.
    for name in ("aiokafka", "asyncpg", "aiohttp.access", "faststream", "httpx2", "httpx"):
        logging.getLogger(name).setLevel(lib_level)
    structlog.contextvars.bind_contextvars(service=service)
