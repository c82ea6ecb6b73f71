"""Pure decisions about one Task: what to submit, and what its status and Events become.

A Task's ``spec`` becomes a submission keyed by the Task's uid, so submitting it again (after
an operator restart or a leader switch) finds the same task instead of creating another. The
orchestrator's view of the task becomes the ``status`` the CRD declares; comparing the old
and the new status gives the merge patch to apply and the Kubernetes Events to post.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mutirao import dependencies
from mutirao.errors import MutiraoError
from mutirao.protocol import TaskState, TaskView

GROUP, VERSION, PLURAL = "mutirao.dev", "v1", "tasks"


class Phase(StrEnum):
    WAITING = "Waiting"
    SCHEDULED = "Scheduled"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})

_PHASES = {
    TaskState.WAITING: Phase.WAITING,  # for the Tasks of spec.after
    TaskState.SCHEDULED: Phase.SCHEDULED,  # a retry's backoff
    TaskState.PENDING: Phase.PENDING,
    TaskState.ASSIGNED: Phase.PENDING,  # handed to a worker that has not started it yet
    TaskState.RUNNING: Phase.RUNNING,
    TaskState.SUCCEEDED: Phase.SUCCEEDED,
    TaskState.FAILED: Phase.FAILED,
    TaskState.CANCELLED: Phase.CANCELLED,
}


@dataclass(frozen=True)
class Notice:
    """A Kubernetes Event to post on the object."""

    type: str
    """``Normal`` or ``Warning``."""
    reason: str
    message: str


def is_terminal(status: Mapping[str, Any] | None) -> bool:
    return bool(status) and (status or {}).get("phase") in TERMINAL


def dependency_names(spec: Mapping[str, Any]) -> list[str]:
    """The other Tasks (by name, in the Task's namespace) this one waits for: those of
    ``spec.after`` and of ``{"$result": name}`` inputs in its payload."""
    try:
        inputs = dependencies.input_refs(spec.get("payload"), "spec.payload")
    except MutiraoError:
        inputs = []  # a malformed input: the orchestrators refuse it, naming the field
    return list(dict.fromkeys([*(spec.get("after") or ()), *inputs]))


_FIELDS = (
    ("priority", "priority"),
    ("maxAttempts", "max_attempts"),
    ("onFailure", "on_failure"),
    ("queue", "queue"),
)
"""Task spec fields passed on as they are: (CRD name, API name)."""


def submission(
    spec: Mapping[str, Any], key: str, task_ids: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The orchestrator submission (``POST /v1/tasks``) for a Task spec; ``task_ids``: the
    task id of each Task it names (:func:`dependency_names`)."""
    payload = spec.get("payload")
    body: dict[str, Any] = {"type": spec["type"], "payload": payload, "key": key}
    if task_ids:
        body["payload"], _ = dependencies.rename_inputs(payload, task_ids)
        if spec.get("after"):
            body["after"] = [task_ids[name] for name in spec["after"]]
    for field, name in _FIELDS:
        if spec.get(field) is not None:
            body[name] = spec[field]
    if spec.get("resources"):
        body["resources"] = dict(spec["resources"])
    if spec.get("timeoutSeconds") is not None:
        body["timeout"] = float(spec["timeoutSeconds"])
    return body


def rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def phase_of(view: TaskView) -> Phase:
    return _PHASES[TaskState(view["state"])]


def status_from_view(
    view: TaskView, old: Mapping[str, Any], *, epoch: int, generation: int | None, now: float
) -> dict[str, Any]:
    """The Task's status for the orchestrator's view of its task (None values omitted)."""
    phase = phase_of(view)
    attempts = view["attempts"]
    started = [a["started_at"] for a in attempts if a["started_at"] is not None]
    finished = view["finished_at"]
    status: dict[str, Any] = {
        "phase": phase.value,
        "taskId": view["id"],
        "attempts": len(attempts),
        "worker": attempts[-1]["worker"] if attempts else None,
        "startedAt": rfc3339(started[0]) if started else None,
        "completedAt": rfc3339(finished) if phase in TERMINAL and finished else None,
        "result": view["result"] if phase is Phase.SUCCEEDED else None,
        "error": _error(view, phase),
        "epoch": max(0, epoch),
        "observedGeneration": generation,
    }
    status["conditions"] = conditions(phase, view["id"], old.get("conditions") or [], now)
    return {key: value for key, value in status.items() if value is not None}


def _error(view: TaskView, phase: Phase) -> str | None:
    if phase is Phase.FAILED:
        return view["error"] or "failed"
    if phase is Phase.CANCELLED:
        return view["error"] or "cancelled"
    return None


def conditions(
    phase: Phase, task_id: str | None, old: list[dict[str, Any]], now: float
) -> list[dict[str, Any]]:
    """Submitted, Running and Completed; a transition time changes only with the status.

    ``task_id`` None: the orchestrators refused the Task."""
    running = phase is Phase.RUNNING
    done = phase in TERMINAL
    wanted = [
        ("Submitted", "True", "Accepted", f"task {task_id} accepted by the orchestrators")
        if task_id
        else ("Submitted", "False", "Rejected", "the orchestrators refused the Task"),
        (
            "Running",
            "True" if running else "False",
            "Started" if running else phase.value,
            "a worker runs it" if running else f"the task is {phase.value.lower()}",
        ),
        (
            "Completed",
            "True" if done else "False",
            phase.value if done else "InProgress",
            f"finished: {phase.value}" if done else "not finished",
        ),
    ]
    before = {c.get("type"): c for c in old}
    result = []
    for kind, status, reason, message in wanted:
        previous = before.get(kind, {})
        since = previous.get("lastTransitionTime") if previous.get("status") == status else None
        result.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since or rfc3339(now),
            }
        )
    return result


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch of ``status`` from ``old`` to ``new`` (None removes a field)."""
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys() if old[key] is not None}
    patch.update({key: value for key, value in new.items() if old.get(key) != value})
    return patch


def transitions(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Notice]:
    """The Events worth posting when the status goes from ``old`` to ``new``."""
    notices = []
    task_id = new.get("taskId")
    if task_id != old.get("taskId"):
        if old.get("taskId"):
            notices.append(Notice("Warning", "Resubmitted", f"now task {task_id}"))
        else:
            notices.append(Notice("Normal", "Submitted", f"submitted as task {task_id}"))
    phase, attempts, worker = new.get("phase"), new.get("attempts", 0), new.get("worker")
    if phase == old.get("phase"):
        if phase == Phase.RUNNING and attempts > old.get("attempts", 0):
            notices.append(Notice("Warning", "Retrying", f"attempt {attempts} on {worker}"))
        return notices
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if phase == Phase.RUNNING:
        notices.append(Notice("Normal", "Started", f"attempt {attempts} on {worker}"))
    elif phase == Phase.PENDING and old.get("phase") == Phase.RUNNING:
        notices.append(Notice("Warning", "Retrying", f"attempt {attempts} ended; queued again"))
    elif phase == Phase.SUCCEEDED:
        notices.append(Notice("Normal", "Succeeded", f"succeeded on {worker} after {tries}"))
    elif phase == Phase.FAILED:
        notices.append(Notice("Warning", "Failed", f"failed after {tries}: {new.get('error')}"))
    elif phase == Phase.CANCELLED:
        notices.append(Notice("Normal", "Cancelled", str(new.get("error", "cancelled"))))
    return notices
