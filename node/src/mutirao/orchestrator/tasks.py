"""The task table as an event-sourced state machine (sans-IO).

Every change to tasks is a *record* (a JSON-able dict) applied by :meth:`TaskTable.apply`.
The live orchestrator applies a record and appends it to the journal; recovery applies the
same records again, so replay and live operation cannot disagree.

Records (``e`` is the kind; batches keep the journal cheap under load):

- ``submit``: ``tasks`` = list of task rows, ``[id, type, payload, priority, max_attempts,
  timeout, key, owner, created_at]``; ``deps`` (only when some have dependencies) =
  ``[[row index, [task ids], on_failure, has inputs], ...]``: those tasks wait;
  ``timing`` (only when some have it) = ``[[row index, retry policy or null, not_before or
  null, keep_result or null], ...]``: a task with a ``not_before`` is ``scheduled``;
  ``route`` (only when some have it) = ``[[queue, [[resource, amount], ...], [row index,
  ...]], ...]``: where those tasks may run (see :mod:`mutirao.orchestrator.scheduler`);
  ``trace`` (only when some have it) = ``[[row index, traceparent], ...]``
- ``assign``: worker ``w`` took ``items`` = ``[[task, attempt], ...]`` at ``at``
- ``start``: ``items`` began running at ``at``
- ``finish``: ``items`` = ``[[task, attempt, outcome, value, error, started, ended], ...]``;
  a failed or lost attempt requeues the task while attempts remain: at once, or, for a
  task in ``later`` (``{task: unix time}``, a retry's backoff), ``scheduled`` until then
- ``due``: scheduled ``tasks`` whose time came are pending
- ``cancel``: ``tasks`` cancelled at ``at``
- ``types``: task types some worker has announced
- ``worker``: worker ``id`` serves at ``url`` (so a new leader can call every worker back)
- ``epoch``: ``node`` took the lead with ``epoch`` (fencing; every takeover adds one)
- ``expire``: finished ``tasks`` past the retention period are forgotten
- ``schedule`` (``s``: the whole schedule, made or paused or resumed), ``unschedule``
  (``name``), ``tick`` (``name`` fired ``task``, or none, for its newest ``tick``; counts
  ``fired`` and ``missed``): see :mod:`mutirao.orchestrator.schedules`
- ``limit`` (``l``: a type's rate limit and concurrency cap), ``unlimit`` (``type``),
  ``quota`` (``q``: a user's weight and quotas), ``unquota`` (``user``): see
  :mod:`mutirao.orchestrator.limits`
- ``user``, ``unuser``, ``revoke``, ``secrets``: users, token revocations and the
  cluster's secrets, applied to :attr:`TaskTable.accounts`
  (see :mod:`mutirao.orchestrator.accounts`)

A task with dependencies is ``waiting`` until each of them settled. Settling needs no record
of its own: the record that ends a dependency (``finish``, ``cancel``) releases its
dependents (to ``pending``, their payload's inputs replaced by results) or cancels them,
transitively, naming the dependency, in every replica alike (see :meth:`TaskTable._settle`).

Rows and items are lists rather than objects: the journal is ~40% smaller and they unpack
in C. Journals written before hold objects (``{"id": ...}``, ``{"t", "n", "o", "v", "err",
"s", "e"}``), which still apply.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from sys import intern
from typing import Any, TypeVar, cast

import msgspec

from mutirao import dependencies
from mutirao.orchestrator.accounts import KINDS as ACCOUNT_KINDS
from mutirao.orchestrator.accounts import Accounts, AccountsState
from mutirao.orchestrator.limits import Limit, Quota
from mutirao.orchestrator.schedules import Schedule
from mutirao.protocol import (
    AttemptView,
    Outcome,
    TaskBrief,
    TaskId,
    TaskState,
    TaskView,
)
from mutirao.resources import DEFAULT_DEMAND, Demand

Record = dict[str, Any]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one_key(keys: list[K]) -> bool:
    """Whether every key is the first one: the usual batch (one type, one worker), told by
    ``list.count`` in C rather than by a dict update per key in Python."""
    return bool(keys) and keys.count(keys[0]) == len(keys)


def tally(keys: Iterable[K]) -> dict[K, int]:
    """How many times each key occurs: ``collections.Counter(keys)`` without its fixed cost
    (an ABC check per call), which dominates for the one-task records of single requests."""
    if type(keys) is not list:
        keys = list(keys)
    if _one_key(keys):
        return {keys[0]: len(keys)}
    counts: dict[K, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts


def grouped(keys: list[K], values: list[V]) -> dict[K, list[V]]:
    """``values`` by their ``keys`` (paired in order), keys in first-seen order: what the
    hot path groups by worker or task type, usually one group for a whole batch. Callers
    pass lists built by comprehensions, cheaper than a generator of pairs."""
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    if _one_key(keys):
        return {keys[0]: list(values)}
    groups: dict[K, list[V]] = {}
    for key, value in zip(keys, values, strict=True):
        group = groups.get(key)
        if group is None:
            groups[key] = [value]
        else:
            group.append(value)
    return groups


_ACTIVE = (TaskState.ASSIGNED, TaskState.RUNNING)
SCHEDULE_KINDS = frozenset({"schedule", "unschedule", "tick"})
LIMIT_KINDS = frozenset({"limit", "unlimit", "quota", "unquota"})
_OUTCOMES: dict[str, Outcome] = {str(o): o for o in Outcome}
"""Outcome by value: a dict lookup, cheaper than ``Outcome(value)`` per result."""


class Attempt(msgspec.Struct, gc=False):
    n: int
    worker: str
    assigned_at: float
    started_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    error: str | None = None

    def view(self) -> AttemptView:
        return {
            "attempt": self.n,
            "worker": self.worker,
            "assigned_at": self.assigned_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "error": self.error,
        }


class Deps(msgspec.Struct, gc=False, omit_defaults=True, array_like=True):
    """What a task waits for: the ids of its dependencies, and how many are unsettled."""

    after: list[str]
    run: bool = False
    """``on_failure: run``: a dependency that did not succeed settles this task too."""
    inputs: bool = False
    """The payload holds ``{"$result": ...}`` inputs, replaced when the task is released."""
    left: int = 0


class Timing(msgspec.Struct, gc=False, omit_defaults=True, array_like=True):
    """A task's own times: retry backoff, start time, how long it is kept once finished."""

    retry: list[float] | None = None
    """``[delay, backoff, max_delay, jitter]`` (a RetryPolicy), None: the cluster's."""
    not_before: float | None = None
    """While ``scheduled``: when the task may start (its own, or a retry's backoff)."""
    keep: float | None = None
    """Seconds it is kept once finished, instead of the cluster's retention."""


