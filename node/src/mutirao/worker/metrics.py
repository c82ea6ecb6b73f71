"""A worker process's own metrics: what it runs, what it ran, whether its heartbeats go out.

Named ``mutirao_runner_*`` so they never mix with the active orchestrator's view of each
worker (``mutirao_worker_*{worker=...}``, see :mod:`mutirao.orchestrator.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from mutirao.metrics import gauge, new_registry

if TYPE_CHECKING:
    from mutirao.worker.node import WorkerNode

EXECUTED_OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled")


class WorkerMetrics:
    """A worker process's own view: what it runs, what it ran, whether its heartbeats go out.

    Named ``mutirao_runner_*`` so they never mix with the active orchestrator's view of
    each worker (``mutirao_worker_*{worker=...}``).
    """

    def __init__(self, node: WorkerNode) -> None:
        self.registry = registry = new_registry("worker")
        self.heartbeats_sent = Counter(
            "mutirao_runner_heartbeats_sent", "Heartbeats sent.", registry=registry
        )
        self.heartbeat_failures = Counter(
            "mutirao_runner_heartbeat_send_failures",
            "Heartbeats that could not be sent (the connection broke).",
            registry=registry,
        )
        self.executed: dict[tuple[str, str], int] = {
            (task_type, outcome): 0
            for task_type in node.registry.names()
            for outcome in EXECUTED_OUTCOMES
        }
        """Attempts run by (type, outcome): a plain count per attempt, exported by the
        collector; a prometheus ``Counter`` child takes a lock and costs ~10% of a no-op
        task's time on the worker."""
        registry.register(WorkerCollector(node))

    def ran(self, task_type: str, outcome: str) -> None:
        key = (task_type, outcome)
        self.executed[key] = self.executed.get(key, 0) + 1


class WorkerCollector:
    def __init__(self, node: WorkerNode) -> None:
        self.node = node

    def describe(self) -> Iterator[Metric]:
        return self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(empty=False)

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        running = gauge("mutirao_runner_running_tasks", "Attempts running on this worker.")
        slots = gauge("mutirao_runner_slots", "Attempts this worker runs at once.")
        connected = gauge("mutirao_runner_connected", "1 while registered with an orchestrator.")
        unacked = gauge(
            "mutirao_runner_unacknowledged_results",
            "Results kept until the orchestrator acknowledges them as recorded.",
        )
        epoch = gauge("mutirao_runner_epoch", "Newest orchestrator epoch this worker has seen.")
        executed = CounterMetricFamily(
            "mutirao_runner_tasks_executed",
            "Attempts this worker ran, by task type and outcome.",
            labels=["type", "outcome"],
        )
        if not empty:
            node = self.node
            running.add_metric([], float(len(node.runner.running)))
            slots.add_metric([], float(node.settings.worker.slots))
            connected.add_metric([], 0.0 if node.connected_to is None else 1.0)
            unacked.add_metric([], float(len(node.outbox)))
            epoch.add_metric([], float(node.epoch))
            for (task_type, outcome), n in sorted(node.metrics.executed.items()):
                executed.add_metric([task_type, outcome], float(n))
        yield from (running, slots, connected, unacked, epoch, executed)
