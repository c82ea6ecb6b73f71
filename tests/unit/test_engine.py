"""The orchestrator engine, sans-IO, driven with explicit ``now`` floats as a fake clock."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from mutirao.errors import NotFoundError, ValidationError
from mutirao.orchestrator.engine import STEAL_AFTER, Effects, Engine
from mutirao.orchestrator.tasks import Record, Task, decode_snapshot
from mutirao.protocol import (
    AssignMsg,
    AttemptRef,
    HelloMsg,
    Outcome,
    ResultItem,
    TaskId,
    TaskSpec,
    TaskState,
    TaskView,
)
from mutirao.settings import HeartbeatSettings

HEARTBEAT = HeartbeatSettings(interval=1.0, timeout=3.0)


class Harness:
    """An engine plus every record it produced, as the journal would hold them."""

    def __init__(self) -> None:
        counter = itertools.count(1)
        self.engine = Engine(HEARTBEAT, new_id=lambda: TaskId(f"t{next(counter)}"))
        self.records: list[Record] = []
        self._keep(self.engine.take_lead(7, "o1", 0.0))
        self.sessions = itertools.count(1)
        self.session: dict[str, int] = {}

    def _keep(self, effects: Effects) -> Effects:
        self.records.extend(effects.records)
        return effects

    def hello(
        self,
        wid: str,
        now: float,
        *,
        slots: int = 2,
        types: Iterable[str] = ("echo",),
        running: Iterable[AttemptRef] = (),
        queues: Iterable[str] | None = None,
        resources: dict[str, float] | None = None,
        prefetch: int = 0,
    ) -> Effects:
        self.session[wid] = next(self.sessions)
        msg: HelloMsg = {
            "op": "hello",
            "worker_id": wid,
            "url": f"http://{wid}:1",
            "slots": slots,
            "types": list(types),
            "running": [list(ref) for ref in running],  # type: ignore[misc]
            "epoch": 0,
        }
        if queues is not None:
            msg["queues"] = list(queues)
        if resources is not None:
            msg["resources"] = resources
        if prefetch:
            msg["prefetch"] = prefetch
        return self._keep(self.engine.hello(msg, self.session[wid], now))

    def submit(
        self, *specs: TaskSpec, now: float, owner: str = "alice"
    ) -> tuple[list[Task], Effects]:
        tasks, effects = self.engine.submit(list(specs), owner, now)
        return tasks, self._keep(effects)

    def submit_one(self, now: float, **spec: Any) -> tuple[Task, Effects]:
        spec.setdefault("type", "echo")
        (task,), effects = self.submit(TaskSpec(**spec), now=now)
        return task, effects

    def started(self, wid: str, now: float, *refs: AttemptRef) -> Effects:
        return self._keep(self.engine.started(wid, self.session[wid], list(refs), now))

    def result(
        self,
        wid: str,
        task: Task | str,
        attempt: int,
        now: float,
        *,
        ok: bool = True,
        value: Any = None,
        stuck: int = 0,
    ) -> Effects:
        task_id = task if isinstance(task, str) else task.id
        error = None if ok else "RuntimeError: boom"
        item: ResultItem = (task_id, attempt, ok, value, error, now - 0.5, now)
        return self._keep(self.engine.results(wid, self.session[wid], [item], now, stuck))

    def lost(self, wid: str, now: float, reason: str = "connection closed") -> Effects:
        return self._keep(self.engine.worker_lost(wid, self.session[wid], reason, now))

    def heartbeat(self, wid: str, now: float, stuck: int = 0) -> Effects:
        return self._keep(self.engine.heartbeat_from(wid, self.session[wid], now, stuck))

    def tick(self, now: float) -> Effects:
        return self._keep(self.engine.tick(now))

    def cancel(self, task: Task, now: float) -> Effects:
        return self._keep(self.engine.cancel(task, now))

    def views(self) -> dict[str, TaskView]:
        return {t: task.view() for t, task in self.engine.table.tasks.items()}


def assigned(effects: Effects) -> dict[str, list[AttemptRef]]:
    """Per worker, the attempts the effects' assign messages hand out."""
    out: dict[str, list[AttemptRef]] = {}
    for wid, messages in effects.sends.items():
        for message in messages:
            if message["op"] == "assign":
                out.setdefault(wid, []).extend((i[0], i[1]) for i in message["items"])
    return out


def ops(effects: Effects, wid: str) -> list[str]:
    return [m["op"] for m in effects.sends.get(wid, [])]


def replay(records: list[Record]) -> Engine:
    """A fresh engine rebuilt from journal records, the way recovery does it."""
    fresh = Engine(HEARTBEAT)
    for record in records:
        fresh.apply(orjson.loads(orjson.dumps(record)))  # through JSON, like the journal
    return fresh


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- submissions ----------------------------------------------------------------------------


