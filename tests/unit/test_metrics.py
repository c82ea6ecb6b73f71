"""Metrics without sockets: the engine's observer hooks, the orchestrator's counters and its
scrape-time collector over a real :class:`Orchestrator` driven with a fake clock, and the
worker's own metrics."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mutirao.ha.controller import takeover_reason
from mutirao.ha.lease import Lease, LeaseBackend, Tenure
from mutirao.ha.role import Role
from mutirao.orchestrator.engine import Effects, Engine
from mutirao.orchestrator.events import NullObserver
from mutirao.orchestrator.journal import Journal
from mutirao.orchestrator.metrics import DEAD_WORKER_RETENTION
from mutirao.orchestrator.service import Orchestrator
from mutirao.orchestrator.tasks import Change, Record, TaskTable, decode_snapshot
from mutirao.protocol import HelloMsg, ResultItem, TaskId, TaskSpec, TaskState
from mutirao.registry import Registry
from mutirao.settings import Settings
from mutirao.worker.node import WorkerNode
from tests.unit.test_engine import Harness, _eventful, replay

TIMEOUT = 3.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def shared_record_lease() -> LeaseBackend:
    """A lease backend never called here: only whether its record is shared is read."""
    return cast(LeaseBackend, SimpleNamespace(shared_record=True))


class Cluster:
    """An orchestrator (not serving) whose engine is driven directly, as its service would."""

    def __init__(self, tmp_path: Path) -> None:
        settings = Settings(data_dir=tmp_path / "data")
        settings.heartbeat.timeout = TIMEOUT
        settings.data_dir.mkdir()
        self.clock = Clock()
        self.orch = Orchestrator(
            settings, shared_record_lease(), clock=self.clock, monotonic=self.clock
        )
        ids = itertools.count(1)
        self.orch.engine = Engine(
            settings.heartbeat,
            new_id=lambda: TaskId(f"t{next(ids)}"),
            observer=self.orch.metrics,
        )
        node = settings.node_id
        held = Lease(node, "http://o1.test", 1, self.clock(), 1e9, (node,))
        self.orch.roles.lead(Tenure(held, self.clock(), 1.0, 1.0), held.url)
        self.records: list[Record] = []
        self.sessions = itertools.count(1)
        self.session: dict[str, int] = {}
        self.keep(self.engine.take_lead(1, "o1", self.clock()))

    @property
    def engine(self) -> Engine:
        return self.orch.engine

    def keep(self, effects: Effects) -> Effects:
        self.records.extend(effects.records)
        return effects

    def hello(self, wid: str, slots: int = 2, types: Sequence[str] = ("echo",)) -> Effects:
        self.session[wid] = next(self.sessions)
        msg: HelloMsg = {
            "op": "hello",
            "worker_id": wid,
            "url": f"http://{wid}:1",
            "slots": slots,
            "types": list(types),
            "running": [],
            "epoch": 1,
        }
        return self.keep(self.engine.hello(msg, self.session[wid], self.clock()))

    def submit(self, n: int, task_type: str = "echo", **spec: Any) -> list[str]:
        specs = [TaskSpec(type=task_type, **spec) for _ in range(n)]
        tasks, effects = self.engine.submit(specs, "alice", self.clock())
        self.keep(effects)
        return [t.id for t in tasks]

    def result(self, wid: str, task_id: str, *, ok: bool, ran: float) -> Effects:
        attempt = len(self.engine.get(task_id).attempts)
        now = self.clock()
        value, error = (1, None) if ok else (None, "boom")
        item: ResultItem = (task_id, attempt, ok, value, error, now - ran, now)
        return self.keep(self.engine.results(wid, self.session[wid], [item], self.clock()))

    def value(self, name: str, **labels: str) -> float:
        found = self.orch.metrics.registry.get_sample_value(name, labels)
        assert found is not None, f"no sample {name}{labels}"
        return found

    def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Every sample of one scrape, parsed back from the exposition format."""
        self.orch.metrics.ensure_types(self.engine.table.known_types)
        text = generate_latest(self.orch.metrics.registry).decode()
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return samples


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_changes(self, kind: str, changes: Sequence[Change]) -> None:
        self.calls.append((kind, len(changes)))


def test_a_batch_of_submissions_is_one_observer_call() -> None:
    recorder = Recorder()
    engine = Engine(Settings().heartbeat, observer=recorder)
    engine.table.known_types.add("echo")
    engine.submit([TaskSpec(type="echo")] * 1000, "alice", 0.0)
    assert recorder.calls == [("submit", 1000)]


