"""Pure decisions about one Schedule custom resource: the orchestrator schedule it becomes,
and the status shown for it (CronJob's columns: SCHEDULE, LAST FIRE, NEXT FIRE, ACTIVE).

A Schedule ``NAME`` in namespace ``NS`` is the orchestrator schedule ``NS.NAME``; its ticks
are tasks keyed ``NS.NAME@<tick>``, so the orchestrators fire each tick once whatever the
operator does (it only creates, pauses, resumes and removes schedules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mutirao_operator.reconcile import rfc3339, submission

SCHEDULES = "schedules"
MAX_NAME = 63


def orchestrator_name(namespace: str, name: str) -> str | None:
    """The orchestrator schedule's name, None if ``NS.NAME`` is longer than it may be."""
    full = f"{namespace}.{name}"
    return full if len(full) <= MAX_NAME else None


def schedule_body(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``POST /v1/schedules`` for a Schedule spec."""
    task = submission(spec["task"], key="")
    del task["key"]
    body: dict[str, Any] = {
        "name": name,
        "task": task,
        "timezone": spec.get("timezone") or "UTC",
        "overlap": spec.get("overlap") or "allow",
        "catch_up": spec.get("catchUp") or "none",
    }
    if spec.get("cron"):
        body["cron"] = spec["cron"]
    else:
        body["every"] = spec.get("every")
    return body


def status_from(view: Mapping[str, Any], active: bool, generation: int | None) -> dict[str, Any]:
    """The Schedule's status for the orchestrator's view of its schedule."""
    every = view.get("every")
    status: dict[str, Any] = {
        "schedule": view.get("cron") or f"every {every:g}s",
        "lastFire": rfc3339(view["last_tick"]) if view.get("last_tick") else None,
        "nextFire": rfc3339(view["next_tick"]) if view.get("next_tick") else None,
        "active": 1 if active else 0,
        "lastTaskId": view.get("last_task"),
        "fires": view.get("fires", 0),
        "misses": view.get("misses", 0),
        "suspended": bool(view.get("paused")),
        "observedGeneration": generation,
    }
    return {k: v for k, v in status.items() if v is not None}
