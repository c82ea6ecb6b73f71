"""One websocket's outgoing messages, written by one task as they become ready.

Both ends of a client session use it (see :mod:`mutirao.orchestrator.session`): in batch
mode every message that is ready when the writer runs goes out as one JSON array, one frame
and one socket write, rather than one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import aiohttp


class Socket(Protocol):
    """What the outbox needs of aiohttp's server or client websocket."""

    @property
    def closed(self) -> bool: ...

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None: ...


class Outbox:
    def __init__(
        self,
        ws: Socket,
        *,
        batched: bool,
        on_broken: Callable[[Exception], None] | None = None,
    ) -> None:
        """``batched``: join what is ready into one JSON array (each message is a JSON
        value); ``on_broken`` is told why, if a write fails (the writer then stops)."""
        self.ws = ws
        self.batched = batched
        self.on_broken = on_broken
        self._ready: list[bytes] = []
        self._wake = asyncio.Event()

    def put(self, message: bytes) -> None:
        self._ready.append(message)
        self._wake.set()

    async def run(self) -> None:
        """Write until the socket closes or a write fails (run it as a task)."""
        ws = self.ws
        while not ws.closed:
            await self._wake.wait()
            self._wake.clear()
            ready, self._ready = self._ready, []
            try:
                if self.batched:
                    await ws.send_bytes(b"[" + b",".join(ready) + b"]")
                else:
                    for message in ready:
                        await ws.send_bytes(message)
            except (ConnectionError, aiohttp.ClientError) as exc:  # the other end went away
                if self.on_broken is not None:
                    self.on_broken(exc)
                return
