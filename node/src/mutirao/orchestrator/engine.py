"""The orchestrator's decisions, sans-IO: commands in, records and messages out.

Each command (a submission, a worker's hello, heartbeat or results, a clock tick) changes the
in-memory state only by applying records (see :mod:`mutirao.orchestrator.tasks`) and returns
:class:`Effects`: the records to journal and the messages to send once they are durable.
The aiohttp service is a thin adapter around this class; tests drive it with a fake clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from mutirao import dependencies, resources
from mutirao.errors import NotFoundError, TooManyRequestsError, ValidationError
from mutirao.orchestrator import schedules
from mutirao.orchestrator.events import NULL_OBSERVER, DeathCause, EngineObserver
from mutirao.orchestrator.limits import Gates
from mutirao.orchestrator.scheduler import (
    DEFAULT_QUEUE,
    DEFAULT_QUEUES,
    LaneKey,
    PendingQueue,
    Slotted,
)
from mutirao.orchestrator.tasks import (
    LIMIT_KINDS,
    Change,
    Record,
    Route,
    Snapshot,
    Task,
    TaskTable,
    Timing,
    grouped,
    tries,
)
from mutirao.protocol import (
    AssignItem,
    AttemptRef,
    HelloMsg,
    OrchestratorMessage,
    Outcome,
    ResultItem,
    RetryPolicy,
    TaskId,
    TaskSpec,
    TaskState,
    TaskView,
    WorkerView,
)
from mutirao.settings import HeartbeatSettings

log = logging.getLogger(__name__)

_ACTIVE = (TaskState.ASSIGNED, TaskState.RUNNING)
_COMPACT_SLACK = 10_000
"""Stale queue entries tolerated beyond twice the pending tasks before compacting."""
STEAL_AFTER = 0.5
"""Seconds a prefetched attempt waits unstarted before an idle worker may take it over:
short tasks in a window start well within it, so only those stuck behind long ones move."""
EXPIRE_BATCH = 20_000
"""Most finished tasks one tick forgets: a backlog of expired tasks is worked off over a few
ticks instead of stalling the loop (~1 ms per 1,000)."""


@dataclass(slots=True)
class Worker(Slotted):
    url: str = ""
    attempts: set[AttemptRef] = field(default_factory=set)
    last_seen: float = 0.0
    session: int = 0
    """Which connection of this worker id is current; messages of older ones are ignored."""
    connected: bool = False
    state: str = "alive"
    capacity: int = 0
    """The slots the worker declared; ``slots`` is what is left of them to schedule on."""
    stuck: int = 0
    """Slots held by threads that outlived their attempts (``--pool threads``)."""
    offered: dict[str, float] = field(default_factory=dict)
    """The resources it declared (``cpu``: its slots, unless it said otherwise)."""
    heavy: dict[AttemptRef, resources.Demand] = field(default_factory=dict)
    """Its attempts of tasks that take other than one cpu, with what they take."""
    used: dict[str, float] = field(default_factory=dict)
    """What those take, summed."""
    revoking: set[AttemptRef] = field(default_factory=set)
    """Prefetched attempts asked back for an idle worker (see ``Engine._rebalance``)."""

    def take(self, ref: AttemptRef, demand: resources.Demand) -> None:
        """An attempt that takes ``demand`` (other than one cpu) runs here."""
        if ref not in self.heavy:
            self.heavy[ref] = demand
            used = self.used
            for name, amount in demand:
                used[name] = used.get(name, 0.0) + amount

    def give(self, ref: AttemptRef) -> None:
        """The attempt ``ref`` ended here: what it took is free again."""
        demand = self.heavy.pop(ref, None)
        if demand is not None:
            used = self.used
            for name, amount in demand:
                used[name] -= amount

    def prepare(self) -> None:
        """Work out the room left for tasks, before a dispatch (see ``Slotted.room``)."""
        offered = self.offered
        if not self.heavy and (not offered or offered == {"cpu": float(self.capacity)}):
            self.room = None
            return
        room = dict(offered or {"cpu": float(self.capacity)})
        room["cpu"] = room.get("cpu", 0.0) - (len(self.attempts) - len(self.heavy))
        for name, amount in self.used.items():
            room[name] = room.get(name, 0.0) - amount
        self.room = room

    def hold(self, stuck: int) -> bool:
        """``stuck`` slots are held outside any attempt now; True if that changed."""
        stuck = max(0, min(stuck, self.capacity))
        if stuck == self.stuck:
            return False
        self.stuck, self.slots = stuck, self.capacity - stuck
        return True

    @property
    def usage(self) -> float:
        """Slots in use (attempts and stuck threads) / declared slots."""
        return (len(self.attempts) + self.stuck) / self.capacity if self.capacity else 1.0

    def view(self, now: float) -> WorkerView:
        return {
            "id": self.id,
            "url": self.url,
            "state": self.state,
            "slots": self.capacity,
            "running": len(self.attempts),
            "load": round(self.usage, 3),
            "types": sorted(self.types),
            "heartbeat_age": round(max(0.0, now - self.last_seen), 3),
            "stuck": self.stuck,
            "queues": sorted(self.queues),
            "resources": self.offered or {"cpu": float(self.capacity)},
        }


@dataclass(slots=True)
class Effects:
    """What a command asks the I/O layer to do, in order: journal, then send."""

    records: list[Record] = field(default_factory=list)
    sends: dict[str, list[OrchestratorMessage]] = field(default_factory=dict)
    disconnect: list[str] = field(default_factory=list)
    """Workers whose connection must be closed (declared dead while still connected)."""
    finished: list[Task] = field(default_factory=list)
    """Tasks that reached a terminal state: wake whoever waits on them once durable."""

    def send(self, worker: str, message: OrchestratorMessage) -> None:
        self.sends.setdefault(worker, []).append(message)

    def extend(self, other: Effects) -> Effects:
        self.records.extend(other.records)
        for worker, messages in other.sends.items():
            self.sends.setdefault(worker, []).extend(messages)
        self.disconnect.extend(other.disconnect)
        self.finished.extend(other.finished)
        return self


def task_ids() -> Callable[[], TaskId]:
    """Unique task ids, cheaply: a random prefix per process plus a counter (a uuid4 per
    task cost 6% of the orchestrator's time under batched submission)."""
    ids = map(f"{secrets.token_hex(6)}%08x".__mod__, itertools.count(1))
    return cast(Callable[[], TaskId], ids.__next__)  # formatted in C, no Python frame per id


class Engine:
    def __init__(
        self,
        heartbeat: HeartbeatSettings,
        *,
        new_id: Callable[[], TaskId] | None = None,
        observer: EngineObserver = NULL_OBSERVER,
        retention: float = math.inf,
        retry: RetryPolicy | None = None,
        refuse_unknown_types: bool = False,
    ) -> None:
        self.heartbeat = heartbeat
        self.refuse_unknown_types = refuse_unknown_types
        """Refuse tasks of a type no worker announced yet (else they wait for one)."""
        self.gates = Gates()
        """Rate limits, concurrency caps and quotas at work (see :mod:`.limits`)."""
        self.retention = retention
        """Seconds a finished task is kept before :meth:`tick` expires it."""
        self.retry = retry or RetryPolicy()
        """The backoff of tasks that do not set their own ``retry``."""
        self.timers: list[tuple[float, int, TaskId]] = []
        """Scheduled tasks by when they may start (a heap; entries of tasks no longer
        scheduled at that time are dropped as they come up)."""
        self.earlier = False
        """A timer now comes first that the I/O layer may not be waiting for."""
        self.schedule_timers: list[tuple[float, str]] = []
        """The next tick of each schedule (a heap), rebuilt when schedules change."""
        self._schedules_changed = True
        self.observer = observer
        """Told about every live decision (metrics); see :mod:`mutirao.orchestrator.events`."""
        self.table = TaskTable()
        self.queue = PendingQueue()
        self.workers: dict[str, Worker] = {}
        self._new_id = new_id or task_ids()
        self._finished: list[Task] = []
        self.settled: list[Change] = []
        """Waiting tasks the last record released or cancelled (see TaskTable._settle)."""

    @property
    def epoch(self) -> int:
        """The epoch of the current leader, as recorded in the journal."""
        return self.table.epoch

    # -- state changes ---------------------------------------------------------------------

    def apply(self, record: Record) -> list[Change]:
        """Apply a record live or during recovery, keeping queue and workers in step."""
        table = self.table
        changes = table.apply(record)
        if not changes:
            self._changed_no_task(record["e"])
            return changes
        if self.gates.counting:
            self._count(record["e"], changes)
        # The most frequent kinds, by batch: what _track does for each of their changes.
        kind = record["e"]
        if kind == "submit":
            self._submitted(record, changes)
        elif kind == "assign":
            self._assigned(record, changes)
        elif kind == "finish":
            self._finished_attempts(changes)
        else:
            for change in changes:
                self._track(change)
        if table.settled:
            self._take_settled()
        # Amortised O(1) per entry: compacting costs the queue's size, and happens only once
        # it holds twice as many entries as there are pending tasks.
        if len(self.queue) > 2 * self.table.by_state[TaskState.PENDING] + _COMPACT_SLACK:
            self.queue.compact(self._is_current)
        if len(self.timers) > 2 * self.table.by_state[TaskState.SCHEDULED] + _COMPACT_SLACK:
            self._compact_timers()
        return changes

    def _assigned(self, record: Record, changes: list[Change]) -> None:
        worker = self._worker(record["w"])
        held = worker.attempts
        for change in changes:
            task = change.task
            ref = (task.id, task.attempts[-1].n)
            held.add(ref)
            if task.route is not None:
                _hold_heavy(worker, ref, task)
        worker.running = len(held)
        if self.gates.rated:
            for change in changes:
                self.gates.started(change.task.type, record["at"])

    def _changed_no_task(self, kind: str) -> None:
        if kind in ("schedule", "unschedule"):
            self._schedules_changed = self.earlier = True
        elif kind in LIMIT_KINDS:
            self.limits_changed()

    def _take_settled(self) -> None:
        """Waiting tasks the record released or cancelled: queued or finished here too."""
        self.settled, self.table.settled = self.table.settled, []
        if self.gates.counting:
            self._count("settle", self.settled)
        for change in self.settled:
            self._track(change)

    def _count(self, kind: str, changes: list[Change]) -> None:
        """Keep the counts of limits and quotas in step (only while some need them)."""
        moved = self.gates.moved
        for change in changes:
            task = change.task
            # A submission's changes name the tasks as new; waiting ones count as queued too.
            old = None if kind == "submit" else change.old_state
            moved(task.type, task.owner, old, TaskState.PENDING if old is None else task.state)

    def limits_changed(self) -> None:
        """Limits or quotas changed (or were restored): the gates follow them."""
        table = self.table
        if self.gates.configure(table.limits, table.quotas):
            self.gates.recount((t.type, t.owner, t.state) for t in table.tasks.values())
        self.earlier = True  # a lifted limit may let queued tasks go at once

    def _submitted(self, record: Record, changes: list[Change]) -> None:
        push = self.queue.push
        if "deps" not in record and "timing" not in record:
            for change in changes:
                task = change.task
                push(_lane(task), task)
            return
        # Tasks with dependencies wait (those released at once are in table.settled);
        # with a not_before, they are scheduled.
        for change in changes:
            if change.task.deps is None:
                self._track(change)

    def _finished_attempts(self, changes: list[Change]) -> None:
        """Attempts ended: free their workers' slots (counted once per worker, not per
        task), queue the tasks to retry, note the finished ones."""
        workers = self.workers
        touched: dict[str, Worker] = {}
        push, finished = self.queue.push, self._finished
        pending = TaskState.PENDING
        for change in changes:
            task = change.task
            attempts = task.attempts
            last = attempts[-1]
            holder = workers.get(last.worker)
            if holder is not None:
                holder.attempts.discard((task.id, last.n))
                if holder.heavy:
                    holder.give((task.id, last.n))
                touched[holder.id] = holder
            if task.state is pending:
                push(_lane(task), task, len(attempts), last.worker)
            elif task.state is TaskState.SCHEDULED:
                self._timer(task)
            else:
                finished.append(task)
        for holder in touched.values():
            holder.running = len(holder.attempts)

    def _track(self, change: Change) -> None:
        task = change.task
        if change.old_state in _ACTIVE and change.old_worker is not None:
            old = self.workers.get(change.old_worker)
            if old is not None:
                ref = (task.id, task.attempts[-1].n)
                old.attempts.discard(ref)
                old.give(ref)
                old.running = len(old.attempts)
        if task.state is TaskState.PENDING:
            avoid = task.attempts[-1].worker if task.attempts else None
            self.queue.push(_lane(task), task, len(task.attempts), avoid)
        elif task.state in _ACTIVE:
            attempt = task.attempts[-1]
            worker = self._worker(attempt.worker)
            ref = (task.id, attempt.n)
            worker.attempts.add(ref)
            if task.route is not None:
                _hold_heavy(worker, ref, task)
            worker.running = len(worker.attempts)
        elif task.state.terminal:
            self._finished.append(task)
        elif task.state is TaskState.SCHEDULED:
            self._timer(task)

    def _timer(self, task: Task) -> None:
        at = cast(Timing, task.timing).not_before or 0.0
        timers = self.timers
        if not timers or at < timers[0][0]:
            self.earlier = True
        heapq.heappush(timers, (at, task.seq, task.id))

    def _compact_timers(self) -> None:
        """Drop the timers of tasks no longer scheduled (a standby never fires any)."""
        tasks, scheduled = self.table.tasks, TaskState.SCHEDULED
        live = [
            (at, seq, task_id)
            for at, seq, task_id in self.timers
            if (task := tasks.get(task_id)) is not None
            and task.state is scheduled
            and cast(Timing, task.timing).not_before == at
        ]
        heapq.heapify(live)
        self.timers = live

    def next_due(self) -> float | None:
        """When the earliest scheduled task may start (perhaps one no longer scheduled)
        or the earliest schedule fires."""
        firsts = [heap[0][0] for heap in (self.timers, self.schedule_timers) if heap]
        if self.gates.wake is not None:
            firsts.append(self.gates.wake)
        return min(firsts) if firsts else None

    def load(self, snapshot: Snapshot) -> None:
        """Start from a checkpoint: its tables, then its tasks indexed (queue, workers,
        timers) and counted for the limits and quotas it holds."""
        self.table.restore(snapshot)
        self.limits_changed()
        for task in self.table.tasks.values():
            self._track(Change(task, TaskState.PENDING, None))

    def _worker(self, worker_id: str) -> Worker:
        """The worker entry, created disconnected if only recovered state knows it."""
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = Worker(
                id=worker_id, slots=0, types=frozenset(), eligible=False, state="suspect"
            )
            self.workers[worker_id] = worker
        return worker

    def _record(self, effects: Effects, record: Record) -> None:
        changes = self.apply(record)
        if changes:
            self.observer.on_changes(record["e"], changes)
            if self.settled:
                self.observer.on_changes("settle", self.settled)
                self.settled = []
        effects.records.append(record)
        if self._finished:
            effects.finished.extend(self._finished)
            self._finished.clear()

    def record(self, record: Record) -> Effects:
        """Apply one record made elsewhere (an accounts command) and journal it."""
        effects = Effects()
        self._record(effects, record)
        return effects

    def take_lead(self, epoch: int, node: str, now: float) -> Effects:
        """This node now leads with ``epoch``: record it, and give every worker held in the
        recovered or replicated state one heartbeat timeout to come back and report."""
        effects = Effects()
        self._record(effects, {"e": "epoch", "epoch": epoch, "node": node})
        self._schedules_changed = True
        self.recovered(now)
        self.observer.on_takeover(epoch)
        return effects

    def recovered(self, now: float) -> None:
        """After replay: give workers that held attempts one heartbeat timeout to come back."""
        self._finished.clear()
        for worker in self.workers.values():
            worker.last_seen = now

    # -- client commands -------------------------------------------------------------------

    def check(self, specs: list[TaskSpec], *, batch: bool) -> None:
        """Refuse a submission with resources that do not parse, or naming a task type no
        worker announced yet if the cluster is set to (else such tasks wait, pending, for a
        worker that runs them)."""
        last = None
        for i, spec in enumerate(specs):
            # A batch usually repeats one ``resources``: compared in C, parsed once.
            if spec.resources is not None and spec.resources != last:
                resources.demand(spec.resources, f"tasks[{i}].resources" if batch else "resources")
                last = spec.resources
        if not self.refuse_unknown_types:
            return
        known_types = self.table.known_types
        for i, spec in enumerate(specs):
            if spec.type not in known_types:
                known = ", ".join(sorted(known_types)) or "none yet"
                raise ValidationError(
                    f"unknown task type {spec.type!r}: no worker runs it (known: {known})",
                    field=f"tasks[{i}].type" if batch else "type",
                )

    def submit(self, specs: list[TaskSpec], owner: str, now: float) -> tuple[list[Task], Effects]:
        """Create tasks (all or none); a known idempotency key returns the existing task."""
        self.check(specs, batch=len(specs) > 1)
        # Rows only: the table creates each task once, when it applies the record.
        ids: list[TaskId] = []
        rows: list[list[Any]] = []
        row_of: list[int | None] = []
        """Each spec's row, None where its key named an existing task."""
        fresh: dict[str, TaskId] = {}
        extras = _Extras()
        known = self.table.keys_of(owner)
        for i, spec in enumerate(specs):
            key = spec.key
            if key is not None:
                earlier = known.get(key) or fresh.get(key)
                if earlier is not None:
                    ids.append(earlier)
                    row_of.append(None)
                    continue
            if (
                spec.retry is not None
                or spec.not_before is not None
                or spec.keep_result is not None
                or spec.queue != DEFAULT_QUEUE
                or spec.resources is not None
                or spec.trace is not None
            ):
                extras.add(len(rows), spec, now, f"tasks[{i}]." if len(specs) > 1 else "")
            row_of.append(len(rows))
            task_id = self._new_id()
            if key is not None:
                fresh[key] = task_id
            ids.append(task_id)
            rows.append(
                [
                    task_id,
                    spec.type,
                    spec.payload,
                    spec.priority,
                    spec.max_attempts,
                    spec.timeout,
                    key,
                    owner,
                    now,
                ]
            )
        refused = self.gates.refuses(owner, len(rows)) if self.gates.counting else None
        if refused is not None:
            raise TooManyRequestsError(refused, field="max_pending", delay=1.0)
        # Refs are checked even when every key named an existing task: the request is
        # refused or not whatever the state.
        deps = None
        if any(spec.after for spec in specs):
            deps = self._dependencies(specs, ids, row_of, rows, owner)
        effects = Effects()
        if rows:
            record: Record = {"e": "submit", "tasks": rows, **extras.record()}
            if deps:
                record["deps"] = deps
            self._record(effects, record)
        tasks = self.table.tasks
        return [tasks[task_id] for task_id in ids], effects.extend(self.dispatch(now))

    def _dependencies(
        self,
        specs: list[TaskSpec],
        ids: list[TaskId],
        row_of: list[int | None],
        rows: list[list[Any]],
        owner: str,
    ) -> list[list[Any]]:
        """The ``deps`` of a submit record (see :mod:`.tasks`), refs checked; ``#N`` refs
        of payload inputs become task ids in the rows."""
        tasks = self.table.tasks

        def owner_of(task_id: str) -> str | None:
            task = tasks.get(task_id)
            return None if task is None else task.owner

        new = [row is not None for row in row_of]
        deps: list[list[Any]] = []
        for i, after in dependencies.plan(specs, ids, new, owner, owner_of):
            row = rows[cast(int, row_of[i])]
            row[2], inputs = dependencies.rename_inputs(row[2], ids)
            deps.append([row_of[i], after, specs[i].on_failure, inputs])
        return deps

    def cancel(self, task: Task, now: float) -> Effects:
        effects = Effects()
        if task.state.terminal:
            return effects
        current = task.current
        self._record(effects, {"e": "cancel", "at": now, "tasks": [task.id]})
        if current is not None:
            effects.send(
                current.worker,
                {"op": "cancel", "epoch": self.epoch, "attempts": [(task.id, current.n)]},
            )
        return effects.extend(self.dispatch(now))

    def get(self, task_id: str) -> Task:
        task = self.table.get(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}", field="id")
        return task

    # -- worker commands -------------------------------------------------------------------

    def hello(self, msg: HelloMsg, session: int, now: float) -> Effects:
        """(Re-)register a worker and reconcile what it says it runs with what we think."""
        wid = msg["worker_id"]
        effects = Effects()
        previous = self.workers.get(wid)
        held = set(previous.attempts) if previous is not None else set()
        worker = Worker(
            id=wid,
            slots=msg["slots"],
            capacity=msg["slots"],
            types=frozenset(msg["types"]),
            queues=frozenset(msg.get("queues") or DEFAULT_QUEUES),
            offered=dict(msg.get("resources") or {}),
            window=max(0, msg.get("prefetch", 0)),
            heavy=dict(previous.heavy) if previous is not None else {},
            used=dict(previous.used) if previous is not None else {},
            url=msg["url"],
            attempts=held,
            running=len(held),
            last_seen=now,
            session=session,
            connected=True,
        )
        worker.hold(msg.get("stuck", 0))
        if msg.get("draining"):
            worker.state, worker.eligible = "draining", False
        self.workers[wid] = worker
        new_types = worker.types - self.table.known_types
        if new_types:
            self._record(effects, {"e": "types", "types": sorted(new_types)})
        if self.table.worker_urls.get(wid) != worker.url:
            self._record(effects, {"e": "worker", "id": wid, "url": worker.url})
        reported = {(t, n) for t, n in msg["running"]}
        lost = held - reported
        if lost:
            log.warning(
                "worker %s re-registered without %d attempt(s) it held; requeueing them",
                wid,
                len(lost),
                extra={"worker": wid},
            )
            self._lose(effects, lost, f"worker {wid} restarted and no longer runs it", now)
            self.observer.on_redistributed(len(lost), "worker_restarted")
        drop = self._adopt(effects, wid, reported - held, now)
        effects.send(
            wid,
            {
                "op": "welcome",
                "epoch": self.epoch,
                "heartbeat_interval": self.heartbeat.interval,
                "drop": drop,
            },
        )
        return effects.extend(self.dispatch(now))

    def _adopt(
        self, effects: Effects, wid: str, unknown: set[AttemptRef], now: float
    ) -> list[AttemptRef]:
        """Keep attempts a worker runs that we lost track of; returns those it must drop."""
        adopt: list[AttemptRef] = []
        drop: list[AttemptRef] = []
        for task_id, n in sorted(unknown):
            task = self.table.get(task_id)
            if task is not None and task.state is TaskState.PENDING and n == len(task.attempts) + 1:
                adopt.append((task_id, n))
            else:
                drop.append((task_id, n))
        if adopt:
            self._record(effects, {"e": "assign", "w": wid, "at": now, "items": adopt})
        return drop

    def heartbeat_from(self, wid: str, session: int, now: float, stuck: int = 0) -> Effects:
        """A sign of life, saying how many slots stuck threads hold; a slot they freed is
        filled at once."""
        worker = self.workers.get(wid)
        if worker is None or worker.session != session or not worker.connected:
            return Effects()
        worker.last_seen = now
        self.observer.on_heartbeat(wid)
        if worker.state == "suspect":
            worker.state, worker.eligible = "alive", True
        return self.dispatch(now) if worker.hold(stuck) else Effects()

    def drain(self, wid: str, session: int) -> None:
        """The worker is stopping: it gets no new attempts; those it holds it finishes, or
        hands back (:meth:`release`)."""
        worker = self.workers.get(wid)
        if worker is None or worker.session != session or worker.state == "dead":
            return
        worker.state, worker.eligible = "draining", False
        log.info(
            "worker %s is draining: no new tasks for it; %d attempt(s) to finish",
            wid,
            len(worker.attempts),
            extra={"worker": wid},
        )

    def release(self, wid: str, session: int, attempts: list[AttemptRef], now: float) -> Effects:
        """A draining worker hands back attempts it did not finish: they run again
        elsewhere at once, without counting as one of their tasks' attempts."""
        effects = Effects()
        worker = self.workers.get(wid)
        if worker is None or worker.session != session:
            return effects
        mine = sorted((t, n) for t, n in attempts if (t, n) in worker.attempts)
        if mine:
            reason = f"handed back by worker {wid}, which is stopping"
            items = [[t, n, Outcome.RELEASED, None, reason, None, now] for t, n in mine]
            self._record(effects, {"e": "finish", "items": items})
            self.observer.on_redistributed(len(mine), "worker_drained")
        effects.send(wid, {"op": "ack", "attempts": [list(ref) for ref in attempts]})  # type: ignore[misc]
        return effects.extend(self.dispatch(now))

    def started(self, wid: str, session: int, attempts: list[AttemptRef], now: float) -> Effects:
        effects = Effects()
        worker = self.workers.get(wid)
        if worker is None or worker.session != session:
            return effects
        worker.last_seen = now
        mine = [(t, n) for t, n in attempts if (t, n) in worker.attempts]
        if mine:
            self._record(effects, {"e": "start", "at": now, "items": mine})
        return effects

    def results(
        self,
        wid: str,
        session: int,
        items: list[ResultItem],
        now: float,
        stuck: int = 0,
        *,
        asked: dict[str, float] | None = None,
    ) -> Effects:
        """Record results of current attempts; stale ones are ignored (fencing by attempt).
        ``stuck``: slots still held by threads of attempts that ended (timed out);
        ``asked``: retry delays handlers asked for (``mutirao.Retry``), by task."""
        asked = asked or {}
        effects = Effects()
        worker = self.workers.get(wid)
        if worker is None or worker.session != session:
            return effects
        worker.last_seen = now
        worker.hold(stuck)
        finish: list[list[Any]] = []
        acked: list[AttemptRef] = []
        later: dict[str, float] = {}
        for task_id, attempt, ok, value, error, started, ended in items:
            ref = (task_id, attempt)
            acked.append(ref)
            if ref not in worker.attempts:
                log.warning(
                    "ignoring result of task %s attempt %d from %s: that attempt is no "
                    "longer current (reassigned, cancelled or already recorded)",
                    task_id,
                    attempt,
                    wid,
                    extra={"task": task_id, "attempt": attempt, "worker": wid},
                )
                continue
            if ok:
                outcome = Outcome.SUCCEEDED
            else:
                outcome = Outcome.FAILED
                self._backoff(task_id, attempt, now, later, asked.get(task_id))
            finish.append([task_id, attempt, outcome, value, error, started, ended])
        if finish:
            record: Record = {"e": "finish", "items": finish}
            if later:
                record["later"] = later
            self._record(effects, record)
        effects.send(wid, {"op": "ack", "attempts": acked})
        return effects.extend(self.dispatch(now))

    def _backoff(
        self, task_id: str, attempt: int, now: float, later: dict[str, float], asked: float | None
    ) -> None:
        """When a task whose attempt failed may run again: in ``later`` unless at once."""
        task = self.table.tasks[task_id]
        if tries(task) >= task.max_attempts:
            return
        if asked is not None:
            delay = asked
        else:
            own = task.timing.retry if task.timing is not None else None
            policy = self.retry if own is None else RetryPolicy(*own)
            spread = random.uniform(-1.0, 1.0) if policy.jitter else 0.0
            delay = policy.after(attempt, spread)
        if delay > 0:
            later[task_id] = now + delay

    def worker_lost(self, wid: str, session: int, reason: str, now: float) -> Effects:
        """The worker's connection dropped: its attempts are lost at once."""
        effects = Effects()
        worker = self.workers.get(wid)
        if worker is None or worker.session != session or not worker.connected:
            return effects
        self._declare_dead(effects, worker, reason, now, "disconnected")
        return effects.extend(self.dispatch(now))

    def _declare_dead(
        self, effects: Effects, worker: Worker, reason: str, now: float, cause: DeathCause
    ) -> None:
        worker.connected = False
        worker.eligible = False
        worker.state = "dead"
        self.observer.on_worker_dead(worker.id, cause)
        if worker.attempts:
            log.warning(
                "worker %s is dead (%s); redistributing its %d task(s)",
                worker.id,
                reason,
                len(worker.attempts),
                extra={"worker": worker.id},
            )
            self.observer.on_redistributed(len(worker.attempts), "worker_dead")
            self._lose(effects, set(worker.attempts), f"worker {worker.id} died: {reason}", now)
        else:
            log.warning("worker %s is dead (%s)", worker.id, reason, extra={"worker": worker.id})

    def _lose(self, effects: Effects, refs: Iterable[AttemptRef], reason: str, now: float) -> None:
        items = [[t, n, Outcome.LOST, None, reason, None, now] for t, n in sorted(refs)]
        self._record(effects, {"e": "finish", "items": items})

    def tick(self, now: float) -> Effects:
        """Heartbeat bookkeeping: mark silent workers suspect, then dead."""
        effects = Effects()
        suspect_after = 2 * self.heartbeat.interval
        for worker in self.workers.values():
            if worker.state == "dead":
                continue
            age = now - worker.last_seen
            if age > self.heartbeat.timeout:
                if worker.connected:
                    effects.disconnect.append(worker.id)
                reason = f"no heartbeat for {age:.1f}s"
                self._declare_dead(effects, worker, reason, now, "heartbeat_timeout")
            elif age > suspect_after and worker.state == "alive":
                worker.state, worker.eligible = "suspect", False
                log.info("worker %s is suspect: silent for %.1fs", worker.id, age)
        if self.retention < math.inf or self.table.kept:
            expired = self.table.expirable(now - self.retention, EXPIRE_BATCH, now)
            if expired:
                self._record(effects, {"e": "expire", "tasks": expired})
        # Always dispatch (fire does): a suspect worker whose heartbeat made it eligible
        # again has free slots, and nothing else would hand it the tasks queued meanwhile.
        effects.extend(self.fire(now))
        self._rebalance(effects, now)
        return effects

    def _rebalance(self, effects: Effects, now: float) -> None:
        """Ask back prefetched attempts that wait unstarted (behind long tasks) while
        another worker that runs them has a slot free: released, they go to it."""
        free = {
            w.id: n
            for w in self.workers.values()
            if w.eligible and w.room is None and (n := w.capacity - w.stuck - len(w.attempts)) > 0
        }
        if not free:
            return
        idle = [self.workers[wid] for wid in free]
        donors = [w for w in self.workers.values() if w.connected and len(w.attempts) > w.slots]
        for donor in donors:
            donor.revoking &= donor.attempts
        # Attempts asked back already will fill those slots once released.
        budget = sum(free.values()) - sum(len(donor.revoking) for donor in donors)
        for donor in donors:
            revoke: list[AttemptRef] = []
            # Newest first (a leader's ids count up): they would wait the longest there.
            for ref in sorted(donor.attempts - donor.revoking, reverse=True):
                if budget <= len(revoke):
                    break
                taker = self._taker(ref, donor, idle, free, now)
                if taker is not None:
                    free[taker.id] -= 1
                    revoke.append(ref)
            budget -= len(revoke)
            if revoke:
                donor.revoking.update(revoke)
                log.info(
                    "asking worker %s back for %d prefetched attempt(s) not started in %.1f s: "
                    "other workers are idle",
                    donor.id,
                    len(revoke),
                    STEAL_AFTER,
                    extra={"worker": donor.id},
                )
                effects.send(donor.id, {"op": "revoke", "epoch": self.epoch, "attempts": revoke})

    def _taker(
        self, ref: AttemptRef, donor: Worker, idle: list[Worker], free: dict[str, int], now: float
    ) -> Worker | None:
        """An idle worker with a slot left for ``ref``, if it waits unstarted on ``donor``
        since ``STEAL_AFTER`` and only for a slot (a plain task)."""
        task = self.table.tasks.get(ref[0])
        if task is None or task.state is not TaskState.ASSIGNED:
            return None
        if now - task.attempts[-1].assigned_at < STEAL_AFTER:
            return None
        _, task_type, queue, demand = _lane(task)
        if demand != resources.DEFAULT_DEMAND:
            return None  # never prefetched: it waits for room that is not free yet
        return next(
            (w for w in idle if free[w.id] > 0 and w is not donor
             and task_type in w.types and queue in w.queues),
            None,
        )  # fmt: skip

    def fire(self, now: float) -> Effects:
        """Scheduled tasks and schedules whose time came, then dispatch: what a timer
        calls for between two ticks (without their heartbeat and expiry bookkeeping)."""
        effects = Effects()
        due = self._due(now)
        if due:
            self._record(effects, {"e": "due", "tasks": due})
        self._fire_schedules(effects, now)
        return effects.extend(self.dispatch(now))

    def _fire_schedules(self, effects: Effects, now: float) -> None:
        """Fire every schedule whose tick came (see :mod:`.schedules`): their tasks are
        submitted together, one batch per owner, then each schedule's tick is recorded."""
        heap, found = self.schedule_timers, self.table.schedules
        if self._schedules_changed:
            self._schedules_changed = False
            heap[:] = [
                (s.next_tick(s.due_from()), name) for name, s in found.items() if not s.paused
            ]
            heapq.heapify(heap)
        passes: list[tuple[schedules.Schedule, float, int, list[TaskSpec]]] = []
        while heap and heap[0][0] <= now:
            _, name = heapq.heappop(heap)
            schedule = found.get(name)
            if schedule is None or schedule.paused:
                continue
            ticks, newest, missed = schedules.fires(schedule, now)
            specs = [s for s in (self._fire(effects, schedule, t, now) for t in ticks) if s]
            if newest is not None:
                passes.append((schedule, newest, missed + len(ticks) - len(specs), specs))
            heapq.heappush(heap, (schedule.next_tick(newest or schedule.due_from()), name))
        by_owner = grouped([p[0].owner for p in passes], [p[3] for p in passes])
        ids: dict[str, str] = {}
        for owner, spec_lists in by_owner.items():
            batch = [spec for specs in spec_lists for spec in specs]
            if batch:
                tasks, more = self.submit(batch, owner, now)
                effects.extend(more)
                ids.update((cast(str, t.key), t.id) for t in tasks)
        for schedule, newest, missed, specs in passes:
            task_id = ids[cast(str, specs[-1].key)] if specs else None
            record: Record = {"e": "tick", "name": schedule.name, "tick": newest}
            record |= {"task": task_id, "fired": len(specs), "missed": missed}
            self._record(effects, record)
            self.observer.on_schedule(schedule.name, len(specs), missed, now - newest)

    def _fire(
        self, effects: Effects, schedule: schedules.Schedule, tick: float, now: float
    ) -> TaskSpec | None:
        """The task of one tick; None if ``overlap`` skips it or its type is unknown now (a
        worker that ran it left: counted as a miss)."""
        previous = self.table.tasks.get(schedule.last_task or "")
        if previous is not None and not previous.state.terminal:
            if schedule.overlap == "skip":
                return None
            if schedule.overlap == "replace":
                effects.extend(self.cancel(previous, now))
        if self.refuse_unknown_types and schedule.task["type"] not in self.table.known_types:
            log.warning(
                "schedule %s could not fire its tick %s: no worker runs task type %r",
                schedule.name,
                schedules.tick_key(schedule.name, tick),
                schedule.task["type"],
            )
            return None
        key = schedules.tick_key(schedule.name, tick)
        return msgspec.convert({**schedule.task, "key": key}, TaskSpec)

    def _due(self, now: float) -> list[TaskId]:
        """Scheduled tasks whose time came (timers of tasks no longer scheduled then go)."""
        timers, tasks, due = self.timers, self.table.tasks, []
        while timers and timers[0][0] <= now:
            at, _, task_id = heapq.heappop(timers)
            task = tasks.get(task_id)
            if (
                task is not None
                and task.state is TaskState.SCHEDULED
                and cast(Timing, task.timing).not_before == at
            ):
                due.append(task_id)
        return due

    def _is_current(self, task_id: str, attempts: int) -> bool:
        # A cancelled task may stay queued after the task itself expired.
        task = self.table.tasks.get(task_id)
        return (
            task is not None and task.state is TaskState.PENDING and len(task.attempts) == attempts
        )

    def dispatch(self, now: float) -> Effects:
        """Assign queued tasks to free slots, least load first."""
        effects = Effects()
        gates = self.gates
        gates.begin()
        if not len(self.queue):
            return effects
        candidates = [w for w in self.workers.values() if w.free > 0]
        if not candidates:
            return effects
        for worker in candidates:
            worker.prepare()
        tasks = self.table.tasks
        gate = gates if gates.limits or gates.quotas else None
        pairs = self.queue.drain(candidates, self._is_current, gate, now)
        if gate is not None:
            gates.chosen()
            if gates.wake is not None:
                self.earlier = True
        chosen = [tasks[task_id] for task_id, _ in pairs]
        by_worker: dict[str, list[AssignItem]] = grouped(
            [worker.id for _, worker in pairs],
            [
                (t.id, len(t.attempts) + 1, t.type, t.payload, t.timeout)
                if t.trace is None
                else (t.id, len(t.attempts) + 1, t.type, t.payload, t.timeout, t.trace)
                for t in chosen
            ],
        )
        for wid, items in by_worker.items():
            refs = [item[:2] for item in items]
            self._record(effects, {"e": "assign", "w": wid, "at": now, "items": refs})
            effects.send(wid, {"op": "assign", "epoch": self.epoch, "items": items})
        return effects

    # -- views -----------------------------------------------------------------------------

    def worker_views(self, now: float) -> list[WorkerView]:
        return [w.view(now) for w in sorted(self.workers.values(), key=lambda w: w.id)]

    def view(self, task: Task, now: float) -> TaskView:
        """A task as the API shows it, with why it is not running yet if pending."""
        view = task.view()
        if task.state is TaskState.PENDING:
            view["pending_reason"] = self.pending_reason(task, now)
        return view

    def pending_reason(self, task: Task, now: float) -> str | None:
        """Why a pending task is not running: what keeps it from every live worker, else a
        limit or quota; None if only its turn has not come (every fitting slot is taken)."""
        _, task_type, queue, demand = _lane(task)
        live = [w for w in self.workers.values() if w.state != "dead"]
        runs = [w for w in live if task_type in w.types]
        if not runs:
            return f"no live worker runs task type {task_type!r}"
        serves = [w for w in runs if queue in w.queues]
        if not serves:
            return f"no live worker that runs {task_type!r} serves queue {queue!r}"
        if not any(resources.fits(w.offered or {"cpu": float(w.capacity)}, demand) for w in serves):
            return (
                f"no live worker that runs {task_type!r} on queue {queue!r} has room for "
                f"{resources.describe(demand)}"
            )
        why = self.gates.why(task_type, task.owner, now)
        if why is None and not any(w.eligible for w in serves):
            return f"the workers that run {task_type!r} are not taking tasks (suspect)"
        return why

    def backlog(self, now: float) -> Backlog:
        """How long the oldest pending task has waited, pending and running tasks by queue:
        a pass over the queue and the attempts in flight, not over every task."""
        tasks = self.table.tasks
        first: float | None = None
        by_queue: dict[str, int] = {}
        for lane in self.queue.lanes():
            for task_id, attempts in lane.queued():
                if self._is_current(task_id, attempts):
                    by_queue[lane.queue] = by_queue.get(lane.queue, 0) + 1
                    created = tasks[task_id].created_at
                    first = created if first is None else min(first, created)
        running: dict[str, int] = {}
        for worker in self.workers.values():
            # Prefetched attempts not started yet wait as pending tasks do (for the autoscaler).
            windowed = len(worker.attempts) > worker.slots
            for task_id, _ in worker.attempts:
                task = tasks.get(task_id)
                queue = DEFAULT_QUEUE if task is None or task.route is None else task.route.queue
                running[queue] = running.get(queue, 0) + 1
                if windowed and task is not None and task.state is TaskState.ASSIGNED:
                    created = task.created_at
                    first = created if first is None else min(first, created)
        return Backlog(0.0 if first is None else max(0.0, now - first), by_queue, running)

    def pending_by_type(self) -> dict[str, int]:
        depth: dict[str, int] = {}
        for (task_type, _), n in self.table.pending.items():
            depth[task_type] = depth.get(task_type, 0) + n
        return depth

    def counts(self) -> dict[str, int]:
        return {str(k): v for k, v in self.table.by_state.items()}


@dataclass(frozen=True, slots=True)
class Backlog:
    oldest: float
    """Seconds the oldest pending task has waited (0: none pending)."""
    by_queue: dict[str, int]
    running_by_queue: dict[str, int]
    """Tasks assigned or running, by queue."""


def _lane(task: Task) -> LaneKey:
    route = task.route
    if route is None:
        return (task.owner, task.type, DEFAULT_QUEUE, resources.DEFAULT_DEMAND)
    return (task.owner, task.type, route.queue, route.demand)


def _hold_heavy(worker: Worker, ref: AttemptRef, task: Task) -> None:
    """Note what an attempt of a routed task takes on ``worker``, if other than one cpu."""
    route = cast(Route, task.route)
    if not route.plain:
        worker.take(ref, route.demand)


class _Extras:
    """The ``timing`` and ``route`` of a submit record (see :mod:`.tasks`): the rows of
    one route are listed together (a batch has a few routes, not one per task)."""

    def __init__(self) -> None:
        self.timing: list[list[Any]] = []
        self.trace: list[list[Any]] = []
        self.routes: dict[tuple[str, resources.Demand], list[int]] = {}
        self._last: tuple[object, resources.Demand] = (None, resources.DEFAULT_DEMAND)
        """The last ``resources`` read, and its demand (a batch usually repeats one)."""

    def add(self, row: int, spec: TaskSpec, now: float, where: str) -> None:
        """``spec``'s entries; a ``not_before`` already past is left out, so the task is
        pending at once."""
        retry = spec.retry
        if retry is not None or spec.not_before is not None or spec.keep_result is not None:
            policy = (
                None
                if retry is None
                else [retry.delay, retry.backoff, retry.max_delay, retry.jitter]
            )
            at = spec.not_before
            not_before = at if at is not None and at > now else None
            self.timing.append([row, policy, not_before, spec.keep_result])
        if spec.queue != DEFAULT_QUEUE or spec.resources is not None:
            wanted, demand = self._last
            if spec.resources != wanted:
                demand = resources.demand(spec.resources, f"{where}resources")
                self._last = (spec.resources, demand)
            self.routes.setdefault((spec.queue, demand), []).append(row)
        if spec.trace is not None:
            self.trace.append([row, spec.trace])

    def record(self) -> Record:
        extras: Record = {}
        if self.timing:
            extras["timing"] = self.timing
        if self.trace:
            extras["trace"] = self.trace
        if self.routes:
            extras["route"] = [
                [queue, [list(pair) for pair in demand], rows]
                for (queue, demand), rows in self.routes.items()
            ]
        return extras
