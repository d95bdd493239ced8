"""An event as a row of the ``events`` table: the columns (COPY order), an Event's
values in that order, and an Event read back from a stored row."""

from __future__ import annotations

from typing import Any, Final, Protocol

from shared.contract.events import Event

#: Column order of table `events` for COPY (created_at is left to its default).
EVENT_COLUMNS: Final[tuple[str, ...]] = (
    "id",
    "chain_id",
    "block_number",
    "block_hash",
    "transaction_hash",
    "log_index",
    "registry",
    "event_type",
    "agent_id",
    "timestamp",
    "block_time",
    "owner",
    "previous_owner",
    "updated_by",
    "token_uri",
    "metadata_key",
    "metadata_value",
    "client_address",
    "feedback_index",
    "score",
    "value",
    "value_decimals",
    "tag1",
    "tag2",
    "endpoint",
    "file_uri",
    "file_hash",
    "responder",
    "validator_address",
    "request_uri",
    "request_hash",
    "response",
    "response_uri",
    "response_hash",
    "tag",
    "registry_address",
    "agent_registry",
)


def event_row(e: Event) -> tuple[object, ...]:
    """The event's values in EVENT_COLUMNS order (plain str for the registry)."""
    return (
        e.id,
        e.chain_id,
        e.block_number,
        e.block_hash,
        e.transaction_hash,
        e.log_index,
        e.registry.value,
        e.event_type,
        e.agent_id,
        e.timestamp,
        e.block_time,
        e.owner,
        e.previous_owner,
        e.updated_by,
        e.token_uri,
        e.metadata_key,
        e.metadata_value,
        e.client_address,
        e.feedback_index,
        e.score,
        e.value,
        e.value_decimals,
        e.tag1,
        e.tag2,
        e.endpoint,
        e.file_uri,
        e.file_hash,
        e.responder,
        e.validator_address,
        e.request_uri,
        e.request_hash,
        e.response,
        e.response_uri,
        e.response_hash,
        e.tag,
        e.registry_address,
        e.agent_registry,
    )


#: Columns an Event takes from a stored row (id and block_time are derived).
_FROM_ROW = tuple(c for c in EVENT_COLUMNS if c not in ("id", "block_time"))


class Row(Protocol):
    """A stored row (a database record or a dict), read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def event_from_row(row: Row) -> Event:
    """A stored event (columns named as in EVENT_COLUMNS) as the model the matcher
    receives (events were validated on the way in, so this does not fail on rows
    ingest wrote)."""
    return Event.model_validate({name: row[name] for name in _FROM_ROW})
