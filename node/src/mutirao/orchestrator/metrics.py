"""The orchestrator's metrics: events counted as the engine decides, state read at scrape time.

:class:`OrchestratorMetrics` implements :class:`~mutirao.orchestrator.events.EngineObserver`:
the engine reports each live decision once per journal record, so a batch of 1,000
submissions is one counter increment per task type. Everything that can be read from the
state (tasks by state, the queue, workers and their heartbeat age, role, epoch, standbys) is
computed when Prometheus scrapes, by :class:`OrchestratorCollector`, so nothing is kept twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from mutirao.metrics import (
    DURATION_BUCKETS,
    FSYNC_BUCKETS,
    gauge,
    new_registry,
    observe_many,
    respond,
)
from mutirao.orchestrator.events import DeathCause, RedistributionCause
from mutirao.orchestrator.tasks import Change, grouped, tally
from mutirao.protocol import Outcome, TaskState

if TYPE_CHECKING:
    from mutirao.orchestrator.service import Orchestrator

DEAD_WORKER_RETENTION = 900.0
"""Seconds a dead worker stays in the per-worker series and the dead count (then it is
dropped, so that workers replaced over months do not pile up as series)."""

WORKER_STATES = ("alive", "suspect", "dead")
DEATH_CAUSES: tuple[DeathCause, ...] = ("disconnected", "heartbeat_timeout")
REDISTRIBUTION_CAUSES: tuple[RedistributionCause, ...] = (
    "worker_dead",
    "worker_restarted",
    "worker_drained",
)
RUN_OUTCOMES = ("succeeded", "failed")

_TYPE_OF = attrgetter("task.type")
_RAN = (Outcome.SUCCEEDED, Outcome.FAILED)


class OrchestratorMetrics:
    """Counters and histograms fed by the engine's live decisions, plus a collector that
    reads the orchestrator's state at scrape time. Implements ``EngineObserver``."""

    def __init__(self, orch: Orchestrator) -> None:
        self.registry = registry = new_registry("orchestrator")
        by_type = ["type"]
        self.submitted = Counter(
            "mutirao_tasks_submitted", "Tasks accepted.", by_type, registry=registry
        )
        self.completed = Counter(
            "mutirao_tasks_completed", "Tasks that succeeded.", by_type, registry=registry
        )
        self.failed = Counter(
            "mutirao_tasks_failed",
            "Tasks that failed for good (out of attempts).",
            by_type,
            registry=registry,
        )
        self.retried = Counter(
            "mutirao_tasks_retried",
            "Attempts that failed or were lost and put their task back in the queue.",
            by_type,
            registry=registry,
        )
        self.cancelled = Counter(
            "mutirao_tasks_cancelled", "Tasks cancelled.", by_type, registry=registry
        )
        self.dependency_cancelled = Counter(
            "mutirao_tasks_dependency_cancelled",
            "Waiting tasks cancelled because a dependency failed, was cancelled or lacked "
            "an input (also counted in mutirao_tasks_cancelled).",
            by_type,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "mutirao_task_queue_wait_seconds",
            "Time from submission to the assignment of a task's first attempt.",
            by_type,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.run_duration = Histogram(
            "mutirao_task_run_duration_seconds",
            "Time an attempt ran on its worker (started to ended), by outcome.",
            ["type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.heartbeats = Counter(
            "mutirao_heartbeats_received", "Heartbeats received from workers.", registry=registry
        )
        self.workers_dead = Counter(
            "mutirao_workers_declared_dead",
            "Workers declared dead, by cause (disconnected or heartbeat_timeout).",
            ["cause"],
            registry=registry,
        )
        self.redistributed = Counter(
            "mutirao_tasks_redistributed",
            "Attempts taken back from a worker that died or restarted without them.",
            ["cause"],
            registry=registry,
        )
        self.logins_refused = Counter(
            "mutirao_logins_refused",
            "Logins refused: a wrong user name or password, or throttled after failures.",
            ["reason"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "mutirao_http_connections_refused",
            "Client connections refused or closed: per_address (too many open from one "
            "address), header_timeout, body_timeout (a request too slow to arrive).",
            ["reason"],
            registry=registry,
        )
        self.takeovers = Counter(
            "mutirao_orchestrator_takeovers",
            "Times this orchestrator became the active one (each takeover adds one epoch).",
            registry=registry,
        )
        self.schedule_fires = Counter(
            "mutirao_schedule_fires",
            "Tasks submitted by schedules, by schedule.",
            ["schedule"],
            registry=registry,
        )
        self.schedule_misses = Counter(
            "mutirao_schedule_misses",
            "Schedule ticks that submitted nothing: missed while the cluster was down "
            "(catch_up), skipped (overlap: skip), or refused (e.g. an unknown type).",
            ["schedule"],
            registry=registry,
        )
        self.schedule_lag = Histogram(
            "mutirao_schedule_lag_seconds",
            "Time from a schedule's tick to its fire.",
            buckets=FSYNC_BUCKETS,
            registry=registry,
        )
        self.journal_fsync = Histogram(
            "mutirao_journal_fsync_duration_seconds",
            "Time to write and fsync one group commit of the journal.",
            buckets=FSYNC_BUCKETS,
            registry=registry,
        )
        for cause in DEATH_CAUSES:
            self.workers_dead.labels(cause)
        for reason in REDISTRIBUTION_CAUSES:
            self.redistributed.labels(reason)
        self._types: set[str] = set()
        self._orch = orch
        registry.register(OrchestratorCollector(orch))

    def respond(self, request: web.Request) -> web.Response:
        """The ``GET /metrics`` answer."""
        self.ensure_types(self._orch.engine.table.known_types)
        return respond(self.registry, request)

    def ensure_types(self, types: Iterable[str]) -> None:
        """Export zeros for every known task type, so rates exist before the first event."""
        for kind in set(types) - self._types:
            for counter in (
                self.submitted,
                self.completed,
                self.failed,
                self.retried,
                self.cancelled,
                self.dependency_cancelled,
            ):
                counter.labels(kind)
            self.queue_wait.labels(kind)
            for outcome in RUN_OUTCOMES:
                self.run_duration.labels(kind, outcome)
            self._types.add(kind)

    # -- EngineObserver --------------------------------------------------------------------

    def on_changes(self, kind: str, changes: Sequence[Change]) -> None:
        # Grouped by task type (and outcome) first: one counter increment and one batch of
        # histogram observations per group, not per task.
        if kind == "submit":
            for task_type, n in tally(map(_TYPE_OF, changes)).items():
                self.submitted.labels(task_type).inc(n)
        elif kind == "assign":
            tasks = [c.task for c in changes]
            for task_type, group in grouped([t.type for t in tasks], tasks).items():
                # First attempts only: how long a retry waited says little about the queue.
                waits = [
                    t.attempts[0].assigned_at - t.created_at for t in group if len(t.attempts) == 1
                ]
                observe_many(self.queue_wait.labels(task_type), waits)
        elif kind == "finish":
            self._finished(changes)
        elif kind == "cancel":
            for task_type, n in tally(map(_TYPE_OF, changes)).items():
                self.cancelled.labels(task_type).inc(n)
        elif kind == "settle":
            ended = [c for c in changes if c.task.state is TaskState.CANCELLED]
            for task_type, n in tally(map(_TYPE_OF, ended)).items():
                self.cancelled.labels(task_type).inc(n)
                self.dependency_cancelled.labels(task_type).inc(n)

    def _finished(self, changes: Sequence[Change]) -> None:
        # One dict lookup per task; the counting and durations then run per group, in
        # comprehensions (this runs for every finished task: ~2 us each when done per task).
        tasks = [c.task for c in changes]
        attempts = [t.attempts[-1] for t in tasks]
        keys = [(t.type, t.state, a.outcome) for t, a in zip(tasks, attempts, strict=True)]
        groups = grouped(keys, attempts)
        counters = {
            TaskState.SUCCEEDED: self.completed,
            TaskState.FAILED: self.failed,
            TaskState.PENDING: self.retried,
            TaskState.SCHEDULED: self.retried,
        }
        for (task_type, state, outcome), group in groups.items():
            counters[state].labels(task_type).inc(len(group))
            if outcome in _RAN:
                durations = [
                    a.ended_at - a.started_at
                    for a in group
                    if a.started_at is not None and a.ended_at is not None
                ]
                observe_many(self.run_duration.labels(task_type, str(outcome)), durations)

    def on_heartbeat(self, worker: str) -> None:
        self.heartbeats.inc()

    def on_worker_dead(self, worker: str, cause: DeathCause) -> None:
        self.workers_dead.labels(cause).inc()

    def on_redistributed(self, attempts: int, cause: RedistributionCause) -> None:
        self.redistributed.labels(cause).inc(attempts)

    def on_takeover(self, epoch: int) -> None:
        self.takeovers.inc()

    def on_schedule(self, name: str, fired: int, missed: int, lag: float) -> None:
        # Both series exist from a schedule's first tick, so rates exist before a miss.
        self.schedule_fires.labels(name).inc(fired)
        self.schedule_misses.labels(name).inc(missed)
        if fired:
            self.schedule_lag.observe(lag)


class OrchestratorCollector:
    """Gauges read from the orchestrator at scrape time.

    Every orchestrator reports its role, epoch, LSN and journal; only the active one
    reports the cluster (tasks, queue, workers, standbys): a standby's copy of the tasks
    would count them twice, and it hears no heartbeats.
    """

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def describe(self) -> Iterator[Metric]:
        yield from self._node(empty=True)
        yield from self._cluster(empty=True)

    def collect(self) -> Iterator[Metric]:
        yield from self._node(empty=False)
        yield from self._cluster(empty=not self.orch.ready)

    def _node(self, *, empty: bool) -> Iterator[Metric]:
        orch = self.orch
        role = gauge("mutirao_orchestrator_role", "1 for this node's current role.", ["role"])
        leader = gauge("mutirao_orchestrator_leader", "1 on the active orchestrator, else 0.")
        epoch = gauge(
            "mutirao_orchestrator_epoch", "Epoch of the current leader, as recorded here."
        )
        lsn = gauge("mutirao_orchestrator_lsn", "Journal batches (log sequence number) held.")
        degraded = gauge(
            "mutirao_orchestrator_degraded",
            "1 while the active runs without a standby in sync (0 on a standby).",
        )
        timeout = gauge(
            "mutirao_heartbeat_timeout_seconds", "Silence after which a worker is dead."
        )
        interval = gauge("mutirao_heartbeat_interval_seconds", "Heartbeat interval of workers.")
        backlog = gauge(
            "mutirao_journal_records_since_checkpoint",
            "Journal records written since the last checkpoint.",
        )
        no_space = gauge(
            "mutirao_journal_no_space",
            "1 while the journal's disk is full: writes are refused (507) until space frees.",
        )
        if not empty:
            for value in type(orch.roles.role):
                role.add_metric([str(value)], 1.0 if orch.roles.role is value else 0.0)
            leader.add_metric([], 1.0 if orch.ready else 0.0)
            epoch.add_metric([], float(orch.engine.epoch))
            lsn.add_metric([], float(orch.lsn))
            degraded.add_metric([], 1.0 if orch.ready and not orch.standbys_in_lease() else 0.0)
            timeout.add_metric([], orch.settings.heartbeat.timeout)
            interval.add_metric([], orch.settings.heartbeat.interval)
            journal = orch.journal
            backlog.add_metric([], float(journal.records_since_checkpoint if journal else 0))
            no_space.add_metric([], 1.0 if journal is not None and journal.no_space else 0.0)
        yield from (role, leader, epoch, lsn, degraded, timeout, interval, backlog, no_space)

    def _cluster(self, *, empty: bool) -> Iterator[Metric]:
        yield from self._tasks(empty=empty)
        yield from self._workers(empty=empty)
        lag = gauge(
            "mutirao_replication_lag_batches",
            "Journal batches a standby has not acknowledged yet.",
            ["standby"],
        )
        synced = gauge(
            "mutirao_replication_standby_synced",
            "1 if the lease counts the standby as holding every acknowledged record.",
            ["standby"],
        )
        if not empty:
            in_lease = set(self.orch.standbys_in_lease())
            for node, behind in sorted(self.orch.hub.lag(self.orch.lsn).items()):
                lag.add_metric([node], float(behind))
                synced.add_metric([node], 1.0 if node in in_lease else 0.0)
        yield from (lag, synced)

    def _tasks(self, *, empty: bool) -> Iterator[Metric]:
        by_state = gauge("mutirao_tasks", "Tasks by state.", ["state"])
        depth = gauge(
            "mutirao_queue_depth", "Pending tasks by type and priority.", ["type", "priority"]
        )
        oldest = gauge(
            "mutirao_queue_oldest_age_seconds", "Age of the oldest pending task (0 if none)."
        )
        by_queue = gauge(
            "mutirao_queue_pending", "Pending tasks by queue (workers serve --queues).", ["queue"]
        )
        running = gauge("mutirao_queue_running", "Tasks assigned or running, by queue.", ["queue"])
        if not empty:
            table = self.orch.engine.table
            for state, n in table.by_state.items():
                by_state.add_metric([str(state)], float(n))
            for (task_type, priority), n in sorted(table.pending.items()):
                depth.add_metric([task_type, str(priority)], float(n))
            backlog = self.orch.engine.backlog(self.orch.clock())
            oldest.add_metric([], backlog.oldest)
            for queue, n in sorted(backlog.by_queue.items()):
                by_queue.add_metric([queue], float(n))
            for queue, n in sorted(backlog.running_by_queue.items()):
                running.add_metric([queue], float(n))
        yield from (by_state, depth, oldest, by_queue, running)

    def _workers(self, *, empty: bool) -> Iterator[Metric]:
        by_state = gauge(
            "mutirao_workers",
            f"Workers by state (dead: within the last {DEAD_WORKER_RETENTION:.0f} s).",
            ["state"],
        )
        labels = ["worker"]
        running = gauge("mutirao_worker_running_tasks", "Attempts a worker holds.", labels)
        slots = gauge("mutirao_worker_slots", "Attempts a worker runs at once.", labels)
        load = gauge(
            "mutirao_worker_load_ratio",
            "Slots in use / slots of a worker (a thread past its attempt's limit counts).",
            labels,
        )
        age = gauge(
            "mutirao_worker_heartbeat_age_seconds",
            "Seconds since the worker was last heard from.",
            labels,
        )
        state = gauge("mutirao_worker_state", "1 for the worker's state.", ["worker", "state"])
        if not empty:
            now = self.orch.clock()
            counts = dict.fromkeys(WORKER_STATES, 0)
            for worker in sorted(self.orch.engine.workers.values(), key=attrgetter("id")):
                silent = max(0.0, now - worker.last_seen)
                if worker.state == "dead" and silent > DEAD_WORKER_RETENTION:
                    continue
                counts[worker.state] = counts.get(worker.state, 0) + 1
                wid = [worker.id]
                running.add_metric(wid, float(len(worker.attempts)))
                slots.add_metric(wid, float(worker.capacity))
                load.add_metric(wid, worker.usage)
                age.add_metric(wid, silent)
                for name in WORKER_STATES:
                    state.add_metric([worker.id, name], 1.0 if worker.state == name else 0.0)
            for name, n in counts.items():
                by_state.add_metric([name], float(n))
        yield from (by_state, running, slots, load, age, state)
