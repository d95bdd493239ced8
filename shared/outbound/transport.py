"""The httpx2 side of the outbound guard (what the ``mcp`` package speaks):
:func:`httpx_client_factory` returns a factory with the signature of ``mcp``'s
``McpHttpClientFactory`` whose clients send through a :class:`GuardedHttpxTransport`,
which connects to checked addresses only and caps the decoded response body."""

from __future__ import annotations

import asyncio
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias

import httpx2

from shared.outbound.policy import (
    ALLOWED_SCHEMES,
    IPAddress,
    OutboundPolicy,
    RefusedDestination,
    ResponseTooLarge,
    check_address,
    is_numeric_host,
    parse_ip,
    redact_url,
)

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------- httpx2 (MCP)

#: Resolves (host, port) to the addresses to connect to, in order of preference.
AddressResolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


class HttpxClientFactory(Protocol):
    """The signature of ``mcp.shared._httpx_utils.McpHttpClientFactory``."""

    def __call__(
        self,
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient: ...


async def _system_addresses(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in {socket.AF_INET, socket.AF_INET6}:
            ip = parse_ip(str(sockaddr[0]))
            if ip is None:
                raise socket.gaierror(f"resolver returned {sockaddr[0]!r}")
            addresses.append(ip)
    return addresses


class _CappedStream(httpx2.AsyncByteStream):
    """A response body that raises ResponseTooLarge past ``limit`` bytes, decoding gzip
    or zlib itself (so the cap counts decoded bytes)."""

    def __init__(
        self, inner: httpx2.AsyncByteStream, *, limit: int, url: str, decode: bool
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._url = url
        self._decode = decode

    async def __aiter__(self) -> AsyncIterator[bytes]:
        decoder = zlib.decompressobj(wbits=47) if self._decode else None
        size = 0
        async for chunk in self._inner:
            pending = chunk
            while pending:
                if decoder is None:
                    out, pending = pending, b""
                else:
                    try:
                        out = decoder.decompress(pending, self._limit + 1 - size)
                    except zlib.error as exc:
                        raise httpx2.DecodingError(f"bad compressed body: {exc}") from exc
                    pending = decoder.unconsumed_tail
                size += len(out)
                if size > self._limit:
                    raise ResponseTooLarge(self._url, self._limit)
                if out:
                    yield out
        if decoder is not None:
            out = decoder.flush()
            if size + len(out) > self._limit:
                raise ResponseTooLarge(self._url, self._limit)
            if out:
                yield out

    async def aclose(self) -> None:
        await self._inner.aclose()


class GuardedHttpxTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that resolves the request's host itself, refuses it when any
    address is refused, and sends the request to the checked IP (Host header and TLS
    SNI/certificate check keep the host name), so no second lookup can be rebound.

    With the policy's ``proxy`` the pinned request goes through it: https as a
    ``CONNECT`` tunnel to the checked IP (TLS inside keeps the name), http forwarded
    with the checked IP in the request line (and the name in Host), so the proxy
    never resolves the name itself.

    Redirects are the client's business (our clients do not follow them; ``mcp``
    follows same-origin ones, each through this transport again). One connection pool
    per (scheme, host, port), so a TLS connection made for one name is never reused for
    another name on the same IP. Bodies are capped at ``policy.max_response_bytes`` per
    response.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx2.Limits | None = None,
        resolver: AddressResolver | None = None,
    ) -> None:
        self._policy = policy
        self._verify: ssl.SSLContext | bool = (
            httpx2.create_ssl_context(verify=verify) if verify is True else verify
        )
        self._limits = limits or httpx2.Limits(max_connections=10, max_keepalive_connections=5)
        self._resolve = resolver or _system_addresses
        self._pools: dict[tuple[str, str, int], httpx2.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        shown = redact_url(str(url))
        if url.scheme not in ALLOWED_SCHEMES:
            raise RefusedDestination(shown, "", f"scheme {url.scheme!r} is not http(s)")
        host = url.raw_host.decode("ascii")
        if not host:
            raise RefusedDestination(shown, "", "no host")
        if is_numeric_host(host):
            raise RefusedDestination(shown, host, "not a canonical IP address")
        port = url.port or (443 if url.scheme == "https" else 80)
        literal = parse_ip(host)
        addresses = [literal] if literal is not None else await self._lookup(request, host, port)
        if not addresses:
            raise httpx2.ConnectError(f"{host} has no address", request=request)
        for ip in addresses:
            reason = check_address(ip, self._policy) or self._policy.port_refusal(ip, port)
            if reason is not None:
                raise RefusedDestination(shown, str(ip), reason)
        pool = self._pool(url.scheme, host, port)
        last_error: httpx2.ConnectError | None = None
        for ip in dict.fromkeys(addresses):
            extensions = dict(request.extensions)
            if literal is None and url.scheme == "https":
                extensions["sni_hostname"] = host
            pinned = httpx2.Request(
                request.method,
                url.copy_with(host=str(ip)),
                headers=request.headers,
                stream=request.stream,
                extensions=extensions,
            )
            # We cap decoded bytes ourselves, so ask for no compression.
            pinned.headers["Accept-Encoding"] = "identity"
            try:
                response = await pool.handle_async_request(pinned)
            except httpx2.ConnectError as exc:
                last_error = exc
                continue
            return await self._capped(response, shown, request)
        assert last_error is not None
        raise last_error

    async def _lookup(self, request: httpx2.Request, host: str, port: int) -> list[IPAddress]:
        timeouts = request.extensions.get("timeout") or {}
        requested = timeouts.get("connect")
        limit = self._policy.connect_timeout
        if requested is not None:
            limit = min(limit, float(requested))
        try:
            async with asyncio.timeout(limit):
                return list(await self._resolve(host, port))
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(f"resolving {host} timed out", request=request) from exc
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot resolve {host}: {exc}", request=request) from exc

    def _pool(self, scheme: str, host: str, port: int) -> httpx2.AsyncHTTPTransport:
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            proxy = self._policy.proxy
            pool = httpx2.AsyncHTTPTransport(
                verify=self._verify,
                trust_env=False,
                limits=self._limits,
                retries=0,
                proxy=None
                if proxy is None
                else httpx2.Proxy(
                    proxy.url,
                    headers=None
                    if proxy.authorization is None
                    else {"Proxy-Authorization": proxy.authorization},
                ),
            )
            self._pools[key] = pool
        return pool

    async def _capped(
        self, response: httpx2.Response, shown: str, request: httpx2.Request
    ) -> httpx2.Response:
        limit = self._policy.max_response_bytes
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        declared = response.headers.get("Content-Length", "")
        if encoding not in {"identity", "", "gzip", "x-gzip", "deflate"}:
            await response.aclose()
            raise httpx2.DecodingError(
                f"unsupported Content-Encoding {encoding!r}", request=request
            )
        decode = encoding not in {"identity", ""}
        if not decode and declared.isdigit() and int(declared) > limit:
            await response.aclose()
            raise ResponseTooLarge(shown, limit)
        headers = httpx2.Headers(response.headers)
        if decode:
            del headers["Content-Encoding"]
            headers.pop("Content-Length", None)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            status_code=response.status_code,
            headers=headers,
            stream=_CappedStream(response.stream, limit=limit, url=shown, decode=decode),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def _httpx_timeout(policy: OutboundPolicy, requested: httpx2.Timeout | None) -> httpx2.Timeout:
    if requested is None:
        return httpx2.Timeout(policy.total_timeout, connect=policy.connect_timeout)
    connect = policy.connect_timeout
    if requested.connect is not None:
        connect = min(connect, requested.connect)
    return httpx2.Timeout(
        connect=connect, read=requested.read, write=requested.write, pool=requested.pool
    )


def httpx_client_factory(
    policy: OutboundPolicy, *, verify: ssl.SSLContext | bool = True
) -> HttpxClientFactory:
    """A factory of guarded httpx2 clients with the signature ``mcp`` expects
    (``McpHttpClientFactory``; pass it as ``httpx_client_factory=`` or pass one of its
    clients as ``streamable_http_client(url, http_client=...)``).

    Clients do not follow redirects, ignore proxy settings from the environment and
    time out per the policy (a ``timeout`` given by the caller keeps its read, write and
    pool values, e.g. mcp's long SSE read timeout, with connect capped by the policy).
    httpx2 has no whole-exchange deadline: bound an MCP session with
    ``asyncio.timeout``.
    """

    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers=headers,
            timeout=_httpx_timeout(policy, timeout),
            auth=auth,
            transport=GuardedHttpxTransport(policy, verify=verify),
            follow_redirects=False,
            trust_env=False,
        )

    return factory
