"""The one HTTP client layer for every outbound call (webhooks, MCP servers, registration
files): an SSRF guard, timeouts and response-size caps.

Every destination address is checked before a connection is made. A host name is
resolved first and refused when *any* of its addresses is refused; the connection
then goes to the addresses that were checked (aiohttp connects to what the resolver
returned; the httpx2 transport rewrites the request to the checked IP), so a second,
rebound DNS answer can never be used. IP literals are checked too. Private,
loopback, link-local, multicast, unspecified, reserved and other non-global
addresses are refused unless they fall inside ``OUTBOUND_ALLOWED_NETWORKS``.

Two clients share the guard:

* aiohttp: :func:`new_session` builds a session on a :class:`GuardedConnector`, and
  :func:`fetch` makes one exchange with it: http(s) only, redirects followed by hand
  (each hop re-checked), the body read under a hard cap, one deadline for everything.
* httpx2 (what the ``mcp`` package uses): :func:`httpx_client_factory` returns a
  factory with the signature of ``mcp``'s ``McpHttpClientFactory`` whose clients send
  through a :class:`GuardedHttpxTransport`.

Nothing here logs; exceptions carry URLs without credentials, query or fragment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias
from urllib.parse import urlsplit

import aiohttp
import httpx2
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict
from yarl import URL

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

__all__ = [
    "GuardedConnector",
    "GuardedHttpxTransport",
    "GuardedResolver",
    "HttpxClientFactory",
    "OutboundError",
    "OutboundPolicy",
    "OutboundResponse",
    "OutboundTimeoutError",
    "RedirectError",
    "RefusedDestination",
    "ResponseTooLarge",
    "check_address",
    "fetch",
    "httpx_client_factory",
    "new_session",
    "parse_networks",
    "redact_url",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

#: The name of the setting the allowed networks come from (for error messages).
SETTING_NAME = "OUTBOUND_ALLOWED_NETWORKS"

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024

_METADATA_ADDRESSES = frozenset(
    {
        IPv4Address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack ...
        IPv4Address("100.100.100.200"),  # Alibaba Cloud
        IPv6Address("fd00:ec2::254"),  # AWS over IPv6
    }
)
_THIS_NETWORK = IPv4Network("0.0.0.0/8")
_CGNAT = IPv4Network("100.64.0.0/10")
_BROADCAST = IPv4Address("255.255.255.255")
_RFC1918 = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
)
_UNIQUE_LOCAL = IPv6Network("fc00::/7")
_NAT64 = IPv6Network("64:ff9b::/96")

# The only headers a redirect to another origin carries along: a caller's other
# headers (Authorization, Cookie, X-Api-Key, ...) may be credentials of the origin
# they were written for.
_CROSS_ORIGIN_HEADERS = frozenset(
    {
        "accept",
        "user-agent",
        "content-type",
        "content-encoding",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
# Headers that describe a body, dropped when a redirect drops the body.
_BODY_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding")


# --------------------------------------------------------------------------- policy


def origin(url: str) -> str:
    """scheme://host:port of a URL (ValueError for a bad port): the unit of the
    dispatcher's breakers and limits, and of where a secret header may go."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def parse_networks(setting: str, name: str = SETTING_NAME) -> tuple[IPNetwork, ...]:
    """Parse a comma-separated list of networks (``10.0.0.0/8, ::1``); a bare address is
    a one-address network. Blank entries are ignored; a bad one raises ValueError
    naming it (and the setting ``name``)."""
    networks: list[IPNetwork] = []
    for raw in setting.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(f"{name}: {entry!r} is not an IP network ({exc})") from exc
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """What outbound calls may reach and how long and how much they may take.

    ``allowed_networks`` are exempt from refusal (an operator's explicit choice, e.g.
    ``127.0.0.0/8`` in development). Timeouts are in seconds; ``total_timeout`` bounds a
    whole :func:`fetch` exchange including its redirects.
    """

    allowed_networks: tuple[IPNetwork, ...] = ()
    connect_timeout: float = 5
    total_timeout: float = 30
    max_response_bytes: int = 1_048_576
    max_redirects: int = 5

    def __post_init__(self) -> None:
        networks = tuple(self.allowed_networks)
        for network in networks:
            if not isinstance(network, IPv4Network | IPv6Network):
                raise TypeError(f"allowed_networks holds {network!r}, not an IP network")
        object.__setattr__(self, "allowed_networks", networks)
        if not self.connect_timeout > 0:
            raise ValueError("connect_timeout must be positive")
        if not self.total_timeout > 0:
            raise ValueError("total_timeout must be positive")
        if self.max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must not be negative")

    @classmethod
    def from_setting(cls, setting: str, **kw: Any) -> OutboundPolicy:
        """A policy whose allowed networks are the ``OUTBOUND_ALLOWED_NETWORKS`` value
        ``setting``; ``kw`` sets the other fields."""
        return cls(allowed_networks=parse_networks(setting), **kw)

    def within(self, seconds: float) -> OutboundPolicy:
        """The same policy for one exchange of at most ``seconds`` in all."""
        return dataclasses.replace(
            self, connect_timeout=min(self.connect_timeout, seconds), total_timeout=seconds
        )

    def allows(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is inside one of the allowed networks."""
        return any(ip in network for network in self.allowed_networks)


# --------------------------------------------------------------------------- addresses


def check_address(ip: IPAddress, policy: OutboundPolicy) -> str | None:
    """Why an outbound connection to ``ip`` is refused, or None when it may go ahead.

    Anything not globally routable is refused, with explicit checks first for the
    cases ``ipaddress`` classifies loosely (CGNAT, 0.0.0.0/8, IPv6 site-local, cloud
    metadata) and for IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64,
    6to4, Teredo), which are judged by the embedded address.
    """
    if policy.allows(ip):
        return None
    if isinstance(ip, IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            reason = check_address(mapped, policy)
            return None if reason is None else f"IPv4-mapped {reason}"
        if ip in _NAT64:
            embedded = IPv4Address(int(ip) & 0xFFFFFFFF)
            reason = check_address(embedded, policy)
            return None if reason is None else f"NAT64-embedded {reason}"
        if ip.sixtofour is not None:
            reason = check_address(ip.sixtofour, policy)
            if reason is not None:
                return f"6to4-embedded {reason}"
        if ip.teredo is not None:
            for embedded in ip.teredo:
                reason = check_address(embedded, policy)
                if reason is not None:
                    return f"Teredo-embedded {reason}"
    return _refusal(ip)


def _refusal(ip: IPAddress) -> str | None:
    if ip in _METADATA_ADDRESSES:
        return "cloud metadata endpoint"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    special = _refusal_v4(ip) if isinstance(ip, IPv4Address) else _refusal_v6(ip)
    if special is not None:
        return special
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or not ip.is_global:
        return "not globally routable"
    return None


def _refusal_v4(ip: IPv4Address) -> str | None:
    if ip in _THIS_NETWORK:
        return "this-network (0.0.0.0/8)"
    if ip in _CGNAT:
        return "carrier-grade NAT (100.64.0.0/10)"
    if ip == _BROADCAST:
        return "broadcast"
    if any(ip in network for network in _RFC1918):
        return "private"
    return None


def _refusal_v6(ip: IPv6Address) -> str | None:
    if ip.is_site_local:
        return "site-local"
    if ip in _UNIQUE_LOCAL:
        return "unique-local (fc00::/7)"
    return None


def _parse_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None for a host name."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def _is_numeric_host(host: str) -> bool:
    """A host made of digits and dots that is no canonical address (``2130706433``,
    ``127.1``): legacy forms ``socket`` maps onto addresses; refused outright."""
    return host.replace(".", "").isdigit() and _parse_ip(host) is None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_host(url: str, host: str, policy: OutboundPolicy) -> None:
    """Raise RefusedDestination when the address ``host`` is refused; an unparseable
    address is refused too."""
    ip = _parse_ip(host)
    reason = "not a canonical IP address" if ip is None else check_address(ip, policy)
    if reason is not None:
        raise RefusedDestination(url, host, reason)


# --------------------------------------------------------------------------- errors


def redact_url(url: URL | str) -> str:
    """``url`` without credentials, query or fragment: safe for logs and errors."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        if parsed.user is not None or parsed.password is not None:
            parsed = parsed.with_user(None)
        return str(parsed.with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<unparseable URL>"


class OutboundError(Exception):
    """Base of the errors this module raises itself."""


class RefusedDestination(OutboundError):  # noqa: N818 (name fixed by the dispatcher design)
    """The destination is refused: a scheme other than http(s), or an address outside
    what the policy allows. Never worth retrying."""

    def __init__(self, url: str, address: str, reason: str) -> None:
        super().__init__(url, address, reason)
        self.url = url
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        where = f" ({self.address})" if self.address else ""
        return f"refused outbound request to {self.url}{where}: {self.reason}"


class ResponseTooLarge(OutboundError):  # noqa: N818 (name fixed by the dispatcher design)
    """The response body is larger than the policy's ``max_response_bytes``."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(url, limit)
        self.url = url
        self.limit = limit

    def __str__(self) -> str:
        return f"response from {self.url} exceeds {self.limit} bytes"


class RedirectError(OutboundError):
    """Too many redirects, or a redirect to a location that cannot be parsed."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"redirect from {self.url} not followed: {self.reason}"


class OutboundTimeoutError(OutboundError, TimeoutError):
    """The exchange did not finish in time (a TimeoutError, so transient)."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"outbound request to {url} timed out ({detail})")
        self.url = url
        self.detail = detail


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
            _check_host(_host_port(host, port), result["host"], self._policy)
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
            _check_host(_host_port(host, port), result["host"], self._outbound_policy)
        return results


def _client_timeout(policy: OutboundPolicy) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=policy.total_timeout,
        connect=policy.connect_timeout,
        sock_connect=policy.connect_timeout,
    )


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
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """An aiohttp session whose connections all pass the guard (call inside the loop;
    close it). Timeouts come from ``policy``; no proxy from the environment, no cookies
    kept between calls (one session serves many users' destinations), responses
    decompressed. ``resolver`` replaces the system resolver under the guard; other
    keyword arguments go to ``ClientSession``.

    aiohttp has no session-wide switch for redirects: :func:`fetch` never lets aiohttp
    follow them, and a redirect followed by a direct ``session.request`` still connects
    only through the guard.
    """
    fixed = sorted(_FIXED_SESSION_ARGS & kwargs.keys())
    if fixed:
        raise TypeError(f"new_session sets {', '.join(fixed)} itself")
    connector = GuardedConnector(
        policy, resolver=resolver, limit=limit, limit_per_host=limit_per_host
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
    if _parse_ip(host) is not None or _is_numeric_host(host):
        _check_host(redact_url(url), host, policy)


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
    timeout = _client_timeout(policy)
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
                    body = await _read_capped(resp, policy.max_response_bytes, redact_url(url))
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
            for name in {k.lower() for k in headers} - _CROSS_ORIGIN_HEADERS:
                headers.popall(name, None)
        if (status == 303 and method != "HEAD") or (status in {301, 302} and method == "POST"):
            method = "GET"
            data = json_body = None
            for name in _BODY_HEADERS:
                headers.popall(name, None)
        url = target
    raise RedirectError(redact_url(url), f"more than {policy.max_redirects} redirects")


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit and "Content-Encoding" not in resp.headers:
        raise ResponseTooLarge(url, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(url, limit)
        chunks.append(chunk)


def _joined_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined


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
            ip = _parse_ip(str(sockaddr[0]))
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
        if _is_numeric_host(host):
            raise RefusedDestination(shown, host, "not a canonical IP address")
        port = url.port or (443 if url.scheme == "https" else 80)
        literal = _parse_ip(host)
        addresses = [literal] if literal is not None else await self._lookup(request, host, port)
        if not addresses:
            raise httpx2.ConnectError(f"{host} has no address", request=request)
        for ip in addresses:
            reason = check_address(ip, self._policy)
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
            pool = httpx2.AsyncHTTPTransport(
                verify=self._verify, trust_env=False, limits=self._limits, retries=0
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
