"""shared.contract.events: validation, normalization and round trips of events."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given
from pydantic import ValidationError

from shared.contract.event_fields import MAX_TEXT
from shared.contract.event_rows import (
    EVENT_COLUMNS,
    event_row,
)
from shared.contract.events import (
    EVENT_TYPES,
    REQUIRED_FIELDS,
    Event,
    ItemError,
    Registry,
    feedback_value,
    parse_events,
)
from tests.strategies import DROP, event_dicts, events, example_event

pytestmark = pytest.mark.unit


def errors_of(data: Any) -> list[tuple[str, str]]:
    """(dotted field, message) of every error Event reports for data."""
    with pytest.raises(ValidationError) as info:
        Event.model_validate(data)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


def fields_of(data: Any) -> set[str]:
    return {field for field, _ in errors_of(data)}


# --- round trips and invariants ------------------------------------------------------------


@given(events())
def test_json_dump_round_trips(event: Event) -> None:
    dumped = event.model_dump(mode="json")
    assert dumped["id"] == event.id
    assert Event.model_validate(dumped) == event
    assert Event.model_validate_json(event.model_dump_json()) == event


@given(events())
def test_python_dump_round_trips(event: Event) -> None:
    assert Event.model_validate(event.model_dump()) == event


@given(event_dicts())
def test_normalized_invariants(data: dict[str, Any]) -> None:
    event = Event.model_validate(data)
    assert event.id == f"{data['chain_id']}-{data['block_number']}-{data['log_index']}"
    assert event.block_time == datetime.fromtimestamp(data["timestamp"], UTC)
    assert event.block_time.tzinfo is not None
    for name in ("block_hash", "transaction_hash", "owner", "client_address", "request_hash"):
        value = getattr(event, name)
        assert value is None or value == data[name].lower()
    if event.event_type == "NewFeedback":
        assert event.value is not None
        assert event.value_decimals is not None
        assert event.score is not None
        with localcontext(Context(prec=100)):
            assert event.score * Decimal(10) ** event.value_decimals == event.value
        assert feedback_value(event) == event.score
    else:
        assert feedback_value(event) is None


@given(event_dicts("NewFeedback"))
def test_feedback_layouts_are_told_apart(data: dict[str, Any]) -> None:
    event = Event.model_validate(data)
    if "value" in data:
        expected = (Decimal(int(data["value"])), data["value_decimals"])
        assert (event.value, event.value_decimals) == expected
    else:
        assert event.score == event.value == data["score"]
        assert event.value_decimals == 0


@given(events())
def test_event_row_follows_event_columns(event: Event) -> None:
    row = event_row(event)
    assert len(row) == len(EVENT_COLUMNS)
    for column, value in zip(EVENT_COLUMNS, row, strict=True):
        expected = getattr(event, column)
        assert value == expected
        if column == "registry":
            assert type(value) is str


def test_event_columns_cover_the_model() -> None:
    assert EVENT_COLUMNS[0] == "id"
    assert set(EVENT_COLUMNS) == set(Event.model_fields) | {"id", "block_time"}
    assert "created_at" not in EVENT_COLUMNS
    assert len(set(EVENT_COLUMNS)) == len(EVENT_COLUMNS)


def test_event_types_per_registry() -> None:
    assert EVENT_TYPES[Registry.identity] == {
        "Registered",
        "URIUpdated",
        "MetadataSet",
        "Transfer",
        "MetadataUpdate",
    }
    assert EVENT_TYPES[Registry.reputation] == {
        "NewFeedback",
        "FeedbackRevoked",
        "ResponseAppended",
    }
    assert EVENT_TYPES[Registry.validation] == {"ValidationRequest", "ValidationResponse"}
    assert set(REQUIRED_FIELDS) == set().union(*EVENT_TYPES.values())


# --- feedback layouts ----------------------------------------------------------------------


def test_legacy_and_current_layouts_give_the_same_score() -> None:
    legacy = Event.model_validate(example_event("NewFeedback", score=87))
    current = Event.model_validate(
        example_event("NewFeedback", score=DROP, value=8700, value_decimals=2)
    )
    assert legacy.score == current.score == Decimal(87)
    assert (legacy.value, legacy.value_decimals) == (Decimal(87), 0)
    assert (current.value, current.value_decimals) == (Decimal(8700), 2)


def test_value_accepts_big_ints_and_integer_strings_exactly() -> None:
    big = -(10**38)
    event = Event.model_validate(
        example_event("NewFeedback", score=DROP, value=str(big), value_decimals=18)
    )
    assert event.value == Decimal(big)
    assert event.score == Decimal("-100000000000000000000")
    event = Event.model_validate(
        example_event("NewFeedback", score=DROP, value=12345678901234567890123, value_decimals=3)
    )
    assert str(event.score) == "12345678901234567890.123"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"score": DROP}, "value", "NewFeedback needs score (legacy layout) or value"),
        ({"score": DROP, "value": 5}, "value_decimals", "required with value"),
        ({"score": DROP, "value_decimals": 2}, "value", "required with value_decimals"),
        ({"score": 101}, "score", "legacy score must be an integer 0..100"),
        ({"score": "87.5"}, "score", "legacy score must be an integer 0..100"),
        ({"score": 1.5}, "score", "must be an integer or a decimal string"),
        ({"score": "1e2", "value": 10, "value_decimals": 0}, "score", "must equal value"),
        ({"score": DROP, "value": 10**38 + 1, "value_decimals": 0}, "value", "at most 10^38"),
        ({"score": DROP, "value": 1.0, "value_decimals": 0}, "value", "must be an integer"),
        ({"score": DROP, "value": "1.5", "value_decimals": 0}, "value", "must be an integer"),
        ({"score": DROP, "value": True, "value_decimals": 0}, "value", "must be an integer"),
        ({"score": DROP, "value": 1, "value_decimals": 19}, "value_decimals", "less than or"),
    ],
)
def test_feedback_value_errors(overrides: dict[str, Any], field: str, message: str) -> None:
    errors = errors_of(example_event("NewFeedback", **overrides))
    assert any(f == field and message in m for f, m in errors), errors


def test_score_given_with_value_must_agree() -> None:
    event = Event.model_validate(
        example_event("NewFeedback", score="99.77", value=9977, value_decimals=2)
    )
    assert event.score == Decimal("99.77")


# --- field errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "field"),
    [(t, f) for t, fields in sorted(REQUIRED_FIELDS.items()) for f in fields],
)
def test_missing_registry_field_is_named(event_type: str, field: str) -> None:
    assert (field, f"required for {event_type}") in errors_of(
        example_event(event_type, **{field: DROP})
    )
    assert (field, f"required for {event_type}") in errors_of(
        example_event(event_type, **{field: None})
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("owner", "0x1234"),
        ("owner", "11" * 21),
        ("block_hash", "0x" + "zz" * 32),
        ("transaction_hash", "0x" + "ab" * 31),
        ("updated_by", "0x" + "g" * 40),
        ("metadata_value", "0xabc"),
        ("metadata_value", "abcd"),
    ],
)
def test_bad_hex_is_named(field: str, value: str) -> None:
    event_type = "MetadataSet" if field == "metadata_value" else "Registered"
    if field == "updated_by":
        event_type = "URIUpdated"
    assert fields_of(example_event(event_type, **{field: value})) == {field}


def test_uppercase_hex_is_lower_cased() -> None:
    event = Event.model_validate(
        example_event(
            "MetadataSet",
            block_hash="0x" + "AB" * 32,
            metadata_value="0xDEADbeef",
            previous_owner=None,
        )
    )
    assert event.block_hash == "0x" + "ab" * 32
    assert event.metadata_value == "0xdeadbeef"
    cleared = Event.model_validate(example_event("MetadataSet", metadata_value="0x"))
    assert cleared.metadata_value == "0x"
    owner = Event.model_validate(example_event("Registered", owner="0x" + "AbCdEf0123" * 4))
    assert owner.owner == "0x" + "abcdef0123" * 4


def test_unknown_event_type_and_registry() -> None:
    assert ("event_type", "unknown event type Minted") in errors_of(
        example_event("Registered", event_type="Minted")
    )
    assert fields_of(example_event("Registered", registry="identities")) == {"registry"}


def test_event_type_of_another_registry() -> None:
    errors = errors_of(example_event("Transfer", registry="reputation"))
    assert errors == [
        ("event_type", "Transfer is an event of the identity registry, not reputation")
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("block_number", "12"),
        ("chain_id", "1"),
        ("agent_id", "42"),
        ("log_index", 1.0),
        ("timestamp", 1_700_000_000.0),
        ("agent_id", True),
        ("chain_id", True),
        ("response", False),
        ("token_uri", 5),
        ("owner", 0),
    ],
)
def test_wrong_types_are_named(field: str, value: Any) -> None:
    event_type = "ValidationResponse" if field == "response" else "Registered"
    data = example_event(event_type, **{field: value})
    errors = errors_of(data)
    assert [f for f, _ in errors] == [field], errors
    assert "valid" in errors[0][1]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent_id", 2**63),
        ("agent_id", -1),
        ("chain_id", 0),
        ("chain_id", 2**31),
        ("block_number", -1),
        ("log_index", 2**31),
        ("timestamp", 1438269972),
        ("response", 101),
        ("response", -1),
        ("feedback_index", 2**63),
    ],
)
def test_out_of_range_is_named(field: str, value: int) -> None:
    event_type = "ValidationResponse" if field == "response" else "ResponseAppended"
    assert fields_of(example_event(event_type, **{field: value})) == {field}


def test_range_bounds_are_inclusive() -> None:
    event = Event.model_validate(
        example_event(
            "ValidationResponse",
            agent_id=2**63 - 1,
            chain_id=2**31 - 1,
            log_index=2**31 - 1,
            timestamp=1438269973,
            response=100,
        )
    )
    assert event.id == f"{2**31 - 1}-100-{2**31 - 1}"


def test_timestamp_more_than_a_day_ahead_is_refused() -> None:
    now = int(time.time())
    Event.model_validate(example_event("Registered", timestamp=now + 3600))
    errors = errors_of(example_event("Registered", timestamp=now + 2 * 86400))
    assert errors == [("timestamp", "must not be more than one day in the future")]


def test_extra_field_is_refused() -> None:
    assert ("score_v2", "Extra inputs are not permitted") in errors_of(
        example_event("Registered", score_v2=1)
    )


def test_texts_are_kept_as_the_chain_has_them_nuls_standing_in() -> None:
    long_uri = "x" * 100_000
    event = Event.model_validate(example_event("Registered", token_uri=long_uri))
    assert event.token_uri == long_uri
    assert Event.model_validate(example_event("Registered", token_uri="a\x00b")).token_uri == (
        "a\u2400b"
    )
    tagged = Event.model_validate(example_event("NewFeedback", tag1="starred\x00\x00\x00"))
    assert tagged.tag1 == "starred"  # a bytes32 tag's padding is not part of it
    inner = Event.model_validate(example_event("NewFeedback", tag2="a\x00b", tag1="x" * 257))
    assert (inner.tag2, inner.tag1) == ("a\u2400b", "x" * 257)
    # Only what one request could never carry is refused.
    assert fields_of(example_event("NewFeedback", tag2="x" * (MAX_TEXT + 1))) == {"tag2"}


def test_derived_fields_may_be_echoed_but_must_agree() -> None:
    event = Event.model_validate(example_event("Registered"))
    echoed = example_event("Registered", id=event.id, block_time=event.block_time.isoformat())
    assert Event.model_validate(echoed) == event
    errors = errors_of(example_event("Registered", id="1-2-3", block_time="2020-01-01T00:00:00Z"))
    assert {f for f, _ in errors} == {"id", "block_time"}


def test_event_is_frozen() -> None:
    event = Event.model_validate(example_event("Registered"))
    with pytest.raises(ValidationError):
        event.agent_id = 7  # type: ignore[misc]


# --- batches -------------------------------------------------------------------------------


def test_parse_events_collects_every_error_with_its_index() -> None:
    good = example_event("Registered")
    items: list[object] = [
        good,
        "not a dict",
        example_event("NewFeedback", agent_id=DROP, client_address="0x12"),
        example_event("FeedbackRevoked", log_index=2),
        example_event("Transfer", block_number="7", extra=1),
    ]
    parsed, errors = parse_events(items)
    assert [e.event_type for e in parsed] == ["Registered", "FeedbackRevoked"]
    assert sorted(errors, key=lambda e: (e.index, e.field)) == [
        ItemError(1, "", "not an object"),
        ItemError(2, "agent_id", "required for NewFeedback"),
        ItemError(2, "client_address", "must be 0x followed by 40 hex digits"),
        ItemError(4, "block_number", "Input should be a valid integer"),
        ItemError(4, "extra", "Extra inputs are not permitted"),
    ]


def test_parse_events_of_valid_batch() -> None:
    items: list[object] = [example_event("Registered", log_index=i) for i in range(50)]
    parsed, errors = parse_events(items)
    assert errors == []
    assert [e.id for e in parsed] == [f"84532-100-{i}" for i in range(50)]


def test_rpc_hex_quantities_and_integer_strings_are_refused_where_integers_are_due() -> None:
    """Issue 15: the ingest contract takes decoded numbers (README, "Numbers are JSON
    numbers"); only value and score may be decimal strings."""
    base = example_event("NewFeedback", value=str(10**38 - 1), value_decimals=0)
    base.pop("score", None)
    accepted, errors = parse_events([base])
    assert errors == []
    assert accepted[0].value == Decimal(10**38 - 1)
    for field, raw in [
        ("block_number", "0x1a"),
        ("block_number", "26"),
        ("agent_id", "0x2a"),
        ("agent_id", 2**64),
        ("log_index", "0x0"),
        ("timestamp", "0x6553f100"),
        ("feedback_index", "1"),
    ]:
        _events, refused = parse_events([{**base, field: raw}])
        assert [e.field for e in refused] == [field], (field, raw)


def test_an_identity_events_agent_belongs_to_the_registry_that_emitted_it() -> None:
    """Issue 15: registry_address and agent_registry say which deployment an event is
    of; an Identity registry's events concern its own agents."""
    own = "0x" + "AB" * 20
    (registered,), errors = parse_events([example_event("Registered", registry_address=own)])
    assert errors == []
    assert registered.agent_registry == registered.registry_address == own.lower()
    other = "0x" + "cd" * 20
    _events, refused = parse_events(
        [example_event("Registered", registry_address=own, agent_registry=other)]
    )
    assert [e.field for e in refused] == ["agent_registry"]
    feedback = example_event("NewFeedback", registry_address=other, agent_registry=own)
    (stored,), errors = parse_events([feedback])
    assert errors == []
    assert (stored.registry_address, stored.agent_registry) == (other, own.lower())
    (plain,), _ = parse_events([example_event("NewFeedback")])
    assert plain.registry_address is None
    assert plain.agent_registry is None