def test_a_type_no_worker_runs_is_queued_until_one_joins(h: Harness) -> None:
    (task,), _ = h.submit(TaskSpec("resize"), now=1.0)
    assert task.state is TaskState.PENDING
    assert h.engine.view(task, 1.0)["pending_reason"] == "no live worker runs task type 'resize'"
    assert h.engine.queue.depth_by_type() == {"resize": 1}
    effects = h.hello("w1", 2.0, types=["resize"])
    assert assigned(effects) == {"w1": [(task.id, 1)]}
    assert h.engine.view(task, 2.0)["pending_reason"] is None


def test_the_entry_of_a_queued_task_cancelled_then_expired_is_skipped(h: Harness) -> None:
    """Found by the fuzz: with no worker for its type, a cancelled task's queue entry stays
    until a dispatch reaches it, which may be after the task itself expired."""
    h.engine.retention = 0.0
    (task,), _ = h.submit(TaskSpec("resize"), now=1.0)
    h.cancel(task, 2.0)
    h.tick(3.0)
    assert task.id not in h.engine.table.tasks
    (other,), _ = h.submit(TaskSpec("resize"), now=3.5)
    effects = h.hello("w1", 4.0, types=["resize"])
    assert assigned(effects) == {"w1": [(other.id, 1)]}


def test_submit_of_an_unknown_type_names_the_field_when_refused(h: Harness) -> None:
    h.engine.refuse_unknown_types = True
    with pytest.raises(ValidationError, match=r"unknown task type 'echo'.*none yet") as info:
        h.submit(TaskSpec("echo"), now=1.0)
    assert info.value.field == "type"
    h.hello("w1", 0.0, types=["echo", "sleep"])
    with pytest.raises(ValidationError, match="known: echo, sleep") as info:
        h.submit(TaskSpec("echo"), TaskSpec("gpu"), now=1.0)
    assert info.value.field == "tasks[1].type"
    # All or nothing: the valid first task was not created either.
    assert h.engine.table.tasks == {}


def test_idempotent_resubmission_returns_the_same_task_without_a_record(h: Harness) -> None:
    h.hello("w1", 0.0)
    first, effects = h.submit_one(1.0, key="order-17", payload={"n": 1})
    assert [r["e"] for r in effects.records] == ["submit", "assign"]
    count = len(h.records)

    again, effects = h.submit_one(2.0, key="order-17", payload={"n": 2})
    assert again is first
    assert effects.records == []
    assert effects.sends == {}
    assert len(h.records) == count
    assert len(h.engine.table.tasks) == 1
    assert again.payload == {"n": 1}

    # Another owner's key is another task.
    (other,), _ = h.submit(TaskSpec("echo", key="order-17"), now=3.0, owner="bob")
    assert other.id != first.id


def test_duplicate_keys_within_one_batch_make_one_task(h: Harness) -> None:
    h.hello("w1", 0.0)
    tasks, effects = h.submit(
        TaskSpec("echo", key="a"), TaskSpec("echo", key="a"), TaskSpec("echo"), now=1.0
    )
    assert tasks[0] is tasks[1]
    assert tasks[2] is not tasks[0]
    assert len(effects.records[0]["tasks"]) == 2
    # The returned tasks are the table's own objects, which see later changes.
    assert all(h.engine.table.tasks[t.id] is t for t in tasks)
    assert tasks[0].state is TaskState.ASSIGNED


def test_get_of_an_unknown_task(h: Harness) -> None:
    with pytest.raises(NotFoundError) as info:
        h.engine.get("nope")
    assert info.value.field == "id"


# -- dispatch -------------------------------------------------------------------------------


def test_hello_registers_types_and_welcomes_the_worker(h: Harness) -> None:
    effects = h.hello("w1", 0.0, types=["sleep", "echo"])
    assert effects.records == [
        {"e": "types", "types": ["echo", "sleep"]},
        {"e": "worker", "id": "w1", "url": "http://w1:1"},
    ]
    assert effects.sends == {
        "w1": [{"op": "welcome", "epoch": 7, "heartbeat_interval": 1.0, "drop": []}]
    }
    # A second worker with the same types records only where it serves.
    assert h.hello("w2", 0.0, types=["echo"]).records == [
        {"e": "worker", "id": "w2", "url": "http://w2:1"}
    ]
    # Coming back from the same URL records nothing.
    assert h.hello("w2", 0.5, types=["echo"]).records == []
    assert [v["id"] for v in h.engine.worker_views(0.0)] == ["w1", "w2"]


