"""The local EVM harness (tools.evmnode) itself: the mocks emit exactly the registries'
events, current and legacy layouts, from one address each; snapshots and reverts give
the reorgs the indexer's tests need. No PostgreSQL, no Kafka."""

from __future__ import annotations

import pytest
from eth_abi.abi import decode
from eth_utils.crypto import keccak
from web3.contract import AsyncContract
from web3.types import TxReceipt

from tests.evm_fixtures import evm, evm_node  # noqa: F401 (fixtures)
from tools.evmnode import Chain

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("evm")]

# The events, written out by hand from the registries' declarations: (signature,
# number of indexed parameters).
TRANSFER = ("Transfer(address,address,uint256)", 3)
REGISTERED = ("Registered(uint256,string,address)", 2)
METADATA_SET = ("MetadataSet(uint256,string,string,bytes)", 2)
URI_UPDATED = ("URIUpdated(uint256,string,address)", 2)
METADATA_UPDATE = ("MetadataUpdate(uint256)", 0)
URI_UPDATED_V10 = ("UriUpdated(uint256,string,address)", 2)
METADATA_SET_V11 = ("MetadataSet(uint256,string,string,string)", 2)

NEW_FEEDBACK = (
    "NewFeedback(uint256,address,uint64,int128,uint8,string,string,string,string,string,bytes32)",
    3,
)
FEEDBACK_REVOKED = ("FeedbackRevoked(uint256,address,uint64)", 3)
RESPONSE_APPENDED = ("ResponseAppended(uint256,address,uint64,address,string,bytes32)", 3)
NEW_FEEDBACK_V10 = ("NewFeedback(uint256,address,uint8,bytes32,bytes32,string,bytes32)", 3)
NEW_FEEDBACK_V11 = ("NewFeedback(uint256,address,uint8,string,string,string,bytes32)", 3)
NEW_FEEDBACK_V11_INDEX = (
    "NewFeedback(uint256,address,uint64,uint8,string,string,string,string,bytes32)",
    3,
)
NEW_FEEDBACK_V11_TAG = (
    "NewFeedback(uint256,address,uint64,uint8,string,string,string,string,string,bytes32)",
    3,
)

VALIDATION_REQUEST = ("ValidationRequest(address,uint256,string,bytes32)", 3)
VALIDATION_RESPONSE = (
    "ValidationResponse(address,uint256,bytes32,uint8,string,bytes32,string)",
    3,
)
VALIDATION_RESPONSE_V10 = (
    "ValidationResponse(address,uint256,bytes32,uint8,string,bytes32,bytes32)",
    3,
)

ERC20_TRANSFER = ("Transfer(address,address,uint256)", 2)
PING = ("Ping(uint256,string)", 1)

HASH = keccak(text="a document")


def assert_events(receipt: TxReceipt, contract: AsyncContract, *events: tuple[str, int]) -> None:
    """The receipt's logs are exactly ``events``, in order, emitted by ``contract``."""
    seen = [(log["address"], log["topics"][0], len(log["topics"])) for log in receipt["logs"]]
    expected = [(contract.address, keccak(text=sig), 1 + indexed) for sig, indexed in events]
    assert seen == expected


def feedback_index(receipt: TxReceipt, log_index: int = 0) -> int:
    """feedbackIndex of a NewFeedback with one (the first non-indexed parameter)."""
    (index,) = decode(["uint64"], bytes(receipt["logs"][log_index]["data"])[:32])
    assert isinstance(index, int)
    return index


async def test_identity_registry_emits_current_and_legacy_events(evm: Chain) -> None:  # noqa: F811 (fixture)
    identity = await evm.deploy("IdentityRegistryMock")
    owner, other = evm.accounts[0], evm.accounts[1]
    fn = identity.functions

    registered = await evm.transact(fn.register("ipfs://agent-0", [], []))
    assert_events(registered, identity, TRANSFER, REGISTERED, METADATA_SET)
    transfer, _, wallet = registered["logs"]
    assert transfer["topics"][3] == (0).to_bytes(32, "big")
    assert wallet["topics"][2] == keccak(text="agentWallet")
    key, value = decode(["string", "bytes"], bytes(wallet["data"]))
    assert (key, value) == ("agentWallet", bytes.fromhex(owner.address[2:]))

    with_metadata = await evm.transact(
        fn.register("ipfs://agent-1", ["name", "kind"], [b"Alice", b"\x01"])
    )
    assert_events(with_metadata, identity, TRANSFER, REGISTERED, *[METADATA_SET] * 3)
    assert with_metadata["logs"][0]["topics"][3] == (1).to_bytes(32, "big")

    assert_events(await evm.transact(fn.setAgentURI(1, "ipfs://agent-1b")), identity, URI_UPDATED)
    assert_events(await evm.transact(fn.setMetadata(1, "k", b"v")), identity, METADATA_SET)
    assert_events(
        await evm.transact(fn.transferFrom(owner.address, other.address, 1)),
        identity,
        TRANSFER,
        METADATA_SET,
    )
    assert_events(await evm.transact(fn.touch(1)), identity, METADATA_UPDATE)
    assert_events(await evm.transact(fn.legacySetUri(1, "ipfs://old")), identity, URI_UPDATED_V10)
    assert_events(
        await evm.transact(fn.legacySetMetadataString(1, "k", "v")),
        identity,
        METADATA_SET_V11,
    )


