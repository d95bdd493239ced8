"""Agents' registration files and feedback files (ERC-8004's registration format).

An agent's registration file sits at the ``token_uri`` of its latest canonical
``Registered`` / ``URIUpdated`` event: ``ipfs://`` (through ``IPFS_GATEWAY``),
``https://`` / ``http://`` (through the outbound guard) or a ``data:`` URI. Its
MCP endpoint is the first service named ``mcp`` (any case; older files say
``endpoints``), accepted only when the file's ``registrations`` name this chain,
an identity registry we know, and this agent. Parsed files are cached per agent
and used while the agent's latest identity event (URIUpdated, MetadataUpdate, ...)
is the one they were read under, and for at most ``ttl`` seconds.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson

from services.dispatcher import queries
from shared.outbound.client import fetch
from shared.outbound.policy import (
    OutboundError,
    OutboundPolicy,
    OutboundTimeoutError,
)

#: Identity registries of ERC-8004's official deployments (mainnets, testnets), lower
#: case.
KNOWN_IDENTITY_REGISTRIES = (
    "0x8004a169fb4a3325136eb29fa0ceb6d2e539a432",
    "0x8004a818bfb912233c491871b3d84c89a494bd9e",
)


#: A CID in any multibase alphabet (CIDv0 base58 ``Qm…``, CIDv1 base32 ``bafy…``, …).
_CID = re.compile(r"[A-Za-z0-9]{1,128}")


def ipfs_gateway_url(gateway: str, uri: str) -> str:
    """Where ``ipfs://<CID>[/path]`` (or ``ipfs://ipfs/<CID>…``) is fetched:
    ``<gateway><CID>/<path>``, always under the gateway's path. The CID must be one;
    the path's segments are percent-decoded and refused when they climb (``.``,
    ``..``) or carry a backslash or a NUL, then encoded again whole (a ``?`` or ``#``
    stays part of the path). ResolveError otherwise."""
    rest = uri.split(":", 1)[1].removeprefix("//").removeprefix("ipfs/").lstrip("/")
    cid, _, path = rest.partition("/")
    if not _CID.fullmatch(cid):
        raise ResolveError("ipfs: URI without a valid CID", transient=False)
    segments = []
    for raw in path.split("/"):
        segment = urllib.parse.unquote(raw)
        if segment in (".", "..") or any(c in segment for c in "/\\\x00"):
            raise ResolveError("ipfs: the path leaves the CID", transient=False)
        if segment:
            segments.append(urllib.parse.quote(segment, safe=""))
    return gateway + "/".join([cid, *segments]) + ("/" if path.endswith("/") and segments else "")


class ResolveError(Exception):
    """A file or endpoint could not be had. ``transient``: worth retrying (timeouts,
    connection errors, 429/5xx); otherwise the same call fails the same way."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _decode_data_uri(uri: str, limit: int) -> bytes:
    head, sep, payload = uri[5:].partition(",")
    if not sep:
        raise ResolveError("data: URI without a comma", transient=False)
    if head.endswith(";base64"):
        if len(payload) > (limit * 4) // 3 + 4:
            raise ResolveError(f"data: URI decodes to more than {limit} bytes", transient=False)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ResolveError("data: URI is not valid base64", transient=False) from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > limit:
        raise ResolveError(f"data: URI decodes to more than {limit} bytes", transient=False)
    return data


@dataclass
class _Cached:
    stamp: tuple[int, int]
    uri: str
    endpoint: str
    read_at: float


