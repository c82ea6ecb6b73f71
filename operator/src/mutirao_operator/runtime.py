"""What the operator does, between kopf's handlers and the two APIs it talks to.

One :class:`Runtime` lives from kopf's startup to its cleanup. Per Task it submits (keyed by
the Task's uid), polls the orchestrator and turns the answer into a status patch and Events
(:mod:`mutirao_operator.reconcile`); on the orchestrators' Lease it follows the leader, labels
its pod and has every unfinished Task resubmitted once to it (:mod:`mutirao_operator.leader`).
Each Task's work is serialised by a lock of its own; the handlers apply what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from mutirao.client.http import ApiError, Unreachable
from mutirao.protocol import TaskView
from mutirao_operator.kube import Kube, KubeError
from mutirao_operator.leader import label_changes, leadership_of, selector_matches
from mutirao_operator.metrics import OperatorMetrics, bound_port
from mutirao_operator.orchestrators import Orchestrators
from mutirao_operator.reconcile import (
    Notice,
    Phase,
    conditions,
    dependency_names,
    is_terminal,
    status_from_view,
    status_patch,
    submission,
    transitions,
)
from mutirao_operator.schedules import MAX_NAME, orchestrator_name, schedule_body, status_from
from mutirao_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

_REJECTED = frozenset({400, 404, 409, 413, 422})
"""Orchestrator answers to a submission that no retry can change."""

FINISHED_MEMORY = 4096
"""Finished Tasks remembered, so a late timer tick does not report them twice."""


class Unavailable(Exception):
    """The orchestrators (or the Kubernetes API) cannot be reached now: retry later."""


class DependencyRejected(Exception):
    """A Task this one waits for was refused by the orchestrators: so is this one."""


@dataclass(frozen=True)
class TaskRef:
    """The Task a handler was called for."""

    uid: str
    namespace: str
    spec: Mapping[str, Any]
    generation: int | None


@dataclass
class Progress:
    """What a handler applies: a merge patch of ``status`` and Events to post."""

    status: dict[str, Any] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)


class Runtime:
    def __init__(
        self,
        settings: OperatorSettings,
        orchestrators: Orchestrators,
        kube: Kube,
        metrics: OperatorMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.orch = orchestrators
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        self.leader: str | None = None
        """The Lease holder the operator follows."""
        self.labelled: str | None = None
        """The pod the operator last labelled as the leader."""
        self._active: dict[str, dict[str, Any]] = {}
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._submitted: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stack = contextlib.AsyncExitStack()
        self.metrics_port = 0

    @classmethod
    async def start(cls, settings: OperatorSettings, *, kube: Kube | None = None) -> Runtime:
        """A runtime with its API clients open and /metrics served; :meth:`close` ends it."""
        settings.validate()
        async with contextlib.AsyncExitStack() as stack:
            orchestrators = await stack.enter_async_context(Orchestrators(settings))
            kube = kube if kube is not None else Kube()
            stack.push_async_callback(kube.close)
            metrics = OperatorMetrics()
            runner = await metrics.serve(settings.metrics_host, settings.metrics_port)
            stack.push_async_callback(runner.cleanup)
            runtime = cls(settings, orchestrators, kube, metrics)
            runtime.metrics_port = bound_port(runner)
            metrics.follow(orchestrators.url)
            runtime._stack = stack.pop_all()
        log.info(
            "operator started: orchestrators %s, Lease %s/%s, metrics on port %d",
            ",".join(settings.urls),
            settings.namespace,
            settings.lease_name,
            runtime.metrics_port,
        )
        return runtime

    async def close(self) -> None:
        await self._stack.aclose()

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except (Unreachable, aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.errors.labels(operation).inc()
            raise Unavailable(f"{operation}: {exc}") from exc
        except ApiError as exc:
            self.metrics.errors.labels(operation).inc()
            if operation == "submit" and exc.status in _REJECTED:
                raise
            raise Unavailable(f"{operation}: {exc}") from exc

    # -- Tasks -------------------------------------------------------------------------------

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def _known(self, uid: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return self._active.get(uid) or dict(status or {})

    def forget(self, uid: str) -> None:
        self._active.pop(uid, None)
        self._submitted.pop(uid, None)
        self._locks.pop(uid, None)

    async def submit(self, task: TaskRef, status: Mapping[str, Any]) -> Progress:
        """Submit the Task (again: the uid finds the task already created)."""
        async with self._lock(task.uid):
            if task.uid in self._finished:
                return Progress()
            return await self._submit(task, self._known(task.uid, status))

    async def reconcile(self, task: TaskRef, status: Mapping[str, Any]) -> Progress:
        """One look at the task: submit it if needed (first time, or a new leader since),
        else long-poll its progress; the status changes and Events since the last look."""
        uid, generation = task.uid, task.generation
        async with self._lock(uid):
            if uid in self._finished:
                return Progress()
            old = self._known(uid, status)
            task_id = old.get("taskId")
            if not task_id or self._submitted.get(uid) != self.orch.generation:
                return await self._submit(task, old)
            wait = self.settings.poll_wait if old.get("phase") == Phase.RUNNING else 0.0
            view = await self._call("poll", self.orch.result(task_id, wait))
            if view is None:
                log.warning("task %s unknown to %s: submitting it again", task_id, self.orch.url)
                return await self._submit(task, old)
            return await self._progress(uid, old, view, generation)

    async def _submit(self, task: TaskRef, old: dict[str, Any]) -> Progress:
        uid, generation = task.uid, task.generation
        submitted_in = self.orch.generation
        try:
            ids = await self._task_ids(task)
            body = submission(task.spec, uid, ids)
            view = await self._call("submit", self.orch.submit(body))
        except (ApiError, DependencyRejected) as exc:
            return self._rejected(uid, old, str(exc), generation)
        self._submitted[uid] = submitted_in
        return await self._progress(uid, old, view, generation)

    async def _task_ids(self, task: TaskRef) -> dict[str, str]:
        """The task id of each Task this one waits for; raises :class:`Unavailable` (kopf
        retries) while one of them is not there or not submitted yet, as Tasks applied
        together arrive in any order."""
        ids: dict[str, str] = {}
        for name in dependency_names(task.spec):
            try:
                other = await self.kube.task(task.namespace, name)
            except KubeError as exc:
                raise Unavailable(f"reading Task {name}: {exc}") from exc
            status = (other or {}).get("status") or {}
            if status.get("taskId"):
                ids[name] = status["taskId"]
            elif other is not None and is_terminal(status):
                raise DependencyRejected(f"dependency Task {name} {status.get('error', '')}")
            else:
                state = "does not exist" if other is None else "is not submitted"
                raise Unavailable(f"waiting for Task {name}: it {state} yet")
        return ids

    async def _progress(
        self, uid: str, old: dict[str, Any], view: TaskView, generation: int | None
    ) -> Progress:
        if self.orch.epoch == 0:
            # No Lease seen (yet): ask the orchestrator that just answered for its epoch.
            with contextlib.suppress(ApiError, Unreachable, aiohttp.ClientError, TimeoutError):
                await self.orch.refresh_epoch()
        new = status_from_view(
            view, old, epoch=self.orch.epoch, generation=generation, now=self.clock()
        )
        return self._record(uid, old, new)

    def _rejected(
        self, uid: str, old: dict[str, Any], error: str, generation: int | None
    ) -> Progress:
        new: dict[str, Any] = {"phase": Phase.FAILED.value, "error": f"rejected: {error}"}
        if generation is not None:
            new["observedGeneration"] = generation
        new["conditions"] = conditions(
            Phase.FAILED, None, old.get("conditions") or [], self.clock()
        )
        progress = self._record(uid, old, new)
        progress.notices = [Notice("Warning", "Rejected", error)]
        return progress

    def _record(self, uid: str, old: dict[str, Any], new: dict[str, Any]) -> Progress:
        patch = status_patch(old, new)
        notices = transitions(old, new)
        if is_terminal(new):
            self.forget(uid)
            self._finished[uid] = new
            while len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)
        else:
            self._active[uid] = new
        if patch:
            self.metrics.tasks_reconciled.inc()
        return Progress(patch, notices)

    async def cancel(self, uid: str, status: Mapping[str, Any]) -> list[Notice]:
        """The Task is being deleted: cancel its task unless it finished."""
        async with self._lock(uid):
            old = self._known(uid, status)
            finished = self._finished.pop(uid, None)
            if finished is not None or is_terminal(old):
                self.forget(uid)
                return []
            task_id = old.get("taskId")
            if not task_id:
                self.forget(uid)
                return []
            view = await self._call("cancel", self.orch.cancel(task_id))
            self.forget(uid)
        if view is None:
            return []
        return [Notice("Normal", "Cancelled", f"task {task_id} cancelled: the Task was deleted")]

    # -- Schedules ---------------------------------------------------------------------------

    async def sync_schedule(
        self, namespace: str, name: str, spec: Mapping[str, Any], generation: int | None
    ) -> Progress:
        """Make the orchestrator schedule match the Schedule (made anew when its spec
        changed), then report its status."""
        target = orchestrator_name(namespace, name)
        if target is None:
            error = f"{namespace}.{name} is longer than {MAX_NAME} characters"
            return Progress({"error": error}, [Notice("Warning", "Rejected", error)])
        body = schedule_body(spec, target)
        view = await self._call("schedule", self.orch.schedule(target))
        notices = []
        if view is not None and _changed(view, body):
            await self._call("schedule", self.orch.remove_schedule(target))
            view = None
        if view is None:
            try:
                view = await self._call("schedule", self.orch.add_schedule(body))
            except ApiError as exc:
                return Progress({"error": str(exc)}, [Notice("Warning", "Rejected", str(exc))])
            notices.append(Notice("Normal", "Scheduled", f"orchestrator schedule {target}"))
        suspend = bool(spec.get("suspend"))
        if bool(view.get("paused")) != suspend:
            view = await self._call("schedule", self.orch.pause_schedule(target, suspend))
        active = False
        if view.get("last_task"):
            task = await self._call("poll", self.orch.result(view["last_task"], 0.0))
            active = task is not None and task["state"] not in ("succeeded", "failed", "cancelled")
        return Progress(status_from(view, active, generation), notices)

    async def remove_schedule(self, namespace: str, name: str) -> None:
        target = orchestrator_name(namespace, name)
        if target is not None:
            await self._call("schedule", self.orch.remove_schedule(target))

    # -- the orchestrators' Lease ------------------------------------------------------------

    def is_our_lease(self, namespace: str | None, name: str | None) -> bool:
        return (namespace, name) == (self.settings.namespace, self.settings.lease_name)

    async def on_lease(self, lease: Mapping[str, Any]) -> list[Notice]:
        """The Lease changed (or was renewed): follow a new holder and label its pod."""
        s = self.settings
        lead = leadership_of(lease, s.orchestrator_service, s.orchestrator_port, s.scheme)
        if lead is None:
            return []
        notices = []
        if lead.holder != self.leader:
            previous, self.leader = self.leader, lead.holder
            if lead.url:
                self.orch.follow(lead.url, lead.epoch)
            self.metrics.follow(self.orch.url)
            unfinished = len(self._active)
            log.warning(
                "orchestrator %s leads (epoch %d, was %s): following %s; resubmitting %d "
                "unfinished Task(s)",
                lead.holder,
                lead.epoch,
                previous or "unknown",
                self.orch.url,
                unfinished,
            )
            reason = "LeaderChanged" if previous else "Following"
            message = (
                f"{previous or 'none'} -> {lead.holder} (epoch {lead.epoch}); following "
                f"{self.orch.url}, resubmitting {unfinished} unfinished Task(s)"
            )
            notices.append(Notice("Normal", reason, message))
        if self.labelled != lead.holder:
            await self._label_leader(lead.holder)
        return notices

    async def _label_leader(self, holder: str) -> None:
        s = self.settings
        try:
            listed = await self.kube.pods(s.namespace, s.orchestrator_selector)
            pods = [p for p in listed if selector_matches(p, s.orchestrator_selector)]
            if holder not in {(p.get("metadata") or {}).get("name") for p in pods}:
                log.warning("leader %s has no pod matching %s", holder, s.orchestrator_selector)
                return
            for pod, value in label_changes(pods, holder, s.leader_label):
                await self.kube.label_pod(s.namespace, pod, s.leader_label, value)
                log.info("pod %s: %s=%s", pod, s.leader_label, value or "(removed)")
        except KubeError as exc:
            self.metrics.errors.labels("label").inc()
            log.warning("could not label the leader pod %s (will retry): %s", holder, exc)
            return
        self.labelled = holder


def _changed(view: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether the orchestrator schedule differs from what the Schedule now asks."""
    task = view.get("task") or {}
    same_task = all(task.get(k) == v for k, v in body["task"].items())
    same = all(view.get(k) == body.get(k) for k in ("cron", "every", "timezone", "overlap"))
    return not (same_task and same and view.get("catch_up") == body["catch_up"])