async def test_reputation_registry_emits_current_and_legacy_events(evm: Chain) -> None:  # noqa: F811 (fixture)
    reputation = await evm.deploy("ReputationRegistryMock")
    client = evm.accounts[2]
    fn = reputation.functions

    given = await evm.transact(
        fn.giveFeedback(7, -1234, 2, "speed", "fast", "https://a.example", "ipfs://f", HASH),
        sender_key=client.key,
    )
    assert_events(given, reputation, NEW_FEEDBACK)
    assert given["logs"][0]["topics"][3] == keccak(text="speed")
    assert decode(
        ["uint64", "int128", "uint8", "string", "string", "string", "string", "bytes32"],
        bytes(given["logs"][0]["data"]),
    ) == (1, -1234, 2, "speed", "fast", "https://a.example", "ipfs://f", HASH)

    assert_events(
        await evm.transact(fn.revokeFeedback(7, 1), sender_key=client.key),
        reputation,
        FEEDBACK_REVOKED,
    )
    assert_events(
        await evm.transact(fn.appendResponse(7, client.address, 1, "ipfs://r", HASH)),
        reputation,
        RESPONSE_APPENDED,
    )
    assert_events(
        await evm.transact(
            fn.legacyFeedbackV10(7, 90, b"speed".ljust(32, b"\0"), b"\0" * 32, "ipfs://f", HASH)
        ),
        reputation,
        NEW_FEEDBACK_V10,
    )
    assert_events(
        await evm.transact(fn.legacyFeedbackV11(7, 90, "speed", "", "ipfs://f", HASH)),
        reputation,
        NEW_FEEDBACK_V11,
    )
    # The counter is per (agent, client): the client's second and third feedback.
    with_index = await evm.transact(
        fn.legacyFeedbackV11Index(7, 90, "speed", "", "", "ipfs://f", HASH),
        sender_key=client.key,
    )
    assert_events(with_index, reputation, NEW_FEEDBACK_V11_INDEX)
    assert feedback_index(with_index) == 2
    with_tag = await evm.transact(
        fn.legacyFeedbackV11Tag(7, 90, "speed", "", "", "ipfs://f", HASH),
        sender_key=client.key,
    )
    assert_events(with_tag, reputation, NEW_FEEDBACK_V11_TAG)
    assert feedback_index(with_tag) == 3

    bulk = await evm.transact(fn.bulkFeedback(7, 50, 5), sender_key=client.key)
    assert_events(bulk, reputation, *[NEW_FEEDBACK] * 50)
    assert [feedback_index(bulk, i) for i in range(50)] == list(range(4, 54))
    # Another client's counter starts at 1.
    assert feedback_index(await evm.transact(fn.bulkFeedback(7, 1, 5))) == 1


async def test_validation_registry_and_noise(evm: Chain) -> None:  # noqa: F811 (fixture)
    validation = await evm.deploy("ValidationRegistryMock")
    noise = await evm.deploy("Noise")
    validator = evm.accounts[3]
    fn = validation.functions

    assert_events(
        await evm.transact(fn.validationRequest(validator.address, 7, "ipfs://q", HASH)),
        validation,
        VALIDATION_REQUEST,
    )
    response = await evm.transact(
        fn.validationResponse(HASH, 7, 100, "ipfs://a", HASH, "ok"), sender_key=validator.key
    )
    assert_events(response, validation, VALIDATION_RESPONSE)
    assert response["logs"][0]["topics"][1] == bytes.fromhex(validator.address[2:]).rjust(32, b"\0")
    assert_events(
        await evm.transact(
            fn.legacyValidationResponse(HASH, 7, 100, "ipfs://a", HASH, b"ok".ljust(32, b"\0")),
            sender_key=validator.key,
        ),
        validation,
        VALIDATION_RESPONSE_V10,
    )

    assert_events(
        await evm.transact(noise.functions.transfer(validator.address, 5)),
        noise,
        ERC20_TRANSFER,
    )
    assert_events(await evm.transact(noise.functions.ping(1, "hi")), noise, PING)


async def test_revert_and_remine_is_a_reorg(evm: Chain) -> None:  # noqa: F811 (fixture)
    await evm.mine(3)
    parent = await evm.block("latest")
    at = parent["timestamp"] + 100
    snapshot = await evm.snapshot()
    await evm.mine_block(timestamp=at)
    height = await evm.head()
    first = await evm.block(height)
    assert height == parent["number"] + 1

    await evm.revert(snapshot)
    assert await evm.head() == parent["number"]
    snapshot = await evm.snapshot()
    await evm.mine_block(timestamp=at + 1)
    second = await evm.block(height)
    assert second["hash"] != first["hash"]
    assert second["parentHash"] == first["parentHash"] == parent["hash"]

    # An empty block re-mined at the same timestamp is the same block again.
    await evm.revert(snapshot)
    await evm.mine_block(timestamp=at)
    assert (await evm.block(height))["hash"] == first["hash"]


async def test_without_automine_transactions_share_a_block(evm: Chain) -> None:  # noqa: F811 (fixture)
    identity = await evm.deploy("IdentityRegistryMock")
    head = await evm.head()
    await evm.set_automine(False)
    hashes = [
        await evm.send(identity.functions.register(f"ipfs://{i}", [], []), sender_key=key)
        for i, key in enumerate([evm.accounts[0].key, evm.accounts[1].key])
    ]
    assert await evm.head() == head
    await evm.mine_block()
    receipts = [await evm.receipt(tx_hash) for tx_hash in hashes]
    assert {r["blockNumber"] for r in receipts} == {head + 1}


async def test_accounts_are_the_nodes_funded_ones(evm: Chain) -> None:  # noqa: F811 (fixture)
    funded = [address.lower() for address in await evm.rpc("eth_accounts")]
    assert [a.address.lower() for a in evm.accounts] == funded[: len(evm.accounts)]