def test_replayed_and_replicated_records_are_not_observed(cluster: Cluster) -> None:
    cluster.hello("W1")
    cluster.submit(5)
    recorder = Recorder()
    replica = Engine(Settings().heartbeat, observer=recorder)
    for record in cluster.records:
        replica.apply(record)
    assert len(replica.table.tasks) == 5
    assert recorder.calls == []
    restored = cluster.orch.restore(None, cluster.records)
    assert len(restored.table.tasks) == 5
    assert cluster.value("mutirao_tasks_submitted_total", type="echo") == 5  # not 10


def test_task_counters_and_latency_histograms(cluster: Cluster) -> None:
    cluster.hello("W1", slots=4, types=["echo", "sleep"])
    start = cluster.clock.now
    ok, retry, doomed, cancel = cluster.submit(4, max_attempts=2)
    cluster.submit(3, "sleep")  # stays queued: W1's 4 slots are taken
    assert cluster.value("mutirao_tasks_submitted_total", type="echo") == 4
    assert cluster.value("mutirao_tasks_submitted_total", type="sleep") == 3
    assert cluster.value("mutirao_task_queue_wait_seconds_count", type="echo") == 4
    assert cluster.value("mutirao_task_queue_wait_seconds_sum", type="echo") == 0

    cluster.clock.now = start + 2.0
    cluster.result("W1", ok, ok=True, ran=1.5)
    cluster.result("W1", retry, ok=False, ran=0.5)  # attempt 1 of 2: back in the queue
    cluster.result("W1", doomed, ok=False, ran=0.5)
    cluster.keep(cluster.engine.cancel(cluster.engine.get(cancel), cluster.clock()))
    assert cluster.value("mutirao_tasks_completed_total", type="echo") == 1
    assert cluster.value("mutirao_tasks_retried_total", type="echo") == 2
    assert cluster.value("mutirao_tasks_cancelled_total", type="echo") == 1
    # Two sleep tasks got freed slots 2 s after their submission; the retried echo tasks,
    # queued earlier, took the others.
    assert cluster.value("mutirao_task_queue_wait_seconds_count", type="sleep") == 2
    assert cluster.value("mutirao_task_queue_wait_seconds_sum", type="sleep") == 2 * 2.0

    cluster.clock.now = start + 3.0
    cluster.result("W1", doomed, ok=False, ran=0.25)  # attempt 2 of 2: failed for good
    assert cluster.value("mutirao_tasks_failed_total", type="echo") == 1
    ran = "mutirao_task_run_duration_seconds"
    assert cluster.value(f"{ran}_count", type="echo", outcome="succeeded") == 1
    assert cluster.value(f"{ran}_sum", type="echo", outcome="succeeded") == 1.5
    assert cluster.value(f"{ran}_count", type="echo", outcome="failed") == 3
    assert cluster.value(f"{ran}_sum", type="echo", outcome="failed") == 1.25
    # A retry is not a new task: the queue wait counts first attempts only.
    assert cluster.value("mutirao_task_queue_wait_seconds_count", type="echo") == 4


