"""TaskTable.apply: the event-sourced task state machine."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mutirao.orchestrator.tasks import Record, TaskTable, decode_snapshot
from mutirao.protocol import Outcome, TaskState


def row(
    task_id: str,
    *,
    task_type: str = "echo",
    max_attempts: int = 3,
    key: str | None = None,
    owner: str = "alice",
    priority: int = 0,
    payload: Any = None,
) -> list[Any]:
    return [task_id, task_type, payload, priority, max_attempts, 30.0, key, owner, 1.0]


def submit(*rows: Any) -> Record:
    return {"e": "submit", "tasks": list(rows)}


def assign(worker: str, at: float, *items: tuple[str, int]) -> Record:
    return {"e": "assign", "w": worker, "at": at, "items": [list(i) for i in items]}


def start(at: float, *items: tuple[str, int]) -> Record:
    return {"e": "start", "at": at, "items": [list(i) for i in items]}


def finish(
    task_id: str,
    n: int,
    outcome: Outcome,
    *,
    at: float,
    value: Any = None,
    error: str | None = None,
    started: float | None = None,
) -> Record:
    return {"e": "finish", "items": [[task_id, n, outcome, value, error, started, at]]}


def expire(*task_ids: str) -> Record:
    return {"e": "expire", "tasks": list(task_ids)}


def cancel(at: float, *task_ids: str) -> Record:
    return {"e": "cancel", "at": at, "tasks": list(task_ids)}


@pytest.fixture
def table() -> TaskTable:
    table = TaskTable()
    table.apply({"e": "types", "types": ["echo"]})
    return table


def test_submit_assign_start_finish_succeeded(table: TaskTable) -> None:
    changes = table.apply(submit(row("t1", payload={"x": 1})))
    assert [(c.task.id, c.old_state, c.old_worker) for c in changes] == [
        ("t1", TaskState.PENDING, None)
    ]
    task = table.tasks["t1"]
    assert task.state is TaskState.PENDING
    assert task.current is None

    changes = table.apply(assign("w1", 2.0, ("t1", 1)))
    assert [(c.task.id, c.old_state) for c in changes] == [("t1", TaskState.PENDING)]
    assert task.state is TaskState.ASSIGNED
    assert task.current is task.attempts[0]

    assert table.apply(start(3.0, ("t1", 1))) == []
    assert task.state is TaskState.RUNNING

    changes = table.apply(finish("t1", 1, Outcome.SUCCEEDED, at=5.0, value=[42], started=3.5))
    assert [(c.task.id, c.old_state, c.old_worker) for c in changes] == [
        ("t1", TaskState.RUNNING, "w1")
    ]
    view = task.view()
    assert view["state"] == "succeeded"
    assert view["result"] == [42]
    assert view["error"] is None
    assert view["finished_at"] == 5.0
    assert view["payload"] == {"x": 1}
    assert view["attempts"] == [
        {
            "attempt": 1,
            "worker": "w1",
            "assigned_at": 2.0,
            "started_at": 3.5,
            "ended_at": 5.0,
            "outcome": "succeeded",
            "error": None,
        }
    ]
    assert task.current is None


def test_submit_assigns_increasing_sequence_numbers(table: TaskTable) -> None:
    table.apply(submit(row("t1"), row("t2")))
    table.apply(submit(row("t3")))
    assert [table.tasks[t].seq for t in ("t1", "t2", "t3")] == [1, 2, 3]


def test_assign_needs_a_pending_task_and_the_next_attempt_number(table: TaskTable) -> None:
    table.apply(submit(row("t1")))
    assert table.apply(assign("w1", 1.0, ("t1", 2))) == []  # skips a number
    assert table.tasks["t1"].state is TaskState.PENDING
    assert len(table.apply(assign("w1", 1.0, ("t1", 1)))) == 1
    # Assigned already: a second assignment of the same attempt changes nothing.
    assert table.apply(assign("w2", 1.5, ("t1", 1))) == []
    assert [a.worker for a in table.tasks["t1"].attempts] == ["w1"]


def test_start_of_a_stale_attempt_is_ignored(table: TaskTable) -> None:
    table.apply(submit(row("t1")))
    table.apply(start(1.0, ("t1", 1)))  # not assigned yet
    assert table.tasks["t1"].state is TaskState.PENDING
    table.apply(assign("w1", 2.0, ("t1", 1)))
    table.apply(start(3.0, ("t1", 7)))
    assert table.tasks["t1"].state is TaskState.ASSIGNED
    assert table.tasks["t1"].attempts[0].started_at is None


def test_failed_attempts_requeue_until_max_attempts(table: TaskTable) -> None:
    table.apply(submit(row("t1", max_attempts=2)))
    task = table.tasks["t1"]
    table.apply(assign("w1", 1.0, ("t1", 1)))
    table.apply(finish("t1", 1, Outcome.FAILED, at=2.0, error="ValueError: first"))
    assert task.state is TaskState.PENDING
    assert task.finished_at is None
    assert task.error is None

    table.apply(assign("w2", 3.0, ("t1", 2)))
    changes = table.apply(finish("t1", 2, Outcome.FAILED, at=4.0, error="ValueError: second"))
    assert [(c.old_state, c.old_worker) for c in changes] == [(TaskState.ASSIGNED, "w2")]
    assert task.state is TaskState.FAILED
    assert task.finished_at == 4.0
    assert task.error == "failed after 2 attempts; last error: ValueError: second"
    assert [a.outcome for a in task.attempts] == [Outcome.FAILED, Outcome.FAILED]


def test_lost_attempts_fail_the_task_with_an_error_naming_the_lost_workers(
    table: TaskTable,
) -> None:
    table.apply(submit(row("t1", max_attempts=3)))
    task = table.tasks["t1"]
    for n, worker in enumerate(("w1", "w2", "w3"), 1):
        assert task.state is TaskState.PENDING
        table.apply(assign(worker, float(n), ("t1", n)))
        table.apply(finish("t1", n, Outcome.LOST, at=n + 0.5, error=f"worker {worker} died"))
    assert task.state is TaskState.FAILED
    assert task.error is not None
    assert "3 attempts" in task.error
    assert "lost 3 time(s)" in task.error
    assert "w3" in task.error
    assert "worker w3 died" in task.error


def test_a_mix_of_failures_and_losses_counts_the_losses(table: TaskTable) -> None:
    table.apply(submit(row("t1", max_attempts=2)))
    table.apply(assign("w1", 1.0, ("t1", 1)))
    table.apply(finish("t1", 1, Outcome.FAILED, at=2.0, error="boom"))
    table.apply(assign("w2", 3.0, ("t1", 2)))
    table.apply(finish("t1", 2, Outcome.LOST, at=4.0))
    error = table.tasks["t1"].error
    assert error is not None
    assert "lost 1 time(s), last w2: no reason given" in error


def test_a_finish_for_an_old_attempt_is_ignored(table: TaskTable) -> None:
    table.apply(submit(row("t1")))
    table.apply(assign("w1", 1.0, ("t1", 1)))
    table.apply(finish("t1", 1, Outcome.LOST, at=2.0, error="worker w1 died"))
    table.apply(assign("w2", 3.0, ("t1", 2)))
    task = table.tasks["t1"]

    # The first worker comes back with a result for attempt 1: fenced off.
    assert table.apply(finish("t1", 1, Outcome.SUCCEEDED, at=4.0, value="stale")) == []
    assert task.state is TaskState.ASSIGNED
    assert task.result is None
    assert task.attempts[0].outcome is Outcome.LOST
    assert task.attempts[1].outcome is None

    table.apply(finish("t1", 2, Outcome.SUCCEEDED, at=5.0, value="fresh"))
    assert task.result == "fresh"
    # And once finished, repeating the finish changes nothing.
    assert table.apply(finish("t1", 2, Outcome.FAILED, at=6.0, error="late")) == []
    assert task.state is TaskState.SUCCEEDED


def test_cancel_a_pending_task(table: TaskTable) -> None:
    table.apply(submit(row("t1")))
    changes = table.apply(cancel(2.0, "t1"))
    assert [(c.old_state, c.old_worker) for c in changes] == [(TaskState.PENDING, None)]
    task = table.tasks["t1"]
    assert task.state is TaskState.CANCELLED
    assert task.finished_at == 2.0
    assert not task.attempts
    # It can no longer be assigned.
    assert table.apply(assign("w1", 3.0, ("t1", 1))) == []


def test_cancel_a_running_task(table: TaskTable) -> None:
    table.apply(submit(row("t1")))
    table.apply(assign("w1", 1.0, ("t1", 1)))
    table.apply(start(1.5, ("t1", 1)))
    changes = table.apply(cancel(2.0, "t1"))
    assert [(c.old_state, c.old_worker) for c in changes] == [(TaskState.RUNNING, "w1")]
    task = table.tasks["t1"]
    assert task.state is TaskState.CANCELLED
    assert task.attempts[0].outcome is Outcome.CANCELLED
    assert task.attempts[0].ended_at == 2.0
    # The worker's late result is ignored.
    assert table.apply(finish("t1", 1, Outcome.SUCCEEDED, at=3.0, value=1)) == []
    assert task.state is TaskState.CANCELLED
    assert task.result is None


def test_cancel_of_a_finished_task_changes_nothing(table: TaskTable) -> None:
    table.apply(submit(row("t1")))
    table.apply(assign("w1", 1.0, ("t1", 1)))
    table.apply(finish("t1", 1, Outcome.SUCCEEDED, at=2.0, value=1))
    assert table.apply(cancel(3.0, "t1")) == []
    assert table.tasks["t1"].state is TaskState.SUCCEEDED
    assert table.tasks["t1"].finished_at == 2.0


def test_idempotency_keys_are_per_owner(table: TaskTable) -> None:
    table.apply(submit(row("t1", key="k", owner="alice"), row("t2", key="k", owner="bob")))
    table.apply(submit(row("t3")))
    assert table.keys_of("alice") == {"k": "t1"}
    assert table.keys_of("bob") == {"k": "t2"}
    assert table.keys_of("carol") == {}


def test_types_records_accumulate(table: TaskTable) -> None:
    table.apply({"e": "types", "types": ["sleep", "fail"]})
    assert table.known_types == {"echo", "sleep", "fail"}


def test_an_unknown_record_kind_is_rejected(table: TaskTable) -> None:
    with pytest.raises(ValueError, match="unknown journal record kind 'bogus'"):
        table.apply({"e": "bogus"})


def _busy_table() -> TaskTable:
    table = TaskTable()
    table.apply({"e": "types", "types": ["echo", "sleep"]})
    table.apply(
        submit(
            row("done", key="k1", payload={"n": 1}),
            row("failed", max_attempts=1, task_type="sleep"),
            row("running", key="k2", owner="bob", priority=5),
            row("retrying"),
            row("cancelled"),
            row("waiting"),
        )
    )
    table.apply(assign("w1", 2.0, ("done", 1), ("failed", 1), ("running", 1), ("retrying", 1)))
    table.apply(start(2.5, ("done", 1), ("running", 1)))
    table.apply(finish("done", 1, Outcome.SUCCEEDED, at=3.0, value={"ok": True}))
    table.apply(finish("failed", 1, Outcome.LOST, at=3.0, error="worker w1 died"))
    table.apply(finish("retrying", 1, Outcome.FAILED, at=3.0, error="boom"))
    table.apply(cancel(3.5, "cancelled"))
    return table


def test_snapshot_restore_round_trip() -> None:
    table = _busy_table()
    restored = TaskTable()
    restored.restore(decode_snapshot(table.snapshot()))
    assert {t: task.view() for t, task in restored.tasks.items()} == {
        t: task.view() for t, task in table.tasks.items()
    }
    assert restored.keys == table.keys
    assert restored.known_types == table.known_types
    for task in restored.tasks.values():
        assert type(task.state) is TaskState
        assert all(a.outcome is None or type(a.outcome) is Outcome for a in task.attempts)
    assert restored.snapshot() == table.snapshot()
    assert (restored.by_state, restored.pending) == (table.by_state, table.pending)

    # The restored table keeps working: sequence numbers continue, fencing still holds.
    restored.apply(submit(row("later")))
    assert restored.tasks["later"].seq == 7
    restored.apply(finish("running", 1, Outcome.SUCCEEDED, at=4.0, value=2))
    assert restored.tasks["running"].state is TaskState.SUCCEEDED
    restored.apply(assign("w2", 4.0, ("retrying", 2)))
    assert restored.tasks["retrying"].state is TaskState.ASSIGNED


def test_a_snapshot_in_pieces_is_the_snapshot() -> None:
    table = _busy_table()
    for size in (1, 2, 100):
        assert b"".join(table.snapshot_pieces(size)) == table.snapshot()
    assert b"".join(TaskTable().snapshot_pieces(2)) == TaskTable().snapshot()
    assert orjson.loads(TaskTable().snapshot())["tasks"] == []


def test_a_fuzzy_snapshot_plus_the_records_since_restores_the_table() -> None:
    """Pieces encoded while records keep changing the tasks (as a checkpoint does with the
    loop running), restored and then replayed with every record applied since: the same
    table as the live one, however far each task had moved when its piece was made."""
    live = _busy_table()
    pieces = live.snapshot_pieces(size=2)
    since: list[Record] = []

    def apply(record: Record) -> None:
        live.apply(record)
        since.append(record)

    parts = [next(pieces)]
    apply(submit(row("after")))
    apply(finish("running", 1, Outcome.SUCCEEDED, at=4.0, value="late"))
    parts.append(next(pieces))
    apply(assign("w2", 4.5, ("retrying", 2), ("after", 1)))
    apply(finish("after", 1, Outcome.LOST, at=5.0, error="gone"))
    apply(expire("done"))
    parts += list(pieces)

    restored = TaskTable()
    restored.restore(decode_snapshot(b"".join(parts)))
    for record in orjson.loads(orjson.dumps(since)):  # through JSON, like the journal
        restored.apply(record)
    assert {t: x.view() for t, x in restored.tasks.items()} == {
        t: x.view() for t, x in live.tasks.items()
    }
    assert (restored.by_state, restored.pending, restored.keys) == (
        live.by_state,
        live.pending,
        live.keys,
    )
    assert [t.id for t in restored.finished] == [t.id for t in live.finished]


def test_records_written_with_objects_still_apply(table: TaskTable) -> None:
    """Journals written before rows and items became lists hold objects; replaying one
    gives the same table."""
    fields = ["id", "type", "payload", "priority", "max_attempts", "timeout", "key", "owner"]
    old_row = dict(zip([*fields, "created_at"], row("t1", key="k", payload=[1]), strict=True))
    table.apply({"e": "submit", "tasks": [old_row]})
    table.apply(assign("w1", 2.0, ("t1", 1)))
    item = {"t": "t1", "n": 1, "o": "succeeded", "v": 7, "err": None, "s": 2.5, "e": 3.0}
    table.apply({"e": "finish", "items": [item]})
    lost = {"t": "t1", "n": 1, "o": "lost", "err": "gone", "e": 4.0}  # no "v" or "s"
    assert table.apply({"e": "finish", "items": [lost]}) == []  # already finished
    task = table.tasks["t1"]
    assert (task.type, task.payload, task.key, task.owner, task.seq) == (
        "echo",
        [1],
        "k",
        "alice",
        1,
    )
    assert (task.state, task.result, task.finished_at) == (TaskState.SUCCEEDED, 7, 3.0)
    assert (task.attempts[0].started_at, task.attempts[0].ended_at) == (2.5, 3.0)
    assert table.keys_of("alice") == {"k": task.id}
