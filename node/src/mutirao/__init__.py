"""Mutirão: distributed, collaborative task processing."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mutirao.client.canvas import chain, chord, group, result_of, sig
from mutirao.registry import Retry, task

if TYPE_CHECKING:
    from mutirao.client.blocking import Client, Task
    from mutirao.client.errors import ApiError, TaskCancelled, TaskFailed, Unreachable
    from mutirao.client.handles import AsyncClient, AsyncTask

_CLIENT = {
    "Client": "mutirao.client.blocking",
    "Task": "mutirao.client.blocking",
    "AsyncClient": "mutirao.client.handles",
    "AsyncTask": "mutirao.client.handles",
    "ApiError": "mutirao.client.errors",
    "TaskCancelled": "mutirao.client.errors",
    "TaskFailed": "mutirao.client.errors",
    "Unreachable": "mutirao.client.errors",
}
"""The client, imported on first use: a task module's ``import mutirao`` (in every slot
process of a worker) needs only ``task`` and ``Retry``."""


def __getattr__(name: str) -> Any:
    module = _CLIENT.get(name)
    if module is None:
        raise AttributeError(f"module 'mutirao' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncTask",
    "Client",
    "Retry",
    "Task",
    "TaskCancelled",
    "TaskFailed",
    "Unreachable",
    "chain",
    "chord",
    "group",
    "result_of",
    "sig",
    "task",
]
__version__ = "0.1.0"
