"""Blocking handlers in child processes, one per slot, that a time limit or a cancel kills.

A thread cannot be stopped: a blocking handler past its timeout would keep its thread (and
a CPU) while its slot is shown free. As Celery's prefork pool and RQ's work horse do, each
slot here is a child process; an attempt that must stop has its process SIGKILLed, and a
fresh one is started in its place. Children are spawned, not forked (the worker has threads
and an event loop), and import the same task modules as the worker. Payloads and results
cross the pipe as JSON, as they cross the wire.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

from mutirao.registry import Retry

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("spawn")


class HandlerFailed(Exception):
    """The handler raised in its process; the text is ``Type: message``, as in a thread."""


class ProcessDied(Exception):
    """The slot's process exited while running the handler (it crashed or was killed)."""


def _serve(conn: Connection, modules: Sequence[str]) -> None:
    """A slot process: run one handler call at a time until the worker closes the pipe."""
    from mutirao.registry import REGISTRY
    from mutirao.worker import builtins

    assert builtins  # imported for its @task registrations
    for module in modules:
        importlib.import_module(module)
    while True:
        try:
            task_type, payload = orjson.loads(conn.recv_bytes())
        except EOFError:
            return  # the worker is gone
        handler = REGISTRY.get(task_type)
        try:
            if handler is None:
                raise LookupError(f"no handler for task type {task_type!r} in the pool")
            reply = orjson.dumps(["ok", handler.fn(payload)])
        except Retry as exc:
            reply = orjson.dumps(["retry", [exc.delay, exc.reason]])
        except Exception as exc:
            reply = orjson.dumps(["error", f"{type(exc).__name__}: {exc}"])
        conn.send_bytes(reply)


def _receive(conn: Connection) -> bytes | None:
    """The slot's reply; None once its process is gone (the pipe is then closed here, by
    the one thread reading it, so no other thread closes it under a read)."""
    try:
        return conn.recv_bytes()
    except (EOFError, OSError):
        conn.close()
        return None


@dataclass(eq=False)
class _Slot:
    process: BaseProcess
    conn: Connection
    reading: bool = False


class ProcessPool:
    def __init__(self, size: int, modules: Sequence[str]) -> None:
        self.size = size
        self.modules = list(modules)
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._slots: set[_Slot] = set()
        # One reader thread per slot: the default executor may have fewer threads.
        self._readers = ThreadPoolExecutor(max_workers=size, thread_name_prefix="slot-reader")

    async def run(self, task_type: str, payload: Any) -> Any:
        """Call the handler in a slot process. Cancelling this (a timeout, a cancel) kills
        that process; raises HandlerFailed or ProcessDied."""
        slot = await self._take()
        loop = asyncio.get_running_loop()
        try:
            slot.conn.send_bytes(orjson.dumps([task_type, payload]))
            slot.reading = True
            data = await loop.run_in_executor(self._readers, _receive, slot.conn)
            slot.reading = False
        except OSError:  # the pipe broke: the process is gone
            data = None
        except BaseException:
            self._kill(slot)
            raise
        if data is None:
            code = self._kill(slot)
            raise ProcessDied(f"the handler's process died (exit code {code})")
        self._idle.put_nowait(slot)
        status, value = orjson.loads(data)
        if status == "error":
            raise HandlerFailed(value)
        if status == "retry":
            raise Retry(*value)
        return value

    async def _take(self) -> _Slot:
        if self._idle.empty() and len(self._slots) < self.size:
            slot = await asyncio.to_thread(self._spawn)
            self._slots.add(slot)
            return slot
        return await self._idle.get()

    def _spawn(self) -> _Slot:
        ours, theirs = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=_serve, args=(theirs, self.modules), name="mutirao-slot", daemon=True
        )
        process.start()
        theirs.close()
        return _Slot(process, ours)

    def _kill(self, slot: _Slot) -> int | None:
        """Stop the slot's process now and forget it (the next call starts a fresh one)."""
        self._slots.discard(slot)
        slot.process.kill()
        slot.process.join(1.0)
        if not slot.reading:
            slot.conn.close()
        log.info(
            "stopped handler process %s (exit code %s)", slot.process.pid, slot.process.exitcode
        )
        return slot.process.exitcode

    def close(self) -> None:
        while self._slots:
            self._kill(next(iter(self._slots)))
        self._readers.shutdown(wait=False, cancel_futures=True)
