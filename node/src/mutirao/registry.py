"""Task handlers by name: ``@mutirao.task("name")`` registers a function workers can run.

A handler takes the task's JSON payload and returns a JSON-serialisable result. ``async def``
handlers run on the worker's event loop; plain functions run in a slot process (see
:mod:`mutirao.worker.pool`), so blocking code never stalls heartbeats and a time limit stops
it. An exception marks the attempt failed with its text.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

if TYPE_CHECKING:
    from mutirao.client.blocking import Client, Task

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Handler:
    name: str
    fn: Callable[[Any], Any]
    is_async: bool


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, fn: Callable[[Any], Any]) -> None:
        existing = self._handlers.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"task type {name!r} is already registered by {existing.fn!r}")
        self._handlers[name] = Handler(name, fn, inspect.iscoroutinefunction(fn))

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)


class Retry(Exception):
    """Raised by a handler: this attempt failed, and the next one (if attempts remain)
    should start ``delay`` seconds after it, whatever the task's retry backoff says."""

    def __init__(self, delay: float = 0.0, reason: str = "") -> None:
        if not 0 <= delay < float("inf"):
            raise ValueError(f"Retry delay must be >= 0 s, not {delay}")
        super().__init__(f"asked to retry in {delay:g} s" + (f": {reason}" if reason else ""))
        self.delay = float(delay)
        self.reason = reason


REGISTRY = Registry()
"""The process-wide registry that ``@mutirao.task`` fills and workers read."""


class TaskFunction(Generic[P, R]):
    """A registered handler: still the function (call it to run it here), and a way to run
    it on the cluster, as Celery's ``delay``: ``resize.submit({"w": 64})`` returns a
    :class:`~mutirao.client.blocking.Task` handle."""

    def __init__(self, name: str, fn: Callable[P, R]) -> None:
        self.name, self.fn = name, fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def submit(self, payload: Any = None, *, client: Client | None = None, **options: Any) -> Task:
        """Submit a task of this type (``options``: priority, timeout, queue...) with
        ``client``, or the process' default one (from ``MUTIRAO_URL``, ``MUTIRAO_TOKEN``,
        the saved login)."""
        from mutirao.client.blocking import default_client

        return (client or default_client()).submit(self.name, payload, **options)


def task(
    name: str | None = None, *, registry: Registry = REGISTRY
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """Register the decorated function as the handler of task type ``name`` (default: the
    function's name)."""

    def decorate(fn: Callable[P, R]) -> TaskFunction[P, R]:
        registry.register(name or fn.__name__, fn)
        return TaskFunction(name or fn.__name__, fn)

    return decorate
