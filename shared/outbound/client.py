"""The aiohttp side of the outbound guard: :func:`new_session` builds a session on a
:class:`GuardedConnector` (every connection goes to a checked address, IP literals
included), and :func:`fetch` makes one exchange with it: http(s) only, redirects
followed by hand (each hop re-checked), the body read under a hard cap, one deadline
for everything. With the policy's ``proxy``, each connection is a ``CONNECT`` tunnel
through it to the checked address (:func:`open_tunnel`)."""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict
from yarl import URL

from shared.outbound.policy import (
    ALLOWED_SCHEMES,
    BODY_HEADERS,
    CHUNK_BYTES,
    CROSS_ORIGIN_HEADERS,
    REDIRECT_STATUSES,
    OutboundPolicy,
    OutboundProxy,
    OutboundTimeoutError,
    RedirectError,
    RefusedDestination,
    ResponseTooLarge,
    check_host,
    host_port,
    is_numeric_host,
    parse_ip,
    redact_url,
)

if TYPE_CHECKING:
    from aiohttp.tracing import Trace


# --------------------------------------------------------------------------- aiohttp


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` (the system resolver by default) and refuses the host when
    any of the addresses it resolves to is refused."""

    def __init__(self, policy: OutboundPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_host(host_port(host, port), result["host"], self._policy, port)
        return results

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose every connection goes to a checked address.

    Host names go through :class:`GuardedResolver`. aiohttp does not consult the
    resolver for an IP literal (``TCPConnector._resolve_host`` answers it directly), so
    ``_resolve_host`` is overridden to check whatever it returns, literal or cached.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: AbstractResolver | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resolver=GuardedResolver(policy, resolver), **kwargs)
        self._outbound_policy = policy

    @property
    def policy(self) -> OutboundPolicy:
        return self._outbound_policy

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces=traces)
        for result in results:
            check_host(host_port(host, port), result["host"], self._outbound_policy, port)
        return results

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: aiohttp.ClientRequest,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, Any]:
        """Without a proxy, aiohttp's own. With one: a tunnel to the first of the
        checked addresses (aiohttp tries the next ones on failure), then the
        connection (TLS for the request's host name, not the address) over it."""
        proxy = self._outbound_policy.proxy
        if proxy is None:
            return await super()._wrap_create_connection(
                *args,
                addr_infos=addr_infos,
                req=req,
                timeout=timeout,
                client_error=client_error,
                **kwargs,
            )
        address = addr_infos[0][4]
        try:
            async with asyncio.timeout(timeout.sock_connect):
                sock = await open_tunnel(proxy, str(address[0]), int(address[1]))
        except OSError as exc:
            raise client_error(req.connection_key, exc) from exc
        try:
            return await self._loop.create_connection(*args, **kwargs, sock=sock)
        except ssl.CertificateError as exc:
            sock.close()
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            sock.close()
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            sock.close()
            raise client_error(req.connection_key, exc) from exc


class ProxyError(ConnectionError):
    """The proxy could not be reached or did not open the tunnel (a connection
    failure: transient). Its text names the proxy's answer, never its credentials."""

    def __init__(self, message: str) -> None:
        # With an errno, so that aiohttp's ClientConnectorError shows the message.
        super().__init__(errno.ECONNREFUSED, message)


#: The longest answer head a proxy may send to a CONNECT.
_PROXY_HEAD_BYTES = 16 * 1024


async def open_tunnel(proxy: OutboundProxy, ip: str, port: int) -> socket.socket:
    """A socket connected to ``proxy`` whose ``CONNECT`` to ``ip``:``port`` (an
    address the guard checked) was answered 2xx: the destination's bytes from here
    on. The proxy's own address is the operator's choice and is not checked."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    sock: socket.socket | None = None
    last: OSError = ProxyError(f"proxy {proxy.url} has no address")
    for family, kind, proto, _name, sockaddr in infos:
        candidate = socket.socket(family, kind, proto)
        candidate.setblocking(False)
        try:
            await loop.sock_connect(candidate, sockaddr)
        except OSError as exc:
            candidate.close()
            last = exc
            continue
        sock = candidate
        break
    if sock is None:
        raise last
    try:
        await loop.sock_sendall(sock, proxy.connect_request(ip, port))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ProxyError(f"proxy {proxy.url} closed the connection during CONNECT")
            head += chunk
            if len(head) > _PROXY_HEAD_BYTES:
                raise ProxyError(f"proxy {proxy.url} answered CONNECT with too long a head")
        status = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or status[1][:1] != b"2":
            shown = b" ".join(status[1:])[:80].decode("ascii", "replace")
            raise ProxyError(f"proxy {proxy.url} refused CONNECT {host_port(ip, port)}: {shown}")
        if not head.endswith(b"\r\n\r\n"):
            raise ProxyError(f"proxy {proxy.url} sent data before the tunnel was used")
    except BaseException:
        sock.close()
        raise
    return sock


def _client_timeout(policy: OutboundPolicy) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=policy.total_timeout,
        connect=policy.connect_timeout,
        sock_connect=policy.connect_timeout,
    )


@functools.lru_cache(maxsize=64)
def _exchange_timeout(connect: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts within :func:`fetch`: connecting only (fetch's deadline
    bounds the rest)."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)


# Session arguments new_session fixes, because they decide where or how long it connects.
_FIXED_SESSION_ARGS = frozenset(
    {
        "connector",
        "connector_owner",
        "proxy",
        "proxy_auth",
        "trust_env",
        "cookie_jar",
        "auto_decompress",
        "timeout",
        "read_timeout",
        "conn_timeout",
    }
)


def new_session(
    policy: OutboundPolicy,
    *,
    limit: int = 100,
    limit_per_host: int = 10,
    resolver: AbstractResolver | None = None,
    verify: ssl.SSLContext | bool = True,
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """An aiohttp session whose connections all pass the guard (call inside the loop;
    close it). Timeouts come from ``policy``; no proxy from the environment, no cookies
    kept between calls (one session serves many users' destinations), responses
    decompressed. ``resolver`` replaces the system resolver under the guard;
    ``verify`` is the TLS context servers' certificates are checked with (tests);
    other keyword arguments go to ``ClientSession``.

    aiohttp has no session-wide switch for redirects: :func:`fetch` never lets aiohttp
    follow them, and a redirect followed by a direct ``session.request`` still connects
    only through the guard.
    """
    fixed = sorted(_FIXED_SESSION_ARGS & kwargs.keys())
    if fixed:
        raise TypeError(f"new_session sets {', '.join(fixed)} itself")
    connector = GuardedConnector(
        policy,
        resolver=resolver,
        limit=limit,
        limit_per_host=limit_per_host,
        ssl=verify,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=_client_timeout(policy),
        auto_decompress=True,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        **kwargs,
    )


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """A complete response: ``headers`` has lower-case names, repeated fields joined
    with ", "; ``url`` is the final URL after redirects."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str


def _precheck(url: URL, policy: OutboundPolicy) -> None:
    """Refuse before any connection: the scheme, a missing host, an IP-literal host."""
    if url.scheme.lower() not in ALLOWED_SCHEMES:
        raise RefusedDestination(redact_url(url), "", f"scheme {url.scheme!r} is not http(s)")
    host = url.raw_host
    if not host:
        raise RefusedDestination(redact_url(url), "", "no host")
    if parse_ip(host) is not None or is_numeric_host(host):
        try:
            check_host("", host, policy, url.port)
        except RefusedDestination as exc:
            # the URL redacted only when it is refused (it costs more than the check)
            raise RefusedDestination(redact_url(url), exc.address, exc.reason) from None


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    policy: OutboundPolicy,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    json: Any = None,
) -> OutboundResponse:
    """One outbound exchange through a :func:`new_session` session.

    Only http and https; redirects (301/302/303/307/308) are followed by hand, at most
    ``policy.max_redirects``, each hop checked like the first (303, and 301/302 after a
    POST, become a GET without body; credentials are dropped when the origin changes).
    The body is read up to ``policy.max_response_bytes`` (:class:`ResponseTooLarge`
    beyond); ``policy.total_timeout`` bounds the whole exchange (:class:`OutboundTimeoutError`).
    Pass the policy the session was made with (or a copy differing in timeouts/caps).
    """
    if data is not None and json is not None:
        raise ValueError("pass data or json, not both")
    if not isinstance(session.connector, GuardedConnector):
        raise TypeError("fetch needs a session made by new_session")
    try:
        start = URL(url)
    except (ValueError, TypeError) as exc:
        raise RefusedDestination(redact_url(url), "", "invalid URL") from exc
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await _exchange(
                session,
                method=method.upper(),
                url=start,
                policy=policy,
                headers=CIMultiDict(headers or {}),
                data=data,
                json_body=json,
            )
    except TimeoutError as exc:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            detail = f"connect timeout {policy.connect_timeout:g}s"
        else:
            detail = f"total timeout {policy.total_timeout:g}s"
        raise OutboundTimeoutError(redact_url(start), detail) from exc


async def _exchange(
    session: aiohttp.ClientSession,
    *,
    method: str,
    url: URL,
    policy: OutboundPolicy,
    headers: CIMultiDict[str],
    data: bytes | None,
    json_body: Any,
) -> OutboundResponse:
    # fetch's own deadline bounds the whole exchange: no second timer per request
    timeout = _exchange_timeout(policy.connect_timeout)
    for _hop in range(policy.max_redirects + 1):
        _precheck(url, policy)
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                data=data,
                json=json_body,
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                location = resp.headers.get("Location")
                if resp.status not in REDIRECT_STATUSES or not location:
                    body = await _read_capped(resp, policy.max_response_bytes, url)
                    return OutboundResponse(
                        status=resp.status,
                        headers=_joined_headers(resp.headers.items()),
                        body=body,
                        url=str(resp.url),
                    )
                status = resp.status
        except RefusedDestination as exc:
            # The guard below aiohttp knows only host:port; name the URL.
            raise RefusedDestination(redact_url(url), exc.address, exc.reason) from exc
        try:
            target = url.join(URL(location)).with_fragment(None)
        except (ValueError, TypeError) as exc:
            raise RedirectError(redact_url(url), "unparseable Location") from exc
        if target.origin() != url.origin():
            for name in {k.lower() for k in headers} - CROSS_ORIGIN_HEADERS:
                headers.popall(name, None)
        if (status == 303 and method != "HEAD") or (status in {301, 302} and method == "POST"):
            method = "GET"
            data = json_body = None
            for name in BODY_HEADERS:
                headers.popall(name, None)
        url = target
    raise RedirectError(redact_url(url), f"more than {policy.max_redirects} redirects")


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, url: URL) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit and "Content-Encoding" not in resp.headers:
        raise ResponseTooLarge(redact_url(url), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(min(CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(redact_url(url), limit)
        chunks.append(chunk)


def _joined_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined
