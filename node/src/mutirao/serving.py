"""Serving an aiohttp app: guarded against slow and greedy clients, stopped cleanly on
SIGTERM or Ctrl-C.

aiohttp closes a connection that sends nothing for its keep-alive timeout, but a client
that trickles a request's headers keeps it open that long, and one that trickles a body
keeps it open for ever. So every connection here goes through a :class:`Guard`:

- a request's headers must arrive within ``header_timeout`` of its first byte (or of the
  connection opening); the middleware marks when a handler starts, which stops the clock;
- a body must arrive within ``body_timeout`` (:func:`read_body`: 408 naming ``body``);
- one address may hold at most ``connections_per_address`` connections; the next is
  answered 429 and closed.

Each refusal is counted by reason (``header_timeout``, ``body_timeout``, ``per_address``)
through the ``on_refused`` callback, for the metrics.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from mutirao import tls
from mutirao.errors import MalformedError, RequestTimeoutError
from mutirao.settings import LimitSettings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    def __init__(
        self, limits: LimitSettings, on_refused: Callable[[str], None] | None = None
    ) -> None:
        self.limits = limits
        self.on_refused = on_refused or (lambda reason: None)
        self.open: collections.Counter[str] = collections.Counter()
        """Open connections by client address."""
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: aiohttp's, guarded."""
        return lambda: _Connection(self, factory())

    def refuse(self, reason: str, what: str) -> None:
        self.on_refused(reason)
        log.info("%s", what)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self._by_transport.get(request.transport) if request.transport else None
        if conn is None:
            return await handler(request)
        conn.begin()
        try:
            return await handler(request)
        finally:
            conn.end()


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's request handler, with the guard's clock."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self.busy = 0
        """Handlers running on this connection (a websocket's runs as long as it is open)."""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "unknown"
        guard, cap = self.guard, self.guard.limits.connections_per_address
        if guard.open[self.address] >= cap:
            body = orjson.dumps(
                {
                    "error": "too_many_connections",
                    "message": f"at most {cap} connections per address",
                    "field": "address",
                }
            )
            transport.write(
                b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nRetry-After: 1\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            # Half-close and drop what the client sends meanwhile: closing outright would
            # answer its request bytes with a reset, which can destroy the 429 unread.
            transport.write_eof()
            asyncio.get_running_loop().call_later(1.0, transport.close)
            guard.refuse("per_address", f"refused a connection from {self.address}: {cap} open")
            return
        self.transport = transport
        guard.open[self.address] += 1
        guard._by_transport[transport] = self
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        if not self.busy and self.timer is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.transport is not None else False

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        self._disarm()
        guard = self.guard
        guard._by_transport.pop(transport, None)
        guard.open[self.address] -= 1
        if guard.open[self.address] <= 0:
            del guard.open[self.address]
        self.inner.connection_lost(exc)

    def begin(self) -> None:
        self.busy += 1
        self._disarm()

    def end(self) -> None:
        self.busy -= 1

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.limits.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.busy or self.transport is None:
            return
        timeout = self.guard.limits.header_timeout
        self.guard.refuse(
            "header_timeout",
            f"closed a connection from {self.address}: no complete request in {timeout:g}s",
        )
        self.transport.close()


GUARD = web.AppKey("guard", Guard)


async def read_body(request: web.Request) -> bytes:
    """The request body, which must arrive within the guard's ``body_timeout``."""
    if not request.body_exists:
        raise MalformedError("request body is required", field="body")
    guard = request.app.get(GUARD)
    if guard is None:
        return await request.read()
    timeout = guard.limits.body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        guard.refuse(
            "body_timeout", f"gave up on a request body from {request.remote} after {timeout:g}s"
        )
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout:g} s", field="body"
        ) from None


def guarded(app: web.Application, guard: Guard) -> web.Application:
    """``app`` with the guard's middleware first (it must see every handler start)."""
    app[GUARD] = guard
    app.middlewares.insert(0, guard.middleware)
    return app


class _GuardedSite(web.BaseSite):
    def __init__(
        self,
        runner: web.AppRunner,
        guard: Guard,
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._guard = guard
        self._sock = sock

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self._guard.wrap(server), sock=self._sock, ssl=self._ssl_context
        )


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from None
    return sock


Listener = tuple[web.Application, socket.socket]


def serve(
    listeners: list[Listener],
    guard: Guard,
    *,
    ssl_context: ssl.SSLContext | None = None,
    tls_reload: float = 0.0,
) -> None:
    """Serve each app on its bound socket until SIGTERM or SIGINT, then shut down cleanly
    (handlers get 5 s to finish, cleanup contexts run; the first app's last). With TLS,
    renewed certificate files are picked up every ``tls_reload`` seconds."""
    guarded_listeners = [(guarded(app, guard), sock) for app, sock in listeners]
    asyncio.run(_serve(guarded_listeners, guard, ssl_context, tls_reload))


async def _serve(
    listeners: list[Listener], guard: Guard, ssl_context: ssl.SSLContext | None, tls_reload: float
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runners: list[web.AppRunner] = []
    watching = ssl_context is not None and tls_reload > 0
    watcher = asyncio.create_task(tls.watch(tls_reload)) if watching else None
    try:
        for app, sock in listeners:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
            runners.append(runner)
            await runner.setup()
            await _GuardedSite(runner, guard, sock, ssl_context).start()
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        for runner in reversed(runners):
            await runner.cleanup()
