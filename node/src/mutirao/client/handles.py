"""The Python client people use: :class:`AsyncClient` and the handles it returns.

``AsyncClient()`` finds the cluster as the CLI does (``MUTIRAO_URL``, ``MUTIRAO_TOKEN``, the
saved ``mutirao login``, a ``mutirao up`` run from here). ``submit`` returns a handle whose
``result()`` gives the task's result, or raises :class:`TaskFailed` (with the error and the
attempts), :class:`TaskCancelled` or :class:`TimeoutError`: Celery's ``AsyncResult.get``,
Dask's and Ray's futures. :class:`mutirao.Client` is the same without ``await``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from types import TracebackType
from typing import Any

from mutirao.client import credentials
from mutirao.client.errors import TaskCancelled, TaskFailed
from mutirao.client.http import Client as Api
from mutirao.protocol import TaskView

BATCH = 1_000
"""Tasks per request in :meth:`AsyncClient.map` and per wait in :meth:`AsyncClient.gather`."""
_FINISHED = ("succeeded", "failed", "cancelled")
_NO_LIMIT = 365 * 24 * 3600.0


def outcome(view: TaskView | dict[str, Any]) -> Any:
    """The result of a finished task's view, or the exception that says why there is none."""
    if view["state"] == "succeeded":
        return view["result"]
    if view["state"] == "cancelled":
        raise TaskCancelled(view["id"], view["error"])
    attempts: list[dict[str, Any]] = [dict(a) for a in view.get("attempts", [])]
    raise TaskFailed(view["id"], view["error"], attempts)


def _traced(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the caller's current OpenTelemetry span as the task's ``trace``
    (its trace then goes on from that span), if there is one and none was given."""
    if "trace" in options:
        return options
    from mutirao.tracing import current_traceparent  # here: `import mutirao` stays light

    traceparent = current_traceparent()
    return options if traceparent is None else {**options, "trace": traceparent}


class AsyncTask:
    """One submitted task. ``await handle.result()`` waits for it."""

    def __init__(self, api: Api, task_id: str) -> None:
        self._api = api
        self.id = task_id

    def __repr__(self) -> str:
        return f"<AsyncTask {self.id}>"

    async def view(self) -> TaskView:
        """Everything the orchestrator knows of the task (state, attempts, result...)."""
        return await self._api.get(self.id)

    async def state(self) -> str:
        """``pending``, ``running``, ``succeeded``... (see :class:`mutirao.protocol.TaskState`)."""
        return (await self.view())["state"]

    async def result(self, timeout: float | None = None) -> Any:
        """The result, once the task finished; :class:`TaskFailed` or
        :class:`TaskCancelled` if it did not succeed; :class:`TimeoutError` if it is not
        done within ``timeout`` seconds (None: wait as long as it takes)."""
        limit = _NO_LIMIT if timeout is None else timeout
        view = await self._api.wait(self.id, timeout=limit)
        if view["state"] not in _FINISHED:
            raise TimeoutError(f"task {self.id} is still {view['state']} after {limit:g} s")
        return outcome(view)

    async def cancel(self) -> None:
        await self._api.cancel(self.id)


class AsyncClient:
    """``async with AsyncClient() as client: handle = await client.submit("sum", [1, 2])``.

    ``url`` (one URL, or several comma-separated or in a list) and ``token`` override what
    is found in the environment and the saved login."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        retry_for: float = 10.0,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url or [])
        urls = [u.strip() for item in urls for u in item.split(",") if u.strip()]
        self._api = credentials.connect(credentials.target(urls, token), retry_for=retry_for)

    async def __aenter__(self) -> AsyncClient:
        await self._api.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._api.__aexit__(et, e, tb)

    @property
    def api(self) -> Api:
        """The underlying HTTP client (every endpoint, raw views)."""
        return self._api

    def task(self, task_id: str) -> AsyncTask:
        """A handle on a task submitted earlier (by id)."""
        return AsyncTask(self._api, task_id)

    async def submit(self, task_type: str, payload: Any = None, **options: Any) -> AsyncTask:
        """Submit one task: ``options`` are the task's fields (``priority``, ``timeout``,
        ``max_attempts``, ``key``, ``queue``, ``resources``, ``not_before``, ``retry``...)."""
        view = await self._api.submit(task_type, payload, **_traced(options))
        return AsyncTask(self._api, view["id"])

    async def map(self, task_type: str, payloads: Iterable[Any], **options: Any) -> list[AsyncTask]:
        """One task per payload, submitted in batches (each recorded whole or not at all)."""
        spec = {k: v for k, v in _traced(options).items() if v is not None}
        items = [{"type": task_type, "payload": p, **spec} for p in payloads]
        handles: list[AsyncTask] = []
        for start in range(0, len(items), BATCH):
            tasks = await self._api.submit_batch(items[start : start + BATCH])
            handles += [AsyncTask(self._api, t["id"]) for t in tasks]
        return handles

    async def gather(self, handles: Sequence[AsyncTask], timeout: float | None = None) -> list[Any]:
        """The results of ``handles``, in order, once all finished; the first that did not
        succeed raises (as :meth:`AsyncTask.result`)."""
        deadline = time.monotonic() + (_NO_LIMIT if timeout is None else timeout)
        briefs: list[Any] = []
        for start in range(0, len(handles), BATCH):
            ids = [h.id for h in handles[start : start + BATCH]]
            briefs += await self._api.results(ids, timeout=max(0.0, deadline - time.monotonic()))
        late = [b["id"] for b in briefs if b["state"] not in _FINISHED]
        if late:
            raise TimeoutError(f"{len(late)} of {len(handles)} task(s) not done, e.g. {late[0]}")
        failed = [b for b in briefs if b["state"] != "succeeded"]
        if failed:
            outcome(await self._api.get(failed[0]["id"]))  # raises, with the attempts
        return [b["result"] for b in briefs]

    async def as_completed(
        self, handles: Iterable[AsyncTask], timeout: float | None = None
    ) -> AsyncGenerator[AsyncTask, None]:
        """The handles as their tasks finish (succeeded or not), first finished first."""
        limit = _NO_LIMIT if timeout is None else timeout
        waiting = asyncio.Semaphore(64)  # long polls at once, of the connection pool's 256

        async def finished(handle: AsyncTask) -> AsyncTask:
            async with waiting:
                view = await self._api.wait(handle.id, timeout=limit)
            if view["state"] not in _FINISHED:
                raise TimeoutError(f"task {handle.id} is still {view['state']} after {limit:g} s")
            return handle

        pending = [asyncio.ensure_future(finished(h)) for h in handles]
        try:
            for done in asyncio.as_completed(pending):
                yield await done
        finally:
            for future in pending:
                future.cancel()
