"""The outbound guard's policy: which destinations an outbound call may reach.

Every destination address is checked before a connection is made. A host name is
resolved first and refused when *any* of its addresses is refused; the connection
then goes to the addresses that were checked, so a second, rebound DNS answer can
never be used. IP literals are checked too. Private, loopback, link-local, multicast,
unspecified, reserved and other non-global addresses are refused unless they fall
inside ``OUTBOUND_ALLOWED_NETWORKS``. Outside those networks only the ports of
``OUTBOUND_ALLOWED_PORTS`` may be reached (80 and 443 by default: the ports the
dispatcher's network policy lets out: erc8004-egress-internet in
deploy/k8s/base/networkpolicies.yaml).

With ``OUTBOUND_PROXY_URL`` every connection goes through an HTTP proxy, and the
guard still decides: the name is resolved here, every address checked, and the
proxy is asked to ``CONNECT`` to the checked address (never to the name, which it
would resolve itself); TLS and the Host header keep the name.

The two clients over this policy: :mod:`shared.outbound.client` (aiohttp: webhooks,
Telegram, registration files) and :mod:`shared.outbound.transport` (httpx2, what the
``mcp`` package uses). Nothing here logs; exceptions carry URLs without credentials,
query or fragment.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote, urlsplit

from yarl import URL

from shared.contract.actions import FOLLOWS_REDIRECTS

if TYPE_CHECKING:
    pass


IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

#: The name of the setting the allowed networks come from (for error messages).
SETTING_NAME = "OUTBOUND_ALLOWED_NETWORKS"
#: The setting of the ports reachable outside the allowed networks, and its default
#: (kept equal to the dispatcher's NetworkPolicy egress ports: a test checks).
PORTS_SETTING_NAME = "OUTBOUND_ALLOWED_PORTS"
DEFAULT_ALLOWED_PORTS = "80,443"
PROXY_SETTING_NAME = "OUTBOUND_PROXY_URL"

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024

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
# (The request's own description, which is never a secret header, and the
# dispatcher's delivery headers.)
CROSS_ORIGIN_HEADERS = FOLLOWS_REDIRECTS | {
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
}
# Headers that describe a body, dropped when a redirect drops the body.
BODY_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding")


# --------------------------------------------------------------------------- policy


@functools.lru_cache(maxsize=4096)
def origin(url: str) -> str:
    """scheme://host:port of a URL (ValueError for a bad port): the unit of the
    dispatcher's breakers and limits, and of where a secret header may go (kept for
    the URLs seen last: each attempt asks for its own)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


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


def parse_ports(setting: str, name: str = PORTS_SETTING_NAME) -> frozenset[int] | None:
    """Parse a comma-separated list of TCP ports (``80, 443``); ``*`` (or nothing)
    means every port (None). A bad entry raises ValueError naming it."""
    entries = [e.strip() for e in setting.split(",") if e.strip()]
    if not entries or entries == ["*"]:
        return None
    ports: set[int] = set()
    for entry in entries:
        if not entry.isascii() or not entry.isdigit() or not 0 < int(entry) < 65536:
            raise ValueError(f"{name}: {entry!r} is not a TCP port (1-65535) or *")
        ports.add(int(entry))
    return frozenset(ports)


@dataclass(frozen=True, slots=True)
class OutboundProxy:
    """An HTTP proxy every outbound connection tunnels through (``CONNECT``).

    Built from ``http://[user:password@]host:port``; the credentials become the
    ``Proxy-Authorization`` header and appear in no ``repr``, error or log."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, value: str, name: str = PROXY_SETTING_NAME) -> OutboundProxy | None:
        """The proxy of the setting's value; None for ''. ValueError (without the
        value, which may hold a password) when it is not an http:// URL with a host."""
        value = value.strip()
        if not value:
            return None
        try:
            parts = urlsplit(value)
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"{name}: not a URL http://[user:password@]host:port") from None
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError(f"{name}: not a URL http://[user:password@]host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{name}: a proxy URL has no path, query or fragment")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(host=parts.hostname, port=port, authorization=authorization)

    @property
    def url(self) -> str:
        """The proxy's URL without credentials."""
        return f"http://{host_port(self.host, self.port)}"

    def connect_request(self, ip: str, port: int) -> bytes:
        """The ``CONNECT`` of a tunnel to the checked address ``ip``:``port``."""
        target = host_port(ip, port)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.authorization is not None:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """What outbound calls may reach and how long and how much they may take.

    ``allowed_networks`` are exempt from refusal (an operator's explicit choice, e.g.
    ``127.0.0.0/8`` in development), from the address check and from
    ``allowed_ports``. Timeouts are in seconds; ``total_timeout`` bounds a
    whole :func:`fetch` exchange including its redirects.
    """

    allowed_networks: tuple[IPNetwork, ...] = ()
    #: Ports reachable outside ``allowed_networks`` (None: every port).
    allowed_ports: frozenset[int] | None = None
    #: Where connections are tunnelled through (None: straight to the destination).
    proxy: OutboundProxy | None = None
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
        """The same policy for one exchange of at most ``seconds`` in all (the same
        object for the same policy and seconds: each attempt asks for one)."""
        return _within(self, seconds)

    def allows(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is inside one of the allowed networks."""
        return any(ip in network for network in self.allowed_networks)

    def port_refusal(self, ip: IPAddress, port: int) -> str | None:
        """Why ``port`` may not be reached at ``ip`` (an address the checks passed),
        or None."""
        if self.allowed_ports is None or port in self.allowed_ports or self.allows(ip):
            return None
        return f"port {port} is not allowed ({PORTS_SETTING_NAME})"


@functools.lru_cache(maxsize=256)
def _within(policy: OutboundPolicy, seconds: float) -> OutboundPolicy:
    return dataclasses.replace(
        policy, connect_timeout=min(policy.connect_timeout, seconds), total_timeout=seconds
    )


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


@functools.lru_cache(maxsize=4096)
def parse_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None for a host name (kept for the hosts seen
    last: addresses are immutable, and each request to an IP literal asks)."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def is_numeric_host(host: str) -> bool:
    """A host made of digits and dots that is no canonical address (``2130706433``,
    ``127.1``): legacy forms ``socket`` maps onto addresses; refused outright."""
    return host.replace(".", "").isdigit() and parse_ip(host) is None


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_host(url: str, host: str, policy: OutboundPolicy, port: int | None = None) -> None:
    """Raise RefusedDestination when the address ``host`` (on ``port``, when given) is
    refused; an unparseable address is refused too."""
    ip = parse_ip(host)
    reason = "not a canonical IP address" if ip is None else check_address(ip, policy)
    if reason is None and ip is not None and port is not None:
        reason = policy.port_refusal(ip, port)
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
