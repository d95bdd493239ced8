"""The registries' events, every layout ever deployed, and their decoding into the
ingest contract's fields.

Each layout is written as its Solidity declaration; the topic a log carries first is
keccak-256 of the canonical signature (the name and the parameter types), so the
layouts tell themselves apart. ``indexed`` parameters travel as topics: a value type
as itself, a string or bytes only as its keccak-256 (not recoverable: such a field
is left out, e.g. ``tag1`` of the November 2025 feedback layout). Strings are decoded
as UTF-8 with invalid bytes replaced by U+FFFD (the chain does not check UTF-8; the
ABI encodes a string as its raw bytes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from eth_abi.abi import decode
from eth_hash.auto import keccak

from shared.contract.events import Registry

_PARAM = re.compile(r"^(\w+)(\s+indexed)?\s+(\w+)$")
_DECLARATION = re.compile(r"^(\w+)\((.*)\)$", re.DOTALL)

#: ABI parameter name → ingest field, for every layout (`None`: not carried).
FIELDS: Final[Mapping[str, str | None]] = {
    "agentId": "agent_id",
    "tokenId": "agent_id",
    "_tokenId": "agent_id",
    "agentURI": "token_uri",
    "agentUri": "token_uri",
    "tokenURI": "token_uri",
    "newURI": "token_uri",
    "newUri": "token_uri",
    "owner": "owner",
    "to": "owner",
    "from": "previous_owner",
    "updatedBy": "updated_by",
    "metadataKey": "metadata_key",
    "key": "metadata_key",
    "metadataValue": "metadata_value",
    "indexedMetadataKey": None,
    "indexedKey": None,
    "clientAddress": "client_address",
    "feedbackIndex": "feedback_index",
    "value": "value",
    "valueDecimals": "value_decimals",
    "score": "score",
    "indexedTag1": None,
    "tag1": "tag1",
    "tag2": "tag2",
    "endpoint": "endpoint",
    "feedbackURI": "file_uri",
    "feedbackUri": "file_uri",
    "feedbackHash": "file_hash",
    "responder": "responder",
    "responseURI": "response_uri",
    "responseUri": "response_uri",
    "responseHash": "response_hash",
    "validatorAddress": "validator_address",
    "requestURI": "request_uri",
    "requestUri": "request_uri",
    "requestHash": "request_hash",
    "response": "response",
    "tag": "tag",
}
#: Per event, names whose field differs from FIELDS (v1.0 MetadataSet's `value`).
_OVERRIDES: Final[Mapping[str, Mapping[str, str]]] = {
    "MetadataSet": {"value": "metadata_value"},
}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    indexed: bool

    @property
    def dynamic(self) -> bool:
        return self.type in ("string", "bytes") or self.type.endswith("[]")


@dataclass(frozen=True)
class EventAbi:
    """One layout of one registry event."""

    registry: Registry
    #: The ingest ``event_type`` (v1 ``UriUpdated`` is posted as ``URIUpdated``).
    event_type: str
    layout: str
    declaration: str

    @cached_property
    def name(self) -> str:
        return self._parsed[0]

    @cached_property
    def params(self) -> tuple[Param, ...]:
        return self._parsed[1]

    @cached_property
    def _parsed(self) -> tuple[str, tuple[Param, ...]]:
        match = _DECLARATION.match(" ".join(self.declaration.split()))
        if match is None:
            raise ValueError(f"not an event declaration: {self.declaration}")
        params = []
        for part in match.group(2).split(","):
            found = _PARAM.match(part.strip())
            if found is None:
                raise ValueError(f"bad parameter {part!r} in {self.declaration}")
            params.append(Param(found.group(3), found.group(1), found.group(2) is not None))
        return match.group(1), tuple(params)

    @cached_property
    def signature(self) -> str:
        return f"{self.name}({','.join(p.type for p in self.params)})"

    @cached_property
    def topic0(self) -> str:
        return "0x" + keccak(self.signature.encode()).hex()

    @cached_property
    def topics(self) -> int:
        """Topics a log of this layout carries (topic0 and one per indexed parameter)."""
        return 1 + sum(p.indexed for p in self.params)

    def field_of(self, param: Param) -> str | None:
        override = _OVERRIDES.get(self.name, {}).get(param.name)
        if override is not None:
            return override
        if param.name not in FIELDS:
            raise KeyError(f"{self.signature}: no ingest field for {param.name}")
        field = FIELDS[param.name]
        # An indexed string or bytes is only its hash: the value is not in the log.
        return None if param.indexed and param.dynamic else field


def _events(registry: Registry, layout: str, *declarations: str) -> list[EventAbi]:
    return [EventAbi(registry, _event_type(d), layout, " ".join(d.split())) for d in declarations]


def _event_type(declaration: str) -> str:
    name = declaration.split("(", 1)[0].strip()
    return "URIUpdated" if name == "UriUpdated" else name


_I, _R, _V = Registry.identity, Registry.reputation, Registry.validation

#: Every layout, newest first within an event (a layout shared by several versions
#: is listed once, under its newest). docs/indexer.md has the table per field.
EVENTS: Final[tuple[EventAbi, ...]] = (
    *_events(
        _I,
        "2.0.0",
        "Transfer(address indexed from, address indexed to, uint256 indexed tokenId)",
        "Registered(uint256 indexed agentId, string agentURI, address indexed owner)",
        "MetadataSet(uint256 indexed agentId, string indexed indexedMetadataKey,"
        " string metadataKey, bytes metadataValue)",
        "URIUpdated(uint256 indexed agentId, string newURI, address indexed updatedBy)",
        "MetadataUpdate(uint256 _tokenId)",
    ),
    *_events(
        _I,
        "1.1.0",
        "MetadataSet(uint256 indexed agentId, string indexed indexedMetadataKey,"
        " string metadataKey, string metadataValue)",
        "UriUpdated(uint256 indexed agentId, string newUri, address indexed updatedBy)",
    ),
    *_events(
        _R,
        "2.0.0",
        "NewFeedback(uint256 indexed agentId, address indexed clientAddress,"
        " uint64 feedbackIndex, int128 value, uint8 valueDecimals,"
        " string indexed indexedTag1, string tag1, string tag2, string endpoint,"
        " string feedbackURI, bytes32 feedbackHash)",
        "FeedbackRevoked(uint256 indexed agentId, address indexed clientAddress,"
        " uint64 indexed feedbackIndex)",
        "ResponseAppended(uint256 indexed agentId, address indexed clientAddress,"
        " uint64 feedbackIndex, address indexed responder, string responseURI,"
        " bytes32 responseHash)",
    ),
    *_events(
        _R,
        "2.0.0-pre (2026-01-19)",
        "NewFeedback(uint256 indexed agentId, address indexed clientAddress,"
        " uint64 feedbackIndex, int256 value, uint8 valueDecimals,"
        " string indexed indexedTag1, string tag1, string tag2, string endpoint,"
        " string feedbackURI, bytes32 feedbackHash)",
    ),
    *_events(
        _R,
        "1.1.0 (2026-01-18)",
        "NewFeedback(uint256 indexed agentId, address indexed clientAddress,"
        " uint64 feedbackIndex, uint256 value, uint8 valueDecimals,"
        " string indexed indexedTag1, string tag1, string tag2, string endpoint,"
        " string feedbackURI, bytes32 feedbackHash)",
    ),
    *_events(
        _R,
        "1.1.0 (2026-01-11)",
        "NewFeedback(uint256 indexed agentId, address indexed clientAddress,"
        " uint64 feedbackIndex, uint8 score, string indexed indexedTag1, string tag1,"
        " string tag2, string endpoint, string feedbackURI, bytes32 feedbackHash)",
    ),
    *_events(
        _R,
        "1.1.0 (2026-01-07)",
        "NewFeedback(uint256 indexed agentId, address indexed clientAddress,"
        " uint64 feedbackIndex, uint8 score, string indexed tag1, string tag2,"
        " string endpoint, string feedbackURI, bytes32 feedbackHash)",
    ),
    *_events(
        _R,
        "1.1.0",
        "NewFeedback(uint256 indexed agentId, address indexed clientAddress, uint8 score,"
        " string indexed tag1, string tag2, string feedbackUri, bytes32 feedbackHash)",
    ),
    *_events(
        _R,
        "1.0.0",
        "NewFeedback(uint256 indexed agentId, address indexed clientAddress, uint8 score,"
        " bytes32 indexed tag1, bytes32 tag2, string feedbackUri, bytes32 feedbackHash)",
    ),
    *_events(
        _V,
        "2.0.0",
        "ValidationRequest(address indexed validatorAddress, uint256 indexed agentId,"
        " string requestURI, bytes32 indexed requestHash)",
        "ValidationResponse(address indexed validatorAddress, uint256 indexed agentId,"
        " bytes32 indexed requestHash, uint8 response, string responseURI,"
        " bytes32 responseHash, string tag)",
    ),
    *_events(
        _V,
        "1.0.0",
        "ValidationResponse(address indexed validatorAddress, uint256 indexed agentId,"
        " bytes32 indexed requestHash, uint8 response, string responseUri,"
        " bytes32 responseHash, bytes32 tag)",
    ),
)

#: (registry, topic0, number of topics) → layout. The topic count tells an ERC-721
#: Transfer (three indexed) from an ERC-20-shaped one (two) with the same topic0.
BY_TOPIC: Final[Mapping[tuple[Registry, str, int], EventAbi]] = {
    (e.registry, e.topic0, e.topics): e for e in EVENTS
}
#: Every topic0 of interest, for eth_getLogs' topic filter.
TOPIC0S: Final[tuple[str, ...]] = tuple(sorted({e.topic0 for e in EVENTS}))


class UndecodableLogError(ValueError):
    """A log of a registry's address with a known topic0 whose data does not decode."""