def test_dispatch_sends_an_assign_message_to_the_least_loaded_worker(h: Harness) -> None:
    h.hello("big", 0.0, slots=4)
    h.hello("small", 0.0, slots=1)
    t1, effects = h.submit_one(1.0, payload={"x": 1}, timeout=9.0)
    # Both idle: tie broken by id.
    message: AssignMsg = {
        "op": "assign",
        "epoch": 7,
        "items": [(t1.id, 1, "echo", {"x": 1}, 9.0)],
    }
    assert effects.sends == {"big": [message]}
    assert effects.records[-1] == {"e": "assign", "w": "big", "at": 1.0, "items": [(t1.id, 1)]}
    assert t1.state is TaskState.ASSIGNED

    t2, effects = h.submit_one(2.0)  # big at 0.25, small at 0
    assert assigned(effects) == {"small": [(t2.id, 1)]}
    t3, effects = h.submit_one(3.0)  # small is full
    assert assigned(effects) == {"big": [(t3.id, 1)]}
    loads = {v["id"]: (v["running"], v["load"]) for v in h.engine.worker_views(3.0)}
    assert loads == {"big": (2, 0.5), "small": (1, 1.0)}


def test_a_batch_is_spread_by_load_and_sent_as_one_message_per_worker(h: Harness) -> None:
    h.hello("a", 0.0, slots=2)
    h.hello("b", 0.0, slots=2)
    tasks, effects = h.submit(*[TaskSpec("echo") for _ in range(5)], now=1.0)
    assert assigned(effects) == {
        "a": [(tasks[0].id, 1), (tasks[2].id, 1)],
        "b": [(tasks[1].id, 1), (tasks[3].id, 1)],
    }
    assert [ops(effects, w) for w in ("a", "b")] == [["assign"], ["assign"]]
    assert tasks[4].state is TaskState.PENDING
    # A slot frees up: the queued task goes there.
    effects = h.result("b", tasks[1], 1, 2.0)
    assert assigned(effects) == {"b": [(tasks[4].id, 1)]}


def test_higher_priority_runs_first(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1)
    busy, _ = h.submit_one(1.0)
    low, _ = h.submit_one(2.0)
    high, _ = h.submit_one(3.0, priority=5)
    effects = h.result("w1", busy, 1, 4.0)
    assert assigned(effects) == {"w1": [(high.id, 1)]}
    assert low.state is TaskState.PENDING


# -- results --------------------------------------------------------------------------------


def test_started_then_a_result_finishes_the_task_and_acks(h: Harness) -> None:
    h.hello("w1", 0.0)
    task, _ = h.submit_one(1.0)
    effects = h.started("w1", 1.5, (task.id, 1))
    assert effects.records == [{"e": "start", "at": 1.5, "items": [(task.id, 1)]}]
    assert task.state is TaskState.RUNNING

    effects = h.result("w1", task, 1, 2.0, value={"echo": 1})
    assert [r["e"] for r in effects.records] == ["finish"]
    (item,) = effects.records[0]["items"]
    assert item[:4] == [task.id, 1, "succeeded", {"echo": 1}]
    assert effects.sends == {"w1": [{"op": "ack", "attempts": [(task.id, 1)]}]}
    assert effects.finished == [task]
    assert task.state is TaskState.SUCCEEDED
    assert task.result == {"echo": 1}
    assert h.engine.workers["w1"].running == 0


def test_a_slot_held_by_a_stuck_thread_is_not_scheduled_on_until_freed(h: Harness) -> None:
    """A worker's timed-out attempt whose thread runs on (--pool threads) reports that slot
    held with its result: no task goes there until a heartbeat says the thread returned."""
    h.hello("w1", 0.0, slots=2)
    slow, _ = h.submit_one(1.0, max_attempts=1)
    other = [h.submit_one(1.1)[0] for _ in range(3)]
    assert h.engine.workers["w1"].running == 2
    effects = h.result("w1", slow, 1, 2.0, ok=False, stuck=1)
    assert assigned(effects) == {}, "one slot runs a task, the other is held by the thread"
    worker = h.engine.workers["w1"]
    assert (worker.running, worker.slots, worker.stuck) == (1, 1, 1)
    view = worker.view(2.0)
    assert (view["slots"], view["running"], view["stuck"], view["load"]) == (2, 1, 1, 1.0)
    assert assigned(h.heartbeat("w1", 2.5, stuck=1)) == {}, "nothing changed"
    freed = assigned(h.heartbeat("w1", 3.0, stuck=0))
    assert freed == {"w1": [(other[1].id, 1)]}, "the slot given back is filled at once"
    assert (worker.running, worker.slots, worker.stuck) == (2, 2, 0)


