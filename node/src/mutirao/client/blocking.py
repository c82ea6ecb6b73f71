""":class:`Client`: :class:`~mutirao.client.handles.AsyncClient` without ``await``, for
scripts, notebooks and web apps that are not async. Its calls run on an event loop of its
own, in a background thread, so one client serves many threads.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from mutirao.client.handles import AsyncClient, AsyncTask
from mutirao.protocol import TaskView

T = TypeVar("T")


class Task:
    """One submitted task: ``handle.result(timeout=10)``."""

    def __init__(self, client: Client, handle: AsyncTask) -> None:
        self._client, self._handle = client, handle
        self.id = handle.id

    def __repr__(self) -> str:
        return f"<Task {self.id}>"

    def view(self) -> TaskView:
        return self._client.run(self._handle.view())

    def state(self) -> str:
        return self._client.run(self._handle.state())

    def result(self, timeout: float | None = None) -> Any:
        """The result; raises TaskFailed, TaskCancelled or TimeoutError as
        :meth:`AsyncTask.result <mutirao.client.handles.AsyncTask.result>` does."""
        return self._client.run(self._handle.result(timeout))

    def cancel(self) -> None:
        self._client.run(self._handle.cancel())


class Client:
    """``with Client() as client: print(client.submit("sum", [1, 2]).result())``."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        retry_for: float = 10.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, name="mutirao-client", daemon=True)
        thread.start()
        self._async = AsyncClient(url, token, retry_for=retry_for)
        self.run(self._async.__aenter__())
        # Closed with the client, or at exit if it never was (no "unclosed session").
        self._closer = weakref.finalize(self, _close, self._loop, thread, self._async)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closer()

    def run(self, call: Awaitable[T]) -> T:
        """Run ``call`` on the client's loop and return what it returns (or raise)."""
        return asyncio.run_coroutine_threadsafe(_await(call), self._loop).result()

    @property
    def aio(self) -> AsyncClient:
        """The async client this one runs (for :meth:`run` of anything it offers)."""
        return self._async

    def task(self, task_id: str) -> Task:
        return Task(self, self._async.task(task_id))

    def submit(self, task_type: str, payload: Any = None, **options: Any) -> Task:
        """Submit one task (see :meth:`AsyncClient.submit`); returns its handle."""
        return Task(self, self.run(self._async.submit(task_type, payload, **options)))

    def map(self, task_type: str, payloads: Iterable[Any], **options: Any) -> list[Task]:
        """One task per payload, in batches; their handles, in order."""
        handles = self.run(self._async.map(task_type, list(payloads), **options))
        return [Task(self, h) for h in handles]

    def gather(self, handles: Sequence[Task], timeout: float | None = None) -> list[Any]:
        """Their results, in order; the first task that did not succeed raises."""
        return self.run(self._async.gather([h._handle for h in handles], timeout))

    def as_completed(self, handles: Iterable[Task], timeout: float | None = None) -> Iterator[Task]:
        """The handles as their tasks finish, first finished first."""
        by_id = {h.id: h for h in handles}
        steps = self._async.as_completed([h._handle for h in by_id.values()], timeout)
        try:
            while True:
                try:
                    done = self.run(steps.__anext__())
                except StopAsyncIteration:
                    return
                yield by_id[done.id]
        finally:
            self.run(steps.aclose())


async def _await(call: Awaitable[T]) -> T:
    return await call


def _close(loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: AsyncClient) -> None:
    if loop.is_closed():
        return
    asyncio.run_coroutine_threadsafe(client.__aexit__(None, None, None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


_default: list[Client] = []
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process' client for ``@mutirao.task`` functions' ``.submit`` (made on first use,
    from the environment and the saved login)."""
    with _default_lock:
        if not _default:
            _default.append(Client())
        return _default[0]
