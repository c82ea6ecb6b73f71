"""A client session: many submissions over one websocket (see
:mod:`mutirao.orchestrator.session`), for a client that submits tasks one at a time from
many coroutines and would otherwise pay an HTTP request per task.

A session talks to one orchestrator. If the connection drops (the active orchestrator died
or stepped down), calls in flight fail with :class:`~mutirao.client.http.Unreachable`: each
submission carries an idempotency key, so retrying it (on a new session, or over HTTP with
:meth:`Client.submit <mutirao.client.http.Client.submit>`) never makes a second task.

The session is opened in batch mode: calls made together (in one event loop turn) leave as
one message, and replies come back as many as are ready per message.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from mutirao import protocol
from mutirao.client.errors import ApiError, Unreachable
from mutirao.outbox import Outbox
from mutirao.protocol import TaskView

if TYPE_CHECKING:
    from mutirao.client.http import Client


class Session:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._refs = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._outbox: Outbox | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Session:
        self._ws = ws = await self.client.connect(protocol.SESSION_PATH + "?batch=1")
        self._outbox = Outbox(ws, batched=True, on_broken=self._broken)
        self._tasks = [
            asyncio.create_task(self._read(ws), name="session-reader"),
            asyncio.create_task(self._outbox.run(), name="session-writer"),
        ]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(
        self, task_type: str, payload: Any = None, *, wait: float = 0.0, **options: Any
    ) -> TaskView:
        """As :meth:`Client.submit <mutirao.client.http.Client.submit>`, as one message."""
        outbox = self._outbox
        if outbox is None or outbox.ws.closed or any(t.done() for t in self._tasks):
            raise Unreachable("the session is closed")
        spec = {"type": task_type, "payload": payload}
        spec.update({k: v for k, v in options.items() if v is not None})
        spec.setdefault("key", uuid.uuid4().hex)
        ref = next(self._refs)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[ref] = answer
        outbox.put(orjson.dumps({"ref": ref, "task": spec, "wait": wait}))
        try:
            reply = await answer
        finally:
            self._calls.pop(ref, None)
        if reply["status"] >= 400:
            raise ApiError(reply["status"], reply["error"])
        task: TaskView = reply["task"]
        return task

    def _broken(self, exc: Exception) -> None:
        self._fail(Unreachable(f"session with {self.client.url} broke: {exc}"))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                for reply in orjson.loads(msg.data):
                    answer = self._calls.get(reply.get("ref"))
                    if answer is not None and not answer.done():
                        answer.set_result(reply)
        finally:
            self._fail(Unreachable(f"session with {self.client.url} closed ({ws.close_code})"))

    def _fail(self, error: Unreachable) -> None:
        for answer in self._calls.values():
            if not answer.done():
                answer.set_exception(error)
