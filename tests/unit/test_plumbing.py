"""Settings, logging redaction, topic keys and the migration tool's URL handling."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from pydantic import ValidationError

from services.api.settings import ApiSettings
from services.ingest.settings import IngestSettings
from shared.contract.topics import TOPICS, partition_key
from shared.platform.logging import configure_logging
from tools.migrate import dbmate_url

pytestmark = pytest.mark.unit

BASE = {"DATABASE_URL": "postgresql://u:pw@127.0.0.1:5432/db"}


def test_ingest_tokens_are_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**BASE, "INGEST_TOKENS": " tok-one ,tok-two,, tok-three "}.items():
        monkeypatch.setenv(key, value)
    settings = IngestSettings.from_env()
    tokens = [t.get_secret_value() for t in settings.ingest_tokens]
    assert tokens == ["tok-one", "tok-two", "tok-three"]
    assert settings.http_port == 8081
    assert settings.database_role == "erc8004_ingest"
    assert "tok-" not in repr(settings)


def test_missing_and_empty_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("INGEST_TOKENS", "")
    with pytest.raises(ValidationError) as err:
        IngestSettings.from_env()
    fields = {e["loc"][0] for e in err.value.errors()}
    assert fields == {"DATABASE_URL", "INGEST_TOKENS"}


def test_short_jwt_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**BASE, "JWT_SECRET": "short", "SECRETS_KEY": "k"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        ApiSettings.from_env()


def test_json_logs_redact_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="unit", json=True)
    try:
        log = structlog.get_logger("unit")
        log.info(
            "connecting",
            password="hunter2",
            authorization="Bearer abc",
            url="postgresql://user:s3cret@host/db",
            count=3,
        )
        logging.getLogger("aiokafka").warning("stdlib %s", "line")
        out = capsys.readouterr().out.strip().splitlines()
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    first, second = (json.loads(line) for line in out)
    assert first["password"] == "***"
    assert first["authorization"] == "***"
    assert first["url"] == "postgresql://user:***@host/db"
    assert first["count"] == 3
    assert first["service"] == "unit"
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert "hunter2" not in "\n".join(out)
    assert "s3cret" not in "\n".join(out)
    assert second["event"] == "stdlib line"
    assert second["logger"] == "aiokafka"


def test_event_key_and_topics() -> None:
    # one partition per chain: a chain is consumed in order (docs/semantics.md)
    assert partition_key(8453, 42) == b"8453"
    assert partition_key(8453, 7) == partition_key(8453) == b"8453"
    assert partition_key(1, None) == b"1"
    by_name = {t.name: t.partitions for t in TOPICS}
    assert by_name["erc8004.events"] == 12
    assert by_name["erc8004.actions"] == 12
    assert set(by_name) == {
        "erc8004.events",
        "erc8004.actions",
        "erc8004.actions.retry",
        "erc8004.actions.dlq",
    }


def test_dbmate_url() -> None:
    plain = "postgresql://u:p@h:5432/d"
    assert dbmate_url(plain, server_tls=False) == "postgres://u:p@h:5432/d?sslmode=disable"
    assert dbmate_url(plain, server_tls=True) == "postgres://u:p@h:5432/d?sslmode=require"
    assert (
        dbmate_url("postgresql://u:p@h/d?sslmode=require") == "postgres://u:p@h/d?sslmode=require"
    )
