"""Time in the engine, sans-IO with a fake clock: retry backoff, ``not_before``, and a
task's own ``keep_result``; each scenario rebuilt from its journal records and from a
checkpoint, the way a new leader finds it."""

from __future__ import annotations

from typing import Any

import pytest

from mutirao.orchestrator.engine import Engine
from mutirao.orchestrator.tasks import decode_snapshot
from mutirao.protocol import RetryPolicy, TaskSpec, TaskState
from tests.unit.test_engine import HEARTBEAT, Harness, assigned, replay


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.hello("w1", 0.0, slots=4)
    return harness


def spec(**options: Any) -> TaskSpec:
    return TaskSpec(type="echo", **options)


def alive(h: Harness, now: float) -> None:
    h.heartbeat("w1", now)


def restored(h: Harness) -> Engine:
    """A checkpoint of the live state, restored (and re-indexed) as recovery does."""
    engine = Engine(HEARTBEAT)
    engine.load(decode_snapshot(h.engine.table.snapshot()))
    return engine


def agrees(h: Harness) -> None:
    views = h.views()
    assert {t: x.view() for t, x in replay(h.records).table.tasks.items()} == views
    assert {t: x.view() for t, x in restored(h).table.tasks.items()} == views


def test_failed_attempts_back_off_exponentially_up_to_the_cap(h: Harness) -> None:
    (task,), _ = h.submit(
        spec(max_attempts=5, retry=RetryPolicy(delay=1.0, backoff=3.0, max_delay=5.0)), now=0.0
    )
    gaps = []
    now = 1.0
    for attempt in range(1, 5):
        h.result("w1", task, attempt, now, ok=False)
        if attempt == 4:
            break
        assert task.state is TaskState.SCHEDULED
        due = task.view()["not_before"]
        assert due is not None
        gaps.append(due - now)
        alive(h, due - 0.01)
        assert not assigned(h.tick(due - 0.01)), "not before its time"
        alive(h, due)
        assert assigned(h.tick(due)) == {"w1": [(task.id, attempt + 1)]}
        now = due + 0.5
    assert gaps == [1.0, 3.0, 5.0], "1, 3, then 9 capped at 5"
    assert task.view()["not_before"] == now + 5.0, "27, capped at 5 again"
    agrees(h)


def test_the_cluster_default_applies_and_lost_workers_retry_at_once(h: Harness) -> None:
    h.engine.retry = RetryPolicy(delay=2.0, jitter=0.5)
    (failing, lost), _ = h.submit(spec(), spec(), now=0.0)
    h.result("w1", failing, 1, 1.0, ok=False)
    due = failing.view()["not_before"]
    assert due is not None
    assert 2.0 <= due <= 4.0, "2 s +/- 50%"
    h.lost("w1", 1.5)
    assert lost.state is TaskState.PENDING, "a lost attempt is retried at once"
    assert failing.state is TaskState.SCHEDULED, "the worker's loss does not hurry a backoff"
    agrees(h)  # the jitter drawn is in the record: replay finds the same time


def test_a_task_waits_for_its_not_before_even_after_a_restart(h: Harness) -> None:
    (later, past), _ = h.submit(spec(not_before=50.0), spec(not_before=5.0), now=10.0)
    assert later.state is TaskState.SCHEDULED
    assert past.state is TaskState.ASSIGNED, "a time already past does not delay it"
    assert h.engine.next_due() == 50.0
    assert h.engine.counts()["scheduled"] == 1
    engine = restored(h)
    assert engine.next_due() == 50.0, "the new leader keeps the timer"
    engine.recovered(49.0)  # as on taking the lead: w1 gets a heartbeat timeout to return
    hello: Any = {"op": "hello", "worker_id": "w2", "url": "", "slots": 1}
    engine.hello({**hello, "types": ["echo"], "running": [], "epoch": 0}, 1, 49.0)
    assert not assigned(engine.tick(49.9))
    assert assigned(engine.tick(50.0)) == {"w2": [(later.id, 1)]}
    alive(h, 50.0)
    assert assigned(h.tick(50.0)) == {"w1": [(later.id, 1)]}
    agrees(h)


def test_cancelling_a_scheduled_task_drops_its_timer(h: Harness) -> None:
    (task,), _ = h.submit(spec(not_before=20.0), now=0.0)
    h.cancel(task, 1.0)
    alive(h, 20.0)
    effects = h.tick(20.0)
    assert not [r for r in effects.records if r["e"] == "due"]
    assert task.state is TaskState.CANCELLED
    agrees(h)


def test_a_dependent_released_before_its_not_before_is_scheduled(h: Harness) -> None:
    (first, second), _ = h.submit(spec(), spec(after=["#0"], not_before=30.0), now=0.0)
    h.result("w1", first, 1, 2.0)
    assert second.state is TaskState.SCHEDULED
    alive(h, 30.0)
    assert assigned(h.tick(30.0)) == {"w1": [(second.id, 1)]}
    agrees(h)


def test_keep_result_overrides_the_retention_both_ways(h: Harness) -> None:
    h.engine.retention = 100.0
    (short, usual, long), _ = h.submit(
        spec(keep_result=5.0), spec(), spec(keep_result=500.0), now=0.0
    )
    for task in (short, usual, long):
        h.result("w1", task, 1, 1.0)
    alive(h, 7.0)
    (record,) = [r for r in h.tick(7.0).records if r["e"] == "expire"]
    assert record["tasks"] == [short.id]
    alive(h, 102.0)
    (record,) = [r for r in h.tick(102.0).records if r["e"] == "expire"]
    assert record["tasks"] == [usual.id]
    assert h.engine.table.get(long.id) is long
    assert restored(h).table.kept, "a checkpoint keeps its own expiry"
    alive(h, 502.0)
    (record,) = [r for r in h.tick(502.0).records if r["e"] == "expire"]
    assert record["tasks"] == [long.id]
    agrees(h)


def test_many_scheduled_tasks_cost_nothing_per_tick_until_due(h: Harness) -> None:
    h.submit(*[spec(not_before=1000.0 + i) for i in range(20_000)], now=0.0)
    alive(h, 1.0)
    effects = h.tick(1.0)
    assert not effects.records, "nothing recorded, nothing scanned: one heap peek"
    alive(h, 1002.0)
    assert len(assigned(h.tick(1002.5))["w1"]) == 3
