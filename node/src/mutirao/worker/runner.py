"""Runs assigned attempts: async handlers on the loop, blocking ones in a slot process (see
:mod:`.pool`; a thread with ``--pool threads``, which a timeout cannot stop).

The runner owns every attempt task it starts and cancels them on close. A payload with
``"crash"`` makes the process exit abruptly mid-task (the seed's worker-failure test), but
only on workers started with ``--allow-crash``: ``true`` crashes the first attempt, an
integer N the first N attempts, ``"always"`` every attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from mutirao.protocol import AssignItem, AttemptRef, ResultItem
from mutirao.registry import Registry, Retry
from mutirao.worker.pool import HandlerFailed, ProcessPool

if TYPE_CHECKING:
    from mutirao.tracing import Tracing

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70


def crash_requested(payload: Any, attempt: int) -> bool:
    if not isinstance(payload, dict) or "crash" not in payload:
        return False
    crash = payload["crash"]
    if crash == "always":
        return True
    if crash is True:
        return attempt == 1
    if isinstance(crash, int) and not isinstance(crash, bool):
        return attempt <= crash
    return False


class Runner:
    def __init__(
        self,
        registry: Registry,
        slots: int,
        *,
        allow_crash: bool,
        on_result: Callable[[ResultItem], None],
        on_outcome: Callable[[str, str], None] | None = None,
        processes: ProcessPool | None = None,
        on_stuck: Callable[[int], None] | None = None,
        on_retry: Callable[[AttemptRef, float], None] | None = None,
        on_start: Callable[[AttemptRef], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.registry = registry
        self.slots = slots
        self.on_start = on_start
        """Told each attempt as it starts (prefetched ones start later than assigned)."""
        self.tracing = tracing
        """Spans around handlers, in their task's trace (None: off, nothing per attempt)."""
        self.allow_crash = allow_crash
        self.on_result = on_result
        self.on_outcome = on_outcome
        """Told ``(task type, outcome)`` of every attempt: succeeded, failed, timed_out or
        cancelled (metrics)."""
        self.running: dict[AttemptRef, asyncio.Task[None]] = {}
        self.waiting: dict[AttemptRef, AssignItem] = {}
        """Attempts assigned beyond the free slots (prefetched), in their order."""
        self.processes = processes
        """Where blocking handlers run; None: in this thread pool instead."""
        self._pool = ThreadPoolExecutor(max_workers=max(1, slots), thread_name_prefix="task")
        self._threads: dict[AttemptRef, Future[Any]] = {}
        """Calls of running attempts in the thread pool (``--pool threads``)."""
        self.stuck = 0
        """Threads still running a call whose attempt ended (timed out, cancelled): each
        holds a slot of the pool until it returns."""
        self.on_stuck = on_stuck
        """Told the new :attr:`stuck` count whenever it changes."""
        self.on_retry = on_retry
        """Told the delay a handler asked for by raising ``mutirao.Retry``."""
        # Attempt timeouts: one timer for the earliest deadline of every running attempt, not
        # an ``asyncio.timeout`` (an object and a timer handle) per attempt; most attempts end
        # long before theirs.
        self._deadlines: dict[AttemptRef, float] = {}
        self._expired: set[AttemptRef] = set()
        """Attempts cancelled because their deadline passed (reported as timed out)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def start(self, item: AssignItem) -> None:
        """Run an assigned attempt now if a slot is free, else once one frees (prefetched)."""
        ref = (item[0], item[1])
        if ref in self.running or ref in self.waiting:
            return
        if len(self.running) + self.stuck < self.slots:
            self._launch(ref, item)
        else:
            self.waiting[ref] = item

    def _launch(self, ref: AttemptRef, item: AssignItem) -> None:
        _, _, task_type, payload, timeout, *trace = item
        run = self._attempt(ref, task_type, payload, timeout)
        if self.tracing is not None:
            run = self._traced(run, ref, task_type, trace[0] if trace else None)
        # No task name and no done callback: each costs a little per attempt, and for a
        # no-op task that adds up (an attempt forgets itself as it ends; see :meth:`_attempt`).
        self.running[ref] = asyncio.create_task(run)
        if self.on_start is not None:
            self.on_start(ref)

    def _next(self) -> None:
        """Start prefetched attempts while slots are free, first come first."""
        waiting = self.waiting
        while waiting and len(self.running) + self.stuck < self.slots:
            ref = next(iter(waiting))
            self._launch(ref, waiting.pop(ref))

    def withdraw(self, refs: list[AttemptRef]) -> list[AttemptRef]:
        """Take back those of ``refs`` still waiting to start; returns them."""
        waiting = self.waiting
        return [ref for ref in refs if waiting.pop(ref, None) is not None]

    def held(self) -> list[AttemptRef]:
        """Every attempt this runner has: running, then waiting to start."""
        return [*self.running, *self.waiting]

    async def _traced(
        self, run: Awaitable[None], ref: AttemptRef, task_type: str, traceparent: str | None
    ) -> None:
        """``run`` inside the attempt's span: the handler's own spans nest under it."""
        assert self.tracing is not None
        async with self.tracing.handler(ref[0], ref[1], task_type, traceparent):
            await run

    def _forget(self, ref: AttemptRef) -> None:
        self.running.pop(ref, None)
        self._deadlines.pop(ref, None)
        self._expired.discard(ref)
        call = self._threads.pop(ref, None)
        if call is not None and not call.done():
            self._held(+1)
            loop = asyncio.get_running_loop()
            call.add_done_callback(lambda _: loop.call_soon_threadsafe(self._held, -1))
        self._next()

    def _held(self, change: int) -> None:
        self.stuck += change
        if self.on_stuck is not None:
            self.on_stuck(self.stuck)
        if change < 0:
            self._next()

    def _deadline(self, ref: AttemptRef, timeout: float) -> None:
        """Time the attempt out ``timeout`` seconds from now."""
        loop = asyncio.get_running_loop()
        deadline = self._deadlines[ref] = loop.time() + timeout
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Cancel every attempt past its deadline; wait for the next earliest one."""
        self._timer, self._timer_at = None, math.inf
        now = asyncio.get_running_loop().time()
        late = [ref for ref, deadline in self._deadlines.items() if deadline <= now]
        for ref in late:
            del self._deadlines[ref]
            task = self.running.get(ref)
            if task is not None and not task.done():
                self._expired.add(ref)
                task.cancel()
        if self._deadlines:
            deadline = min(self._deadlines.values())
            self._timer_at = deadline
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def cancel(self, ref: AttemptRef) -> None:
        if self.waiting.pop(ref, None) is not None:
            return
        task = self.running.get(ref)
        if task is not None:
            log.info("cancelling attempt", extra={"task": ref[0], "attempt": ref[1]})
            task.cancel()
            # An attempt cancelled before its first step never runs the ``finally`` of
            # :meth:`_attempt`; this one forgets itself once done either way.
            task.add_done_callback(lambda _: self._forget(ref))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        self.waiting.clear()  # before the cancellations below, which would start them
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            self.processes.close()

    async def _attempt(self, ref: AttemptRef, task_type: str, payload: Any, timeout: float) -> None:
        """Run one attempt and report it. It forgets itself as it ends (no done callback),
        and it is the only coroutine per attempt besides the handler's: each layer more
        costs a little on every attempt, which a no-op task feels."""
        task_id, attempt = ref
        extra = {"task": task_id, "attempt": attempt}
        started = time.time()
        # Checked once: two info lines per attempt cost ~8% of a no-op task even when off.
        chatty = log.isEnabledFor(logging.INFO)
        if chatty:
            log.info("running %s", task_type, extra=extra)
        value: Any = None
        error: str | None = None
        outcome = "succeeded"
        self._deadline(ref, timeout)  # no await before the try: a timeout lands in it
        try:
            try:
                value = await self._call(ref, task_type, payload)
            finally:
                if self._timed_out(ref):
                    raise TimeoutError
            orjson.dumps(value)
        except TimeoutError:
            error, outcome = f"timed out after {timeout}s{self._stopped(task_type)}", "timed_out"
        except HandlerFailed as exc:
            error, outcome = str(exc), "failed"
        except Retry as exc:
            error, outcome = f"Retry: {exc}", "failed"
            if self.on_retry is not None:
                self.on_retry(ref, exc.delay)
        except asyncio.CancelledError:
            self._forget(ref)
            self._outcome(task_type, "cancelled")
            raise
        except Exception as exc:
            error, outcome = f"{type(exc).__name__}: {exc}", "failed"
        ended = time.time()
        self._forget(ref)
        self._outcome(task_type, outcome)
        if error is None:
            if chatty:
                log.info("succeeded in %.3fs", ended - started, extra=extra)
        else:
            log.warning("failed: %s", error, extra=extra)
        ok = error is None
        self.on_result((task_id, attempt, ok, value if ok else None, error, started, ended))

    def _timed_out(self, ref: AttemptRef) -> bool:
        """Whether the attempt's deadline cancelled it, and nothing else did (as with
        ``asyncio.timeout``: a cancellation from elsewhere as well stays a cancellation)."""
        self._deadlines.pop(ref, None)
        if ref not in self._expired:
            return False
        self._expired.discard(ref)
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    def _stopped(self, task_type: str) -> str:
        """How a timed-out attempt was stopped, for its error."""
        handler = self.registry.get(task_type)
        if handler is None or handler.is_async:
            return ""
        if self.processes is not None:
            return "; its process was killed"
        return (
            "; its thread could not be stopped and runs on, holding a slot "
            "until it returns (--pool threads)"
        )

    def _outcome(self, task_type: str, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(task_type, outcome)

    def _call(self, ref: AttemptRef, task_type: str, payload: Any) -> Awaitable[Any]:
        """The handler's awaitable (its coroutine, or its call in the thread pool)."""
        handler = self.registry.get(task_type)
        if handler is None:
            raise LookupError(f"this worker has no handler for task type {task_type!r}")
        if crash_requested(payload, ref[1]):
            if not self.allow_crash:
                raise PermissionError(
                    "crash requested, but this worker was not started with --allow-crash"
                )
            log.critical(
                "crash requested by the task payload: exiting now",
                extra={"task": ref[0], "attempt": ref[1]},
            )
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)
        if handler.is_async:
            awaitable: Awaitable[Any] = handler.fn(payload)
            return awaitable
        if self.processes is not None:
            trace = None
            if self.tracing is not None:
                from mutirao.tracing import current_traceparent

                trace = current_traceparent()
            return self.processes.run(task_type, payload, trace)
        fn = handler.fn
        if self.tracing is not None:  # the thread runs in the attempt's span too
            fn = functools.partial(contextvars.copy_context().run, handler.fn)  # type: ignore[call-arg]
        call = self._threads[ref] = self._pool.submit(fn, payload)
        return asyncio.wrap_future(call)
