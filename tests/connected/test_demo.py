"""``make demo`` as a test: the tour of tools/demo.py against the five services started
here (their own ports, database and topics), a real local EVM and the indexer. It
is the whole pipeline end to end on chain-made events: webhooks and a Telegram
message delivered, an EMA, an absence fired by the indexer's heartbeat."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.conftest import StartService
from tools.demo import Endpoints, run
from tools.localnet import free_port

pytestmark = [pytest.mark.db, pytest.mark.kafka, pytest.mark.slow]


async def test_the_demo_tour_delivers_every_expected_action(
    env: dict[str, str],
    matcher_env: dict[str, str],
    dispatcher_env: dict[str, str],
    start_service: StartService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    telegram_port = free_port()
    shared = {
        **matcher_env,
        **dispatcher_env,
        "TELEGRAM_API_BASE": f"http://127.0.0.1:{telegram_port}",
        "TELEGRAM_UPDATES_POLL": "1",
        "MAINTENANCE_ENABLED": "false",
        "MATCHER_GROUP": f"matcher-{uuid.uuid4().hex[:8]}",
    }
    # In threads: each waits for its service's /readyz.
    ingest, matcher, dispatcher, api = await asyncio.gather(
        *(
            asyncio.to_thread(start_service, name, shared)
            for name in ("ingest", "matcher", "dispatcher", "api")
        )
    )
    endpoints = Endpoints(
        api=api.base,
        ingest=ingest.base,
        telegram_port=telegram_port,
        indexer_port=free_port(),
        metrics=tuple(p.metrics_url for p in (api, ingest, matcher, dispatcher)),
        log_dir=tmp_path,
    )
    status = await run(90.0, endpoints)
    out = capsys.readouterr().out
    assert status == 0, out[-4000:]
    assert "every expected action was delivered" in out
    assert "telegram chat 4242: Agent 1 passed validation (100/100, final)" in out
    assert '"fired": true' in out  # the EMA firing's explain
