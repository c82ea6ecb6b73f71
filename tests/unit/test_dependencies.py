"""Task dependencies (workflows): the pure checks of :mod:`mutirao.dependencies`, then the
engine and task table settling waiting tasks as their dependencies end, sans-IO, with the
same fake-clock harness as test_engine.py. Every scenario ends by rebuilding the state from
its journal records, and some from a checkpoint, the way a new leader does."""

from __future__ import annotations

from typing import Any

import pytest

from mutirao import dependencies
from mutirao.errors import ValidationError
from mutirao.orchestrator.engine import Engine
from mutirao.orchestrator.tasks import decode_snapshot
from mutirao.protocol import TaskSpec, TaskState
from tests.unit.test_engine import HEARTBEAT, Harness, replay


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.hello("w1", 0.0, slots=8)
    return harness


def spec(after: list[str] | None = None, payload: Any = None, **options: Any) -> TaskSpec:
    """A spec as the parser leaves it: payload inputs are dependencies too."""
    refs = dependencies.input_refs(payload, "payload")
    merged = list(dict.fromkeys([*(after or ()), *refs])) or None
    return TaskSpec(type="echo", payload=payload, after=merged, **options)


def payloads(effects: Any) -> dict[str, Any]:
    """Task id -> the payload its assign message carries."""
    return {
        item[0]: item[3]
        for messages in effects.sends.values()
        for message in messages
        if message["op"] == "assign"
        for item in message["items"]
    }


def rebuilt_agrees(h: Harness) -> None:
    """Replaying the journal and restoring a checkpoint both give the live state."""
    views = h.views()
    assert {t: task.view() for t, task in replay(h.records).table.tasks.items()} == views
    restored = Engine(HEARTBEAT)
    restored.table.restore(decode_snapshot(h.engine.table.snapshot()))
    assert {t: task.view() for t, task in restored.table.tasks.items()} == views
    assert restored.counts() == h.engine.counts()


# -- the checks, pure ------------------------------------------------------------------------


def test_inputs_are_exact_objects_found_at_any_depth_in_document_order() -> None:
    payload = {
        "a": {"$result": "t1"},
        "b": [1, {"$result": "#0", "path": "x.0"}, {"$result": "t2", "other": 1}],
        "c": {"deeper": [[{"$result": "t3"}]]},
    }
    assert dependencies.input_refs(payload, "payload") == ["t1", "#0", "t3"]
    with pytest.raises(ValidationError) as err:
        dependencies.input_refs({"x": {"$result": 5}}, "tasks[2].payload")
    assert err.value.field == "tasks[2].payload"
    with pytest.raises(ValidationError):
        dependencies.input_refs({"$result": "t1", "path": ["a"]}, "payload")


def test_pick_follows_keys_and_array_indexes() -> None:
    value = {"a": {"b": [10, 20, {"c": "deep"}]}}
    assert dependencies.pick(value, "") == value
    assert dependencies.pick(value, "a.b.1") == 20
    assert dependencies.pick(value, "a.b.2.c") == "deep"
    # "²" and "١" are digits to str.isdigit and not to int: a path with one names nothing
    # (it once raised ValueError while a record was applied).
    for missing in ("a.x", "a.b.3", "a.b.-1", "a.b.c", "a.b.²", "a.b.١"):
        with pytest.raises(dependencies.MissingInput):
            dependencies.pick(value, missing)
    assert dependencies.batch_index("#12") == 12
    assert dependencies.batch_index("#²") is None


def test_an_input_path_with_a_non_ascii_digit_cancels_the_task_it_does_not_crash(
    h: Harness,
) -> None:
    (a, b), _ = h.submit(spec(payload=1), spec(payload={"$result": "#0", "path": "²"}), now=1.0)
    h.result("w1", a, 1, 2.0, value=[1, 2, 3])
    assert b.state is TaskState.CANCELLED
    assert b.error == f"dependency {a.id} has no '²' in its result"
    rebuilt_agrees(h)


def test_plan_refuses_refs_outside_the_batch_unknown_foreign_and_cycles() -> None:
    owners = {"mine": "alice", "theirs": "bob"}

    def plan(specs: list[TaskSpec]) -> list[tuple[int, list[str]]]:
        ids = [f"n{i}" for i in range(len(specs))]
        return dependencies.plan(specs, ids, [True] * len(specs), "alice", owners.get)

    assert plan([spec(), spec(["#0", "mine", "#0"])]) == [(1, ["n0", "mine"])]
    cases = {
        "tasks[1].after": [spec(), spec(["#2"])],
        "after": [spec(["nope"])],
        "tasks[0].after": [spec(["theirs"]), spec()],
    }
    for field, specs in cases.items():
        with pytest.raises(ValidationError) as err:
            plan(specs)
        assert err.value.field == field, specs
    cycles = [
        [spec(["#1"]), spec(["#0"])],
        [spec(["#0"])],
        [spec(["#2"]), spec(), spec(["#0"])],
    ]
    for cyclic in cycles:
        with pytest.raises(ValidationError, match="cycle"):
            plan(cyclic)
    # A long chain is checked without recursion.
    chain = [spec()] + [spec([f"#{i}"]) for i in range(5000)]
    assert len(plan(chain)) == 5000


