"""tools.migrate leaves the Kafka topics alone where the cluster manages them
(MIGRATE_KAFKA_TOPICS=false: Strimzi's KafkaTopic resources, deploy/k8s/components/strimzi)."""

from __future__ import annotations

import pytest

from tools import migrate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "no_topics", "wanted"),
    [
        (None, False, True),
        ("true", False, True),
        ("TRUE", False, True),
        ("false", False, False),
        ("0", False, False),
        (None, True, False),
        ("true", True, False),
    ],
)
def test_topics_are_created_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, value: str | None, no_topics: bool, wanted: bool
) -> None:
    if value is None:
        monkeypatch.delenv("MIGRATE_KAFKA_TOPICS", raising=False)
    else:
        monkeypatch.setenv("MIGRATE_KAFKA_TOPICS", value)
    assert migrate.topics_wanted(no_topics) is wanted


def test_a_value_that_is_neither_is_refused_before_any_migration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``up`` stops on a bad value before dbmate or Kafka is touched."""
    monkeypatch.setenv("MIGRATE_KAFKA_TOPICS", "sometimes")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1:1/none")
    ran: list[str] = []
    monkeypatch.setattr(migrate, "run_dbmate", lambda *a, **k: ran.append("dbmate"))
    with pytest.raises(SystemExit, match="MIGRATE_KAFKA_TOPICS"):
        migrate.main(["up"])
    assert ran == []


def test_up_without_topics_touches_no_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MIGRATE_KAFKA_TOPICS", "false")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1:1/none")
    ran: list[str] = []
    monkeypatch.setattr(migrate, "run_dbmate", lambda _url, command: ran.append(command))

    async def no_kafka(*_a: object, **_k: object) -> list[str]:
        raise AssertionError("topics were created")

    monkeypatch.setattr(migrate, "ensure_topics", no_kafka)
    migrate.main(["up"])
    assert ran == ["up"]
    assert "Kafka topics not touched" in capsys.readouterr().out
