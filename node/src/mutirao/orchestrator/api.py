"""The client-facing HTTP API (``/v1``), its auth and error middlewares, and the app factory."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from mutirao import protocol
from mutirao.auth import User
from mutirao.errors import (
    INTERNAL_ERROR,
    AuthError,
    ConflictError,
    ForbiddenError,
    MutiraoError,
    NotFoundError,
    TooLargeError,
    ValidationError,
)
from mutirao.ha.controller import CONTROLLER, Controller
from mutirao.openapi import OPENAPI
from mutirao.orchestrator import limits_api, schedules_api, session, ui, users_api
from mutirao.orchestrator.reply import json_reply, submitter_of, user_of
from mutirao.orchestrator.service import ORCHESTRATOR, Orchestrator
from mutirao.orchestrator.tasks import Task
from mutirao.protocol import TaskSpec, TaskState, TaskView
from mutirao.serving import read_body

log = logging.getLogger(__name__)

_PUBLIC = frozenset(
    {"/healthz", "/readyz", "/metrics", "/v1/login", "/v1/refresh", "/v1/openapi.json", "/v1/ha"}
)
# These check the join token themselves.
_PEER_SOCKETS = frozenset({protocol.WORKER_WS_PATH, protocol.REPLICATION_WS_PATH})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as JSON, then the role, then authentication: one middleware rather than three,
    as each layer costs a little on every request (and one task per request is a benchmark
    workload)."""
    try:
        leader_only = _check_role(request)
        _authenticate(request)
        response = await handler(request)
        if leader_only and not response.prepared:  # websockets answered as they went
            # The answer goes out now: it must not if the lease lapsed while it was made.
            request.app[ORCHESTRATOR].roles.require_active()
        return response
    except MutiraoError as exc:
        return json_reply(exc.to_json(), exc.status, exc.headers)
    except web.HTTPRequestEntityTooLarge as exc:
        too_large = TooLargeError(exc.text or "request too large", field="body")
        return json_reply(too_large.to_json(), 413)
    except web.HTTPException as exc:
        return _http_error(exc)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return json_reply(INTERNAL_ERROR, 500)


@web.middleware
async def peer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as JSON, and nothing else: replication checks its own credentials."""
    try:
        return await handler(request)
    except MutiraoError as exc:
        return json_reply(exc.to_json(), exc.status, exc.headers)
    except web.HTTPException as exc:
        return _http_error(exc)


# What aiohttp's own refusals are about: no such resource, or not this method on it.
_HTTP_ERROR_FIELDS = {404: "path", 405: "method"}


def _http_error(exc: web.HTTPException) -> web.Response:
    if exc.status < 400:
        raise exc
    body = {
        "error": exc.reason.lower().replace(" ", "_"),
        "message": exc.reason,
        "field": _HTTP_ERROR_FIELDS.get(exc.status, "body"),
    }
    headers = None
    if isinstance(exc, web.HTTPMethodNotAllowed):
        # RFC 9110: a 405 says which methods the resource does take.
        headers = {"Allow": ", ".join(sorted(exc.allowed_methods))}
    return json_reply(body, exc.status, headers)


def _check_role(request: web.Request) -> bool:
    """Only the active orchestrator serves the API; a standby names the leader (HTTP 421),
    one that serves reads only (its disk is full) answers those. Returns whether the
    request is one that only the leader answers."""
    if request.path.startswith("/v1/") and request.path not in _NOT_LEADER_ONLY:
        roles = request.app[ORCHESTRATOR].roles
        if roles.read_only is not None and _reads(request):
            return False
        roles.require_active()
        return True
    return False


_NOT_LEADER_ONLY = frozenset({"/v1/openapi.json", "/v1/ha", protocol.REPLICATION_WS_PATH})
_READ_POSTS = frozenset({"/v1/tasks/wait", "/v1/login"})
_SOCKETS = frozenset({protocol.SESSION_PATH, protocol.WORKER_WS_PATH})


def _reads(request: web.Request) -> bool:
    """Whether the request writes nothing to the journal."""
    if request.method == "GET":
        return request.path not in _SOCKETS
    return request.method == "POST" and request.path in _READ_POSTS


def _authenticate(request: web.Request) -> None:
    path = request.path
    if path in _PUBLIC or path in _PEER_SOCKETS or path == "/ui" or path.startswith("/ui/"):
        return  # the dashboard's own files: its pages sign in through /v1/login
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise AuthError("missing bearer token: run `mutirao login` or set MUTIRAO_TOKEN")
    orch = request.app[ORCHESTRATOR]
    request["user"] = orch.authenticate(header[7:].strip())


def _submitter(request: web.Request) -> User:
    return submitter_of(request, "submit or cancel tasks")


def _visible(request: web.Request, task_id: str) -> Task:
    (task,) = _all_visible(request, [task_id])
    return task


def _all_visible(request: web.Request, task_ids: list[str]) -> list[Task]:
    """The tasks, or 404 naming the first that does not exist or is someone else's."""
    orch = request.app[ORCHESTRATOR]
    user = user_of(request)
    get = orch.engine.table.tasks.get
    tasks = [get(task_id) for task_id in task_ids]
    # Checked for the whole list at once (in C for an admin), then task by task only to
    # name the first one refused.
    if None not in tasks:
        found = cast(list[Task], tasks)
        if user.admin or all(t.owner == user.name for t in found):
            return found
    for task_id, task in zip(task_ids, tasks, strict=True):
        if task is None or (task.owner != user.name and not user.admin):
            kept = orch.settings.tasks.retention
            raise NotFoundError(
                f"no task {task_id!r} (finished tasks are forgotten after {kept:g} s)",
                field="id",
            )
    return cast(list[Task], tasks)


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a number", field=name) from None
    if not math.isfinite(value) or value < low:
        raise ValidationError(f"{name} must be >= {low}", field=name)
    return min(value, high)