# -- settling, in the engine -----------------------------------------------------------------


def test_a_chain_runs_in_order_with_results_as_inputs(h: Harness) -> None:
    (a, b, c), effects = h.submit(
        spec(payload=2),
        spec(payload={"x": {"$result": "#0"}}),
        spec(payload=[{"$result": "#1", "path": "x"}, "tail"]),
        now=1.0,
    )
    assert [t.state for t in (a, b, c)] == ["assigned", "waiting", "waiting"]
    assert list(payloads(effects)) == [a.id]
    assert b.view()["after"] == [a.id]
    assert c.view()["after"] == [b.id]
    assert b.payload == {"x": {"$result": a.id}}, "#N became the task id"
    assert h.engine.counts()["waiting"] == 2

    effects = h.result("w1", a, 1, 2.0, value={"n": 2})
    assert b.state is TaskState.ASSIGNED
    assert c.state is TaskState.WAITING
    assert payloads(effects) == {b.id: {"x": {"n": 2}}}
    assert h.engine.settled == [], "the engine took the settled changes"

    effects = h.result("w1", b, 1, 3.0, value=b.payload)
    assert payloads(effects) == {c.id: [{"n": 2}, "tail"]}
    h.result("w1", c, 1, 4.0, value="done")
    assert h.engine.counts()["succeeded"] == 3
    assert not h.engine.table.children
    assert not h.engine.table.held
    rebuilt_agrees(h)


def test_a_failure_cancels_every_dependent_naming_the_dependency(h: Harness) -> None:
    (a, b, c, d), _ = h.submit(
        spec(max_attempts=1),
        spec(["#0"]),
        spec(["#1"]),
        spec(),  # independent: unaffected
        now=1.0,
    )
    effects = h.result("w1", a, 1, 2.0, ok=False)
    assert a.state is TaskState.FAILED
    for dependent in (b, c):
        assert dependent.state is TaskState.CANCELLED
        assert dependent.error == f"dependency {a.id} failed: {a.error}"
        assert dependent.finished_at == 2.0
    assert {t.id for t in effects.finished} == {a.id, b.id, c.id}, "their waiters wake"
    assert d.state is TaskState.ASSIGNED
    assert h.engine.counts()["cancelled"] == 2
    rebuilt_agrees(h)


def test_on_failure_run_runs_a_cleanup_step_that_sees_the_error(h: Harness) -> None:
    (a, ok, cleanup, after_cleanup), _ = h.submit(
        spec(max_attempts=1),
        spec(payload=1),
        spec(payload={"failed": {"$result": "#0"}, "fine": {"$result": "#1"}}, on_failure="run"),
        spec(["#2"]),
        now=1.0,
    )
    assert cleanup.view()["on_failure"] == "run"
    h.result("w1", ok, 1, 2.0, value="fine")
    effects = h.result("w1", a, 1, 3.0, ok=False)
    assert payloads(effects) == {
        cleanup.id: {
            "failed": {"$error": a.error, "id": a.id, "state": "failed"},
            "fine": "fine",
        }
    }
    assert after_cleanup.state is TaskState.WAITING, "it waits for the cleanup step"
    h.result("w1", cleanup, 1, 4.0, value="cleaned")
    assert after_cleanup.state is TaskState.ASSIGNED
    rebuilt_agrees(h)


def test_cancelling_a_task_cancels_what_waits_for_it(h: Harness) -> None:
    (a, b, c), _ = h.submit(spec(), spec(["#0"]), spec(["#1"]), now=1.0)
    h.cancel(b, 2.0)  # b waits: cancelling it reaches c, not a
    assert b.state is TaskState.CANCELLED
    assert b.error is None
    assert c.error == f"dependency {b.id} cancelled"
    assert a.state is TaskState.ASSIGNED
    (x, y), _ = h.submit(spec(), spec(["#0"]), now=3.0)
    effects = h.cancel(x, 4.0)
    assert y.state is TaskState.CANCELLED
    assert y.error == f"dependency {x.id} cancelled"
    assert {t.id for t in effects.finished} == {x.id, y.id}
    rebuilt_agrees(h)


