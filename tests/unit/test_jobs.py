"""shared.contract.jobs: job ids and the Kafka message formats."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.contract.actions import RestConfig
from shared.contract.events import Event
from shared.contract.jobs import (
    MAX_UNREADABLE_RAW,
    ActionJob,
    CheckpointIn,
    EventMessage,
    ReorgIn,
    RetractionMessage,
    TickMessage,
    UnreadableLetter,
    dump_event_messages,
    dump_message,
    job_id,
    parse_topic_message,
)
from shared.contract.topics import MAX_MESSAGE_BYTES
from tests.strategies import action_jobs, events, example_event, topic_messages

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 30, 12, 0, tzinfo=UTC)
_utf8 = st.characters(codec="utf-8")


def test_job_id_known_value() -> None:
    # sha256(b"t1:84532-100-3:7").hexdigest()[:32], fixed so a change of the formula shows
    assert job_id("t1", "84532-100-3", 7) == "d8866d2accda8c9122aeae66796923bb"


@given(st.text(_utf8, min_size=1), st.text(_utf8, min_size=1), st.integers(0, 2**31))
def test_job_id_is_deterministic(trigger_id: str, event_id: str, action_id: int) -> None:
    value = job_id(trigger_id, event_id, action_id)
    assert value == job_id(trigger_id, event_id, action_id)
    assert len(value) == 32
    assert set(value) <= set("0123456789abcdef")


def test_job_id_distinguishes_each_part() -> None:
    ids = {
        job_id("trigger-a", "1-2-3", 1),
        job_id("trigger-b", "1-2-3", 1),
        job_id("trigger-a", "1-2-4", 1),
        job_id("trigger-a", "1-2-3", 2),
        job_id("trigger-a", "1-2-3", 11),
    }
    assert len(ids) == 5


@given(topic_messages())
def test_topic_messages_round_trip(message: EventMessage | RetractionMessage) -> None:
    data = dump_message(message)
    assert isinstance(data, bytes)
    assert parse_topic_message(data) == message


def test_event_message_is_compact_json_with_decimal_strings() -> None:
    event = Event.model_validate(
        example_event("NewFeedback", score=None, value=9977, value_decimals=2)
    )
    data = dump_message(EventMessage(event=event))
    assert b": " not in data
    assert b", " not in data
    body = json.loads(data)
    assert body["kind"] == "event"
    assert body["event"]["score"] == "99.77"
    assert body["event"]["value"] == "9977"
    assert body["event"]["id"] == "84532-100-3"
    parsed = parse_topic_message(data)
    assert isinstance(parsed, EventMessage)
    assert parsed.event.score == event.score


def test_retraction_message() -> None:
    message = RetractionMessage(chain_id=1, from_block=10, reorg_id="r1", created_at=NOW)
    parsed = parse_topic_message(dump_message(message))
    assert isinstance(parsed, RetractionMessage)
    assert (parsed.to_block, parsed.created_at) == (None, NOW)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"kind": "block", "chain_id": 1}, ()),
        ({"chain_id": 1}, ()),
        (
            {
                "kind": "retraction",
                "chain_id": 1,
                "from_block": 5,
                "to_block": 4,
                "reorg_id": "r",
                "created_at": "2026-01-01T00:00:00Z",
            },
            ("retraction", "to_block"),
        ),
        (
            {
                "kind": "retraction",
                "chain_id": 1,
                "from_block": 5,
                "reorg_id": "r",
                "created_at": "2026-01-01T00:00:00",
            },
            ("retraction", "created_at"),
        ),
        (
            {"kind": "event", "event": {**example_event("Registered"), "owner": "0x1"}},
            ("event", "event", "owner"),
        ),
    ],
)
def test_bad_topic_messages(body: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        parse_topic_message(json.dumps(body).encode())
    assert [tuple(e["loc"]) for e in info.value.errors()] == [loc]


def test_reorg_in() -> None:
    reorg = ReorgIn.model_validate(
        {"chain_id": 1, "from_block": 15, "new_block_hash": "0x" + "AA" * 32}
    )
    assert reorg.new_block_hash == "0x" + "aa" * 32
    with pytest.raises(ValidationError) as info:
        ReorgIn.model_validate({"chain_id": 1, "from_block": 15, "to_block": 14})
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("to_block",)]
    with pytest.raises(ValidationError) as info:
        ReorgIn.model_validate({"chain_id": 1, "reason": "test"})
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("from_block",)]


@given(
    chain_id=st.integers(1, 2**31 - 1),
    block_number=st.integers(0, 2**63 - 1),
    block_hash=st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex()),
    timestamp=st.integers(0, 2**63 - 1),
    ingested_at=st.none() | st.datetimes(timezones=st.just(UTC)),
)
def test_tick_messages_round_trip(
    chain_id: int,
    block_number: int,
    block_hash: str,
    timestamp: int,
    ingested_at: datetime | None,
) -> None:
    tick = TickMessage(
        chain_id=chain_id,
        block_number=block_number,
        block_hash=block_hash,
        timestamp=timestamp,
        ingested_at=ingested_at,
    )
    parsed = parse_topic_message(dump_message(tick))
    assert isinstance(parsed, TickMessage)
    assert parsed == tick
    assert parsed.key == f"hb:{chain_id}-{block_number}@{block_hash}"


def test_tick_message_is_compact_and_leaves_out_a_missing_ingest_time() -> None:
    tick = TickMessage(
        chain_id=1, block_number=7, block_hash="0x" + "AB" * 32, timestamp=1_700_000_000
    )
    data = dump_message(tick)
    assert json.loads(data) == {
        "kind": "tick",
        "chain_id": 1,
        "block_number": 7,
        "block_hash": "0x" + "ab" * 32,
        "timestamp": 1_700_000_000,
    }
    assert b" " not in data
    stamped = tick.model_copy(update={"ingested_at": NOW})
    parsed = parse_topic_message(dump_message(stamped))
    assert isinstance(parsed, TickMessage)
    assert parsed.ingested_at == NOW


_CHECKPOINT = {
    "chain_id": 84532,
    "block_number": 100,
    "block_hash": "0x" + "ab" * 32,
    "timestamp": 1_700_000_000,
}


def test_checkpoint_in() -> None:
    checkpoint = CheckpointIn.model_validate({**_CHECKPOINT, "block_hash": "0x" + "AB" * 32})
    assert checkpoint.block_hash == "0x" + "ab" * 32
    assert (checkpoint.chain_id, checkpoint.block_number, checkpoint.timestamp) == (
        84532,
        100,
        1_700_000_000,
    )


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"timestamp": None}, ("timestamp",)),
        ({"block_hash": None}, ("block_hash",)),
        ({"block_number": -1}, ("block_number",)),
        ({"block_number": 2**63}, ("block_number",)),
        ({"block_number": "100"}, ("block_number",)),
        ({"timestamp": True}, ("timestamp",)),
        ({"timestamp": -1}, ("timestamp",)),
        ({"block_hash": "0x1234"}, ("block_hash",)),
        ({"block_hash": "ab" * 33}, ("block_hash",)),
        ({"chain_id": 0}, ("chain_id",)),
        ({"chain_id": 2**31}, ("chain_id",)),
        ({"colour": "red"}, ("colour",)),
    ],
)
def test_checkpoint_in_refuses_bad_input(change: dict[str, Any], loc: tuple[str, ...]) -> None:
    body = {k: v for k, v in {**_CHECKPOINT, **change}.items() if v is not None}
    with pytest.raises(ValidationError) as info:
        CheckpointIn.model_validate(body)
    assert [tuple(e["loc"]) for e in info.value.errors()] == [loc]


def test_bad_tick_message() -> None:
    body = {"kind": "tick", "chain_id": 1, "block_number": 7, "block_hash": "0x12", "timestamp": 1}
    with pytest.raises(ValidationError) as info:
        parse_topic_message(json.dumps(body).encode())
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("tick", "block_hash")]


@given(action_jobs())
def test_action_jobs_round_trip(job: ActionJob) -> None:
    assert ActionJob.parse(job.dump()) == job


def test_action_job_leaves_out_later_fields_at_their_defaults() -> None:
    """A dispatcher of the first release refuses unknown fields: a matcher's job
    (no run, no parts) must read as it did; fields carry on once they are set."""
    event = Event.model_validate(example_event("Registered"))
    job = ActionJob(
        job_id=job_id("t", event.id, 1),
        trigger_id="t",
        trigger_name="n",
        user_id="u",
        action_id=1,
        action_type="telegram",
        config={"chat_id": "1", "message_template": "m"},
        event=event,
        created_at=NOW,
    )
    first_release = {
        "job_id", "trigger_id", "trigger_name", "user_id", "action_id", "action_type",
        "config", "event", "explain", "attempt", "due_at", "created_at",
    }  # fmt: skip
    assert set(json.loads(job.dump())) == first_release
    later = job.retry(due_at=NOW, parts=(2, "0123456789abcdef"))
    redriven = later.model_copy(update={"run_id": "r1"})
    body = json.loads(redriven.dump())
    assert (body["parts_sent"], body["parts_digest"], body["run_id"]) == (
        2,
        "0123456789abcdef",
        "r1",
    )
    assert ActionJob.parse(redriven.dump()) == redriven


@given(action_jobs())
def test_an_action_jobs_event_leaves_out_its_empty_fields(job: ActionJob) -> None:
    """Each null costs a validator when the dispatcher parses the job, each derived
    field a check: the event's empty fields and its id and block_time are left out
    (absent reads back as None; the derived ones are computed), the rest are all
    there, and a job written whole (a matcher of an earlier release) reads the same."""
    body = json.loads(job.dump())
    written = body["event"]
    assert None not in written.values()
    full = job.event.model_dump(mode="json")
    assert {"id", "block_time"} <= set(full)
    assert {k for k, v in full.items() if v is not None} - {"id", "block_time"} == set(written)
    body["event"] = full
    assert ActionJob.parse(json.dumps(body).encode()) == job


def test_action_job_retry_and_validation() -> None:
    event = Event.model_validate(example_event("Registered"))
    job = ActionJob(
        job_id=job_id("t", event.id, 1),
        trigger_id="t",
        trigger_name="name",
        user_id="u",
        action_id=1,
        action_type="rest",
        config={"url": "https://a.example", "signing_secret": "s"},
        event=event,
        explain={"ema": "81.5"},
        created_at=NOW,
    )
    later = job.retry(due_at=NOW + timedelta(seconds=30))
    assert (later.attempt, later.due_at, later.job_id) == (
        2,
        NOW + timedelta(seconds=30),
        job.job_id,
    )
    assert job.attempt == 1
    config = job.action_config()
    assert isinstance(config, RestConfig)
    assert config.signing_secret is not None
    assert config.signing_secret.get_secret_value() == "s"
    body = json.loads(job.dump())
    assert body["config"]["signing_secret"] == "s"
    body["job_id"] = "not-hex"
    body["created_at"] = "2026-01-01T00:00:00"
    with pytest.raises(ValidationError) as info:
        ActionJob.parse(json.dumps(body).encode())
    assert {tuple(e["loc"]) for e in info.value.errors()} == {("job_id",), ("created_at",)}


@given(events=st.lists(events(), min_size=1, max_size=5))
def test_dump_event_messages_equals_the_model_dump(events: list[Event]) -> None:
    at = datetime(2026, 11, 24, 12, 30, 1, 123456, tzinfo=UTC)
    fast = dump_event_messages(events, at)
    slow = [dump_message(EventMessage(kind="event", event=e, ingested_at=at)) for e in events]
    assert fast == slow
    assert [parse_topic_message(b) for b in fast] == [
        EventMessage(kind="event", event=e, ingested_at=at) for e in events
    ]


def test_an_unreadable_message_of_any_size_makes_a_letter_that_fits_the_topic() -> None:
    at = datetime.now(UTC)
    small = UnreadableLetter.of("t", b"not a job", "invalid", at)
    assert (small.raw, small.size, small.sha256) == (b"not a job", None, None)
    assert b"size" not in small.dump()
    body = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB, as base64 8 MiB
    letter = UnreadableLetter.of("t", body, "invalid", at)
    assert letter.raw == body[:MAX_UNREADABLE_RAW]
    assert letter.size == len(body)
    assert letter.sha256 == hashlib.sha256(body).hexdigest()
    dumped = letter.dump()
    assert len(dumped) < 2 * MAX_UNREADABLE_RAW < MAX_MESSAGE_BYTES
    assert UnreadableLetter.model_validate_json(dumped) == letter