def _position(raw: str | None) -> float:
    """``after``: a whole number >= 0 (a page's ``next``); none: from the newest."""
    if raw is None:
        return math.inf
    if not (raw.isascii() and raw.isdigit()):
        raise ValidationError("after must be a whole number, a page's next", field="after")
    return int(raw)


async def submit(request: web.Request) -> web.Response:
    orch = request.app[ORCHESTRATOR]
    specs, batch = orch.submissions.parse(await read_body(request))
    wait = _number(request, "wait", 0.0, 0.0, orch.settings.limits.max_wait)
    tasks, created = await orch.submit(specs, _submitter(request).name)
    for task in tasks[:1] if batch else tasks:
        log.info(
            "accepted task %s (%s)%s",
            task.id,
            task.type,
            f" and {len(tasks) - 1} more" if batch and len(tasks) > 1 else "",
            extra={"task": task.id},
        )
    if batch:
        return json_reply(
            {"tasks": [{"id": t.id, "state": t.state, "key": t.key} for t in tasks]},
            201 if created else 200,
        )
    # ``?wait=S`` answers once the task finished (or S passed): submit and result in one
    # round trip. The submission is acknowledged (durable) either way.
    if wait:
        await orch.wait_finished(tasks[:1], wait)
        await orch.barrier()
    # Where the task lives (RFC 9110 for a 201), which generic clients follow.
    location = {"Location": f"/v1/tasks/{tasks[0].id}"}
    return json_reply(orch.engine.view(tasks[0], orch.clock()), 201 if created else 200, location)


async def list_tasks(request: web.Request) -> web.Response:
    orch = request.app[ORCHESTRATOR]
    user = user_of(request)
    state_name = request.query.get("state")
    state = None
    if state_name is not None:
        try:
            state = TaskState(state_name)
        except ValueError:
            allowed = ", ".join(s.value for s in TaskState)
            raise ValidationError(f"state must be one of {allowed}", field="state") from None
    limit = int(_number(request, "limit", 100, 1, 10_000))
    await orch.barrier()
    table = orch.engine.table
    # A page starts after the last task of the one before (newest first): ``after`` is
    # that page's ``next``, a position in submission order (valid even once it expired).
    before = _position(request.query.get("after"))
    # An admin's total is counted already (unfiltered); else it takes a pass over the tasks.
    counted = user.admin
    total = (len(table.tasks) if state is None else table.by_state[state]) if counted else 0
    views: list[TaskView] = []
    last = 0
    more = False
    now = orch.clock()
    wanted = _wanted(request)
    counted = counted and wanted is None
    for task in reversed(table.tasks.values()):
        mine = user.admin or task.owner == user.name
        if not mine or (state is not None and task.state is not state):
            continue
        if wanted is not None and not wanted(task):
            continue
        total += not counted
        if task.seq >= before:
            continue
        if len(views) < limit:
            views.append(orch.engine.view(task, now))
            last = task.seq
        else:
            more = True
            if counted:
                break
    return json_reply({"tasks": views, "total": total, "next": last if more else None})


