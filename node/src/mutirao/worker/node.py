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
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from mutirao import protocol
from mutirao.errors import ProtocolError
from mutirao.protocol import AttemptRef, ResultItem
from mutirao.registry import Registry
from mutirao.settings import Settings
from mutirao.worker.runner import Runner

log = logging.getLogger(__name__)


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
        self.outbox: dict[AttemptRef, ResultItem] = {}
        self._unsent: list[ResultItem] = []
        self._started: list[AttemptRef] = []
        self._dirty = asyncio.Event()
        self.runner = Runner(
            registry,
            settings.worker.slots,
            allow_crash=settings.worker.allow_crash,
            on_result=self._on_result,
        )

    def _on_result(self, item: ResultItem) -> None:
        self.outbox[(item["task"], item["attempt"])] = item
        self._unsent.append(item)
        self._dirty.set()

    # -- lifecycle -------------------------------------------------------------------------

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

    async def _connect_loop(self) -> None:
        backoff = 0.05
        urls = itertools.cycle(self.settings.urls)
        async with aiohttp.ClientSession() as http:
            for base in urls:
                try:
                    async with http.ws_connect(
                        base.rstrip("/") + protocol.WORKER_WS_PATH,
                        headers={protocol.JOIN_TOKEN_HEADER: self.join_token},
                        max_msg_size=self.settings.limits.max_request_bytes,
                        timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    ) as ws:
                        backoff = 0.05
                        await self._session(base, ws)
                except (aiohttp.ClientError, OSError, ProtocolError, TimeoutError) as exc:
                    log.info("cannot reach orchestrator at %s: %s", base, exc or type(exc))
                finally:
                    self.connected_to = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.worker.reconnect_max)

    async def _session(self, base: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        hello: protocol.HelloMsg = {
            "op": "hello",
            "worker_id": self.id,
            "url": self.url,
            "slots": self.settings.worker.slots,
            "types": self.registry.names(),
            "running": list(self.runner.running),
        }
        await ws.send_bytes(protocol.encode(hello))
        first = await ws.receive(timeout=10)
        if first.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            raise ProtocolError(f"orchestrator closed the connection ({ws.close_code})")
        welcome = protocol.decode_orchestrator_message(first.data)
        if welcome["op"] != "welcome":
            raise ProtocolError("expected welcome")
        self.epoch = max(self.epoch, welcome["epoch"])
        for task_id, n in welcome["drop"]:
            self.runner.cancel((task_id, n))
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
                self._on_message(protocol.decode_orchestrator_message(msg.data))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.warning("lost the connection to orchestrator %s", base)

    def _on_message(self, msg: protocol.OrchestratorMessage) -> None:
        if msg["op"] == "ack":
            for task_id, n in msg["attempts"]:
                self.outbox.pop((task_id, n), None)
            return
        if msg["op"] == "welcome":
            raise ProtocolError("unexpected second welcome")
        if msg["epoch"] < self.epoch:
            log.warning(
                "ignoring %s from stale epoch %d (current %d)", msg["op"], msg["epoch"], self.epoch
            )
            return
        self.epoch = msg["epoch"]
        if msg["op"] == "assign":
            for item in msg["items"]:
                self.runner.start(item)
                self._started.append((item["task"], item["attempt"]))
            self._dirty.set()
        else:
            for task_id, n in msg["attempts"]:
                self.runner.cancel((task_id, n))
                self.outbox.pop((task_id, n), None)

    async def _heartbeat_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await ws.send_bytes(
                protocol.encode({"op": "heartbeat", "running": len(self.runner.running)})
            )
            await asyncio.sleep(self.settings.heartbeat.interval)

    async def _flush_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self._started:
                started, self._started = self._started, []
                await ws.send_bytes(protocol.encode({"op": "started", "attempts": started}))
            if self._unsent:
                items, self._unsent = self._unsent, []
                await ws.send_bytes(
                    protocol.encode({"op": "results", "epoch": self.epoch, "items": items})
                )


WORKER = web.AppKey("worker", WorkerNode)


async def status(request: web.Request) -> web.Response:
    node = request.app[WORKER]
    return web.json_response(
        {
            "id": node.id,
            "connected_to": node.connected_to,
            "epoch": node.epoch,
            "slots": node.settings.worker.slots,
            "running": [f"{t}.{n}" for t, n in node.runner.running],
            "unacknowledged_results": len(node.outbox),
            "types": node.registry.names(),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(node: WorkerNode) -> web.Application:
    app = web.Application()
    app[WORKER] = node
    app.cleanup_ctx.append(node.run)
    app.add_routes([web.get("/healthz", healthz), web.get("/v1/status", status)])
    return app
