"""shared.outbound: which addresses the guard refuses, the policy setting, the resolver."""

from __future__ import annotations

import socket
from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.outbound.client import (
    GuardedResolver,
    new_session,
)
from shared.outbound.policy import (
    OutboundError,
    OutboundPolicy,
    OutboundTimeoutError,
    RefusedDestination,
    check_address,
    parse_networks,
    redact_url,
)

pytestmark = pytest.mark.unit

STRICT = OutboundPolicy()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.1.1", "carrier-grade NAT"),
        ("100.100.100.200", "metadata"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (an address refused, not bound)
        ("0.1.2.3", "this-network"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "not globally routable"),
        ("198.18.0.1", "not globally routable"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fd00:ec2::254", "metadata"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
        ("::127.0.0.1", "reserved"),
        ("64:ff9b::7f00:1", "NAT64-embedded loopback"),
        ("2002:7f00:1::", "6to4-embedded loopback"),
        ("2002:a00:1::1", "6to4-embedded private"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "not globally routable"),  # Teredo
        ("2001:db8::1", "not globally routable"),  # documentation
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    refusal = check_address(ip_address(address), STRICT)
    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.215.14",
        "2606:4700:4700::1111",
        "2a00:1450:4001:81c::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 of a public address
        "2002:808:808::1",  # 6to4 of a public address
    ],
)
def test_allowed_addresses(address: str) -> None:
    assert check_address(ip_address(address), STRICT) is None


def test_allowed_networks_exempt_only_themselves() -> None:
    policy = OutboundPolicy.from_setting("127.0.0.0/8")
    assert check_address(ip_address("127.0.0.1"), policy) is None
    assert check_address(ip_address("127.9.9.9"), policy) is None
    assert check_address(ip_address("::ffff:127.0.0.1"), policy) is None
    assert check_address(ip_address("::1"), policy) == "loopback"
    assert check_address(ip_address("10.0.0.1"), policy) == "private"
    assert check_address(ip_address("169.254.169.254"), policy) == "cloud metadata endpoint"

    v6 = OutboundPolicy.from_setting("::1, fd00::/8")
    assert check_address(ip_address("::1"), v6) is None
    assert check_address(ip_address("fd00::5"), v6) is None
    assert check_address(ip_address("127.0.0.1"), v6) == "loopback"


def test_from_setting_parses_lists() -> None:
    policy = OutboundPolicy.from_setting(" 127.0.0.0/8 ,10.1.2.3, ::1,,", total_timeout=3)
    assert policy.allowed_networks == (
        IPv4Network("127.0.0.0/8"),
        IPv4Network("10.1.2.3/32"),
        IPv6Network("::1/128"),
    )
    assert policy.total_timeout == 3
    assert policy.connect_timeout == 5
    assert policy.max_response_bytes == 1_048_576
    assert policy.max_redirects == 5
    assert OutboundPolicy.from_setting("").allowed_networks == ()
    assert parse_networks(" , ") == ()


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.1/8", "10.0.0.0/33", "fe80::/200", "1.2.3"])
def test_from_setting_names_the_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match="OUTBOUND_ALLOWED_NETWORKS") as info:
        OutboundPolicy.from_setting(f"127.0.0.0/8, {bad}")
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"connect_timeout": 0},
        {"total_timeout": -1},
        {"max_response_bytes": 0},
        {"max_redirects": -1},
    ],
)
def test_policy_rejects_nonsense(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        OutboundPolicy(**fields)  # type: ignore[arg-type]


def test_policy_rejects_non_networks() -> None:
    with pytest.raises(TypeError, match="not an IP network"):
        OutboundPolicy(allowed_networks=("127.0.0.0/8",))  # type: ignore[arg-type]


def test_redact_url_drops_secrets() -> None:
    assert redact_url("https://user:pw@hook.example/p/a?token=s3cret#frag") == (
        "https://hook.example/p/a"
    )
    assert redact_url("file:///etc/passwd") == "file:///etc/passwd"


def test_errors_carry_their_parts() -> None:
    refused = RefusedDestination("http://127.0.0.1/", "127.0.0.1", "loopback")
    assert (refused.url, refused.address, refused.reason) == (
        "http://127.0.0.1/",
        "127.0.0.1",
        "loopback",
    )
    assert str(refused) == "refused outbound request to http://127.0.0.1/ (127.0.0.1): loopback"
    assert isinstance(refused, OutboundError)
    timeout = OutboundTimeoutError("http://h/", "total timeout 1s")
    assert isinstance(timeout, TimeoutError)
    assert "total timeout 1s" in str(timeout)


class StaticResolver(AbstractResolver):
    """Answers every name with fixed addresses (no DNS)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for address in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_refuses_when_any_address_is_refused() -> None:
    policy = OutboundPolicy.from_setting("127.0.0.1/32")
    inner = StaticResolver("127.0.0.1", "10.0.0.1")
    resolver = GuardedResolver(policy, inner)
    with pytest.raises(RefusedDestination) as info:
        await resolver.resolve("mixed.test", 80)
    assert info.value.address == "10.0.0.1"
    assert info.value.reason == "private"
    assert info.value.url == "mixed.test:80"
    await resolver.close()
    assert inner.closed


async def test_resolver_passes_global_answers_through() -> None:
    resolver = GuardedResolver(STRICT, StaticResolver("8.8.8.8", "2606:4700:4700::1111"))
    results = await resolver.resolve("public.test", 443)
    assert [r["host"] for r in results] == ["8.8.8.8", "2606:4700:4700::1111"]
    await resolver.close()


async def test_new_session_keeps_the_guard_settings() -> None:
    with pytest.raises(TypeError, match="connector"):
        new_session(STRICT, connector=None)
    with pytest.raises(TypeError, match="proxy, trust_env"):
        new_session(STRICT, trust_env=True, proxy="http://proxy.example")


def test_within_bounds_one_exchange_and_keeps_the_rest() -> None:
    base = OutboundPolicy.from_setting(
        "127.0.0.0/8", connect_timeout=5, total_timeout=30, max_response_bytes=1000
    )
    short = base.within(2.0)
    assert (short.connect_timeout, short.total_timeout) == (2.0, 2.0)
    assert short.allowed_networks == base.allowed_networks
    assert short.max_response_bytes == 1000
    assert base.within(10).connect_timeout == 5