def _wanted(request: web.Request) -> Callable[[Task], bool] | None:
    """The filters ``type``, ``owner`` and ``q`` (an id's start, or a part of a key) of a
    task list, as one test; None when none is given."""
    task_type, owner = request.query.get("type"), request.query.get("owner")
    search = request.query.get("q")
    if task_type is None and owner is None and not search:
        return None

    def wanted(task: Task) -> bool:
        return (
            (task_type is None or task.type == task_type)
            and (owner is None or task.owner == owner)
            and (
                not search
                or task.id.startswith(search)
                or (task.key is not None and search in task.key)
            )
        )

    return wanted


async def get_task(request: web.Request) -> web.Response:
    orch = request.app[ORCHESTRATOR]
    task = _visible(request, request.match_info["id"])
    await orch.barrier()
    return json_reply(orch.engine.view(task, orch.clock()))


async def get_result(request: web.Request) -> web.Response:
    orch = request.app[ORCHESTRATOR]
    task = _visible(request, request.match_info["id"])
    wait = _number(request, "wait", 0.0, 0.0, orch.settings.limits.max_wait)
    await orch.wait_finished([task], wait)
    await orch.barrier()
    return json_reply(orch.engine.view(task, orch.clock()))


async def wait_tasks(request: web.Request) -> web.Response:
    """Wait up to ``wait`` seconds until every task in ``ids`` has finished; ``view``
    ``brief`` answers only id, state, result and error (what a waiting client needs)."""
    orch = request.app[ORCHESTRATOR]
    doc = protocol.decode_json(await read_body(request))
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValidationError("ids must be a list of task ids", field="ids")
    if len(ids) > orch.settings.limits.max_batch:
        raise TooLargeError(f"at most {orch.settings.limits.max_batch} ids", field="ids")
    wait = doc.get("wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < math.inf:
        raise ValidationError("wait must be a non-negative number of seconds", field="wait")
    view = doc.get("view", "full")
    if view not in ("full", "brief"):
        raise ValidationError("view must be full or brief", field="view")
    tasks = _all_visible(request, ids)
    await orch.wait_finished(tasks, min(float(wait), orch.settings.limits.max_wait))
    await orch.barrier()
    if view == "brief":
        return json_reply({"tasks": [t.brief() for t in tasks]})
    now = orch.clock()
    return json_reply({"tasks": [orch.engine.view(t, now) for t in tasks]})


async def cancel_task(request: web.Request) -> web.Response:
    orch = request.app[ORCHESTRATOR]
    _submitter(request)
    task = _visible(request, request.match_info["id"])
    if task.state.terminal:
        raise ConflictError(f"task {task.id} is already {task.state}", field="id")
    orch.require_writable()
    await orch.commit(orch.engine.cancel(task, orch.clock()))
    log.info(
        "cancelled task %s at the request of %s",
        task.id,
        user_of(request).name,
        extra={"task": task.id},
    )
    return json_reply(orch.engine.view(task, orch.clock()))


async def retry_task(request: web.Request) -> web.Response:
    """``POST /v1/tasks/{id}/retry``: a failed or cancelled task's spec submitted again, as
    a new task of the user who asks (the dashboard's Run again)."""
    orch = request.app[ORCHESTRATOR]
    user = _submitter(request)
    task = _visible(request, request.match_info["id"])
    if task.state not in (TaskState.FAILED, TaskState.CANCELLED):
        raise ConflictError(
            f"task {task.id} is {task.state}: only a failed or cancelled task runs again",
            field="id",
        )
    route = task.route
    spec = TaskSpec(
        task.type,
        task.payload,
        priority=task.priority,
        max_attempts=task.max_attempts,
        timeout=task.timeout,
        queue="default" if route is None else route.queue,
        resources=None if route is None else dict(route.demand),
    )
    (again,), _ = await orch.submit([spec], user.name)
    log.info("task %s runs again as %s", task.id, again.id, extra={"task": again.id})
    location = {"Location": f"/v1/tasks/{again.id}"}
    return json_reply(orch.engine.view(again, orch.clock()), 201, location)


async def list_workers(request: web.Request) -> web.Response:
    orch = request.app[ORCHESTRATOR]
    if not user_of(request).admin:
        raise ForbiddenError("the workers (and their URLs) are for admins")
    return json_reply({"workers": orch.engine.worker_views(orch.clock())})


async def cluster(request: web.Request) -> web.Response:
    orch = request.app[ORCHESTRATOR]
    if not user_of(request).admin:
        raise ForbiddenError("the cluster view is for admins")
    engine = orch.engine
    return json_reply(
        {
            **orch.ha_view(),
            "standbys": orch.standby_views(),
            "tasks": engine.counts(),
            "queue": engine.pending_by_type(),
            "oldest_pending": round(engine.backlog(orch.clock()).oldest, 3),
            "workers": engine.worker_views(orch.clock()),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return json_reply({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready means active: only the leader takes client work. An active without a synced
    standby is ready but degraded (a crash now would need this node back to recover)."""
    orch = request.app[ORCHESTRATOR]
    view = orch.ha_view()
    if not orch.ready:
        if orch.roles.read_only is not None:
            return json_reply({"status": "read-only", "reason": orch.roles.read_only, **view}, 503)
        return json_reply({"status": "not ready", **view}, 503)
    synced = orch.standbys_in_lease()
    return json_reply({"status": "ready", "degraded": not synced, "standbys": synced, **view})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics; public like the probes, and served by a standby too."""
    return request.app[ORCHESTRATOR].metrics.respond(request)


async def ha(request: web.Request) -> web.Response:
    return json_reply(request.app[ORCHESTRATOR].ha_view())


async def replication_socket(request: web.Request) -> web.StreamResponse:
    return await request.app[CONTROLLER].replication_socket(request)


async def openapi(request: web.Request) -> web.Response:
    return json_reply(OPENAPI)


async def client_session(request: web.Request) -> web.StreamResponse:
    """``GET /v1/session``: submissions as websocket messages (:mod:`.session`)."""
    return await session.serve(request, _submitter(request))


async def worker_socket(request: web.Request) -> web.StreamResponse:
    return await request.app[ORCHESTRATOR].worker_socket(request)


def create_app(orch: Orchestrator) -> web.Application:
    app = web.Application(
        middlewares=[api_middleware],
        client_max_size=orch.settings.limits.max_request_bytes,
    )
    app[ORCHESTRATOR] = orch
    controller = app[CONTROLLER] = Controller(orch)
    app.cleanup_ctx.append(controller.serve)
    app.on_shutdown.append(controller.stop)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/v1/openapi.json", openapi),
            *users_api.ROUTES,
            *schedules_api.ROUTES,
            *limits_api.ROUTES,
            *ui.ROUTES,
            web.post("/v1/tasks", submit),
            web.get("/v1/tasks", list_tasks),
            web.post("/v1/tasks/wait", wait_tasks),
            # Not "wait": that path is POST /v1/tasks/wait alone (and 405 names only POST).
            web.get(r"/v1/tasks/{id:(?!wait$)[^/]+}", get_task),
            web.get("/v1/tasks/{id}/result", get_result),
            web.post("/v1/tasks/{id}/cancel", cancel_task),
            web.post("/v1/tasks/{id}/retry", retry_task),
            web.get("/v1/workers", list_workers),
            web.get(protocol.WORKER_WS_PATH, worker_socket),
            web.get(protocol.SESSION_PATH, client_session),
            web.get("/v1/cluster", cluster),
            web.get(protocol.HA_PATH, ha),
        ]
    )
    if not orch.settings.ha.peer_port:
        app.router.add_get(protocol.REPLICATION_WS_PATH, replication_socket)
    return app


def create_peer_app(app: web.Application) -> web.Application:
    """The listener on ``ha.peer_port``: replication only, for the other orchestrators,
    served by the same orchestrator and controller as ``app``."""
    peer = web.Application(middlewares=[peer_middleware])
    peer[ORCHESTRATOR], peer[CONTROLLER] = app[ORCHESTRATOR], app[CONTROLLER]
    peer.add_routes(
        [web.get("/healthz", healthz), web.get(protocol.REPLICATION_WS_PATH, replication_socket)]
    )
    return peer
