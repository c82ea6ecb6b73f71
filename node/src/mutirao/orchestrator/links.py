"""One worker's websocket as seen by the orchestrator: an ordered, non-blocking outbox.

Commands must never wait on a socket or on the disk while holding up the worker's reader, so
messages are queued here and written by the link's own task. A message gated on a journal
future is queued only once that future resolves (journal futures resolve in order, so gated
messages keep their order too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from mutirao import protocol

log = logging.getLogger(__name__)


class WorkerLink:
    def __init__(self, worker_id: str, session: int, ws: web.WebSocketResponse) -> None:
        self.worker_id = worker_id
        self.session = session
        self.ws = ws
        self._queue: asyncio.Queue[protocol.OrchestratorMessage] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"link-{worker_id}")

    def send(self, message: protocol.OrchestratorMessage) -> None:
        self._queue.put_nowait(message)

    def send_when(
        self, durable: asyncio.Future[None], message: protocol.OrchestratorMessage
    ) -> None:
        """Send ``message`` once ``durable`` succeeds; drop it if the journal failed."""

        def release(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.send(message)

        durable.add_done_callback(release)

    async def _write_loop(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self.ws.send_bytes(protocol.encode(message))
            except ConnectionError as exc:
                log.info("cannot write to worker %s: %s", self.worker_id, exc)
                return

    async def close(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        await self.ws.close()
