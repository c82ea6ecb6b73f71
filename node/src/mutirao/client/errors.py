"""What a client call can fail with (shared by the HTTP client and sessions)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """The orchestrator answered with an error (4xx/5xx and a JSON body)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        where = f" (field {body['field']})" if body.get("field") else ""
        super().__init__(f"{body.get('message', body)}{where} [HTTP {status}]")


class Unreachable(Exception):
    """No orchestrator URL answered within the retry budget."""


class TaskFailed(Exception):
    """A task whose result was asked for failed for good: ``error`` is its last error,
    ``attempts`` its attempts as the API shows them (worker, times, outcome, error)."""

    def __init__(self, task_id: str, error: str | None, attempts: list[dict[str, Any]]) -> None:
        super().__init__(f"task {task_id} failed: {error or 'no reason given'}")
        self.task_id, self.error, self.attempts = task_id, error, attempts


class TaskCancelled(Exception):
    """A task whose result was asked for was cancelled (by a user, or because a task it
    waited for failed: ``error`` says which)."""

    def __init__(self, task_id: str, error: str | None) -> None:
        super().__init__(f"task {task_id} was cancelled" + (f": {error}" if error else ""))
        self.task_id, self.error = task_id, error
