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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

from mutirao.registry import Retry
from mutirao.settings import TracingSettings

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("spawn")


class HandlerFailed(Exception):
    """The handler raised in its process; the text is ``Type: message``, as in a thread."""


class ProcessDied(Exception):
    """The slot's process exited while running the handler (it crashed or was killed)."""


def _serve(conn: Connection, modules: Sequence[str], tracing: TracingSettings | None) -> None:
    """A slot process: run one handler call at a time until the worker closes the pipe;
    with ``tracing``, each in the span context the worker sends along (see
    :mod:`mutirao.tracing`), its spans exported from here."""
    from mutirao.registry import REGISTRY
    from mutirao.worker import builtins

    assert builtins  # imported for its @task registrations
    for module in modules:
        importlib.import_module(module)
    traced = None if tracing is None else _SlotTracing(tracing)
    while True:
        try:
            task_type, payload, *trace = orjson.loads(conn.recv_bytes())
        except EOFError:
            if traced is not None:
                traced.close()
            return  # the worker is gone
        handler = REGISTRY.get(task_type)
        try:
            if handler is None:
                raise LookupError(f"no handler for task type {task_type!r} in the pool")
            if traced is not None and trace:
                value = traced.call(trace[0], handler.fn, payload)
            else:
                value = handler.fn(payload)
            reply = orjson.dumps(["ok", value])
        except Retry as exc:
            reply = orjson.dumps(["retry", [exc.delay, exc.reason]])
        except Exception as exc:
            reply = orjson.dumps(["error", f"{type(exc).__name__}: {exc}"])
        conn.send_bytes(reply)


class _SlotTracing:
    """The tracing of a slot process: a provider of its own, the worker's span as parent."""

    def __init__(self, settings: TracingSettings) -> None:
        from opentelemetry import trace

        from mutirao.tracing import from_settings

        self.tracing = from_settings(settings, "mutirao-worker")
        if self.tracing is not None:
            trace.set_tracer_provider(self.tracing.provider)

    def call(self, traceparent: str, fn: Callable[[Any], Any], payload: Any) -> Any:
        from opentelemetry import context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        token = context.attach(parent)
        try:
            return fn(payload)
        finally:
            context.detach(token)

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()  # what the handlers' spans left to export


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
    def __init__(
        self, size: int, modules: Sequence[str], tracing: TracingSettings | None = None
    ) -> None:
        self.size = size
        self.modules = list(modules)
        self.tracing = tracing
        """Given, the slots trace the handlers they run (in the caller's span context)."""
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._slots: set[_Slot] = set()
        # One reader thread per slot: the default executor may have fewer threads.
        self._readers = ThreadPoolExecutor(max_workers=size, thread_name_prefix="slot-reader")

    async def run(self, task_type: str, payload: Any, traceparent: str | None = None) -> Any:
        """Call the handler in a slot process (in the span ``traceparent`` names, if any).
        Cancelling this (a timeout, a cancel) kills that process; raises HandlerFailed or
        ProcessDied."""
        slot = await self._take()
        loop = asyncio.get_running_loop()
        call = [task_type, payload] if traceparent is None else [task_type, payload, traceparent]
        try:
            slot.conn.send_bytes(orjson.dumps(call))
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
            target=_serve,
            args=(theirs, self.modules, self.tracing),
            name="mutirao-slot",
            daemon=True,
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
