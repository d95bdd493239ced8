"""Local network helpers shared by the tests and the tools: a free TCP port, and one
HTTP receiver that records every request it gets (the webhook receiver of the
dispatcher tests, the end-to-end benchmark and the chaos run; the servers of the
outbound guard's tests).

    async with serve(Receiver()) as receiver:
        ...  # receiver.url("/hook"), receiver.seen

or ``await receiver.start()`` / ``await receiver.stop()`` around a longer run.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

#: Ports free_port handed out in this process: never handed out twice.
_HANDED_OUT: set[int] = set()

#: (slot, slots): processes that pick ports side by side (the test runner's
#: workers) take one slot each, and free_port hands out only ports of its own
#: slot's share of SLOT_PORTS: none is handed a port another picked but has not
#: bound yet. (0, 1): the system picks.
PORT_SLOT = (0, 1)

#: The ports the slots share: below Linux's ephemeral range (32768-60999), where
#: the system itself hands out none (an outgoing connection's local port, bind(0)).
SLOT_PORTS = range(20000, 32000)


def _bindable(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at the moment of asking (for a process that is
    told its port; a server in this process binds port 0 instead), and not handed
    out by an earlier call: the system may offer a port again once it is closed,
    and two services told the same port start one of them on the other's (the
    second's readiness then answered by the first)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    slot, slots = PORT_SLOT
    if slots > 1:
        share = len(SLOT_PORTS) // slots
        ports = SLOT_PORTS[slot * share : (slot + 1) * share]
        start = random.randrange(len(ports))
        for i in range(len(ports)):
            candidate = ports[(start + i) % len(ports)]
            if candidate not in _HANDED_OUT and _bindable(family, host, candidate):
                _HANDED_OUT.add(candidate)
                return candidate
        raise OSError(f"no free port left in {ports}")
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Headers(dict[str, str]):
    """A request's headers: keys lower-cased, lookups by any case."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass
class Seen:
    """One request a local server received, as it arrived."""

    #: time.monotonic() at arrival (intervals between requests)
    at: float
    method: str
    #: the path without the query string (``path_qs`` has both)
    path: str
    headers: Headers
    body: bytes
    path_qs: str = ""
    #: time.time() at arrival (against a clock another process or a producer read)
    wall: float = 0.0

    def json(self) -> Any:
        return orjson.loads(self.body)


Respond = Callable[[Seen, int], Awaitable[web.StreamResponse] | web.StreamResponse]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def empty_ok(_seen: Seen, _n: int) -> web.Response:
    """200 with an empty body, at once."""
    return web.Response()


@dataclass
class Receiver:
    """A local aiohttp server recording every request (any method, any path).

    The answer: ``routes`` (path -> JSON body) first, then ``handler`` (the raw
    request: redirects, streamed bodies), then ``respond`` (the recorded request and
    how many came so far), else 200 ``{"ok": true}``. ``delay`` slows every answer
    down. ``on_request`` sees each request as it arrives; ``keep=False`` records
    none in ``seen`` (long runs that keep what ``on_request`` extracts), ``count``
    counts them either way.

    ``host`` may be IPv6 (``::1``) or another loopback address; ``port`` 0 binds a
    free one at start; ``ssl_context`` serves HTTPS. ``handler_cancellation`` and
    ``shutdown_timeout`` are aiohttp's (a stalled handler need not hold up the stop).
    """

    respond: Respond | None = None
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    routes: dict[str, bytes] = field(default_factory=dict)
    handler: Handler | None = None
    host: str = "127.0.0.1"
    ssl_context: ssl.SSLContext | None = None
    on_request: Callable[[Seen], None] | None = None
    keep: bool = True
    count: int = 0
    handler_cancellation: bool = False
    shutdown_timeout: float = 60.0
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        name = host or self.host
        netloc = f"[{name}]" if ":" in name else name
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{netloc}:{self.port}{path}"

    @property
    def base(self) -> str:
        return self.url("")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        at, wall = time.monotonic(), time.time()
        seen = Seen(
            at=at,
            method=request.method,
            path=request.path,
            headers=Headers((k.lower(), v) for k, v in request.headers.items()),
            body=body,
            path_qs=request.path_qs,
            wall=wall,
        )
        self.count += 1
        if self.keep:
            self.seen.append(seen)
        if self.on_request is not None:
            self.on_request(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path in self.routes:
            return web.Response(body=self.routes[request.path], content_type="application/json")
        if self.handler is not None:
            return await self.handler(request)
        if self.respond is not None:
            out = self.respond(seen, self.count)
            return await out if asyncio.iscoroutine(out) else out  # type: ignore[return-value]
        return web.json_response({"ok": True})

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=self.handler_cancellation,
            shutdown_timeout=self.shutdown_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def serve(receiver: Receiver) -> AsyncIterator[Receiver]:
    """``receiver`` listening for the block."""
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


class Forwarder:
    """A TCP port that forwards every connection to ``target`` (host, port), served
    by a thread of its own (usable from blocking tests): a dependency that becomes
    reachable at a chosen moment."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def start(self) -> Forwarder:
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the forwarder did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        server = loop.run_until_complete(
            asyncio.start_server(self._forward, "127.0.0.1", self.port)
        )
        self._started.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