def layout_of(registry: Registry, topics: Sequence[str]) -> EventAbi | None:
    """The layout of a log of ``registry`` with these topics (None: not a registry event)."""
    if not topics:
        return None
    return BY_TOPIC.get((registry, topics[0].lower(), len(topics)))


def decode_fields(abi: EventAbi, topics: Sequence[str], data: str) -> dict[str, Any]:
    """The ingest fields of one log (hex as 0x + lower case, integers as int)."""
    indexed = [p for p in abi.params if p.indexed]
    plain = [p for p in abi.params if not p.indexed]
    try:
        raw = bytes.fromhex(data[2:] if data.startswith("0x") else data)
        # string and bytes share their ABI encoding: read strings as bytes, then decode
        # them leniently (the chain does not require UTF-8).
        values = decode([_wire(p.type) for p in plain], raw)
    except Exception as exc:  # eth_abi raises several kinds; all mean the same here
        raise UndecodableLogError(f"{abi.signature}: data does not decode: {exc}") from exc
    fields: dict[str, Any] = {}
    for param, topic in zip(indexed, topics[1:], strict=True):
        field = abi.field_of(param)
        if field is not None:
            fields[field] = _from_topic(param.type, topic)
    for param, value in zip(plain, values, strict=True):
        field = abi.field_of(param)
        if field == "metadata_value":  # bytes, or v1.1's string: its UTF-8 bytes as hex
            fields[field] = "0x" + bytes(value).hex()
        elif field is not None:
            fields[field] = _from_value(param.type, value)
    return fields


