"""shared.outbound against real servers on the loopback interface: the guard refuses
before connecting, lets allowed networks through, re-checks redirects, caps bodies and
bounds time, for both the aiohttp and the httpx2 (MCP) clients.

Only loopback is touched (no PostgreSQL, no Kafka), hence the ``unit`` marker.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx2
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp.shared._httpx_utils import McpHttpClientFactory

from shared.outbound.client import (
    fetch,
    new_session,
)
from shared.outbound.policy import (
    IPAddress,
    OutboundPolicy,
    OutboundTimeoutError,
    RedirectError,
    RefusedDestination,
    ResponseTooLarge,
)
from shared.outbound.transport import (
    GuardedHttpxTransport,
    httpx_client_factory,
)
from tests.unit.test_outbound import StaticResolver
from tools.localnet import Handler, Receiver
from tools.localnet import serve as serve_receiver

pytestmark = pytest.mark.unit

STRICT = OutboundPolicy()
LOOPBACK = OutboundPolicy.from_setting("127.0.0.0/8, ::1")


async def hello(_request: web.Request) -> web.StreamResponse:
    return web.Response(text="hello")


@asynccontextmanager
async def serve(
    handler: Handler = hello, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Receiver]:
    """A server on ``host`` (a free port) recording every request ``handler`` answers."""
    receiver = Receiver(
        handler=handler,
        host=host,
        ssl_context=ssl_context,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
    async with serve_receiver(receiver):
        yield receiver


@dataclass
class Listener:
    """A bare TCP listener counting connections: proof that none was attempted."""

    port: int
    connections: int = 0


@asynccontextmanager
async def listen(host: str) -> AsyncIterator[Listener]:
    listener = Listener(0)
    writers: list[asyncio.StreamWriter] = []

    async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.connections += 1
        writers.append(writer)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(accepted, host, 0)
    listener.port = tcp.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        tcp.close()
        for writer in writers:
            writer.close()
        await tcp.wait_closed()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------------- aiohttp


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_loopback_refused_without_a_connection(host: str) -> None:
    if host == "::1" and not ipv6_loopback():
        pytest.skip("this host cannot bind ::1")
    async with listen(host) as listener, new_session(STRICT) as session:
        url = f"http://{netloc(host, listener.port)}/"
        with pytest.raises(RefusedDestination) as info:
            await fetch(session, "GET", url, policy=STRICT)
        assert "loopback" in info.value.reason
        assert info.value.url == url
        assert info.value.address == host
        # The URL of a refusal is redacted (credentials, query and fragment dropped).
        with pytest.raises(RefusedDestination) as info:
            await fetch(session, "GET", f"http://u:pw@{netloc(host, listener.port)}/p?t=s#f",
                        policy=STRICT)  # fmt: skip
        assert info.value.url == url + "p"
        assert (info.value.address, "loopback" in info.value.reason) == (host, True)
        # The connector refuses on its own too (a request that bypasses fetch).
        with pytest.raises(RefusedDestination, match="loopback"):
            await session.get(url)
        assert listener.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.64.0.1/",
        "http://[::ffff:169.254.169.254]/",
        "http://0.0.0.0:80/",
        "http://2130706433/",
        "http://127.1/",
    ],
)
async def test_unroutable_refused_before_any_connection(url: str) -> None:
    # connect_timeout 5 s: had a connection been tried, the call would take that long.
    policy = OutboundPolicy(connect_timeout=5, total_timeout=10)
    async with new_session(policy) as session:
        started = time.monotonic()
        with pytest.raises(RefusedDestination):
            await fetch(session, "GET", url, policy=policy)
        with pytest.raises((RefusedDestination, aiohttp.InvalidUrlClientError)):
            await session.get(url)
        assert time.monotonic() - started < 1


async def test_hostname_resolving_to_loopback_refused() -> None:
    async with listen("127.0.0.1") as listener, new_session(STRICT) as session:
        with pytest.raises(RefusedDestination) as info:
            await fetch(session, "GET", f"http://localhost:{listener.port}/", policy=STRICT)
        assert info.value.reason == "loopback"
        assert info.value.address == "127.0.0.1"
        assert listener.connections == 0


async def test_hostname_with_one_refused_address_refused() -> None:
    # DNS answers an allowed and a refused address: the name is refused as a whole.
    policy = OutboundPolicy.from_setting("127.0.0.1/32")
    resolver = StaticResolver("127.0.0.1", "10.0.0.1")
    async with listen("127.0.0.1") as listener, new_session(policy, resolver=resolver) as session:
        with pytest.raises(RefusedDestination) as info:
            await fetch(session, "GET", f"http://mixed.test:{listener.port}/", policy=policy)
        assert info.value.address == "10.0.0.1"
        assert listener.connections == 0


async def test_allowed_networks_reach_loopback() -> None:
    async with serve() as server, new_session(LOOPBACK) as session:
        for url in (server.url(), server.url("/x?y=1", host="localhost")):
            response = await fetch(session, "GET", url, policy=LOOPBACK)
            assert response.status == 200
            assert response.body == b"hello"
            assert response.url == url
            assert response.headers["content-type"].startswith("text/plain")
        assert [seen.path_qs for seen in server.seen] == ["/", "/x?y=1"]


async def test_allowed_ipv6_loopback() -> None:
    if not ipv6_loopback():
        pytest.skip("this host cannot bind ::1")
    async with serve(host="::1") as server, new_session(LOOPBACK) as session:
        response = await fetch(session, "POST", server.url(), policy=LOOPBACK, json={"a": 1})
        assert response.status == 200
        assert server.seen[0].body == b'{"a": 1}'


async def test_connects_to_the_address_it_checked() -> None:
    # "pinned.invalid" cannot resolve through DNS: the request reaches the server only
    # because the connection goes to the address the guarded resolver returned.
    async with (
        serve() as server,
        new_session(LOOPBACK, resolver=StaticResolver("127.0.0.1")) as session,
    ):
        url = server.url(host="pinned.invalid")
        response = await fetch(session, "GET", url, policy=LOOPBACK)
        assert response.status == 200
        assert server.seen[0].headers["Host"] == f"pinned.invalid:{server.port}"


async def test_redirect_into_a_refused_address_is_not_followed() -> None:
    policy = OutboundPolicy.from_setting("127.0.0.1/32")
    async with serve(host="127.0.0.2") as target:

        async def redirect(request: web.Request) -> web.StreamResponse:
            location = target.url() if request.path == "/" else "http://169.254.169.254/latest/"
            raise web.HTTPFound(location)

        async with serve(redirect) as origin, new_session(policy) as session:
            with pytest.raises(RefusedDestination) as info:
                await fetch(session, "GET", origin.url(), policy=policy)
            assert info.value.address == "127.0.0.2"
            assert info.value.url == target.url()
            started = time.monotonic()
            with pytest.raises(RefusedDestination, match="metadata"):
                await fetch(session, "GET", origin.url("/meta"), policy=policy)
            assert time.monotonic() - started < 1
            assert len(origin.seen) == 2
        assert target.seen == []


async def test_redirects_followed_per_method_rules() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/303":
            raise web.HTTPSeeOther("/landing")
        if request.path == "/307":
            raise web.HTTPTemporaryRedirect("/landing")
        if request.path == "/302":
            raise web.HTTPFound("/landing")
        return web.Response(text=f"{request.method} {await request.text()}")

    async with serve(handler) as server, new_session(LOOPBACK) as session:
        headers = {"Content-Type": "text/plain", "Idempotency-Key": "job-1"}
        for path, expected in (
            ("/303", b"GET "),
            ("/302", b"GET "),
            ("/307", b"POST payload"),
        ):
            response = await fetch(
                session, "POST", server.url(path), policy=LOOPBACK, headers=headers, data=b"payload"
            )
            assert response.status == 200
            assert response.body == expected
            assert response.url == server.url("/landing")
        put = await fetch(session, "PUT", server.url("/302"), policy=LOOPBACK, data=b"x")
        assert put.body == b"PUT x"
        landings = [seen for seen in server.seen if seen.path == "/landing"]
        assert [seen.headers.get("Idempotency-Key") for seen in landings] == ["job-1"] * 3 + [None]
        # The body and its headers go when the method becomes GET, and stay for 307.
        assert "Content-Type" not in landings[0].headers
        assert landings[2].headers["Content-Type"] == "text/plain"


async def test_redirect_to_another_origin_drops_credentials() -> None:
    async with serve(host="127.0.0.2") as target:

        async def redirect(_request: web.Request) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(target.url("/hook"))

        async with serve(redirect) as origin, new_session(LOOPBACK) as session:
            headers = {
                "Authorization": "Bearer secret",
                "X-Api-Key": "key-of-the-origin",
                "Idempotency-Key": "job-2",
            }
            response = await fetch(
                session, "POST", origin.url(), policy=LOOPBACK, headers=headers, data=b"{}"
            )
            assert response.status == 200
            assert origin.seen[0].headers["Authorization"] == "Bearer secret"
            assert origin.seen[0].headers["X-Api-Key"] == "key-of-the-origin"
        assert "Authorization" not in target.seen[0].headers
        assert "X-Api-Key" not in target.seen[0].headers
        assert target.seen[0].headers["Idempotency-Key"] == "job-2"
        assert target.seen[0].body == b"{}"


async def test_too_many_redirects() -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/hop{len(request.path)}")

    policy = OutboundPolicy.from_setting("127.0.0.0/8", max_redirects=3)
    async with serve(loop) as server, new_session(policy) as session:
        with pytest.raises(RedirectError, match="more than 3 redirects"):
            await fetch(session, "GET", server.url(), policy=policy)
        assert len(server.seen) == 4


async def test_redirect_status_without_location_is_returned() -> None:
    async def bare(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, text="nowhere")

    async with serve(bare) as server, new_session(LOOPBACK) as session:
        response = await fetch(session, "GET", server.url(), policy=LOOPBACK)
        assert (response.status, response.body) == (302, b"nowhere")


async def test_response_size_is_capped() -> None:
    limit = 10_000

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["n"])
        if request.path == "/declared":
            return web.Response(body=b"x" * size)
        if request.path == "/gzip":
            return web.Response(
                body=gzip.compress(b"\0" * size), headers={"Content-Encoding": "gzip"}
            )
        stream = web.StreamResponse()  # chunked, no Content-Length
        await stream.prepare(request)
        for _ in range(size // 1000):
            await stream.write(b"y" * 1000)
        await stream.write_eof()
        return stream

    policy = OutboundPolicy.from_setting("127.0.0.0/8", max_response_bytes=limit)
    async with serve(big) as server, new_session(policy) as session:
        for path in ("/declared", "/chunked", "/gzip"):
            ok = await fetch(session, "GET", server.url(f"{path}?n={limit}"), policy=policy)
            assert len(ok.body) == limit
            with pytest.raises(ResponseTooLarge) as info:
                await fetch(session, "GET", server.url(f"{path}?n={limit + 1000}"), policy=policy)
            assert info.value.limit == limit
            assert "n=" not in str(info.value)  # the URL redacted: no query
        # A compressed bomb is cut at the cap of decompressed bytes.
        with pytest.raises(ResponseTooLarge):
            await fetch(session, "GET", server.url("/gzip?n=50000000"), policy=policy)


async def test_total_timeout_bounds_the_whole_exchange() -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        if request.path == "/stall":
            await asyncio.sleep(30)
        await asyncio.sleep(0.3)
        raise web.HTTPFound(f"/hop{len(request.path)}")

    policy = OutboundPolicy.from_setting("127.0.0.0/8", total_timeout=0.8, max_redirects=10)
    async with serve(slow) as server, new_session(policy) as session:
        for path in ("/stall", "/"):  # one stalled response; a chain of slow redirects
            started = time.monotonic()
            with pytest.raises(OutboundTimeoutError, match=r"total timeout 0\.8s"):
                await fetch(session, "GET", server.url(path), policy=policy)
            assert time.monotonic() - started < 2
        assert 2 <= len(server.seen) <= 5


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/", "gopher://example.com/", "data:,hello"]
)
async def test_other_schemes_refused(url: str) -> None:
    async with new_session(LOOPBACK) as session:
        with pytest.raises(RefusedDestination) as info:
            await fetch(session, "GET", url, policy=LOOPBACK)
        assert "scheme" in info.value.reason


async def test_fetch_needs_a_guarded_session() -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(TypeError, match="new_session"):
            await fetch(plain, "GET", "http://example.com/", policy=STRICT)


# ----------------------------------------------------------------------------- httpx2 (MCP)


def static_addresses(*addresses: str) -> Callable[[str, int], Awaitable[Sequence[IPAddress]]]:
    async def resolve(_host: str, _port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(address) for address in addresses]

    return resolve


async def test_httpx_factory_matches_mcp_and_refuses_loopback() -> None:
    factory: McpHttpClientFactory = httpx_client_factory(STRICT)
    async with listen("127.0.0.1") as listener:
        async with factory(headers={"X-Test": "1"}) as client:
            assert client.follow_redirects is False
            for host in ("127.0.0.1", "localhost"):
                with pytest.raises(RefusedDestination, match="loopback"):
                    await client.get(f"http://{host}:{listener.port}/")
            with pytest.raises(RefusedDestination, match="scheme"):
                await client.get("ftp://example.com/")
        assert listener.connections == 0


async def test_httpx_unroutable_refused_quickly() -> None:
    async with httpx_client_factory(STRICT)() as client:
        started = time.monotonic()
        for url in ("http://10.0.0.1/", "http://169.254.169.254/latest/", "http://[::1]:9/"):
            with pytest.raises(RefusedDestination):
                await client.get(url)
        assert time.monotonic() - started < 1


async def test_httpx_allowed_connects_to_the_checked_address() -> None:
    async with serve() as server:
        async with httpx_client_factory(LOOPBACK)() as client:
            for host in ("127.0.0.1", "localhost"):
                response = await client.get(server.url(host=host))
                assert response.status_code == 200
                assert response.text == "hello"
        assert [seen.headers["Host"] for seen in server.seen] == [
            f"127.0.0.1:{server.port}",
            f"localhost:{server.port}",
        ]
        # A name DNS cannot resolve: reached only through the pinned, checked address.
        transport = GuardedHttpxTransport(LOOPBACK, resolver=static_addresses("127.0.0.1"))
        async with httpx2.AsyncClient(transport=transport) as client:
            response = await client.get(server.url("/p", host="pinned.invalid"))
            assert response.status_code == 200
        assert server.seen[-1].headers["Host"] == f"pinned.invalid:{server.port}"


async def test_httpx_one_refused_address_refuses_the_name() -> None:
    policy = OutboundPolicy.from_setting("127.0.0.1/32")
    transport = GuardedHttpxTransport(policy, resolver=static_addresses("127.0.0.1", "10.0.0.1"))
    async with listen("127.0.0.1") as listener, httpx2.AsyncClient(transport=transport) as client:
        with pytest.raises(RefusedDestination) as info:
            await client.get(f"http://mixed.test:{listener.port}/")
        assert info.value.address == "10.0.0.1"
        assert listener.connections == 0


async def test_httpx_redirects_not_followed_and_body_capped() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/redirect":
            raise web.HTTPFound("http://169.254.169.254/latest/")
        if request.path == "/gzip":
            return web.Response(
                body=gzip.compress(b"\0" * 5_000_000), headers={"Content-Encoding": "gzip"}
            )
        if request.path == "/small-gzip":
            return web.Response(
                body=gzip.compress(b"ok" * 10), headers={"Content-Encoding": "gzip"}
            )
        return web.Response(body=b"z" * int(request.query["n"]))

    policy = OutboundPolicy.from_setting("127.0.0.0/8", max_response_bytes=1000)
    async with serve(handler) as server, httpx_client_factory(policy)() as client:
        response = await client.get(server.url("/redirect"))
        assert response.status_code == 302
        assert response.headers["Location"] == "http://169.254.169.254/latest/"
        assert len((await client.get(server.url("/?n=1000"))).content) == 1000
        with pytest.raises(ResponseTooLarge):
            await client.get(server.url("/?n=1001"))
        with pytest.raises(ResponseTooLarge):
            await client.get(server.url("/gzip"))
        assert (await client.get(server.url("/small-gzip"))).content == b"ok" * 10
        assert {seen.headers["Accept-Encoding"] for seen in server.seen} == {"identity"}


def self_signed(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "cert.pem"
    key_file = tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_httpx_https_keeps_the_name_for_sni_and_certificate(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path, "mcp.test")
    async with serve(ssl_context=server_ctx) as server:
        transport = GuardedHttpxTransport(
            LOOPBACK, verify=client_ctx, resolver=static_addresses("127.0.0.1")
        )
        async with httpx2.AsyncClient(transport=transport) as client:
            response = await client.get(f"https://mcp.test:{server.port}/")
            assert response.status_code == 200
            # Same IP, another name: the certificate is checked against the name.
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://other.test:{server.port}/")
        assert [seen.headers["Host"] for seen in server.seen] == [f"mcp.test:{server.port}"]