class Resolver:
    """Fetches URIs (ipfs, http(s), data) and resolves agents' MCP endpoints."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        session: aiohttp.ClientSession,
        policy: OutboundPolicy,
        ipfs_gateway: str,
        identity_registries: tuple[str, ...] = KNOWN_IDENTITY_REGISTRIES,
        ttl: float = 300.0,
        max_bytes: int = 1_048_576,
    ) -> None:
        self._pool = pool
        self._session = session
        self._policy = policy
        self._gateway = ipfs_gateway if ipfs_gateway.endswith("/") else ipfs_gateway + "/"
        self._registries = frozenset(r.lower() for r in identity_registries)
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._cache: dict[tuple[int, str | None, int], _Cached] = {}

    def http_url(self, uri: str) -> str | None:
        """The URL a URI is fetched from; None for data: URIs. ResolveError otherwise."""
        scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
        if scheme == "data":
            return None
        if scheme == "ipfs":
            return ipfs_gateway_url(self._gateway, uri)
        if scheme in ("http", "https"):
            return uri
        raise ResolveError(f"unsupported URI scheme {scheme or '(none)'!r}", transient=False)

    async def fetch_uri(self, uri: str, *, time_limit: float) -> bytes:
        """The bytes at ``uri`` (at most max_bytes), through the outbound guard."""
        url = self.http_url(uri)
        if url is None:
            return _decode_data_uri(uri, self._max_bytes)
        policy = dataclasses.replace(
            self._policy.within(time_limit), max_response_bytes=self._max_bytes
        )
        try:
            resp = await fetch(self._session, "GET", url, policy=policy)
        except OutboundTimeoutError as exc:
            raise ResolveError(str(exc), transient=True) from None
        except OutboundError as exc:
            raise ResolveError(str(exc), transient=False) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ResolveError(
                f"fetching {uri[:200]}: {type(exc).__name__}", transient=True
            ) from None
        if resp.status != 200:
            transient = resp.status in (408, 425, 429) or resp.status >= 500
            raise ResolveError(f"fetching {uri[:200]}: HTTP {resp.status}", transient=transient)
        return resp.body

    async def mcp_endpoint(
        self,
        chain_id: int,
        agent_id: int,
        *,
        time_limit: float,
        agent_registry: str | None = None,
    ) -> str:
        """The agent's MCP endpoint from its current registration file. With
        ``agent_registry`` (the job's event names the agent's Identity registry) the
        registration is that registry's agent's, and its file must name that registry."""
        async with self._pool.acquire() as conn:
            uri_row = await conn.fetchrow(queries.LATEST_URI, chain_id, agent_id, agent_registry)
            change = await conn.fetchrow(queries.LATEST_CHANGE, chain_id, agent_id, agent_registry)
        if uri_row is None or change is None:
            raise ResolveError(
                f"agent {chain_id}:{agent_id} has no registration (no Registered/URIUpdated event)",
                transient=False,
            )
        uri = uri_row["token_uri"]
        if not uri:
            # Not an older URI: the agent cleared it, and its old server is not its own.
            raise ResolveError(
                f"agent {chain_id}:{agent_id} has an empty registration URI", transient=False
            )
        stamp = (change["block_number"], change["log_index"])
        key = (chain_id, agent_registry, agent_id)
        cached = self._cache.get(key)
        if (
            cached is not None
            and cached.stamp == stamp
            and cached.uri == uri
            and time.monotonic() - cached.read_at < self._ttl
        ):
            return cached.endpoint
        raw = await self.fetch_uri(uri, time_limit=time_limit)
        endpoint = self._endpoint_of(raw, chain_id, agent_id, agent_registry)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = _Cached(stamp, uri, endpoint, time.monotonic())
        return endpoint

    def _endpoint_of(
        self, raw: bytes, chain_id: int, agent_id: int, agent_registry: str | None
    ) -> str:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ResolveError("registration file is not JSON", transient=False) from None
        if not isinstance(doc, dict):
            raise ResolveError("registration file is not a JSON object", transient=False)
        if not self._names_agent(doc.get("registrations"), chain_id, agent_id, agent_registry):
            raise ResolveError(
                f"registration file does not name agent {agent_id} of chain {chain_id} "
                "in a known identity registry",
                transient=False,
            )
        services = doc.get("services")
        if services is None:
            services = doc.get("endpoints")
        if not isinstance(services, list):
            raise ResolveError("registration file has no services list", transient=False)
        for service in services:
            if (
                isinstance(service, dict)
                and isinstance(service.get("name"), str)
                and service["name"].lower() == "mcp"
            ):
                endpoint = service.get("endpoint")
                if not isinstance(endpoint, str) or not endpoint.lower().startswith(
                    ("http://", "https://")
                ):
                    raise ResolveError(
                        "the registration file's MCP endpoint is not an http(s) URL",
                        transient=False,
                    )
                return endpoint
        raise ResolveError("registration file names no MCP service", transient=False)

    def _names_agent(
        self, registrations: Any, chain_id: int, agent_id: int, agent_registry: str | None
    ) -> bool:
        known = self._registries if agent_registry is None else {agent_registry}
        if not isinstance(registrations, list):
            return False
        for reg in registrations:
            if not isinstance(reg, dict):
                continue
            ref = reg.get("agentRegistry")
            rid = reg.get("agentId")
            if not isinstance(ref, str) or str(rid) != str(agent_id):
                continue
            parts = ref.split(":")
            if (
                len(parts) == 3
                and parts[0] == "eip155"
                and parts[1] == str(chain_id)
                and parts[2].lower() in known
            ):
                return True
        return False
