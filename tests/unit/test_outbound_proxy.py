"""The outbound guard behind an egress proxy (``OUTBOUND_PROXY_URL``), against a real
CONNECT proxy and real servers on 127.0.0.1: connections go through the proxy; the
name is resolved and every address checked here, and the proxy is asked to CONNECT
to the checked address, never to the name; a name resolving to a refused address is
refused without any request to the proxy; TLS and Host keep the name. And the
guard's ports (``OUTBOUND_ALLOWED_PORTS``)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import httpx2
import pytest
from prometheus_client import CollectorRegistry

from services.dispatcher.app import DispatcherRuntime
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.settings import DispatcherSettings
from shared.outbound.client import fetch, new_session
from shared.outbound.policy import (
    OutboundPolicy,
    OutboundProxy,
    RefusedDestination,
    parse_networks,
    parse_ports,
)
from shared.outbound.transport import GuardedHttpxTransport
from tests.proxyutil import LocalProxy
from tests.unit.test_outbound import StaticResolver
from tests.unit.test_outbound_servers import listen, self_signed, serve, static_addresses

pytestmark = pytest.mark.unit

LOOPBACK = parse_networks("127.0.0.0/8")
PASSWORD = "s3cret-proxy-pass"


def through(proxy_url: str, *, networks: str = "127.0.0.0/8") -> OutboundPolicy:
    return OutboundPolicy(
        allowed_networks=parse_networks(networks),
        proxy=OutboundProxy.parse(proxy_url),
        connect_timeout=2,
        total_timeout=5,
    )


async def test_requests_go_through_the_proxy_to_the_checked_address() -> None:
    """``hook.invalid`` resolves (here) to 127.0.0.1: the proxy is asked to CONNECT to
    127.0.0.1, never to the name, and the server still sees the name in Host."""
    async with LocalProxy().running() as proxy, serve() as server:
        policy = through(proxy.url)
        resolver = StaticResolver("127.0.0.1")
        async with new_session(policy, resolver=resolver) as session:
            url = server.url("/hook?a=1", host="hook.invalid")
            response = await fetch(session, "POST", url, policy=policy, json={"x": 1})
        assert response.status == 200
        assert [(r.method, r.target) for r in proxy.requests] == [
            ("CONNECT", f"127.0.0.1:{server.port}")
        ]
        assert server.seen[0].headers["Host"] == f"hook.invalid:{server.port}"
        assert server.seen[0].body == b'{"x": 1}'


async def test_a_name_resolving_to_a_refused_address_never_reaches_the_proxy() -> None:
    async with LocalProxy().running() as proxy, listen("127.0.0.1") as target:
        for networks, addresses in (
            ("", ("127.0.0.1",)),
            ("127.0.0.0/8", ("127.0.0.1", "10.1.2.3")),
        ):
            policy = through(proxy.url, networks=networks)
            resolver = StaticResolver(*addresses)
            async with new_session(policy, resolver=resolver) as session:
                with pytest.raises(RefusedDestination) as info:
                    await fetch(
                        session, "GET", f"http://inside.invalid:{target.port}/", policy=policy
                    )
            assert info.value.address == addresses[-1]
            # An IP literal too.
            async with new_session(policy) as session:
                with pytest.raises(RefusedDestination):
                    await fetch(session, "GET", "http://169.254.169.254/latest", policy=policy)
        assert proxy.connections == 0
        assert target.connections == 0


async def test_tls_through_the_tunnel_keeps_the_name(tmp_path: Path) -> None:
    """https: CONNECT to the checked IP, then TLS with the name (SNI and certificate):
    the same IP under another name fails the certificate check."""
    server_ctx, client_ctx = self_signed(tmp_path, "hook.test")
    async with LocalProxy().running() as proxy, serve(ssl_context=server_ctx) as server:
        policy = through(proxy.url)
        async with new_session(
            policy, resolver=StaticResolver("127.0.0.1"), verify=client_ctx
        ) as session:
            response = await fetch(
                session, "GET", f"https://hook.test:{server.port}/", policy=policy
            )
            assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await fetch(session, "GET", f"https://other.test:{server.port}/", policy=policy)
        assert {r.target for r in proxy.requests} == {f"127.0.0.1:{server.port}"}
        assert [s.headers["Host"] for s in server.seen] == [f"hook.test:{server.port}"]


async def test_proxy_credentials_are_sent_and_never_shown() -> None:
    async with (
        LocalProxy(credentials=("egress", PASSWORD)).running() as proxy,
        serve() as server,
    ):
        good = through(proxy.url_with("egress", PASSWORD))
        assert PASSWORD not in repr(good)
        async with new_session(good) as session:
            assert (await fetch(session, "GET", server.url(), policy=good)).status == 200
        bad = through(proxy.url_with("egress", "wrong-pass"))
        async with new_session(bad) as session:
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                await fetch(session, "GET", server.url(), policy=bad)
        assert "407" in str(info.value)
        assert "wrong-pass" not in str(info.value)
        assert len(server.seen) == 1


async def test_httpx_goes_through_the_proxy_to_the_checked_address(tmp_path: Path) -> None:
    """The MCP client's transport: https as a CONNECT tunnel to the checked IP with
    the name for TLS; http forwarded with the checked IP in the request line; a
    refused name is refused before the proxy is asked."""
    server_ctx, client_ctx = self_signed(tmp_path, "mcp.test")
    async with (
        LocalProxy().running() as proxy,
        serve(ssl_context=server_ctx) as tls,
        serve() as plain,
    ):
        policy = through(proxy.url)
        transport = GuardedHttpxTransport(
            policy, verify=client_ctx, resolver=static_addresses("127.0.0.1")
        )
        async with httpx2.AsyncClient(transport=transport) as client:
            assert (await client.get(f"https://mcp.test:{tls.port}/")).status_code == 200
            assert (await client.get(f"http://mcp.test:{plain.port}/p")).status_code == 200
        assert [(r.method, r.target) for r in proxy.requests] == [
            ("CONNECT", f"127.0.0.1:{tls.port}"),
            ("GET", f"http://127.0.0.1:{plain.port}/p"),
        ]
        assert tls.seen[0].headers["Host"] == f"mcp.test:{tls.port}"
        assert plain.seen[0].headers["Host"] == f"mcp.test:{plain.port}"

        refused = GuardedHttpxTransport(
            through(proxy.url, networks=""), resolver=static_addresses("127.0.0.1")
        )
        async with httpx2.AsyncClient(transport=refused) as client:
            with pytest.raises(RefusedDestination):
                await client.get(f"http://mcp.test:{plain.port}/")
        assert len(proxy.requests) == 2


async def test_only_the_allowed_ports_are_reached_outside_the_allowed_networks() -> None:
    """A public address on a port outside OUTBOUND_ALLOWED_PORTS is refused before
    any connection; the allowed networks are exempt (their ports are the operator's)."""
    public = OutboundPolicy(allowed_ports=frozenset({80, 443}), connect_timeout=1)
    resolver = StaticResolver("93.184.215.14")
    async with new_session(public, resolver=resolver) as session:
        for url in ("http://hook.invalid:8443/", "http://93.184.215.14:25/"):
            with pytest.raises(RefusedDestination) as info:
                await fetch(session, "GET", url, policy=public)
            assert info.value.reason.startswith("port "), info.value.reason
    transport = GuardedHttpxTransport(public, resolver=static_addresses("93.184.215.14"))
    async with httpx2.AsyncClient(transport=transport) as client:
        with pytest.raises(RefusedDestination, match="port 8443 is not allowed"):
            await client.get("http://mcp.invalid:8443/")

    exempt = OutboundPolicy(allowed_networks=LOOPBACK, allowed_ports=frozenset({443}))
    async with serve() as server, new_session(exempt) as session:
        assert (await fetch(session, "GET", server.url(), policy=exempt)).status == 200


def test_proxy_and_port_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1/db")
    monkeypatch.setenv("SECRETS_KEY", "dGVzdC1zZWNyZXRzLWtleS0zMi1ieXRlcy1sb25nLTE=")
    settings = DispatcherSettings()
    assert parse_ports(settings.outbound_allowed_ports) == frozenset({80, 443})
    assert settings.outbound_proxy_url.get_secret_value() == ""
    monkeypatch.setenv("OUTBOUND_PROXY_URL", f"http://egress:{PASSWORD}@proxy.infra:3128")
    monkeypatch.setenv("OUTBOUND_ALLOWED_PORTS", "443, 8443")
    settings = DispatcherSettings()
    assert PASSWORD not in repr(settings)
    proxy = OutboundProxy.parse(settings.outbound_proxy_url.get_secret_value())
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.url) == ("proxy.infra", 3128, "http://proxy.infra:3128")
    assert parse_ports(settings.outbound_allowed_ports) == frozenset({443, 8443})
    assert parse_ports("*") is None
    for bad in ("socks5://egress:" + PASSWORD + "@proxy:1080", "http://egress:" + PASSWORD + "@"):
        monkeypatch.setenv("OUTBOUND_PROXY_URL", bad)
        with pytest.raises(ValueError, match="OUTBOUND_PROXY_URL") as info:
            DispatcherSettings()
        assert PASSWORD not in str(info.value)
    # The dispatcher's guard is built from them.
    monkeypatch.setenv("OUTBOUND_PROXY_URL", f"http://egress:{PASSWORD}@proxy.infra:3128")
    runtime = DispatcherRuntime(DispatcherSettings(), DispatcherMetrics.create(CollectorRegistry()))
    assert runtime.policy.proxy == proxy
    assert runtime.policy.allowed_ports == frozenset({443, 8443})
    assert PASSWORD not in repr(runtime.policy)
    monkeypatch.setenv("OUTBOUND_PROXY_URL", "")
    monkeypatch.setenv("OUTBOUND_ALLOWED_PORTS", "443,http")
    with pytest.raises(ValueError, match="OUTBOUND_ALLOWED_PORTS"):
        DispatcherSettings()