class Route(msgspec.Struct, gc=False, omit_defaults=True, array_like=True, frozen=True):
    """Where a task may run, when not anywhere its type runs: a queue, resources (one
    instance shared by the tasks of a submission that have the same)."""

    queue: str = "default"
    demand: Demand = DEFAULT_DEMAND

    @property
    def plain(self) -> bool:
        """It asks for one cpu, as a task without resources does."""
        return self.demand == DEFAULT_DEMAND


_NO_KEYS: dict[str, TaskId] = {}
"""The keys of an owner who has none (never written to)."""


class Task(msgspec.Struct, gc=False, omit_defaults=True):
    """One task with its attempts.

    Tasks, attempts and changes are msgspec Structs rather than dataclasses: created 2-3x
    faster (one of each per task and attempt on the hot path), a little smaller, and with
    ``gc=False`` invisible to the cyclic garbage collector, which otherwise walks every task
    the table holds (they never form cycles: a task holds its attempts, nothing holds back).
    """

    id: TaskId
    type: str
    payload: Any
    priority: int
    max_attempts: int
    timeout: float
    key: str | None
    owner: str
    created_at: float
    seq: int = 0
    state: TaskState = TaskState.PENDING
    attempts: Sequence[Attempt] = ()
    """A list once assigned; the shared empty tuple until then (a list per pending task
    would cost 56 bytes each, a tenth of what a pending task costs)."""
    result: Any = None
    error: str | None = None
    finished_at: float | None = None
    deps: Deps | None = None
    timing: Timing | None = None
    route: Route | None = None
    trace: str | None = None
    """The submitter's W3C traceparent (see :mod:`mutirao.tracing`)."""

    @property
    def current(self) -> Attempt | None:
        """The attempt in flight, if the task is assigned or running."""
        return self.attempts[-1] if self.state in _ACTIVE else None

    def view(self) -> TaskView:
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "owner": self.owner,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "key": self.key,
            "payload": self.payload,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "attempts": [a.view() for a in self.attempts],
            "result": self.result,
            "error": self.error,
            "after": [] if self.deps is None else self.deps.after,
            "on_failure": "run" if self.deps is not None and self.deps.run else "cancel",
            "not_before": None if self.timing is None else self.timing.not_before,
            "queue": "default" if self.route is None else self.route.queue,
            "resources": dict(DEFAULT_DEMAND if self.route is None else self.route.demand),
            "pending_reason": None,
        }

    def brief(self) -> TaskBrief:
        return {"id": self.id, "state": self.state, "result": self.result, "error": self.error}


