"""Mutirão: distributed, collaborative task processing."""

from mutirao.client.blocking import Client, Task
from mutirao.client.canvas import chain, chord, group, result_of, sig
from mutirao.client.errors import ApiError, TaskCancelled, TaskFailed, Unreachable
from mutirao.client.handles import AsyncClient, AsyncTask
from mutirao.registry import Retry, task

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