def _wire(abi_type: str) -> str:
    return "bytes" if abi_type == "string" else abi_type


def _from_topic(abi_type: str, topic: str) -> Any:
    word = bytes.fromhex(topic[2:] if topic.startswith("0x") else topic)
    if len(word) != 32:
        raise UndecodableLogError(f"a topic of {len(word)} bytes")
    if abi_type == "address":
        return "0x" + word[12:].hex()
    if abi_type.startswith("uint"):
        return int.from_bytes(word, "big")
    if abi_type.startswith("int"):
        return int.from_bytes(word, "big", signed=True)
    return "0x" + word.hex()  # bytes32


def _from_value(abi_type: str, value: Any) -> Any:
    if abi_type == "string":
        return bytes(value).decode("utf-8", errors="replace")
    if abi_type == "address":
        return str(value).lower()
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def event_from_log(
    log_entry: Mapping[str, Any],
    *,
    chain_id: int,
    registry: Registry,
    timestamp: int,
    agent_registry: str | None = None,
) -> dict[str, Any] | None:
    """The ingest event of one ``eth_getLogs`` entry of ``registry``'s address (None:
    not a registry event, e.g. an ERC-721 Approval), with the emitting contract's
    address and, when known, the Identity registry its agent belongs to (an identity
    event's is its own address). Raises UndecodableLogError."""
    topics = [str(t) for t in log_entry.get("topics", [])]
    abi = layout_of(registry, topics)
    if abi is None:
        return None
    fields = decode_fields(abi, topics, str(log_entry.get("data", "0x")))
    if "value" in fields:
        # int128 is wider than a JSON parser's int64: a decimal string is exact everywhere
        fields["value"] = str(fields["value"])
    address = str(log_entry.get("address", "")).lower()
    extra = {"registry_address": address} if address else {}
    if registry is Registry.identity:
        agent_registry = address or agent_registry
    if agent_registry is not None:
        extra["agent_registry"] = agent_registry
    return {
        **extra,
        "chain_id": chain_id,
        "block_number": int(str(log_entry["blockNumber"]), 16),
        "block_hash": str(log_entry["blockHash"]).lower(),
        "transaction_hash": str(log_entry["transactionHash"]).lower(),
        "log_index": int(str(log_entry["logIndex"]), 16),
        "registry": registry.value,
        "event_type": abi.event_type,
        "timestamp": timestamp,
        **fields,
    }