class Change(msgspec.Struct, gc=False):
    """A task whose state a record changed, with what it was before."""

    task: Task
    old_state: TaskState
    old_worker: str | None


class TaskTable:
    """All tasks, their idempotency keys and the task types ever announced; and beside
    them the rest of the cluster's state (users, secrets), so one journal holds it all."""

    def __init__(self) -> None:
        self.accounts = Accounts()
        self.tasks: dict[str, Task] = {}
        self.keys: dict[str, dict[str, TaskId]] = {}
        """Idempotency keys, by owner (no (owner, key) tuple per task: 56 bytes each)."""
        self.known_types: set[str] = set()
        self.worker_urls: dict[str, str] = {}
        self.epoch = 0
        self.leader = ""
        """The node that took the lead with ``epoch``."""
        self._seq = 0
        self.by_state: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        """How many tasks are in each state, kept in step by every change (read by metrics
        and the cluster view without a pass over every task)."""
        self.pending: dict[tuple[str, int], int] = {}
        """Pending tasks by (type, priority), kept in step likewise."""
        self.finished: deque[Task] = deque()
        """Finished tasks in the order they finished, oldest first (expiry takes them from
        the left); an entry whose task was expired already is skipped and dropped."""
        self.children: dict[str, list[str]] = {}
        """Waiting tasks by the unsettled dependency they wait for."""
        self.held: dict[str, int] = {}
        """How many waiting tasks name each dependency: those are not expired, as their
        results become inputs when the last dependency settles."""
        self._parked: set[str] = set()
        """Held finished tasks taken off :attr:`finished`; put back when no longer held."""
        self.settled: list[Change] = []
        """Waiting tasks released or cancelled by the last record (the engine takes them)."""
        self.schedules: dict[str, Schedule] = {}
        self.limits: dict[str, Limit] = {}
        """Rate limits and concurrency caps by task type."""
        self.quotas: dict[str, Quota] = {}
        """Weights and quotas by user (``*``: anyone without their own)."""
        self.kept: list[tuple[float, int, TaskId]] = []
        """Finished tasks with a ``keep_result`` of their own, by when they expire (a heap)."""

    @property
    def seq(self) -> int:
        """Submission sequence number of the newest task (tasks are numbered from 1)."""
        return self._seq

    def _moved(self, task: Task, old: TaskState | None) -> None:
        """Count ``task``, now in its new state, out of ``old`` (None: a new task)."""
        if old is not None:
            self.by_state[old] -= 1
            if old is TaskState.PENDING:
                key = (task.type, task.priority)
                left = self.pending[key] - 1
                if left:
                    self.pending[key] = left
                else:
                    del self.pending[key]
        self.by_state[task.state] += 1
        if task.state is TaskState.PENDING:
            key = (task.type, task.priority)
            self.pending[key] = self.pending.get(key, 0) + 1

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def keys_of(self, owner: str) -> Mapping[str, TaskId]:
        """The ids of ``owner``'s tasks by idempotency key (read only)."""
        return self.keys.get(owner, _NO_KEYS)

    def apply(self, record: Record) -> list[Change]:
        """Apply one record; returns the tasks whose state changed."""
        kind = record["e"]
        if kind == "submit":
            changes = self._submit(
                record["tasks"], record.get("deps"), record.get("timing"), record.get("route")
            )
            for row, traceparent in record.get("trace", ()):
                changes[row].task.trace = traceparent
            return changes
        if kind == "assign":
            return self._assign(record["w"], record["items"], record["at"])
        if kind == "start":
            self._start(record["items"], record["at"])
            return []
        if kind == "finish":
            return self._settle_ended(self._finish(record["items"], record.get("later")))
        if kind == "due":
            return self._due(record["tasks"])
        if kind == "cancel":
            return self._cancel(record["tasks"], record["at"])
        self._apply_other(kind, record)
        return []

    def _apply_other(self, kind: str, record: Record) -> None:
        """The records that change no task's state."""
        if kind == "types":
            self.known_types.update(record["types"])
        elif kind == "worker":
            self.worker_urls[record["id"]] = record["url"]
        elif kind == "expire":
            self._expire(record["tasks"])
        elif kind in SCHEDULE_KINDS:
            self._schedule(kind, record)
        elif kind in LIMIT_KINDS:
            self._limit(kind, record)
        elif kind == "epoch":
            if record["epoch"] >= self.epoch:
                self.epoch, self.leader = record["epoch"], record["node"]
        elif kind in ACCOUNT_KINDS:
            self.accounts.apply(record)
        else:
            raise ValueError(f"unknown journal record kind {kind!r}")

    def _schedule(self, kind: str, record: Record) -> None:
        if kind == "schedule":
            schedule = msgspec.convert(record["s"], Schedule)
            self.schedules[schedule.name] = schedule
        elif kind == "unschedule":
            self.schedules.pop(record["name"], None)
        else:
            found = self.schedules.get(record["name"])
            if found is not None:
                found.last_tick = record["tick"]
                found.last_task = record.get("task") or found.last_task
                found.fires += record.get("fired", 0)
                found.misses += record.get("missed", 0)

    def _limit(self, kind: str, record: Record) -> None:
        if kind == "limit":
            found = msgspec.convert(record["l"], Limit)
            self.limits[found.type] = found
        elif kind == "unlimit":
            self.limits.pop(record["type"], None)
        elif kind == "quota":
            quota = msgspec.convert(record["q"], Quota)
            self.quotas[quota.user] = quota
        else:
            self.quotas.pop(record["user"], None)

    def _submit(
        self,
        rows: list[Any],
        deps: list[list[Any]] | None,
        timing: list[list[Any]] | None,
        route: list[list[Any]] | None,
    ) -> list[Change]:
        tasks, keys, changes = self.tasks, self.keys, []
        pending = TaskState.PENDING
        for row in rows:
            self._seq += 1
            if type(row) is list:
                # One string per type and owner rather than one per task as decoded (56
                # bytes each; a pending task costs ~450).
                row[1], row[7] = intern(row[1]), intern(row[7])
                task = Task(*row)
                task.seq = self._seq
            else:
                task = Task(
                    row["id"],
                    row["type"],
                    row["payload"],
                    row["priority"],
                    row["max_attempts"],
                    row["timeout"],
                    row["key"],
                    row["owner"],
                    row["created_at"],
                    self._seq,
                )
            tasks[task.id] = task
            if task.key is not None:
                # No empty dict made per task by setdefault, unless the owner has none.
                (keys.get(task.owner) or keys.setdefault(task.owner, {}))[task.key] = task.id
            changes.append(Change(task, pending, None))
        # Counted per (type, priority), not per task: a batch usually has one or a few.
        for group, n in tally([(c.task.type, c.task.priority) for c in changes]).items():
            self.pending[group] = self.pending.get(group, 0) + n
        self.by_state[pending] += len(changes)
        if route is not None:
            _routes(changes, route)
        if timing is not None:
            for row, retry, not_before, keep in timing:
                task = changes[row].task
                task.timing = Timing(retry, not_before, keep)
        if deps is not None:
            self._wait(changes, deps)
        if timing is not None:
            for row, _, not_before, _ in timing:
                task = changes[row].task
                if not_before is not None and task.deps is None:
                    self._delay(task, not_before)
        return changes

    def _delay(self, task: Task, at: float) -> None:
        """A new pending task does not start before ``at``."""
        _schedule_at(task, at)
        self._moved(task, TaskState.PENDING)

    def _due(self, task_ids: list[str]) -> list[Change]:
        changes = []
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is None or task.state is not TaskState.SCHEDULED:
                continue
            task.state = TaskState.PENDING
            self._moved(task, TaskState.SCHEDULED)
            changes.append(Change(task, TaskState.SCHEDULED, None))
        return changes

    def _ended(self, task: Task) -> None:
        """``task`` finished: expired after the retention, or its own ``keep_result``."""
        timing = task.timing
        if timing is None or timing.keep is None:
            self.finished.append(task)
        else:
            expires = (task.finished_at or 0.0) + timing.keep
            heapq.heappush(self.kept, (expires, task.seq, task.id))

    def _assign(self, worker: str, items: list[list[Any]], at: float) -> list[Change]:
        tasks, changes = self.tasks, []
        pending, assigned = TaskState.PENDING, TaskState.ASSIGNED
        for task_id, n in items:
            task = tasks[task_id]
            attempts = task.attempts
            if task.state is not pending or n != len(attempts) + 1:
                continue
            if attempts:
                cast(list[Attempt], attempts).append(Attempt(n, worker, at))
            else:
                task.attempts = [Attempt(n, worker, at)]
            task.state = assigned
            changes.append(Change(task, pending, None))
        if changes:
            self._left_pending(changes)
            self.by_state[assigned] += len(changes)
        return changes

    def _left_pending(self, changes: list[Change]) -> None:
        """Count tasks that were all pending out of it (their new state is counted by the
        caller), once per (type, priority) rather than once per task."""
        self.by_state[TaskState.PENDING] -= len(changes)
        for group, n in tally([(c.task.type, c.task.priority) for c in changes]).items():
            left = self.pending[group] - n
            if left:
                self.pending[group] = left
            else:
                del self.pending[group]

    def _start(self, items: list[list[Any]], at: float) -> None:
        tasks, started = self.tasks, 0
        assigned, running = TaskState.ASSIGNED, TaskState.RUNNING
        for task_id, n in items:
            task = tasks[task_id]
            if task.state is assigned:
                current = task.attempts[-1]
                if current.n == n:
                    current.started_at = at
                    task.state = running
                    started += 1
        self.by_state[assigned] -= started
        self.by_state[running] += started

    def _finish(self, items: list[Any], later: dict[str, float] | None) -> list[Change]:
        tasks, changes, ended_ = self.tasks, [], self._ended
        active, succeeded = _ACTIVE, Outcome.SUCCEEDED
        moved: dict[tuple[TaskState, TaskState], int] = {}
        """Tasks by (old state, new state), counted once per batch rather than per task."""
        requeued: list[Task] = []
        for item in items:
            if type(item) is list:
                task_id, n, outcome_name, value, error, started, ended = item
            else:
                task_id, n, outcome_name, ended = item["t"], item["n"], item["o"], item["e"]
                value, error, started = item.get("v"), item.get("err"), item.get("s")
            task = tasks[task_id]
            old_state = task.state
            if old_state not in active:
                continue
            current = task.attempts[-1]
            if current.n != n:
                continue
            outcome = _OUTCOMES[outcome_name]
            current.outcome = outcome
            current.error = error
            current.ended_at = ended
            if started is not None:
                current.started_at = started
            if outcome is succeeded:
                task.state = TaskState.SUCCEEDED
                task.result = value
                task.finished_at = ended
                ended_(task)
            elif outcome is Outcome.RELEASED or tries(task) < task.max_attempts:
                self._again(task, later, requeued)
            else:
                task.state = TaskState.FAILED
                task.error = _final_error(task)
                task.finished_at = ended
                ended_(task)
            transition = (old_state, task.state)
            moved[transition] = moved.get(transition, 0) + 1
            changes.append(Change(task, old_state, current.worker))
        by_state = self.by_state
        for (old_state, new_state), n in moved.items():
            by_state[old_state] -= n
            by_state[new_state] += n
        if requeued:
            for group, n in tally([(t.type, t.priority) for t in requeued]).items():
                self.pending[group] = self.pending.get(group, 0) + n
        return changes

    def _again(self, task: Task, later: dict[str, float] | None, requeued: list[Task]) -> None:
        """An attempt ended without success and attempts remain: pending again, or
        scheduled until the time its retry backoff gives (counted by the caller)."""
        at = None if later is None else later.get(task.id)
        if at is None:
            task.state = TaskState.PENDING
            requeued.append(task)
        else:
            _schedule_at(task, at)

    def _cancel(self, task_ids: list[str], at: float) -> list[Change]:
        changes = []
        for task_id in task_ids:
            task = self.tasks[task_id]
            if task.state.terminal:
                continue
            old_state, current = task.state, task.current
            if current is not None:
                current.outcome = Outcome.CANCELLED
                current.ended_at = at
            if old_state is TaskState.WAITING:
                self._unhold(task)
            task.state = TaskState.CANCELLED
            task.finished_at = at
            self._ended(task)
            self._moved(task, old_state)
            changes.append(Change(task, old_state, None if current is None else current.worker))
            self._settle(task)
        return changes

    # -- dependencies ----------------------------------------------------------------------

    def _wait(self, changes: list[Change], deps: list[list[Any]]) -> None:
        """The tasks of a submission that have dependencies (``[row, ids, on_failure,
        inputs]``) wait for them, unless those have settled already."""
        waiting = TaskState.WAITING
        linked: list[tuple[Task, str | None]] = []
        for row, after, on_failure, inputs in deps:
            task = changes[row].task
            task.deps = Deps(after, on_failure == "run", inputs)
            task.state = waiting
            self._moved(task, TaskState.PENDING)
            linked.append((task, self._link(task)))
        self._settle_linked(linked)

    def _link(self, task: Task) -> str | None:
        """Count and index what a waiting task waits for; returns a dependency that ended
        without success, if any."""
        deps = cast(Deps, task.deps)
        tasks, held, children = self.tasks, self.held, self.children
        left, failed = 0, None
        for dep_id in deps.after:
            held[dep_id] = held.get(dep_id, 0) + 1
            dep = tasks.get(dep_id)
            if dep is not None and not dep.state.terminal:
                children.setdefault(dep_id, []).append(task.id)
                left += 1
            elif failed is None and (dep is None or dep.state is not TaskState.SUCCEEDED):
                failed = dep_id
        deps.left = left
        return failed

    def _settle_linked(self, linked: list[tuple[Task, str | None]]) -> None:
        """Release or cancel just linked tasks whose dependencies all settled already."""
        for task, failed in linked:
            if task.state is not TaskState.WAITING:
                continue  # cancelled by the cascade from one settled before it
            deps = cast(Deps, task.deps)
            reason: str | None = None
            at = task.created_at
            if failed is not None and not deps.run:
                dep = self.tasks.get(failed)
                reason = _dependency_error(failed, dep)
                at = (dep and dep.finished_at) or at
            elif deps.left == 0:
                reason = self._release(task, at)
            if reason is not None:
                self._end_waiting(task, reason, at)
                self._settle(task, {task.id: reason})

    def _settle_ended(self, changes: list[Change]) -> list[Change]:
        """Settle what waited for the tasks of ``changes`` that ended."""
        if self.children:
            for change in changes:
                if change.task.state.terminal:
                    self._settle(change.task)
        return changes

    def _settle(self, first: Task, causes: dict[str, str] | None = None) -> None:
        """``first`` ended: release or cancel the tasks waiting for it, and theirs in turn
        (iteratively: a chain may be long). A task cancelled by the cascade names the
        dependency where it started, so a whole chain shows the same cause."""
        children = self.children
        if first.id not in children:
            return
        tasks, causes = self.tasks, causes or {}
        work = [first]
        while work:
            dep = work.pop()
            for child_id in children.pop(dep.id, ()):
                child = tasks.get(child_id)
                if child is None or child.state is not TaskState.WAITING:
                    continue
                deps = cast(Deps, child.deps)
                if dep.state is TaskState.SUCCEEDED or deps.run:
                    deps.left -= 1
                    if deps.left:
                        continue
                    reason = self._release(child, dep.finished_at or child.created_at)
                    if reason is None:
                        continue
                else:
                    reason = causes.get(dep.id) or _dependency_error(dep.id, dep)
                self._end_waiting(child, reason, dep.finished_at or child.created_at)
                causes[child.id] = reason
                work.append(child)

    def _release(self, task: Task, at: float) -> str | None:
        """Every dependency settled (at ``at``): the task is pending (or scheduled, if its
        ``not_before`` is later), its inputs replaced; or, if an input names a part its
        result lacks, the reason it cannot run."""
        deps = cast(Deps, task.deps)
        if deps.inputs:
            try:
                task.payload = dependencies.resolve(task.payload, self._outcome)
            except dependencies.MissingInput as exc:
                ref, path = exc.args
                return f"dependency {ref} has no {path!r} in its result"
        self._unhold(task)
        timing = task.timing
        later = timing is not None and (timing.not_before or 0.0) > at
        task.state = TaskState.SCHEDULED if later else TaskState.PENDING
        self._moved(task, TaskState.WAITING)
        self.settled.append(Change(task, TaskState.WAITING, None))
        return None

    def _end_waiting(self, task: Task, reason: str, at: float) -> None:
        self._unhold(task)
        task.state = TaskState.CANCELLED
        task.error = reason
        task.finished_at = at
        self._ended(task)
        self._moved(task, TaskState.WAITING)
        self.settled.append(Change(task, TaskState.WAITING, None))

    def _outcome(self, dep_id: str) -> dependencies.Outcome:
        dep = self.tasks.get(dep_id)
        if dep is None:
            return False, dependencies.error_view(dep_id, "forgotten", None)
        if dep.state is TaskState.SUCCEEDED:
            return True, dep.result
        return False, dependencies.error_view(dep_id, dep.state, dep.error)

    def _unhold(self, task: Task) -> None:
        held, parked = self.held, self._parked
        for dep_id in cast(Deps, task.deps).after:
            n = held[dep_id] - 1
            if n:
                held[dep_id] = n
                continue
            del held[dep_id]
            if dep_id in parked:
                parked.discard(dep_id)
                self.finished.append(self.tasks[dep_id])

    def _expire(self, task_ids: list[str]) -> None:
        tasks, keys = self.tasks, self.keys
        for task_id in task_ids:
            task = tasks.pop(task_id, None)
            if task is None:
                continue
            if task.key is not None:
                mine = keys.get(task.owner, _NO_KEYS)
                if mine.get(task.key) == task_id:
                    del mine[task.key]
            self.by_state[task.state] -= 1
        kept = self.kept
        while kept and kept[0][2] not in tasks:
            heapq.heappop(kept)
        finished, held = self.finished, self.held
        while finished:
            head = finished[0]
            if tasks.get(head.id) is head:
                if head.id not in held:
                    break
                self._parked.add(head.id)
            finished.popleft()

    def expirable(self, finished_before: float, limit: int, now: float) -> list[TaskId]:
        """Up to ``limit`` finished tasks to forget now, oldest first: those that finished
        before ``finished_before`` and those whose own ``keep_result`` ran out by ``now``;
        what an ``expire`` record may forget."""
        ids: list[TaskId] = []
        tasks, held = self.tasks, self.held
        for task in self.finished:
            if len(ids) >= limit or task.finished_at is None or task.finished_at > finished_before:
                break
            if tasks.get(task.id) is task and task.id not in held:
                ids.append(task.id)
        # The heap's entries in order, without popping them (a frontier of its indexes).
        kept = self.kept
        frontier = [(kept[0], 0)] if kept else []
        while frontier and len(ids) < limit:
            (expires, _, task_id), i = heapq.heappop(frontier)
            if expires > now:
                break
            if task_id in tasks and task_id not in held:
                ids.append(task_id)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(kept):
                    heapq.heappush(frontier, (kept[child], child))
        return ids

    def snapshot(self) -> bytes:
        """Everything needed to rebuild the table, as JSON, encoded at once (consistent)."""
        return b"".join(self.snapshot_pieces(size=None))

    def snapshot_pieces(self, size: int | None = 50_000) -> Iterator[bytes]:
        """The snapshot as pieces of one JSON document, ``size`` tasks per piece.

        The header (sequence, types, epoch...) and which tasks there are are taken now; each
        task is encoded as it is when its piece is made. So a caller may let the loop run
        between pieces (a million tasks take ~1 s to encode): the result is a *fuzzy*
        snapshot, which is sound because it is only ever restored followed by every record
        journaled since this call: those submit only tasks the snapshot does not hold, and
        an assign, start, finish, cancel or expire that a task already reflects changes
        nothing (each checks the attempt and state it applies to).
        """
        header = Snapshot(
            self._seq,
            sorted(self.known_types),
            dict(self.worker_urls),
            self.epoch,
            self.leader,
            self.accounts.state,
            list(self.schedules.values()),
            list(self.limits.values()),
            list(self.quotas.values()),
        )
        return _pieces(msgspec.json.encode(header), list(self.tasks.values()), size)

    def restore(self, snapshot: Snapshot) -> None:
        """Load a decoded snapshot (:func:`decode_snapshot`); takes over its tasks."""
        self._seq = snapshot.seq
        self.known_types = set(snapshot.known_types)
        self.worker_urls = dict(snapshot.worker_urls)
        self.epoch = snapshot.epoch
        self.leader = snapshot.leader
        self.accounts = Accounts(snapshot.accounts)
        self.schedules = {s.name: s for s in snapshot.schedules}
        self.limits = {lim.type: lim for lim in snapshot.limits}
        self.quotas = {q.user: q for q in snapshot.quotas}
        tasks, keys = self.tasks, self.keys
        for task in snapshot.tasks:
            tasks[task.id] = task
            self._moved(task, None)
            if task.key is not None:
                keys.setdefault(task.owner, {})[task.key] = task.id
        done = [t for t in tasks.values() if t.state.terminal]
        for task in sorted(done, key=lambda t: t.finished_at or 0.0):
            self._ended(task)
        # A snapshot is fuzzy (see snapshot_pieces): a waiting task may have been taken
        # before a dependency of it settled and the dependency after. Settled here as the
        # live table did when that dependency ended.
        waiting = [t for t in tasks.values() if t.state is TaskState.WAITING]
        self._settle_linked([(task, self._link(task)) for task in waiting])
        self.settled.clear()


