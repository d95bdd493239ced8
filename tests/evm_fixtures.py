"""Fixtures of the local EVM (tools.evmnode), imported by the tests that need it:
one Hardhat node per session, and a client of it per test that leaves the chain as
it found it.

    from tests.evm_fixtures import evm, evm_node  # noqa: F401 (fixtures)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tools.evmnode import Chain, HardhatNode


@pytest.fixture(scope="session")
def evm_node() -> Iterator[HardhatNode]:
    """Hardhat's node for the whole session (it starts in about a second). Sync: it is
    a subprocess, and a sync fixture needs no event loop of session scope."""
    with HardhatNode() as node:
        yield node


@pytest.fixture
async def evm(evm_node: HardhatNode) -> AsyncIterator[Chain]:
    """A client of the session's node. The chain is reverted to where the test found
    it afterwards (automine back on), so tests sharing the node do not see each other's
    blocks; contracts deployed first in a test get the same addresses in every test."""
    async with Chain(evm_node.url) as client:
        snapshot = await client.snapshot()
        try:
            yield client
        finally:
            await client.revert(snapshot)
            await client.set_automine(True)
