"""A peer's websocket as the orchestrator sees it: an ordered, non-blocking outbox.

Commands must never wait on a socket or on the disk while holding up a reader, so messages
are queued here and written by the link's own task. A message gated on a future (a journal
commit) is queued only once that future succeeds; commits resolve in order, so gated
messages keep their order too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from mutirao import protocol

log = logging.getLogger(__name__)


_MERGED = {"assign": "items", "ack": "attempts"}
"""Worker orders whose lists can be joined: ``op`` -> the list field."""


def coalesce(messages: list[Any]) -> list[Any]:
    """Join runs of consecutive ``assign`` (same epoch) or ``ack`` messages into one each, in
    order: under load a worker then gets one frame for many short orders, and answers with
    fewer, larger batches. Other messages pass unchanged; the given ones are not modified."""
    out: list[Any] = []
    joined = False  # whether out[-1] is a copy made here (so it may be extended)
    for message in messages:
        op = message.get("op")
        field = _MERGED.get(op) if isinstance(op, str) else None
        if field is not None and out:
            last = out[-1]
            if last.get("op") == op and last.get("epoch") == message.get("epoch"):
                if not joined:
                    last = out[-1] = {**last, field: list(last[field])}
                    joined = True
                last[field].extend(message[field])
                continue
        out.append(message)
        joined = False
    return out


class Link:
    def __init__(self, name: str, session: int, ws: web.WebSocketResponse) -> None:
        self.name = name
        self.session = session
        self.ws = ws
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"link-{name}")

    def send(self, message: Any) -> None:
        self._queue.put_nowait(message)

    def send_when(self, durable: asyncio.Future[None], message: Any) -> None:
        """Send ``message`` once ``durable`` succeeds; drop it if it failed."""

        def release(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.send(message)

        durable.add_done_callback(release)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Let the commands already ready to run queue their messages too, so that
            # under load they go out joined (one loop iteration later; nothing when idle).
            await asyncio.sleep(0)
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                for message in coalesce(batch):
                    await self.ws.send_bytes(protocol.encode(message))
            except ConnectionError as exc:
                log.info("cannot write to %s: %s", self.name, exc)
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._writer.cancel()
        # Not ``suppress(CancelledError)``: that would also swallow a cancel of the caller.
        await asyncio.gather(self._writer, return_exceptions=True)
        await self.ws.close(code=code, message=reason.encode()[:120])