class Snapshot(msgspec.Struct):
    """A checkpoint of the table (and what a new standby starts from)."""

    seq: int
    known_types: list[str]
    worker_urls: dict[str, str] = {}
    epoch: int = 0
    leader: str = ""
    accounts: AccountsState = msgspec.field(default_factory=AccountsState)
    schedules: list[Schedule] = []
    limits: list[Limit] = []
    quotas: list[Quota] = []
    tasks: list[Task] = []


_SNAPSHOT = msgspec.json.Decoder(Snapshot)


def decode_snapshot(data: bytes) -> Snapshot:
    """A snapshot from its JSON (decoded straight into tasks, in C)."""
    return _SNAPSHOT.decode(data)


def _pieces(header: bytes, tasks: list[Task], size: int | None) -> Iterator[bytes]:
    # The header ends with its empty task list, ``"tasks":[]}``: the tasks go in there.
    yield header[:-2]
    step = size or max(len(tasks), 1)
    for start in range(0, len(tasks), step):
        body = msgspec.json.encode(tasks[start : start + step])[1:-1]
        yield b"," + body if start else body
    yield b"]}"


def _routes(changes: list[Change], route: list[list[Any]]) -> None:
    """The queues and resources of a submission's tasks (its ``route``)."""
    for queue, wanted, rows in route:
        shared = Route(queue, tuple((name, float(amount)) for name, amount in wanted))
        for row in rows:
            changes[row].task.route = shared


def _schedule_at(task: Task, at: float) -> None:
    """``task`` is scheduled until ``at`` (the caller counts the change of state)."""
    if task.timing is None:
        task.timing = Timing()
    task.timing.not_before = at
    task.state = TaskState.SCHEDULED


def _dependency_error(dep_id: str, dep: Task | None) -> str:
    if dep is None:
        return f"dependency {dep_id} was forgotten"
    return f"dependency {dep_id} {dep.state}" + (f": {dep.error}" if dep.error else "")


def tries(task: Task) -> int:
    """The attempts that count against ``max_attempts`` (not those handed back)."""
    return sum(1 for a in task.attempts if a.outcome is not Outcome.RELEASED)


def _final_error(task: Task) -> str:
    last = task.attempts[-1]
    lost = sum(1 for a in task.attempts if a.outcome is Outcome.LOST)
    if last.outcome is Outcome.LOST:
        return (
            f"gave up after {len(task.attempts)} attempts: the worker running it was lost "
            f"{lost} time(s), last {last.worker}: {last.error or 'no reason given'}"
        )
    return f"failed after {len(task.attempts)} attempts; last error: {last.error}"