def test_dependencies_settled_already_release_or_cancel_at_once(h: Harness) -> None:
    (done, failed), _ = h.submit(spec(), spec(max_attempts=1), now=1.0)
    h.result("w1", done, 1, 2.0, value={"k": "v"})
    h.result("w1", failed, 1, 2.0, ok=False)
    (ready, doomed, missing), effects = h.submit(
        spec(payload={"$result": done.id, "path": "k"}),
        spec([failed.id]),
        spec(payload={"$result": done.id, "path": "nope"}),
        now=3.0,
    )
    assert payloads(effects) == {ready.id: "v"}
    assert doomed.state is TaskState.CANCELLED
    assert doomed.error == f"dependency {failed.id} failed: {failed.error}"
    assert missing.state is TaskState.CANCELLED
    assert missing.error == f"dependency {done.id} has no 'nope' in its result"
    rebuilt_agrees(h)


def test_a_batch_with_a_bad_ref_records_nothing(h: Harness) -> None:
    before = len(h.records), h.engine.counts()
    for bad in ([spec(), spec(["#0"]), spec(["#5"])], [spec(["#1"]), spec(["#0"])]):
        with pytest.raises(ValidationError):
            h.submit(*bad, now=1.0)
    assert (len(h.records), h.engine.counts()) == before
    # Another owner's task is refused as if it did not exist.
    (theirs,), _ = h.submit(spec(), now=1.0, owner="bob")
    with pytest.raises(ValidationError, match="no task"):
        h.submit(spec([theirs.id]), now=2.0)


def test_a_fuzzy_checkpoint_settles_what_its_dependency_settled_after(h: Harness) -> None:
    """A checkpoint encodes tasks piece by piece while the loop runs: here the waiting
    task is encoded before its dependency succeeds, the dependency after."""
    (b, a), _ = h.submit(spec(payload={"$result": "#1"}), spec(), now=1.0)
    since = len(h.records)
    pieces = h.engine.table.snapshot_pieces(size=1)
    taken = [next(pieces), next(pieces)]  # the header, then b (waiting)
    h.result("w1", a, 1, 2.0, value=41)  # b is released and assigned
    taken.extend(pieces)  # a, succeeded
    restored = Engine(HEARTBEAT)
    restored.load(decode_snapshot(b"".join(taken)))
    again = restored.table.tasks[b.id]
    assert again.state is TaskState.PENDING
    assert again.payload == 41
    assert len(restored.queue) == 1, "queued to run, as the live one was"
    for record in h.records[since:]:  # as recovery replays what followed the checkpoint
        restored.apply(record)
    assert {t: task.view() for t, task in restored.table.tasks.items()} == h.views()


def test_a_result_is_kept_while_a_task_waits_to_take_it_as_input(h: Harness) -> None:
    h.engine.retention = 10.0
    (early, late, total), _ = h.submit(
        spec(), spec(), spec(payload=[{"$result": "#0"}, {"$result": "#1"}]), now=1.0
    )
    h.result("w1", early, 1, 2.0, value=1)
    h.heartbeat("w1", 30.0)
    h.tick(30.0)
    assert h.engine.table.get(early.id) is early, "held by the waiting task"
    effects = h.result("w1", late, 1, 31.0, value=2)
    assert payloads(effects) == {total.id: [1, 2]}
    h.heartbeat("w1", 45.0)
    (record,) = [r for r in h.tick(45.0).records if r["e"] == "expire"]
    assert set(record["tasks"]) == {early.id, late.id}, "then expired as usual"
    rebuilt_agrees(h)


def test_a_wide_fan_in_and_a_long_chain_settle_without_recursion(h: Harness) -> None:
    leaves, _ = h.submit(*[spec() for _ in range(300)], now=1.0)
    (total,), _ = h.submit(spec(payload=[{"$result": t.id} for t in leaves]), now=1.0)
    chain, _ = h.submit(spec(), *[spec([f"#{i}"]) for i in range(3000)], now=1.0)
    h.cancel(chain[0], 2.0)
    assert all(t.state is TaskState.CANCELLED for t in chain)
    assert {t.error for t in chain[1:]} == {f"dependency {chain[0].id} cancelled"}
    while total.state is TaskState.WAITING:
        for task in [t for t in leaves if t.state is TaskState.ASSIGNED]:
            h.result("w1", task, 1, 3.0, value=1)
    assert total.state is TaskState.ASSIGNED
    assert total.payload == [1] * 300
    rebuilt_agrees(h)
