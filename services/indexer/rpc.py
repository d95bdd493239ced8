"""A JSON-RPC client of an EVM node over HTTP (aiohttp), with the node's refusals
sorted into the kinds the indexer reacts to differently.

- ``too_large``: the provider will not answer this ``eth_getLogs`` range (too many
  results, a response or range cap, a timeout on a heavy range): ask for less.
- ``rate_limited``: HTTP 429 or a provider's rate-limit error: wait, then again.
- ``timeout``, ``connection``, ``server`` (5xx, a JSON-RPC internal error), ``invalid``
  (an answer that is not JSON-RPC): wait, then again.

The RPC endpoint is the operator's (a setting, not user input), so calls go to it
directly; its URL may carry an API key and is never logged (only its host).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from yarl import URL

#: Fragments of providers' messages for an eth_getLogs that asked for too much
#: (Geth, Erigon, Infura, Alchemy, QuickNode, Ankr, ...; compared in lower case).
_TOO_LARGE: Final = (
    "too many",
    "more than",
    "response size",
    "size exceeded",
    "too large",
    "too wide",
    "limited to",
    "limit exceeded",
    "max range",
    "maximum block range",
    "block range is",
    "query exceeds",
    "timeout",
    "timed out",
)
_RATE: Final = (
    "rate limit",
    "rate exceeded",
    "request rate",
    "too many requests",
    "requests per",
    "throughput",
    "capacity",
    "compute units",
)
_RATE_CODES: Final = frozenset({-32005, -32029, 429})


class RpcError(Exception):
    """A call that did not give an answer. ``kind`` is one of the module's kinds."""

    def __init__(self, method: str, kind: str, message: str) -> None:
        super().__init__(f"{method}: {kind}: {message}")
        self.method = method
        self.kind = kind


@dataclass(frozen=True)
class Block:
    number: int
    hash: str
    parent_hash: str
    timestamp: int


def as_block(raw: Any) -> Block:
    if not isinstance(raw, dict):
        raise ValueError("no such block")
    return Block(
        number=int(raw["number"], 16),
        hash=str(raw["hash"]).lower(),
        parent_hash=str(raw["parentHash"]).lower(),
        timestamp=int(raw["timestamp"], 16),
    )


def classify(method: str, code: int | None, message: str) -> str:
    text = message.lower()
    if any(f in text for f in _RATE):
        return "rate_limited"
    if method == "eth_getLogs" and any(f in text for f in _TOO_LARGE):
        return "too_large"
    return "rate_limited" if code in _RATE_CODES else "server"


class JsonRpc:
    """One endpoint; ``call`` and ``batch`` raise :class:`RpcError` on anything but an
    answer. Every call is bounded by ``timeout`` seconds."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, timeout: float) -> None:
        self._session = session
        self._url = url
        self._timeout = timeout
        self._ids = itertools.count(1)
        self.host = URL(url).host or "?"

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        answer = await self._post(method, request)
        if not isinstance(answer, dict):
            raise RpcError(method, "invalid", "the answer is not a JSON-RPC response")
        return _result(method, answer)

    async def batch(self, method: str, params: Sequence[Sequence[Any]]) -> list[Any]:
        """Several calls of one method in one request, results in order."""
        if not params:
            return []
        first = next(self._ids)
        requests = [
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": p}
            for i, p in enumerate(params)
        ]
        self._ids = itertools.count(first + len(params))
        answers = await self._post(method, requests)
        if not isinstance(answers, list):
            if isinstance(answers, dict):  # a provider refusing batches answers once
                _result(method, answers)
            raise RpcError(method, "invalid", "a batch answered with something else")
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        results = []
        for i in range(len(params)):
            answer = by_id.get(first + i)
            if answer is None:
                raise RpcError(method, "invalid", f"the batch lost request {i}")
            results.append(_result(method, answer))
        return results

    async def _post(self, method: str, body: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.post(
                    self._url,
                    data=orjson.dumps(body),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    raw = await response.read()
                    status = response.status
        except TimeoutError as exc:
            kind = "too_large" if method == "eth_getLogs" else "timeout"
            raise RpcError(method, kind, f"no answer within {self._timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise RpcError(method, "connection", type(exc).__name__) from exc
        if status == 429:
            raise RpcError(method, "rate_limited", "HTTP 429")
        if status == 413:
            raise RpcError(method, "too_large", "HTTP 413")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            kind = "server" if status >= 500 else "invalid"
            raise RpcError(method, kind, f"HTTP {status}, not JSON") from exc
        if status >= 400 and not (isinstance(answer, dict) and "error" in answer):
            raise RpcError(method, "server" if status >= 500 else "invalid", f"HTTP {status}")
        return answer

    # The calls the indexer makes.

    async def chain_id(self) -> int:
        return int(await self.call("eth_chainId", []), 16)

    async def head(self) -> int:
        return int(await self.call("eth_blockNumber", []), 16)

    async def block(self, number: int) -> Block | None:
        raw = await self.call("eth_getBlockByNumber", [hex(number), False])
        return None if raw is None else as_block(raw)

    async def logs(
        self, addresses: Sequence[str], topic0s: Sequence[str], first: int, last: int
    ) -> list[dict[str, Any]]:
        raw = await self.call(
            "eth_getLogs",
            [
                {
                    "address": list(addresses),
                    "topics": [list(topic0s)],
                    "fromBlock": hex(first),
                    "toBlock": hex(last),
                }
            ],
        )
        if not isinstance(raw, list):
            raise RpcError("eth_getLogs", "invalid", "logs are not a list")
        return raw


def _result(method: str, answer: dict[str, Any]) -> Any:
    error = answer.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        message = str(error.get("message", error) if isinstance(error, dict) else error)
        raise RpcError(
            method, classify(method, code if isinstance(code, int) else None, message), message
        )
    if "result" not in answer:
        raise RpcError(method, "invalid", "neither result nor error")
    return answer["result"]