def test_a_failed_result_requeues_on_another_worker(h: Harness) -> None:
    h.hello("w1", 0.0)
    task, _ = h.submit_one(1.0)
    h.hello("w2", 1.5, slots=1)
    effects = h.result("w1", task, 1, 2.0, ok=False)
    assert assigned(effects) == {"w2": [(task.id, 2)]}
    assert task.attempts[0].outcome is Outcome.FAILED
    assert task.attempts[0].error == "RuntimeError: boom"
    assert effects.finished == []


def test_a_result_for_a_stale_attempt_is_ignored_but_acked(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.hello("w1", 0.0, slots=1)
    task, _ = h.submit_one(1.0)
    h.hello("w2", 1.0, slots=1)
    h.lost("w1", 2.0)
    assert task.attempts[-1].worker == "w2"
    # w1 comes back (new session) still holding attempt 1; it must drop it.
    effects = h.hello("w1", 2.5, slots=1, running=[(task.id, 1)])
    assert effects.sends["w1"][0] == {
        "op": "welcome",
        "epoch": 7,
        "heartbeat_interval": 1.0,
        "drop": [(task.id, 1)],
    }
    with caplog.at_level(logging.WARNING, logger="mutirao.orchestrator.engine"):
        effects = h.result("w1", task, 1, 3.0, value="stale")
    assert effects.records == []
    assert effects.sends == {"w1": [{"op": "ack", "attempts": [(task.id, 1)]}]}
    assert "no longer current" in caplog.text
    assert task.state is TaskState.ASSIGNED
    assert task.result is None

    effects = h.result("w2", task, 2, 4.0, value="fresh")
    assert task.state is TaskState.SUCCEEDED
    assert task.result == "fresh"


def test_messages_of_an_old_session_are_ignored(h: Harness) -> None:
    h.hello("w1", 0.0)
    task, _ = h.submit_one(1.0)
    old = h.session["w1"]
    h.hello("w1", 2.0, running=[(task.id, 1)])  # reconnect, still running it
    assert task.state is TaskState.ASSIGNED
    assert h.engine.results("w1", old, [], 3.0).sends == {}
    assert h.engine.worker_lost("w1", old, "old socket closed", 3.0).records == []
    assert h.engine.started("w1", old, [(task.id, 1)], 3.0).records == []
    assert h.engine.workers["w1"].state == "alive"
    assert task.state is TaskState.ASSIGNED


# -- failures -------------------------------------------------------------------------------


def test_worker_lost_requeues_its_attempts_on_another_worker(h: Harness) -> None:
    h.hello("w1", 0.0, slots=2)
    a, _ = h.submit_one(1.0)
    b, _ = h.submit_one(1.0)
    h.hello("w2", 1.5, slots=4)
    effects = h.lost("w1", 2.0, "connection reset")
    finish = [r for r in effects.records if r["e"] == "finish"]
    assert [tuple(i[:3]) for i in finish[0]["items"]] == sorted(
        [(a.id, 1, "lost"), (b.id, 1, "lost")]
    )
    assert assigned(effects) == {"w2": sorted([(a.id, 2), (b.id, 2)])}
    assert a.attempts[0].error == "worker w1 died: connection reset"
    assert [x.worker for x in a.attempts] == ["w1", "w2"]
    w1 = h.engine.workers["w1"]
    assert (w1.state, w1.connected, w1.eligible, w1.running) == ("dead", False, False, 0)
    # Losing it again is a no-op.
    assert h.lost("w1", 3.0).records == []


def test_tick_marks_a_silent_worker_suspect_then_dead_and_requeues(h: Harness) -> None:
    h.hello("w1", 0.0)
    h.hello("w2", 0.0)
    task, effects = h.submit_one(0.5)
    assert assigned(effects) == {"w1": [(task.id, 1)]}
    for now in (1.0, 2.0, 2.5, 3.0):
        h.heartbeat("w2", now)
        assert h.tick(now).records == []
    # w1 was last seen at 0.0; after 2 intervals it is suspect and gets no new work.
    assert h.engine.workers["w1"].state == "suspect"
    assert h.engine.workers["w2"].state == "alive"
    other, effects = h.submit_one(2.5)
    assert assigned(effects) == {"w2": [(other.id, 1)]}

    effects = h.tick(3.01)
    assert effects.disconnect == ["w1"]
    assert h.engine.workers["w1"].state == "dead"
    assert task.attempts[0].outcome is Outcome.LOST
    assert "no heartbeat for 3.0s" in (task.attempts[0].error or "")
    assert assigned(effects) == {"w2": [(task.id, 2)]}
    # Dead workers are not declared dead twice.
    assert h.tick(10.0).disconnect == ["w2"]


def test_a_heartbeat_brings_a_suspect_worker_back(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1)
    h.tick(2.5)
    assert h.engine.workers["w1"].state == "suspect"
    task, effects = h.submit_one(2.6)
    assert effects.sends == {}
    assert task.state is TaskState.PENDING
    h.heartbeat("w1", 2.7)
    assert h.engine.workers["w1"].state == "alive"
    # The next tick hands it the task queued while it was suspect.
    effects = h.tick(2.8)
    assert assigned(effects) == {"w1": [(task.id, 1)]}


def test_a_hello_that_does_not_report_an_attempt_marks_it_lost(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.hello("w1", 0.0, slots=1)
    task, _ = h.submit_one(1.0)
    with caplog.at_level(logging.WARNING, logger="mutirao.orchestrator.engine"):
        effects = h.hello("w1", 2.0, slots=1, running=[])
    assert "re-registered without 1 attempt(s)" in caplog.text
    assert task.attempts[0].outcome is Outcome.LOST
    assert task.attempts[0].error == "worker w1 restarted and no longer runs it"
    # The only worker is the restarted one: the avoid preference yields, attempt 2 goes there.
    assert ops(effects, "w1") == ["welcome", "assign"]
    assert assigned(effects) == {"w1": [(task.id, 2)]}


def test_a_hello_reporting_the_next_attempt_of_a_pending_task_adopts_it(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1)
    h.lost("w1", 0.5)
    task, _ = h.submit_one(1.0)  # the type is known, but nobody is connected
    assert task.state is TaskState.PENDING

    # A worker says it runs attempt 1 (e.g. the orchestrator lost the assign record).
    effects = h.hello("w2", 2.0, slots=2, running=[(task.id, 1), (task.id, 5), ("ghost", 1)])
    assert {"e": "assign", "w": "w2", "at": 2.0, "items": [(task.id, 1)]} in effects.records
    welcome = effects.sends["w2"][0]
    assert welcome["op"] == "welcome"
    assert welcome["drop"] == [("ghost", 1), (task.id, 5)]
    assert task.state is TaskState.ASSIGNED
    assert task.attempts[0].worker == "w2"
    # The task's stale queue entry is not dispatched again.
    assert assigned(effects) == {}
    assert h.engine.workers["w2"].running == 1

    effects = h.result("w2", task, 1, 3.0, value="adopted")
    assert task.state is TaskState.SUCCEEDED


def test_an_adopted_then_lost_task_is_dispatched_once(h: Harness) -> None:
    # Adopting leaves a stale queue entry; after the next loss the task is queued twice.
    h.hello("w1", 0.0, slots=1)
    h.lost("w1", 0.1)
    task, _ = h.submit_one(1.0)
    h.hello("w2", 2.0, slots=1, running=[(task.id, 1)])
    h.hello("w3", 2.5, slots=0)
    h.lost("w2", 3.0)
    effects = h.hello("w4", 4.0, slots=4)
    assert assigned(effects) == {"w4": [(task.id, 2)]}
    assert h.engine.workers["w4"].running == 1


def test_a_task_lost_max_attempts_times_fails(h: Harness) -> None:
    h.hello("w1", 0.0)
    task, _ = h.submit_one(0.5, max_attempts=2)
    h.hello("w2", 0.6)
    h.lost("w1", 1.0)
    assert task.attempts[-1].worker == "w2"
    effects = h.lost("w2", 2.0, "connection reset")
    assert task.state is TaskState.FAILED
    assert effects.finished == [task]
    assert task.error is not None
    assert "lost 2 time(s)" in task.error
    assert "worker w2 died: connection reset" in task.error
    assert task.finished_at == 2.0


def test_cancel_of_a_running_task_tells_the_worker_and_frees_the_slot(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1)
    running, _ = h.submit_one(1.0)
    waiting, _ = h.submit_one(1.0)
    effects = h.cancel(running, 2.0)
    assert effects.sends["w1"][0] == {"op": "cancel", "epoch": 7, "attempts": [(running.id, 1)]}
    assert assigned(effects) == {"w1": [(waiting.id, 1)]}
    assert effects.finished == [running]
    assert running.state is TaskState.CANCELLED
    # Cancelling again, or a finished task, does nothing.
    assert h.cancel(running, 3.0).records == []


def test_cancel_of_a_pending_task(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1)
    h.submit_one(1.0)
    pending, _ = h.submit_one(1.0)
    effects = h.cancel(pending, 2.0)
    assert effects.records == [{"e": "cancel", "at": 2.0, "tasks": [pending.id]}]
    assert effects.sends == {}
    assert pending.state is TaskState.CANCELLED


def test_counts(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1)
    done, _ = h.submit_one(1.0)
    h.submit_one(1.0)
    h.result("w1", done, 1, 2.0)
    counts = h.engine.counts()
    assert counts["succeeded"] == 1
    assert counts["assigned"] == 1
    assert sum(counts.values()) == 2


# -- event sourcing -------------------------------------------------------------------------


def _eventful(h: Harness) -> None:
    h.hello("w1", 0.0, slots=2, types=["echo", "sleep"])
    h.hello("w2", 0.0, slots=1)
    a, _ = h.submit_one(1.0, key="a")
    b, _ = h.submit_one(1.0, priority=3)
    h.submit_one(1.0, max_attempts=1)  # fails for good when w2 is lost
    d, _ = h.submit_one(1.0)
    e, _ = h.submit_one(1.0, type="sleep", payload={"seconds": 1})
    h.submit_one(1.5, key="a")  # idempotent resubmission
    h.started("w1", 1.6, (a.id, 1), (b.id, 1))
    h.result("w1", a, 1, 2.0, value=[1, 2])
    h.lost("w2", 2.5)
    h.hello("w3", 3.0, slots=2)
    h.result(b.attempts[-1].worker, b, 1, 3.5, ok=False)
    h.cancel(d, 4.0)
    h.tick(4.5)  # w1 was silent since 2.0 -> suspect
    h.tick(7.0)  # ... then dead: its attempts are requeued to w3
    h.hello("w1", 7.5, slots=2, types=["echo", "sleep"], running=[(e.id, 1)])
    for task in h.engine.table.tasks.values():
        if task.state is TaskState.ASSIGNED and task.attempts[-1].worker == "w3":
            h.result("w3", task, task.attempts[-1].n, 8.0, value="w3")
    assert {t.state for t in h.engine.table.tasks.values()} >= {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
    }


def test_replaying_the_records_rebuilds_the_same_tasks(h: Harness) -> None:
    _eventful(h)
    fresh = replay(h.records)
    assert {t: task.view() for t, task in fresh.table.tasks.items()} == h.views()
    assert fresh.table.known_types == h.engine.table.known_types
    assert fresh.table.keys == h.engine.table.keys
    assert fresh.counts() == h.engine.counts()
    # Workers holding attempts are known again, with what they hold.
    for wid, worker in h.engine.workers.items():
        if worker.attempts:
            assert fresh.workers[wid].attempts == worker.attempts


def test_replay_then_a_checkpoint_restore_agree(h: Harness) -> None:
    _eventful(h)
    snapshot = decode_snapshot(h.engine.table.snapshot())
    restored = Engine(HEARTBEAT)
    restored.load(snapshot)
    assert {t: task.view() for t, task in restored.table.tasks.items()} == h.views()
    replayed = replay(h.records)
    assert {w: x.attempts for w, x in restored.workers.items() if x.attempts} == {
        w: x.attempts for w, x in replayed.workers.items() if x.attempts
    }


def test_after_recovery_a_requeued_task_is_dispatched_once() -> None:
    h = Harness()
    h.hello("w1", 0.0, slots=1)
    task, _ = h.submit_one(1.0)
    h.lost("w1", 2.0)
    assert task.state is TaskState.PENDING

    # The replayed submit queues the task; the replayed loss queues it again.
    fresh = replay(h.records)
    fresh.recovered(10.0)
    msg: HelloMsg = {
        "op": "hello",
        "worker_id": "w2",
        "url": "",
        "slots": 4,
        "types": ["echo"],
        "running": [],
        "epoch": 0,
    }
    effects = fresh.hello(msg, 1, 10.0)
    assert assigned(effects) == {"w2": [(task.id, 2)]}
    assert fresh.workers["w2"].running == 1


def test_after_recovery_silent_workers_are_given_one_timeout_then_declared_dead() -> None:
    h = Harness()
    h.hello("w1", 0.0)
    task, _ = h.submit_one(1.0)
    fresh = replay(h.records)
    fresh.recovered(100.0)
    assert fresh.tick(102.0).records == []
    msg: HelloMsg = {
        "op": "hello",
        "worker_id": "w2",
        "url": "",
        "slots": 1,
        "types": ["echo"],
        "running": [],
        "epoch": 0,
    }
    fresh.hello(msg, 1, 102.5)
    fresh.heartbeat_from("w2", 1, 103.0)
    effects = fresh.tick(103.5)
    assert effects.disconnect == []  # w1 never reconnected: nothing to close
    assert assigned(effects) == {"w2": [(task.id, 2)]}
    assert fresh.table.tasks[task.id].attempts[0].outcome is Outcome.LOST


# -- retention ------------------------------------------------------------------------------


def test_finished_tasks_expire_after_the_retention_period(h: Harness) -> None:
    h.engine.retention = 10.0
    h.hello("w1", 0.0, slots=4)
    done, _ = h.submit_one(1.0, key="k-done")
    failed, _ = h.submit_one(1.0, max_attempts=1)
    running, _ = h.submit_one(1.0)
    cancelled, _ = h.submit_one(1.0)
    h.result("w1", done, 1, 2.0, value="kept for a while")
    h.result("w1", failed, 1, 3.0, ok=False)
    h.cancel(cancelled, 4.0)
    h.heartbeat("w1", 11.5)
    assert not [r for r in h.tick(11.9).records if r["e"] == "expire"], "not yet 10 s old"

    h.heartbeat("w1", 13.5)
    (record,) = [r for r in h.tick(13.5).records if r["e"] == "expire"]
    assert record["tasks"] == [done.id, failed.id], "oldest first; the cancelled one is younger"
    table = h.engine.table
    assert table.get(done.id) is None
    assert table.get(failed.id) is None
    assert table.get(running.id) is running, "an unfinished task never expires"
    assert h.engine.counts()["succeeded"] == 0
    assert h.engine.counts()["failed"] == 0
    with pytest.raises(NotFoundError):
        h.engine.get(done.id)
    # The key went with the task: the same key now makes a new task.
    again, _ = h.submit_one(14.0, key="k-done")
    assert again.id != done.id

    h.heartbeat("w1", 15.0)
    (record,) = [r for r in h.tick(15.0).records if r["e"] == "expire"]
    assert record["tasks"] == [cancelled.id]
    assert list(table.finished) == [], "expired entries leave the finished queue"

    # Replay forgets the same tasks and keys (the journal holds the expire records).
    fresh = replay(h.records)
    assert {t: task.view() for t, task in fresh.table.tasks.items()} == h.views()
    assert fresh.table.keys == table.keys
    assert fresh.counts() == h.engine.counts()


def test_expiry_goes_in_bounded_steps_and_survives_a_checkpoint(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mutirao.orchestrator.engine.EXPIRE_BATCH", 3)
    h.engine.retention = 0.0
    h.hello("w1", 0.0, slots=8)
    tasks, _ = h.submit(*[TaskSpec("echo") for _ in range(7)], now=1.0)
    for i, task in enumerate(tasks):
        h.result("w1", task, 1, 2.0 + i)
    # A checkpoint now: the restored table expires them in the same order.
    snapshot = decode_snapshot(h.engine.table.snapshot())
    restored = Engine(HEARTBEAT, retention=0.0)
    restored.table.restore(snapshot)
    assert [t.id for t in restored.table.finished] == [t.id for t in tasks]

    expired: list[str] = []
    for now in (20.0, 20.5, 21.0, 21.5):
        h.heartbeat("w1", now)
        expired += [i for r in h.tick(now).records if r["e"] == "expire" for i in r["tasks"]]
    assert expired == [t.id for t in tasks], "three per tick, oldest first, each once"
    restored_expired = [
        i for r in restored.tick(20.0).records if r["e"] == "expire" for i in r["tasks"]
    ]
    assert restored_expired == [t.id for t in tasks[:3]]


def test_a_standby_queue_does_not_grow_with_every_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower applies submissions and assignments but never dispatches: stale queue
    entries are compacted away, and what is left is exactly the pending tasks, in order."""
    monkeypatch.setattr("mutirao.orchestrator.engine._COMPACT_SLACK", 8)
    h = Harness()
    h.hello("w1", 0.0, slots=1000)
    for i in range(40):
        _, effects = h.submit(*[TaskSpec("echo") for _ in range(5)], now=1.0 + i)
        for task_id, n in assigned(effects)["w1"]:
            h.result("w1", task_id, n, 1.5 + i)
    h.lost("w1", 50.0)
    waiting, _ = h.submit(*[TaskSpec("echo") for _ in range(3)], now=51.0)
    follower = Engine(HEARTBEAT)
    most = 0
    for record in h.records:
        follower.apply(orjson.loads(orjson.dumps(record)))
        most = max(most, len(follower.queue))
    assert most <= 8 + 2 * 5, f"{most} entries for at most 5 pending tasks"
    queued = [q for lane in follower.queue.lanes() for q in lane.queued()]
    current = sorted(task_id for task_id, n in queued if follower._is_current(task_id, n))
    assert current == sorted(t.id for t in waiting)


def test_a_draining_worker_gets_nothing_new_and_hands_back_without_costing_attempts(
    h: Harness,
) -> None:
    h.hello("w1", 0.0, slots=2)
    once = TaskSpec("echo", max_attempts=1)
    (t1, t2, t3), _ = h.submit(once, once, once, now=1.0)
    assert (t1.state, t2.state, t3.state) == ("assigned", "assigned", "pending")
    h.engine.drain("w1", h.session["w1"])
    h.heartbeat("w1", 2.0)  # a sign of life does not make it take work again
    assert h.engine.workers["w1"].view(2.0)["state"] == "draining"
    assert assigned(h.result("w1", t1, 1, 2.5)) == {}, "a freed slot takes nothing new"
    effects = h._keep(h.engine.release("w1", h.session["w1"], [(t2.id, 1)], 3.0))
    assert ops(effects, "w1") == ["ack"]
    assert t2.state is TaskState.PENDING
    assert t2.attempts[-1].outcome is Outcome.RELEASED
    effects = h.hello("w2", 3.5)
    assert sorted(assigned(effects)["w2"]) == sorted([(t2.id, 2), (t3.id, 1)])
    h.result("w2", t2, 2, 4.0)
    assert t2.state is TaskState.SUCCEEDED, "the hand-back did not use its only attempt"
    assert {t: x.view() for t, x in replay(h.records).table.tasks.items()} == h.views()


# -- prefetch ---------------------------------------------------------------------------------


def test_a_worker_takes_its_prefetch_window_beyond_its_slots_counted_in_its_load(
    h: Harness,
) -> None:
    h.hello("w1", 0.0, slots=1, prefetch=2)
    tasks, effects = h.submit(*[TaskSpec("echo")] * 4, now=1.0)
    assert assigned(effects) == {"w1": [(t.id, 1) for t in tasks[:3]]}
    assert tasks[3].state is TaskState.PENDING, "the window is bounded"
    view = h.engine.workers["w1"].view(1.0)
    assert (view["running"], view["load"]) == (3, 3.0)
    # A second worker: the least loaded takes the next task, not the one with a window.
    assert assigned(h.hello("w2", 1.5, slots=1)) == {"w2": [(tasks[3].id, 1)]}


def test_prefetched_attempts_are_lost_with_their_worker_and_run_again(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1, prefetch=2)
    tasks, _ = h.submit(*[TaskSpec("echo")] * 3, now=1.0)
    h.started("w1", 1.1, (tasks[0].id, 1))
    effects = h.lost("w1", 2.0)
    assert all(t.attempts[0].outcome is Outcome.LOST for t in tasks)
    effects = h.hello("w2", 2.5, slots=4)
    assert sorted(assigned(effects)["w2"]) == sorted((t.id, 2) for t in tasks)
    assert {t: x.view() for t, x in replay(h.records).table.tasks.items()} == h.views()


def test_no_prefetch_for_limited_types_or_tasks_that_take_resources(h: Harness) -> None:
    h.hello("w1", 0.0, slots=1, prefetch=4, types=("echo", "sleep"))
    h._keep(h.engine.record({"e": "limit", "l": {"type": "sleep", "concurrency": 10}}))
    (big, capped, plain, plain2), effects = h.submit(
        TaskSpec("echo", resources={"cpu": 2}), TaskSpec("sleep"), TaskSpec("sleep"),
        TaskSpec("echo"), now=1.0,
    )  # fmt: skip
    # big fits no one-slot worker; of the sleeps only one starts (no window for a limited
    # type); the echo waits in the window.
    assert sorted(assigned(effects)["w1"]) == sorted([(capped.id, 1), (plain2.id, 1)])
    assert (big.state, plain.state) == (TaskState.PENDING, TaskState.PENDING)


def test_an_idle_worker_takes_over_prefetched_attempts_stuck_behind_a_long_one(
    h: Harness,
) -> None:
    h.hello("w1", 0.0, slots=1, prefetch=3)
    (long, *short), _ = h.submit(*[TaskSpec("echo")] * 4, now=1.0)
    h.started("w1", 1.0, (long.id, 1))
    h.hello("w2", 1.2, slots=2)
    assert ops(h.tick(1.3), "w1") == [], "not before STEAL_AFTER: they may start any moment"
    effects = h.tick(1.0 + STEAL_AFTER + 0.1)
    [revoke] = [m for m in effects.sends["w1"] if m["op"] == "revoke"]
    assert sorted(revoke["attempts"]) == sorted((t.id, 1) for t in short[1:])  # two: w2's slots
    assert ops(h.tick(1.0 + STEAL_AFTER + 0.2), "w1") == [], "asked once"
    # w1 had started one of them meanwhile: it gives back only the other.
    h.started("w1", 1.7, (short[1].id, 1))
    effects = h._keep(h.engine.release("w1", h.session["w1"], [(short[2].id, 1)], 1.8))
    assert assigned(effects) == {"w2": [(short[2].id, 2)]}
    assert short[2].attempts[0].outcome is Outcome.RELEASED
    h.result("w2", short[2], 2, 2.0)
    assert short[2].state is TaskState.SUCCEEDED
    assert {t: x.view() for t, x in replay(h.records).table.tasks.items()} == h.views()