def test_gauges_are_read_from_the_state_at_scrape_time(cluster: Cluster) -> None:
    cluster.hello("W1", slots=4)
    created = cluster.clock.now
    cluster.submit(3)  # all run on W1
    cluster.submit(2, priority=5)
    cluster.submit(1, priority=-1)
    cluster.clock.now = created + 7.5
    samples = cluster.scrape()
    tasks = {dict(k)["state"]: v for k, v in samples["mutirao_tasks"].items()}
    assert tasks == {
        "waiting": 0,
        "scheduled": 0,
        "pending": 2,
        "assigned": 4,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    depth = {dict(k)["priority"]: v for k, v in samples["mutirao_queue_depth"].items()}
    assert depth == {"-1": 1, "5": 1}  # W1's fourth slot took one of the priority 5 tasks
    assert samples["mutirao_queue_oldest_age_seconds"][()] == 7.5
    w1 = (("worker", "W1"),)
    assert samples["mutirao_worker_running_tasks"][w1] == 4
    assert samples["mutirao_worker_slots"][w1] == 4
    assert samples["mutirao_worker_load_ratio"][w1] == 1.0
    assert samples["mutirao_worker_heartbeat_age_seconds"][w1] == 7.5
    assert samples["mutirao_worker_state"][(("state", "alive"), ("worker", "W1"))] == 1
    assert samples["mutirao_orchestrator_leader"][()] == 1
    assert samples["mutirao_orchestrator_role"][(("role", "active"),)] == 1
    assert samples["mutirao_orchestrator_epoch"][()] == 1
    assert samples["mutirao_orchestrator_degraded"][()] == 1  # no standby
    assert samples["mutirao_heartbeat_timeout_seconds"][()] == TIMEOUT
    # Counters exist at zero for every known type before anything happens to it.
    assert samples["mutirao_tasks_failed_total"][(("type", "echo"),)] == 0


def test_a_silent_worker_ages_dies_and_its_tasks_are_redistributed(cluster: Cluster) -> None:
    cluster.hello("W1")
    cluster.hello("W2")
    cluster.submit(4)
    cluster.engine.heartbeat_from("W1", cluster.session["W1"], cluster.clock())
    assert cluster.value("mutirao_heartbeats_received_total") == 1
    start = cluster.clock.now
    ages = []
    for dt in (1.0, 2.5):
        cluster.clock.now = start + dt
        cluster.engine.heartbeat_from("W1", cluster.session["W1"], cluster.clock())
        ages.append(cluster.scrape()["mutirao_worker_heartbeat_age_seconds"][(("worker", "W2"),)])
    assert ages == [1.0, 2.5]

    cluster.clock.now = start + TIMEOUT + 0.5
    cluster.keep(cluster.engine.tick(cluster.clock()))
    samples = cluster.scrape()
    assert samples["mutirao_worker_state"][(("state", "dead"), ("worker", "W2"))] == 1
    assert samples["mutirao_workers"][(("state", "dead"),)] == 1
    assert cluster.value("mutirao_workers_declared_dead_total", cause="heartbeat_timeout") == 1
    assert cluster.value("mutirao_workers_declared_dead_total", cause="disconnected") == 0
    assert cluster.value("mutirao_tasks_redistributed_total", cause="worker_dead") == 2
    assert cluster.value("mutirao_tasks_retried_total", type="echo") == 2

    # W1 disconnects: a second cause; long after, dead workers leave the per-worker series.
    cluster.keep(cluster.engine.worker_lost("W1", cluster.session["W1"], "closed", start + 4))
    assert cluster.value("mutirao_workers_declared_dead_total", cause="disconnected") == 1
    cluster.clock.now = start + DEAD_WORKER_RETENTION + 10
    samples = cluster.scrape()
    assert "mutirao_worker_heartbeat_age_seconds" not in samples
    assert samples["mutirao_workers"][(("state", "dead"),)] == 0


def test_a_standby_reports_its_role_but_not_the_cluster(cluster: Cluster) -> None:
    cluster.hello("W1")
    cluster.submit(2)
    cluster.orch.roles.role = Role.STANDBY
    samples = cluster.scrape()
    assert samples["mutirao_orchestrator_leader"][()] == 0
    assert samples["mutirao_orchestrator_role"][(("role", "standby"),)] == 1
    assert samples["mutirao_orchestrator_degraded"][()] == 0
    assert samples["mutirao_orchestrator_epoch"][()] == 1
    for family in ("mutirao_tasks", "mutirao_workers", "mutirao_worker_heartbeat_age_seconds"):
        assert family not in samples


def test_takeovers_are_counted(cluster: Cluster) -> None:
    assert cluster.value("mutirao_orchestrator_takeovers_total") == 1
    cluster.keep(cluster.engine.take_lead(2, "o1", cluster.clock()))
    assert cluster.value("mutirao_orchestrator_takeovers_total") == 2


def test_takeover_reason_names_the_previous_leader() -> None:
    assert takeover_reason(None, "b", 10.0) == "no other orchestrator held the lease"
    lease = Lease("a", "http://a", 3, renewed_at=0.0, duration=5.0)
    assert "lease of a (epoch 3) expired: not renewed for 6.0s" in takeover_reason(lease, "b", 6)
    assert "a (epoch 3) stopped holding the lease" in takeover_reason(lease, "b", 1.0)
    assert "this node held the lease already" in takeover_reason(lease, "a", 1.0)


async def test_journal_reports_each_group_commit(tmp_path: Path) -> None:
    seconds: list[float] = []
    async with Journal(tmp_path, 1, fsync=True, on_write=seconds.append) as journal:
        await asyncio.gather(journal.append([{"e": "types", "types": ["a"]}]), journal.rotate())
        await journal.append([{"e": "types", "types": ["b"]}])
    assert len(seconds) == 2  # the rotation alone wrote no record
    assert all(0 <= s < 5 for s in seconds)


# -- the worker ------------------------------------------------------------------------------


def _worker() -> WorkerNode:
    registry = Registry()

    async def echo(payload: object) -> object:
        return payload

    def fail(payload: object) -> object:
        raise ValueError("no")

    async def sleep(payload: object) -> object:
        await asyncio.sleep(float(cast(float, payload)))
        return None

    for name, fn in (("echo", echo), ("fail", fail), ("sleep", sleep)):
        registry.register(name, fn)
    settings = Settings()
    settings.worker.id = "w1"
    settings.worker.slots = 3
    return WorkerNode(settings, registry, "token")


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        s.name + "".join(f",{v}" for _, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_worker_counts_outcomes_and_reports_its_load() -> None:
    node = _worker()
    node.runner.start(("a", 1, "echo", 0.0, 5.0))
    node.runner.start(("b", 1, "fail", 0.0, 5.0))
    node.runner.start(("c", 1, "sleep", 5, 0.01))
    node.runner.start(("d", 1, "sleep", 5, 5.0))
    async with asyncio.timeout(5):
        while len(node.outbox) < 3:  # noqa: ASYNC110 (the runner signals nothing else)
            await asyncio.sleep(0.01)
    samples = _samples(node.metrics.registry)
    assert samples["mutirao_runner_running_tasks"] == 1
    assert samples["mutirao_runner_slots"] == 3
    assert samples["mutirao_runner_connected"] == 0
    assert samples["mutirao_runner_unacknowledged_results"] == 3
    node.runner.cancel(("d", 1))
    await node.runner.close()
    samples = _samples(node.metrics.registry)
    executed = "mutirao_runner_tasks_executed_total"
    assert samples[f"{executed},succeeded,echo"] == 1
    assert samples[f"{executed},failed,fail"] == 1
    assert samples[f"{executed},timed_out,sleep"] == 1
    assert samples[f"{executed},cancelled,sleep"] == 1
    assert samples[f"{executed},failed,echo"] == 0


async def test_worker_counts_heartbeats_it_could_not_send() -> None:
    node = _worker()

    class BrokenSocket:
        sent = 0

        async def send_bytes(self, data: bytes) -> None:
            self.sent += 1
            if self.sent > 1:
                raise ConnectionResetError("Cannot write to closing transport")

    node.settings.heartbeat.interval = 0.001
    with pytest.raises(ConnectionResetError):
        await node._heartbeat_loop(BrokenSocket())  # type: ignore[arg-type]
    samples = _samples(node.metrics.registry)
    assert samples["mutirao_runner_heartbeats_sent_total"] == 1
    assert samples["mutirao_runner_heartbeat_send_failures_total"] == 1
    await node.runner.close()


# -- the task table's counts, read by the collector instead of a pass over every task ---------


def _recount(table: TaskTable) -> tuple[dict[TaskState, int], dict[tuple[str, int], int]]:
    by_state = dict.fromkeys(TaskState, 0)
    pending: dict[tuple[str, int], int] = {}
    for task in table.tasks.values():
        by_state[task.state] += 1
        if task.state is TaskState.PENDING:
            key = (task.type, task.priority)
            pending[key] = pending.get(key, 0) + 1
    return by_state, pending


def test_the_tables_counts_stay_in_step_live_replayed_and_restored() -> None:
    h = Harness()
    _eventful(h)
    h.hello("w9", 9.0, slots=1)
    running, _ = h.submit_one(9.0)
    h.submit_one(9.0, priority=3)  # stays queued
    current = running.attempts[-1]
    h.started(current.worker, 9.5, (running.id, current.n))
    live = h.engine.table
    assert (live.by_state, live.pending) == _recount(live)
    assert live.by_state[TaskState.RUNNING] > 0  # "start" records count too
    replayed = replay(h.records).table
    assert (replayed.by_state, replayed.pending) == _recount(live)
    restored = TaskTable()
    restored.restore(decode_snapshot(live.snapshot()))
    assert (restored.by_state, restored.pending) == _recount(live)
