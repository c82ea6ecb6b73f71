"""Schedules over HTTP (``/v1/schedules``): make, list, show, pause, resume and remove.

Each change is a journal record committed like a task (durable here and on the standbys
before the answer), so a new leader fires exactly the schedules the old one acknowledged.
A schedule belongs to the user who made it: its tasks are submitted as that user; admins
see and manage everyone's.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from mutirao.auth import User
from mutirao.errors import (
    ConflictError,
    DependencyError,
    MalformedError,
    NotFoundError,
    ValidationError,
)
from mutirao.orchestrator.reply import json_reply, submitter_of, user_of
from mutirao.orchestrator.schedules import Schedule, ScheduleSpec, checked
from mutirao.orchestrator.service import ORCHESTRATOR, Orchestrator
from mutirao.protocol import TaskSpec, invalid
from mutirao.serving import read_body

_DECODER = msgspec.json.Decoder(ScheduleSpec)


def _submitter(request: web.Request) -> User:
    return submitter_of(request, "manage schedules")


def _found(request: web.Request) -> Schedule:
    """The schedule named in the path, if the user may see it (else 404, as for tasks)."""
    orch, user = request.app[ORCHESTRATOR], user_of(request)
    name = request.match_info["name"]
    schedule = orch.engine.table.schedules.get(name)
    if schedule is None or not (user.admin or schedule.owner == user.name):
        raise NotFoundError(f"no schedule {name!r}", field="name")
    return schedule


def _record(schedule: Schedule) -> dict[str, Any]:
    return {"e": "schedule", "s": msgspec.to_builtins(schedule)}


async def add_schedule(request: web.Request) -> web.Response:
    orch, user = request.app[ORCHESTRATOR], _submitter(request)
    body = await read_body(request)
    try:
        spec = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise MalformedError(f"request body is not valid JSON: {exc}", field="body") from None
    checked(spec)
    task = _task(orch, bytes(spec.task))
    if spec.name in orch.engine.table.schedules:
        raise ConflictError(f"schedule {spec.name!r} exists: remove it first", field="name")
    task_doc = msgspec.to_builtins(task)
    schedule = Schedule(
        spec.name,
        user.name,
        task_doc,
        orch.clock(),
        cron=spec.cron or None,
        every=spec.every or None,
        timezone=spec.timezone,
        overlap=spec.overlap,
        catch_up=spec.catch_up,
    )
    await orch.commit_record(_record(schedule))
    return json_reply(schedule.view(orch.clock()), 201)


def _task(orch: Orchestrator, body: bytes) -> TaskSpec:
    """The schedule's task, checked as ``POST /v1/tasks`` would, errors naming
    ``task.<field>``; its key and not_before belong to each fire, not to the schedule."""
    try:
        specs, batch = orch.submissions.parse(body)
        if batch:
            raise ValidationError("one task, not a batch", field="tasks")
        orch.engine.check(specs, batch=False)
    except ValidationError as exc:
        where = f"task.{exc.field}" if exc.field and exc.field != "body" else "task"
        raise type(exc)(f"task: {exc}", field=where) from None
    if specs[0].after:
        raise DependencyError(
            "task.after: a schedule's task cannot wait for other tasks (nor take $result "
            "inputs): each fire is a task of its own",
            field="task.after",
        )
    specs[0].key = specs[0].not_before = None
    return specs[0]


async def list_schedules(request: web.Request) -> web.Response:
    orch, user = request.app[ORCHESTRATOR], user_of(request)
    now = orch.clock()
    views = [
        s.view(now)
        for s in orch.engine.table.schedules.values()
        if user.admin or s.owner == user.name
    ]
    return json_reply({"schedules": views})


async def get_schedule(request: web.Request) -> web.Response:
    return json_reply(_found(request).view(request.app[ORCHESTRATOR].clock()))


async def remove_schedule(request: web.Request) -> web.Response:
    _submitter(request)
    schedule, orch = _found(request), request.app[ORCHESTRATOR]
    await orch.commit_record({"e": "unschedule", "name": schedule.name})
    return json_reply(schedule.view(orch.clock()))


async def _paused(request: web.Request, paused: bool) -> web.Response:
    _submitter(request)
    schedule, orch = _found(request), request.app[ORCHESTRATOR]
    changed = msgspec.structs.replace(schedule, paused=paused)
    if not paused:
        # Ticks that came while paused are not missed ones to catch up: start afresh.
        changed.last_tick = max(orch.clock(), schedule.due_from())
    await orch.commit_record(_record(changed))
    return json_reply(orch.engine.table.schedules[schedule.name].view(orch.clock()))


async def pause_schedule(request: web.Request) -> web.Response:
    return await _paused(request, True)


async def resume_schedule(request: web.Request) -> web.Response:
    return await _paused(request, False)


ROUTES = [
    web.get("/v1/schedules", list_schedules),
    web.post("/v1/schedules", add_schedule),
    web.get("/v1/schedules/{name}", get_schedule),
    web.delete("/v1/schedules/{name}", remove_schedule),
    web.post("/v1/schedules/{name}/pause", pause_schedule),
    web.post("/v1/schedules/{name}/resume", resume_schedule),
]
