"""Client sessions: submissions over one websocket instead of one HTTP request each.

An HTTP request costs both sides far more than the task it carries (aiohttp's request and
response handling, ~0.3 ms of CPU each); a client submitting many tasks one at a time, from
many coroutines, can instead open a session (``GET /v1/session``, authenticated like any
API call) and send each submission as one message. Every call is answered on its own, in
whatever order they finish, with what ``POST /v1/tasks`` would answer: the status and the
task (or the error naming the field). Calls run concurrently, so submissions from many
callers still share journal records (see :mod:`mutirao.orchestrator.intake`).

Opened with ``?batch=1``, a session carries lists: a message may be a JSON array of calls,
and every message the orchestrator sends is a JSON array of the replies ready at that moment.
Replies to calls that share a journal write then leave in one message, which is one socket
write for the orchestrator and one read for the client instead of one per call.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiohttp import WSMsgType, web

from mutirao import protocol
from mutirao.auth import User
from mutirao.errors import (
    INTERNAL_ERROR,
    MalformedError,
    MutiraoError,
    UnstorableError,
    ValidationError,
)
from mutirao.orchestrator.service import ORCHESTRATOR, Orchestrator
from mutirao.outbox import Outbox

log = logging.getLogger(__name__)

_CALL = msgspec.json.Decoder(protocol.SessionCall)
_CALLS = msgspec.json.Decoder(list[msgspec.Raw])
MAX_CALLS_IN_FLIGHT = 4096
"""Calls of one session answered concurrently at most (each waits for its record)."""


async def serve(request: web.Request, user: User) -> web.WebSocketResponse:
    orch = request.app[ORCHESTRATOR]
    ws = web.WebSocketResponse(max_msg_size=orch.settings.limits.max_request_bytes)
    await ws.prepare(request)
    batched = request.query.get("batch") in ("1", "true")
    outbox = Outbox(ws, batched=batched)
    writer = asyncio.create_task(outbox.run(), name="session-writer")
    calls: set[asyncio.Task[None]] = set()
    room = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)

    def done(call: asyncio.Task[None]) -> None:
        calls.discard(call)
        room.release()

    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            for one in _split(data, batched, outbox):
                # A client sending faster than calls finish waits here: its messages then
                # stay in the socket (TCP pushes back) instead of piling up as tasks.
                await room.acquire()
                call = asyncio.create_task(_answer(orch, user, outbox, one))
                calls.add(call)
                call.add_done_callback(done)
    finally:
        for call in [*calls, writer]:
            call.cancel()
    return ws


def _split(data: bytes, batched: bool, outbox: Outbox) -> list[bytes]:
    """The calls of one message: itself, or in batch mode the items of an array (a message
    that is no array of calls is answered 400 at once)."""
    if not (batched and data.lstrip().startswith(b"[")):
        return [data]
    try:
        return [bytes(raw) for raw in _CALLS.decode(data)]
    except (msgspec.DecodeError, RecursionError) as exc:
        error = MalformedError(f"message is not a JSON array of calls: {exc}", field="body")
        _reply(outbox, {"ref": None, "status": error.status, "error": error.to_json()})
        return []


def _reply(outbox: Outbox, reply: protocol.SessionReply) -> None:
    outbox.put(protocol.encode(reply))


async def _answer(orch: Orchestrator, user: User, outbox: Outbox, data: bytes) -> None:
    ref: int | None = None
    try:
        call = _decode(data)
        ref = call.ref
        wait = min(call.wait, orch.settings.limits.max_wait)
        specs, batch = orch.submissions.parse(bytes(call.task))
        if batch:
            raise ValidationError("a session call submits one task", field="task")
        tasks, created = await orch.submit(specs, user.name)
        if wait:
            await orch.wait_finished(tasks, wait)
            await orch.barrier()
        orch.roles.require_active()  # the answer goes out now: not if the lease lapsed
        reply: protocol.SessionReply = {
            "ref": ref,
            "status": 201 if created else 200,
            "task": orch.engine.view(tasks[0], orch.clock()),
        }
    except MutiraoError as exc:
        reply = {"ref": ref, "status": exc.status, "error": exc.to_json()}
    except Exception:
        log.exception("unexpected error answering a session call")
        reply = {"ref": ref, "status": 500, "error": INTERNAL_ERROR}
    _reply(outbox, reply)


def _decode(data: bytes) -> protocol.SessionCall:
    try:
        return _CALL.decode(data)
    except msgspec.ValidationError as exc:
        raise protocol.invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise MalformedError(f"message is not valid JSON: {exc}", field="body") from None
    except RecursionError:
        raise UnstorableError("body: nested too deeply", field="body") from None
