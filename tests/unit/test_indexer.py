"""services.indexer without a chain: the layouts' topics against signatures written
out by hand here, decoding of logs encoded with eth-abi, request chunks, and the
sorting of providers' refusals."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_abi.abi import encode
from eth_hash.auto import keccak

from services.indexer.abi import EVENTS, event_from_log
from services.indexer.ingest_client import MAX_EVENTS_PER_POST, chunks
from services.indexer.rpc import JsonRpc, RpcError, classify
from shared.contract.events import Registry, parse_events
from tools.localnet import free_port

pytestmark = pytest.mark.unit

#: Canonical signatures as the registries' sources declare them (every version), and
#: the ingest event type each is posted as.
SIGNATURES = {
    ("identity", "Transfer(address,address,uint256)"): "Transfer",
    ("identity", "Registered(uint256,string,address)"): "Registered",
    ("identity", "MetadataSet(uint256,string,string,bytes)"): "MetadataSet",
    ("identity", "MetadataSet(uint256,string,string,string)"): "MetadataSet",
    ("identity", "URIUpdated(uint256,string,address)"): "URIUpdated",
    ("identity", "UriUpdated(uint256,string,address)"): "URIUpdated",
    ("identity", "MetadataUpdate(uint256)"): "MetadataUpdate",
    (
        "reputation",
        "NewFeedback(uint256,address,uint64,int128,uint8,string,string,string,string,string,bytes32)",
    ): "NewFeedback",
    (
        "reputation",
        "NewFeedback(uint256,address,uint64,int256,uint8,string,string,string,string,string,bytes32)",
    ): "NewFeedback",
    (
        "reputation",
        "NewFeedback(uint256,address,uint64,uint256,uint8,string,string,string,string,string,bytes32)",
    ): "NewFeedback",
    (
        "reputation",
        "NewFeedback(uint256,address,uint64,uint8,string,string,string,string,string,bytes32)",
    ): "NewFeedback",
    (
        "reputation",
        "NewFeedback(uint256,address,uint64,uint8,string,string,string,string,bytes32)",
    ): "NewFeedback",
    (
        "reputation",
        "NewFeedback(uint256,address,uint8,string,string,string,bytes32)",
    ): "NewFeedback",
    (
        "reputation",
        "NewFeedback(uint256,address,uint8,bytes32,bytes32,string,bytes32)",
    ): "NewFeedback",
    ("reputation", "FeedbackRevoked(uint256,address,uint64)"): "FeedbackRevoked",
    ("reputation", "ResponseAppended(uint256,address,uint64,address,string,bytes32)"): (
        "ResponseAppended"
    ),
    ("validation", "ValidationRequest(address,uint256,string,bytes32)"): "ValidationRequest",
    ("validation", "ValidationResponse(address,uint256,bytes32,uint8,string,bytes32,string)"): (
        "ValidationResponse"
    ),
    ("validation", "ValidationResponse(address,uint256,bytes32,uint8,string,bytes32,bytes32)"): (
        "ValidationResponse"
    ),
}

AGENT = 7
CLIENT = "0x" + "ab" * 20
OWNER = "0x" + "cd" * 20
HASH = "0x" + "11" * 32
REGISTRY = "0x" + "8004" * 10
IDENTITY = "0x" + "1d" * 20


def topic0(signature: str) -> str:
    return "0x" + keccak(signature.encode()).hex()


def word(value: int | str) -> str:
    if isinstance(value, int):
        return "0x" + value.to_bytes(32, "big", signed=value < 0).hex()
    raw = bytes.fromhex(value[2:])
    return "0x" + raw.rjust(32, b"\0").hex()


def log_entry(
    signature: str, topics: list[str], data: bytes, *, address: str = REGISTRY
) -> dict[str, Any]:
    return {
        "address": address,
        "topics": [topic0(signature), *topics],
        "data": "0x" + data.hex(),
        "blockNumber": hex(120),
        "blockHash": "0x" + "aa" * 32,
        "transactionHash": "0x" + "bb" * 32,
        "logIndex": hex(3),
        "removed": False,
    }


def test_every_layout_is_known_by_the_topic_its_signature_hashes_to() -> None:
    table = {(e.registry.value, e.signature): e for e in EVENTS}
    assert set(table) == set(SIGNATURES)
    for (registry, signature), event_type in SIGNATURES.items():
        assert table[registry, signature].topic0 == topic0(signature)
        assert table[registry, signature].event_type == event_type


def decoded(registry: Registry, entry: dict[str, Any]) -> dict[str, Any]:
    event = event_from_log(
        entry,
        chain_id=31337,
        registry=registry,
        timestamp=1_760_000_000,
        agent_registry=IDENTITY,
    )
    assert event is not None
    _valid, errors = parse_events([event])
    assert errors == []
    return event


def test_current_feedback_decodes_with_a_value_beyond_64_bits_and_invalid_utf8() -> None:
    value = -(10**38)
    data = encode(
        ["uint64", "int128", "uint8", "string", "string", "string", "bytes", "bytes32"],
        [3, value, 18, "uptime", "week", "https://a.example/mcp", b"ipfs://\xff\xfe", b"\x11" * 32],
    )
    signature = (
        "NewFeedback(uint256,address,uint64,int128,uint8,string,string,string,string,string,"
    )
    signature += "bytes32)"
    event = decoded(
        Registry.reputation,
        log_entry(signature, [word(AGENT), word(CLIENT), topic0("uptime")], data),
    )
    assert event["event_type"] == "NewFeedback"
    assert event["value"] == str(value)  # a decimal string: exact past 64 bits
    assert (event["agent_id"], event["client_address"], event["feedback_index"]) == (7, CLIENT, 3)
    assert (event["tag1"], event["tag2"], event["value_decimals"]) == ("uptime", "week", 18)
    assert event["file_uri"] == "ipfs://\ufffd\ufffd"  # the chain holds any bytes
    assert event["file_hash"] == HASH
    assert (event["block_number"], event["log_index"]) == (120, 3)
    # the emitting contract, and the Identity registry of its deployment
    assert (event["registry_address"], event["agent_registry"]) == (REGISTRY, IDENTITY)


def test_legacy_feedback_layouts_decode_to_score_and_what_their_topics_hold() -> None:
    v10 = "NewFeedback(uint256,address,uint8,bytes32,bytes32,string,bytes32)"
    tag1 = "0x" + b"starred".ljust(32, b"\0").hex()
    data = encode(
        ["uint8", "bytes32", "string", "bytes32"], [87, b"day".ljust(32, b"\0"), "", b"\0" * 32]
    )
    event = decoded(Registry.reputation, log_entry(v10, [word(AGENT), word(CLIENT), tag1], data))
    assert (event["score"], event["tag1"], event["tag2"]) == (
        87,
        tag1,
        "0x" + b"day".ljust(32, b"\0").hex(),
    )
    assert "feedback_index" not in event
    stored = parse_events([event])[0][0]  # ingest reads a bytes32 tag as its text
    assert (stored.tag1, stored.tag2) == ("starred", "day")

    v11 = "NewFeedback(uint256,address,uint8,string,string,string,bytes32)"
    data = encode(["uint8", "string", "string", "bytes32"], [50, "week", "ipfs://x", b"\0" * 32])
    event = decoded(
        Registry.reputation, log_entry(v11, [word(AGENT), word(CLIENT), topic0("starred")], data)
    )
    assert event["score"] == 50
    assert "tag1" not in event  # only its hash is in the log
    assert event["tag2"] == "week"


def test_identity_events_and_the_v1_uri_event_name() -> None:
    transfer = decoded(
        Registry.identity,
        log_entry(
            "Transfer(address,address,uint256)", [word(OWNER), word(CLIENT), word(AGENT)], b""
        ),
    )
    assert transfer["agent_registry"] == transfer["registry_address"] == REGISTRY  # its own
    assert (transfer["previous_owner"], transfer["owner"], transfer["agent_id"]) == (
        OWNER,
        CLIENT,
        7,
    )
    old_uri = decoded(
        Registry.identity,
        log_entry(
            "UriUpdated(uint256,string,address)",
            [word(AGENT), word(OWNER)],
            encode(["string"], ["data:,x"]),
        ),
    )
    assert (old_uri["event_type"], old_uri["token_uri"], old_uri["updated_by"]) == (
        "URIUpdated",
        "data:,x",
        OWNER,
    )
    string_value = decoded(
        Registry.identity,
        log_entry(
            "MetadataSet(uint256,string,string,string)",
            [word(AGENT), topic0("name")],
            encode(["string", "string"], ["name", "Ada"]),
        ),
    )
    assert (string_value["metadata_key"], string_value["metadata_value"]) == (
        "name",
        "0x" + b"Ada".hex(),
    )
    touch = decoded(
        Registry.identity, log_entry("MetadataUpdate(uint256)", [], encode(["uint256"], [AGENT]))
    )
    assert touch["agent_id"] == AGENT


def test_an_erc20_shaped_transfer_and_unknown_topics_are_not_registry_events() -> None:
    erc20 = log_entry(
        "Transfer(address,address,uint256)", [word(OWNER), word(CLIENT)], encode(["uint256"], [5])
    )
    assert (
        event_from_log(erc20, chain_id=1, registry=Registry.identity, timestamp=1_760_000_000)
        is None
    )
    approval = log_entry(
        "Approval(address,address,uint256)", [word(OWNER), word(CLIENT), word(1)], b""
    )
    assert (
        event_from_log(approval, chain_id=1, registry=Registry.identity, timestamp=1_760_000_000)
        is None
    )
    # a validation event at the reputation registry's address is not taken for one
    request = log_entry(
        "ValidationRequest(address,uint256,string,bytes32)",
        [word(OWNER), word(AGENT), HASH],
        encode(["string"], [""]),
    )
    assert (
        event_from_log(request, chain_id=1, registry=Registry.reputation, timestamp=1_760_000_000)
        is None
    )


def test_chunks_stay_within_ingest_limits_and_cut_between_blocks() -> None:
    events = [{"block_number": b, "log_index": i, "x": "y"} for b in range(30) for i in range(70)]
    parts = chunks(events)
    assert [e for part in parts for e in part] == events
    assert all(len(p) <= MAX_EVENTS_PER_POST for p in parts)
    for before, after in itertools.pairwise(parts):
        assert before[-1]["block_number"] != after[0]["block_number"]
    big = [{"block_number": 1, "log_index": i} for i in range(2500)]  # one block over a request
    assert [len(p) for p in chunks(big)] == [1000, 1000, 500]
    huge = [
        {"block_number": 1, "log_index": 0, "t": "x" * (3 << 20)},
        {"block_number": 2, "log_index": 0, "t": "x" * (3 << 20)},
    ]
    assert [len(p) for p in chunks(huge)] == [1, 1]


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (-32005, "query returned more than 10000 results", "too_large"),
        (
            -32602,
            "Log response size exceeded. You can make eth_getLogs requests with up to a 2K range",
            "too_large",
        ),
        (-32614, "eth_getLogs is limited to a 10,000 range", "too_large"),
        (-32005, "daily request count exceeded, request rate limited", "rate_limited"),
        (429, "Too Many Requests", "rate_limited"),
        (-32000, "header not found", "server"),
        (-32005, "project ID request rate exceeded", "rate_limited"),
        (-32000, "block range extends beyond current head block", "server"),
        (-32000, "block range is too wide", "too_large"),
    ],
)
def test_provider_refusals_are_sorted(code: int, message: str, kind: str) -> None:
    assert classify("eth_getLogs", code, message) == kind


def test_docs_table_lists_every_layout_with_its_fields() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "indexer.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in doc.splitlines() if line.startswith("| ")}
    for e in EVENTS:
        row = rows.get(f"`{e.signature}`")
        assert row is not None, f"docs/indexer.md lacks {e.signature}"
        for param in e.params:
            field = e.field_of(param)
            told = "not in the log (only its hash)" if field is None else f"`{field}`"
            indexed = " (indexed)" if param.indexed else ""
            assert f"`{param.name}`{indexed} → {told}" in row, (e.signature, param.name)


async def test_rpc_failures_never_carry_the_endpoints_url() -> None:
    """RPC URLs often hold an API key: errors (logged, counted) name the method and the
    kind of failure only. 127.0.0.1 on a port nothing listens on, bounded in time."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v3/secret-api-key-123"
    async with aiohttp.ClientSession() as session:
        rpc = JsonRpc(session, url, timeout=2.0)
        with pytest.raises(RpcError) as caught:
            await rpc.head()
    assert caught.value.kind == "connection"
    assert "secret-api-key" not in str(caught.value)
    assert str(port) not in str(caught.value)
    assert rpc.host == "127.0.0.1"
