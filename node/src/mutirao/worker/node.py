"""The worker process: one websocket to the active orchestrator, batched both ways.

It registers (hello: id, slots, task types, what it is still running), runs what it is
assigned, sends heartbeats, and keeps every result in an outbox until the orchestrator
acknowledges it as durably recorded, resending the outbox after any reconnection. It
follows the orchestrator URLs in turn when one stops answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from mutirao import protocol, resources, tls
from mutirao.errors import ForbiddenError, ProtocolError
from mutirao.metrics import respond
from mutirao.protocol import AttemptRef, ResultItem
from mutirao.registry import Registry
from mutirao.settings import Settings
from mutirao.worker.metrics import WorkerMetrics
from mutirao.worker.pool import ProcessPool
from mutirao.worker.runner import Runner

if TYPE_CHECKING:
    from mutirao.tracing import Tracing

log = logging.getLogger(__name__)


def _tracing(settings: Settings) -> Tracing | None:
    """Spans around handlers, if tracing is on (OpenTelemetry is imported only then)."""
    if not settings.tracing.exporter:
        return None
    from mutirao.tracing import from_settings

    return from_settings(settings.tracing, "mutirao-worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerNode:
    def __init__(self, settings: Settings, registry: Registry, join_token: str) -> None:
        self.settings = settings
        self.id = settings.worker.id or default_worker_id()
        self.registry = registry
        self.join_token = join_token
        self.url = ""
        self.epoch = 0
        self.connected_to: str | None = None
        self._connecting_to: str | None = None
        self.preferred: str | None = None
        """An orchestrator that called us over; tried before the configured URLs."""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.outbox: dict[AttemptRef, ResultItem] = {}
        self._unsent: list[ResultItem] = []
        self.asked: dict[AttemptRef, float] = {}
        """Retry delays handlers asked for (``mutirao.Retry``), sent with their results."""
        self._started: list[AttemptRef] = []
        self._dirty = asyncio.Event()
        self._stuck_told = 0
        """The stuck-thread count the orchestrator was last told."""
        self.draining = False
        """Stopping: the orchestrator is told, and assigns nothing more."""
        self._drain_told = False
        self._release: list[AttemptRef] = []
        """Attempts to hand back (a drain that ran out of time)."""
        self._released = asyncio.Event()
        self._give_back: list[AttemptRef] = []
        """Prefetched attempts the orchestrator revoked and this worker had not started."""
        self._progress = asyncio.Event()
        """Set by each result and acknowledgement (what a drain waits on)."""
        self.metrics = WorkerMetrics(self)
        self.runner = Runner(
            registry,
            settings.worker.slots,
            allow_crash=settings.worker.allow_crash,
            on_result=self._on_result,
            on_outcome=self.metrics.ran,
            processes=(
                ProcessPool(
                    settings.worker.slots,
                    settings.worker.tasks,
                    settings.tracing if settings.tracing.exporter else None,
                )
                if settings.worker.pool == "processes"
                else None
            ),
            on_stuck=lambda _: self._dirty.set(),
            on_retry=self._on_retry,
            on_start=self._on_start,
            tracing=_tracing(settings),
        )

    def _on_start(self, ref: AttemptRef) -> None:
        self._started.append(ref)
        self._dirty.set()

    def _on_retry(self, ref: AttemptRef, delay: float) -> None:
        self.asked[ref] = delay

    def _on_result(self, item: ResultItem) -> None:
        self._progress.set()
        self.outbox[item[:2]] = item
        self._unsent.append(item)
        self._dirty.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def drain(self, app: web.Application) -> None:
        """On SIGTERM (aiohttp's shutdown, before the connection closes): take no new work,
        finish what runs within ``worker.drain_timeout``, hand the rest back, so a worker
        scaled down loses nothing and costs no task an attempt."""
        timeout = self.settings.worker.drain_timeout
        if self.connected_to is None or timeout <= 0:
            return
        self.draining = True
        self._dirty.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        log.info(
            "draining: %d attempt(s) to finish, for up to %.0f s",
            len(self.runner.running),
            timeout,
        )
        # Prefetched attempts go back at once: another worker can start them now.
        await self._hand_back(list(self.runner.waiting), "not started yet")
        # Results must be acknowledged (durable) too, not just computed.
        # A lost connection ends it too: whoever leads next gets the attempts back anyway
        # (``mutirao up`` stops its orchestrators with its workers).
        while (
            (self.runner.running or self.outbox)
            and loop.time() < deadline
            and self.connected_to is not None
        ):
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                # Woken by each result and acknowledgement; the cap covers a cancel.
                await asyncio.wait_for(self._progress.wait(), min(0.5, deadline - loop.time()))
        await self._hand_back(self.runner.held(), "not finished in time")
        log.info("drained")

    async def _hand_back(self, refs: list[AttemptRef], why: str) -> None:
        """Give ``refs`` back to the orchestrator (``release``), waiting up to 5 s for it to
        acknowledge them."""
        if not refs or self._ws is None or self._ws.closed:
            return
        log.warning("handing back %d attempt(s) %s", len(refs), why)
        self._release = refs
        self._released.clear()
        self._dirty.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), 5.0)

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: keep a connection to an orchestrator while serving."""
        connector = asyncio.create_task(self._connect_loop(), name="orchestrator-link")
        try:
            yield
        finally:
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
            await self.runner.close()

    def _next_url(self, urls: Iterator[str]) -> str:
        if self.preferred is not None:
            url, self.preferred = self.preferred, None
            return url
        return next(urls)

    async def _connect_loop(self) -> None:
        backoff = 0.05
        urls = itertools.cycle(self.settings.urls)
        async with tls.http_session(self.settings.tls) as http:
            while True:
                base = self._next_url(urls)
                self._connecting_to = base
                try:
                    async with http.ws_connect(
                        base.rstrip("/") + protocol.WORKER_WS_PATH,
                        headers={protocol.JOIN_TOKEN_HEADER: self.join_token},
                        max_msg_size=self.settings.limits.max_request_bytes,
                        timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    ) as ws:
                        backoff = 0.05
                        self._ws = ws
                        await self._session(base, ws)
                except aiohttp.WSServerHandshakeError as exc:
                    # 421: a standby; the next URL is worth trying at once.
                    if exc.status in (401, 403):
                        log.warning(
                            "orchestrator %s refused this worker: HTTP %d; it needs the "
                            "cluster's join token%s",
                            base,
                            exc.status,
                            " and, with mutual TLS, this worker's certificate (--tls-cert)"
                            if exc.status == 403
                            else "",
                        )
                    else:
                        log.info("orchestrator %s refused: HTTP %d", base, exc.status)
                    if exc.status == 421:
                        backoff = 0.02
                except (aiohttp.ClientError, OSError, ProtocolError, TimeoutError) as exc:
                    log.info("cannot reach orchestrator at %s: %s", base, exc or type(exc))
                finally:
                    self._ws = None
                    self.connected_to = None
                if self.preferred is None:
                    await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.worker.reconnect_max)

    async def switch(self, url: str, epoch: int) -> bool:
        """A new leader calls us over; False if its epoch is older than one we have seen."""
        if epoch < self.epoch:
            return False
        if epoch > self.epoch:
            log.warning("orchestrator %s leads now with epoch %d; switching to it", url, epoch)
        self.epoch = epoch
        if url not in (self.connected_to, self._connecting_to):
            self.preferred = url
            if self._ws is not None:
                await self._ws.close(
                    code=protocol.STALE_EPOCH_CLOSE, message=b"newer epoch elsewhere"
                )
        return True

    async def _session(self, base: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        hello: protocol.HelloMsg = {
            "op": "hello",
            "protocol": protocol.WORKER_PROTOCOL,
            "worker_id": self.id,
            "url": self.url,
            "slots": self.settings.worker.slots,
            "prefetch": self.settings.worker.prefetch,
            "types": self.registry.names(),
            # Finished but unacknowledged attempts count as held too: the orchestrator then
            # waits for their results instead of running them again.
            "running": list(dict.fromkeys([*self.runner.held(), *self.outbox])),
            "epoch": self.epoch,
            "stuck": self.runner.stuck,
            "queues": self.settings.worker.queues,
            "resources": resources.capacity(
                self.settings.worker.resources, self.settings.worker.slots
            ),
        }
        if self.draining:
            hello["draining"] = True
        self._drain_told = self.draining
        self._stuck_told = self.runner.stuck
        await ws.send_bytes(protocol.encode(hello))
        first = await ws.receive(timeout=10)
        if first.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            raise ProtocolError(f"orchestrator closed the connection ({ws.close_code})")
        welcome = protocol.decode_orchestrator_message(first.data)
        if welcome["op"] != "welcome":
            raise ProtocolError("expected welcome")
        if welcome["epoch"] < self.epoch:
            await ws.close(code=protocol.STALE_EPOCH_CLOSE, message=b"stale epoch")
            raise ProtocolError(f"{base} leads with stale epoch {welcome['epoch']}")
        self.epoch = welcome["epoch"]
        for task_id, n in welcome["drop"]:
            self.runner.cancel((task_id, n))
            self.outbox.pop((task_id, n), None)
        self.connected_to = base
        log.info("registered with orchestrator %s (epoch %d)", base, self.epoch)
        # Everything not yet acknowledged goes again; the orchestrator ignores duplicates.
        self._unsent = list(self.outbox.values())
        self._dirty.set()
        tasks = [
            asyncio.create_task(self._heartbeat_loop(ws), name="heartbeat"),
            asyncio.create_task(self._flush_loop(ws), name="flusher"),
        ]
        try:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    break
                if not self._on_message(protocol.decode_orchestrator_message(msg.data)):
                    await ws.close(code=protocol.STALE_EPOCH_CLOSE, message=b"stale epoch")
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.warning("lost the connection to orchestrator %s", base)

    def _on_message(self, msg: protocol.OrchestratorMessage) -> bool:
        """Handle one message; False refuses an order from an epoch older than one we saw."""
        if msg["op"] == "ack":
            for task_id, n in msg["attempts"]:
                self.outbox.pop((task_id, n), None)
            if self._release and {(t, n) for t, n in msg["attempts"]} >= set(self._release):
                self._released.set()
            self._progress.set()
            return True
        if msg["op"] == "welcome":
            raise ProtocolError("unexpected second welcome")
        if msg["epoch"] < self.epoch:
            log.warning(
                "refusing %s from stale epoch %d (newest seen %d)",
                msg["op"],
                msg["epoch"],
                self.epoch,
            )
            return False
        self.epoch = msg["epoch"]
        if msg["op"] == "assign":
            for item in msg["items"]:
                self.runner.start(item)
        elif msg["op"] == "revoke":
            # Only those not started go back; a started one runs on and reports as usual.
            given = self.runner.withdraw([(t, n) for t, n in msg["attempts"]])
            if given:
                self._give_back.extend(given)
                self._dirty.set()
        else:
            for task_id, n in msg["attempts"]:
                self.runner.cancel((task_id, n))
                self.outbox.pop((task_id, n), None)
        return True

    async def _heartbeat_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            try:
                await ws.send_bytes(self._heartbeat())
            except (ConnectionError, aiohttp.ClientError):
                self.metrics.heartbeat_failures.inc()
                raise
            self.metrics.heartbeats_sent.inc()
            await asyncio.sleep(self.settings.heartbeat.interval)

    async def _flush_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await self._dirty.wait()
            # Let attempts that are ready to finish do so first: one message for all of them.
            await asyncio.sleep(0)
            self._dirty.clear()
            if self.draining:
                await self._tell_drain(ws)
            if self._give_back:
                given, self._give_back = self._give_back, []
                await ws.send_bytes(protocol.encode({"op": "release", "attempts": given}))
            if self._started:
                # An attempt that already has a result needs no ``started``: the result
                # carries its start time (fewer messages and records for short tasks).
                outbox = self.outbox
                started = [ref for ref in self._started if ref not in outbox]
                self._started = []
                if started:
                    await ws.send_bytes(protocol.encode({"op": "started", "attempts": started}))
            # A slot a stuck thread holds or frees is told with the results (in the same
            # message as the timed-out result, so the orchestrator never fills that slot),
            # else at once in a heartbeat.
            stuck = self.runner.stuck
            if self._unsent:
                items, self._unsent = self._unsent, []
                results: protocol.ResultsMsg = {
                    "op": "results",
                    "epoch": self.epoch,
                    "items": items,
                }
                if self.asked:
                    # Kept until acknowledged, so that a resent result asks again.
                    for ref in [r for r in self.asked if r not in self.outbox]:
                        del self.asked[ref]
                    asked = {t: self.asked[t, n] for t, n, *_ in items if (t, n) in self.asked}
                    if asked:
                        results["retry"] = asked
                if stuck:
                    results["stuck"] = stuck
                self._stuck_told = stuck
                await ws.send_bytes(protocol.encode(results))
            elif stuck != self._stuck_told:
                self._stuck_told = stuck
                await ws.send_bytes(self._heartbeat())

    async def _tell_drain(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Say we are stopping, once per connection; then hand back what is left."""
        if not self._drain_told:
            self._drain_told = True
            await ws.send_bytes(protocol.encode({"op": "drain"}))
        if self._release and not self._released.is_set():
            # Stopped here first: a result sent after the release would be ignored.
            for ref in self._release:
                self.runner.cancel(ref)
            await ws.send_bytes(protocol.encode({"op": "release", "attempts": self._release}))

    def _heartbeat(self) -> bytes:
        heartbeat: protocol.HeartbeatMsg = {"op": "heartbeat", "running": len(self.runner.running)}
        if self.runner.stuck:
            heartbeat["stuck"] = self.runner.stuck
        return protocol.encode(heartbeat)


WORKER = web.AppKey("worker", WorkerNode)


async def status(request: web.Request) -> web.Response:
    node = request.app[WORKER]
    return web.json_response(
        {
            "id": node.id,
            "pid": os.getpid(),
            "connected_to": node.connected_to,
            "epoch": node.epoch,
            "slots": node.settings.worker.slots,
            "running": [f"{t}.{n}" for t, n in node.runner.running],
            "unacknowledged_results": len(node.outbox),
            "types": node.registry.names(),
        }
    )


async def switch(request: web.Request) -> web.Response:
    """``POST /v1/orchestrator {url, epoch}``: a new leader calls this worker over."""
    node = request.app[WORKER]
    if request.headers.get(protocol.JOIN_TOKEN_HEADER) != node.join_token:
        return web.json_response(
            {"error": "unauthorized", "message": "wrong join token"}, status=401
        )
    try:
        tls.require_role(request, node.settings.tls, tls.ORCHESTRATOR)
    except ForbiddenError as exc:
        return web.json_response(exc.to_json(), status=exc.status)
    try:
        body = await request.json()
        url, epoch = str(body["url"]), int(body["epoch"])
    except (ValueError, KeyError, TypeError):
        return web.json_response(
            {"error": "invalid", "field": "body", "message": "expected {url, epoch}"}, status=422
        )
    if not await node.switch(url, epoch):
        return web.json_response(
            {"error": "stale_epoch", "message": f"epoch {epoch} < {node.epoch}"}, status=409
        )
    return web.json_response({"status": "switching", "epoch": node.epoch})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return respond(request.app[WORKER].metrics.registry, request)


def create_app(node: WorkerNode) -> web.Application:
    app = web.Application()
    app[WORKER] = node
    app.cleanup_ctx.append(node.run)
    app.on_shutdown.append(node.drain)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/metrics", metrics),
            web.get("/v1/status", status),
            web.post(protocol.WORKER_SWITCH_PATH, switch),
        ]
    )
    return app
