"""The orchestrator process: the engine behind aiohttp, the journal and background loops.

Commands run synchronously on the engine, then :meth:`Orchestrator.execute` journals their
records, sends orders to workers, and once the records are durable acknowledges results and
wakes result waiters. So no client or worker is told something is recorded before it would
survive a crash, and no worker's reader ever waits for the disk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiohttp import WSMsgType, web

from mutirao import protocol
from mutirao.auth import (
    JOIN_TOKEN_FILE,
    SECRET_FILE,
    USERS_FILE,
    TokenSigner,
    UserStore,
    read_or_create_secret,
)
from mutirao.errors import AuthError, MutiraoError, ProtocolError
from mutirao.orchestrator import journal as journal_mod
from mutirao.orchestrator.engine import Effects, Engine
from mutirao.orchestrator.links import WorkerLink
from mutirao.orchestrator.tasks import Task
from mutirao.settings import Settings

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = Engine(settings.heartbeat)
        data = settings.data_dir
        self.users = UserStore(data / USERS_FILE)
        self.signer = TokenSigner(read_or_create_secret(data / SECRET_FILE))
        self.join_token = settings.auth.join_token or read_or_create_secret(data / JOIN_TOKEN_FILE)
        self.journal: journal_mod.Journal | None = None
        self.links: dict[str, WorkerLink] = {}
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.ready = False
        self._sessions = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: recover, serve, then flush and stop."""
        recovered = await asyncio.to_thread(journal_mod.recover, self.settings.data_dir)
        if recovered.snapshot is not None:
            self.engine.table.restore(recovered.snapshot)
            for task in self.engine.table.tasks.values():
                self.engine.rebuild(task)
        for record in recovered.records:
            try:
                self.engine.apply(record)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("skipping journal record that does not apply: %s", exc)
        self.engine.recovered(self.clock())
        counts = self.engine.counts()
        log.info(
            "recovered %d task(s) from %s (%d journal record(s), %d skipped): %s",
            len(self.engine.table.tasks),
            self.settings.data_dir,
            len(recovered.records),
            recovered.skipped,
            ", ".join(f"{k}={v}" for k, v in counts.items() if v),
        )
        journal = journal_mod.Journal(
            self.settings.data_dir, recovered.next_segment, fsync=self.settings.journal.fsync
        )
        async with journal:
            self.journal = journal
            self.ready = True
            async with asyncio.TaskGroup() as background:
                loops = [
                    background.create_task(self._tick_loop(), name="heartbeat-monitor"),
                    background.create_task(self._checkpoint_loop(), name="checkpointer"),
                ]
                try:
                    yield
                finally:
                    self.ready = False
                    for loop in loops:
                        loop.cancel()
            for link in list(self.links.values()):
                await link.close()
            await self._checkpoint()

    async def _tick_loop(self) -> None:
        period = min(0.25, self.settings.heartbeat.interval / 2)
        while True:
            await asyncio.sleep(period)
            effects = self.engine.tick(self.clock())
            self.execute(effects)
            for wid in effects.disconnect:
                link = self.links.pop(wid, None)
                if link is not None:
                    await link.close()

    async def _checkpoint_loop(self) -> None:
        settings = self.settings.journal
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            assert self.journal is not None
            pending = self.journal.records_since_checkpoint
            due = time.monotonic() - last >= settings.checkpoint_interval
            if pending >= settings.checkpoint_min_records or (pending and due):
                await self._checkpoint()
                last = time.monotonic()

    async def _checkpoint(self) -> None:
        assert self.journal is not None
        await self.journal.checkpoint(self.engine.table.snapshot())

    # -- effects ---------------------------------------------------------------------------

    def execute(self, effects: Effects) -> asyncio.Future[None]:
        """Journal the records and send the messages; the future resolves once durable.

        Orders (assign, cancel, welcome) go out at once, even before their records are on
        disk: if this process dies first, the worker reports the attempt on re-registering
        and it is adopted or dropped, so nothing is lost or recorded twice. An ``ack`` makes
        a worker forget a result and a woken waiter shows a result to a client, so both wait
        for the journal.
        """
        assert self.journal is not None
        durable = self.journal.append(effects.records)
        durable.add_done_callback(_retrieve)
        for wid, messages in effects.sends.items():
            link = self.links.get(wid)
            if link is None:
                continue
            for message in messages:
                if message["op"] == "ack":
                    link.send_when(durable, message)
                else:
                    link.send(message)
        if effects.finished:
            finished = [task.id for task in effects.finished]
            durable.add_done_callback(lambda _: self._wake(finished))
        return durable

    def _wake(self, task_ids: Sequence[str]) -> None:
        for task_id in task_ids:
            for waiter in self.waiters.pop(task_id, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_finished(self, task: Task, timeout: float) -> None:
        if task.state.terminal or timeout <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task.id, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self.waiters.get(task.id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self.waiters[task.id]

    # -- the worker websocket --------------------------------------------------------------

    async def worker_socket(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(protocol.JOIN_TOKEN_HEADER) != self.join_token:
            raise AuthError("missing or wrong worker join token", field=protocol.JOIN_TOKEN_HEADER)
        ws = web.WebSocketResponse(max_msg_size=self.settings.limits.max_request_bytes)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=10)
            if first.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                return ws
            hello = protocol.decode_worker_message(first.data)
            if hello["op"] != "hello":
                raise ProtocolError("the first message must be hello")
        except (ProtocolError, TimeoutError) as exc:
            log.warning("rejecting worker connection from %s: %s", request.remote, exc)
            await ws.close(code=4400, message=str(exc)[:100].encode())
            return ws
        await self._serve_worker(ws, hello)
        return ws

    async def _serve_worker(self, ws: web.WebSocketResponse, hello: protocol.HelloMsg) -> None:
        wid, session = hello["worker_id"], next(self._sessions)
        old = self.links.get(wid)
        link = self.links[wid] = WorkerLink(wid, session, ws)
        if old is not None:
            log.warning("worker %s connected again; closing its previous connection", wid)
            await old.close()
        log.info(
            "worker %s registered from %s with %d slot(s), types %s, %d running",
            wid,
            hello["url"],
            hello["slots"],
            ",".join(hello["types"]),
            len(hello["running"]),
            extra={"worker": wid},
        )
        reason = "connection closed"
        try:
            self.execute(self.engine.hello(hello, session, self.clock()))
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                self._on_worker_message(wid, session, msg.data)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("worker %s sent a bad message: %s", wid, exc)
        finally:
            if self.links.get(wid) is link:
                del self.links[wid]
            await link.close()
            self.execute(self.engine.worker_lost(wid, session, reason, self.clock()))

    def _on_worker_message(self, wid: str, session: int, data: Any) -> None:
        msg = protocol.decode_worker_message(data)
        now = self.clock()
        if msg["op"] == "heartbeat":
            self.engine.heartbeat_from(wid, session, now)
        elif msg["op"] == "started":
            self.execute(self.engine.started(wid, session, msg["attempts"], now))
        elif msg["op"] == "results":
            self.execute(self.engine.results(wid, session, msg["items"], now))
        else:
            raise ProtocolError(f"unexpected {msg['op']} message after hello")


def _retrieve(future: asyncio.Future[None]) -> None:
    """Journal failures are logged by the journal; nobody else may be awaiting this one."""
    if not future.cancelled():
        future.exception()


ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)


def error_body(exc: MutiraoError) -> web.Response:
    return web.json_response(exc.to_json(), status=exc.status)
