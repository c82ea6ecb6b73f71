"""kopf's handlers for the operator: thin adapters around :class:`Runtime`.

:func:`register` puts them on a registry: ``mutirao_operator.handlers`` does it on kopf's
default registry for ``kopf run``; tests do it on a registry of their own.

- Task created / operator restarted (resume): submit it, keyed by its uid (once the Tasks
  it waits for, ``spec.after``, have task ids);
- a timer per unfinished Task: follow its progress into ``status``, with Events;
- Task deleted (finalizer ``mutirao.dev/cancel-on-delete``): cancel its task;
- a Schedule created, changed, found at restart, and every few seconds: make the
  orchestrator schedule match it and show its last and next fire; deleted: remove it;
- the orchestrators' Lease (any event): follow a new leader, label its pod.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from mutirao_operator.reconcile import GROUP, PLURAL, VERSION, Notice, is_terminal
from mutirao_operator.runtime import Progress, Runtime, TaskRef, Unavailable
from mutirao_operator.schedules import SCHEDULES

log = logging.getLogger(__name__)

FINALIZER = "mutirao.dev/cancel-on-delete"
RETRY_DELAY = 2.0
"""Seconds before kopf retries a handler the orchestrators could not answer."""


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator.

    kopf keeps its progress and the last handled spec in annotations: the Task CRD's status
    schema is strict, and the API server would prune a ``status.kopf`` field.
    """
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="mutirao.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="mutirao.dev", key="last-handled-configuration"
    )
    # Our Events are explicit (kopf.event); kopf's own log lines become Events only if bad.
    settings.posting.level = logging.WARNING


class _Slot:
    """The runtime, from kopf's startup to its cleanup."""

    runtime: Runtime | None = None

    def get(self) -> Runtime:
        if self.runtime is None:
            raise kopf.TemporaryError("the operator is not started yet", delay=RETRY_DELAY)
        return self.runtime


def _post(body: kopf.Body, notices: list[Notice]) -> None:
    for notice in notices:
        kopf.event(body, type=notice.type, reason=notice.reason, message=notice.message)


def _apply(body: kopf.Body, patch: kopf.Patch, progress: Progress) -> None:
    if progress.status:
        patch.status.update(progress.status)
    _post(body, progress.notices)


async def _guard(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except Unavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


def _unfinished(status: Mapping[str, Any], **_: Any) -> bool:
    return not is_terminal(status)


def register(
    registry: kopf.OperatorRegistry,
    start: Callable[[], Awaitable[Runtime]],
    *,
    interval: float = 1.0,
) -> None:
    """Put the operator's handlers on ``registry``; ``start`` makes the runtime at kopf's
    startup; every unfinished Task is looked at every ``interval`` seconds."""
    slot = _Slot()
    task = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(*, settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        slot.runtime = await start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if slot.runtime is not None:
            await slot.runtime.close()
            slot.runtime = None

    # A new Task, and an unfinished one found when the operator (re)starts, are both
    # submitted the same way: the uid as idempotency key makes the second one harmless.
    @kopf.on.create(*task, registry=registry, id="submit")
    @kopf.on.resume(*task, registry=registry, id="resume", when=_unfinished)
    async def submitted(
        *,
        body: kopf.Body,
        spec: kopf.Spec,
        status: kopf.Status,
        uid: str,
        namespace: str | None,
        meta: kopf.Meta,
        patch: kopf.Patch,
        **_: Any,
    ) -> None:
        task = TaskRef(uid, namespace or "", spec, meta.get("generation"))
        progress = slot.get().submit(task, status)
        _apply(body, patch, await _guard(progress))

    @kopf.timer(*task, registry=registry, id="track", interval=interval, when=_unfinished)
    async def track(
        *,
        body: kopf.Body,
        spec: kopf.Spec,
        status: kopf.Status,
        uid: str,
        namespace: str | None,
        meta: kopf.Meta,
        patch: kopf.Patch,
        **_: Any,
    ) -> None:
        task = TaskRef(uid, namespace or "", spec, meta.get("generation"))
        progress = slot.get().reconcile(task, status)
        _apply(body, patch, await _guard(progress))

    @kopf.on.delete(*task, registry=registry, id="cancel")
    async def deleted(*, body: kopf.Body, status: kopf.Status, uid: str, **_: Any) -> None:
        _post(body, await _guard(slot.get().cancel(uid, status)))

    schedule = (GROUP, VERSION, SCHEDULES)

    @kopf.on.create(*schedule, registry=registry, id="schedule")
    @kopf.on.resume(*schedule, registry=registry, id="schedule-resume")
    @kopf.on.update(*schedule, registry=registry, id="schedule-update", field="spec")
    @kopf.timer(*schedule, registry=registry, id="schedule-status", interval=2 * interval)
    async def scheduled(
        *,
        body: kopf.Body,
        spec: kopf.Spec,
        name: str | None,
        namespace: str | None,
        meta: kopf.Meta,
        patch: kopf.Patch,
        **_: Any,
    ) -> None:
        progress = slot.get().sync_schedule(
            namespace or "", name or "", spec, meta.get("generation")
        )
        _apply(body, patch, await _guard(progress))

    @kopf.on.delete(*schedule, registry=registry, id="unschedule")
    async def unscheduled(*, name: str | None, namespace: str | None, **_: Any) -> None:
        await _guard(slot.get().remove_schedule(namespace or "", name or ""))

    def our_lease(name: str, namespace: str | None, **_: Any) -> bool:
        return slot.runtime is not None and slot.runtime.is_our_lease(namespace, name)

    @kopf.on.event("coordination.k8s.io", "v1", "leases", registry=registry, id="leader")
    async def lease_event(*, body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED" or not our_lease(body.metadata.name, body.metadata.namespace):
            return
        _post(body, await slot.get().on_lease(body))
