"""The least-load scheduler: pick_worker and PendingQueue.drain (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from mutirao.orchestrator.scheduler import (
    DEFAULT_QUEUE,
    Chosen,
    Lane,
    LaneKey,
    PendingQueue,
    Slotted,
    pick_worker,
)
from mutirao.resources import DEFAULT_DEMAND, Demand


def lane_key(
    task_type: str, owner: str = "", queue: str = DEFAULT_QUEUE, demand: Demand = DEFAULT_DEMAND
) -> LaneKey:
    """The lane of tasks of ``task_type`` (as the engine keys them: owner first)."""
    return (owner, task_type, queue, demand)


def worker(
    wid: str,
    slots: int = 2,
    types: tuple[str, ...] = ("a",),
    running: int = 0,
    *,
    eligible: bool = True,
) -> Slotted:
    return Slotted(id=wid, slots=slots, types=frozenset(types), running=running, eligible=eligible)


A = Lane(lane_key("a"))


@dataclass(frozen=True)
class Job:
    """A queued task as the queue reads it (the engine queues its Task structs)."""

    id: str
    seq: int
    priority: int = 0


def always(_task_id: str, _attempts: int) -> bool:
    return True


def queue_of(*items: tuple[str, int, int, str]) -> PendingQueue:
    """A queue from ``(task type, priority, seq, task id)``; priority as the user gives it."""
    queue = PendingQueue()
    for task_type, priority, seq, task_id in items:
        queue.push(lane_key(task_type), Job(task_id, seq, priority))
    return queue


def ids(pairs: list[Chosen]) -> list[tuple[str, str]]:
    return [(task_id, chosen.id) for task_id, chosen in pairs]


# -- pick_worker ----------------------------------------------------------------------------


def test_pick_worker_prefers_the_lowest_load() -> None:
    busy = worker("a", slots=2, running=1)  # load 0.5
    roomy = worker("b", slots=4, running=1)  # load 0.25
    assert pick_worker([busy, roomy], A, None) is roomy


def test_pick_worker_load_is_relative_to_slots() -> None:
    # Fewer running attempts but a higher load: the ratio decides, not the count.
    small = worker("a", slots=1, running=0)
    big = worker("b", slots=10, running=3)
    assert pick_worker([big, small], A, None) is small
    small.running = 1
    assert pick_worker([big, small], A, None) is big


def test_pick_worker_breaks_ties_by_worker_id_not_list_order() -> None:
    workers = [worker("c"), worker("a"), worker("b")]
    chosen = pick_worker(workers, A, None)
    assert chosen is not None
    assert chosen.id == "a"
    # Equal loads expressed with different slot counts are still a tie.
    workers = [worker("z", slots=2, running=1), worker("y", slots=4, running=2)]
    chosen = pick_worker(workers, A, None)
    assert chosen is not None
    assert chosen.id == "y"


def test_pick_worker_skips_full_ineligible_and_wrong_type_workers() -> None:
    full = worker("a", slots=1, running=1)
    suspect = worker("b", eligible=False)
    other_type = worker("c", types=("b",))
    no_slots = worker("d", slots=0)
    assert pick_worker([full, suspect, other_type, no_slots], A, None) is None
    fine = worker("e", slots=8, running=7)
    assert pick_worker([full, suspect, other_type, no_slots, fine], A, None) is fine


def test_pick_worker_avoids_the_previous_worker_when_there_is_a_choice() -> None:
    previous = worker("a", slots=10, running=0)
    other = worker("b", slots=2, running=1)
    # b is more loaded, but the task just failed or was lost on a.
    assert pick_worker([previous, other], A, "a") is other
    # With no alternative the previous worker is used after all.
    other.running = 2
    assert pick_worker([previous, other], A, "a") is previous


def test_pick_worker_on_no_workers() -> None:
    assert pick_worker([], A, None) is None


# -- PendingQueue.drain ---------------------------------------------------------------------


def test_drain_priority_first_then_fifo() -> None:
    queue = queue_of(
        ("a", 0, 1, "low-1"),
        ("a", 5, 2, "high-2"),
        ("a", 0, 3, "low-3"),
        ("a", 5, 4, "high-4"),
        ("a", -3, 5, "neg-5"),
        ("a", 9, 6, "top-6"),
    )
    pairs = queue.drain([worker("w", slots=10)], always)
    assert [task_id for task_id, _ in pairs] == [
        "top-6",
        "high-2",
        "high-4",
        "low-1",
        "low-3",
        "neg-5",
    ]
    assert len(queue) == 0


def test_drain_priority_applies_across_types() -> None:
    queue = queue_of(("a", 0, 1, "a-1"), ("b", 1, 2, "b-2"), ("a", 2, 3, "a-3"))
    w = worker("w", slots=2, types=("a", "b"))
    pairs = queue.drain([w], always)
    assert [task_id for task_id, _ in pairs] == ["a-3", "b-2"]
    assert len(queue) == 1
    assert queue.depth_by_type() == {"a": 1}


def test_drain_spreads_load_and_updates_running() -> None:
    a = worker("a", slots=2)
    b = worker("b", slots=2)
    queue = queue_of(*[("a", 0, i, f"t{i}") for i in range(5)])
    pairs = queue.drain([b, a], always)
    # a (tie by id), b (a is at 0.5), a (tie at 0.5), b; then both are full.
    assert ids(pairs) == [("t0", "a"), ("t1", "b"), ("t2", "a"), ("t3", "b")]
    assert (a.running, b.running) == (2, 2)
    assert len(queue) == 1


def test_a_task_no_worker_can_run_does_not_block_other_types() -> None:
    queue = queue_of(
        ("gpu", 10, 1, "gpu-1"),  # highest priority and oldest, but nobody runs gpu
        ("cpu", 0, 2, "cpu-2"),
        ("cpu", 0, 3, "cpu-3"),
    )
    pairs = queue.drain([worker("w", slots=4, types=("cpu",))], always)
    assert [task_id for task_id, _ in pairs] == ["cpu-2", "cpu-3"]
    assert queue.depth_by_type() == {"gpu": 1}
    # Once a gpu worker appears, the gpu task goes.
    pairs = queue.drain([worker("g", types=("gpu",))], always)
    assert ids(pairs) == [("gpu-1", "g")]
    assert len(queue) == 0


def test_a_type_whose_workers_are_full_does_not_block_other_types() -> None:
    queue = queue_of(("a", 5, 1, "a-1"), ("a", 5, 2, "a-2"), ("b", 0, 3, "b-3"))
    only_a = worker("x", slots=1, types=("a",))
    only_b = worker("y", slots=1, types=("b",))
    pairs = queue.drain([only_a, only_b], always)
    assert ids(pairs) == [("a-1", "x"), ("b-3", "y")]
    assert queue.depth_by_type() == {"a": 1}


def test_tasks_queued_out_of_order_keep_priority_then_fifo() -> None:
    """Submissions append to a lane's run; retries and tasks queued behind newer ones (a
    dependency released, a start time come) take heap entries: the order is the same."""
    queue = PendingQueue()
    key = lane_key("a")
    for seq in (3, 4, 6):
        queue.push(key, Job(f"new-{seq}", seq))
    queue.push(key, Job("retry-1", 1), attempts=1, avoid="x")
    queue.push(key, Job("released-2", 2))  # behind seq 6: out of the run's order
    queue.push(key, Job("urgent-7", 7, priority=5))
    queue.push(key, Job("later-8", 8))
    queue.push(key, Job("low-9", 9, priority=-1))
    lane = next(queue.lanes())
    assert len(lane.heap) == 3, "only the out-of-order tasks take heap entries"
    pairs = queue.drain([worker("w", slots=10)], always)
    assert [task_id for task_id, _ in pairs] == [
        "urgent-7", "retry-1", "released-2", "new-3", "new-4", "new-6", "later-8", "low-9",
    ]  # fmt: skip
    assert len(queue) == 0


def test_drain_uses_the_avoid_preference() -> None:
    queue = PendingQueue()
    queue.push(lane_key("a"), Job("retry", 1), attempts=1, avoid="a")
    a = worker("a", slots=4)
    b = worker("b", slots=4, running=3)
    assert ids(queue.drain([a, b], always)) == [("retry", "b")]


def test_drain_skips_and_drops_entries_that_are_no_longer_pending() -> None:
    queue = queue_of(("a", 9, 1, "cancelled"), ("a", 0, 2, "live"), ("b", 0, 3, "gone"))
    cancelled = {"cancelled", "gone"}
    w = worker("w", slots=1, types=("a", "b"))
    pairs = queue.drain([w], lambda task_id, _: task_id not in cancelled)
    assert ids(pairs) == [("live", "w")]
    assert w.running == 1
    assert len(queue) == 0
    assert queue.depth_by_type() == {}


def test_drain_hands_out_a_task_queued_twice_only_once() -> None:
    # A stale entry (left behind by a replayed or adopted assignment, then a requeue) has
    # fewer attempts than the task now has; only the current entry may be handed out.
    queue = PendingQueue()
    queue.push(lane_key("a"), Job("t1", 1), attempts=0)
    queue.push(lane_key("a"), Job("t1", 1), attempts=1)
    queue.push(lane_key("a"), Job("t2", 2), attempts=0)
    current = {"t1": 1, "t2": 0}
    asked: list[tuple[str, int]] = []

    def is_current(task_id: str, attempts: int) -> bool:
        asked.append((task_id, attempts))
        return attempts == current[task_id]

    a = worker("a", slots=4)
    b = worker("b", slots=4)
    pairs = queue.drain([a, b], is_current)
    assert sorted(task_id for task_id, _ in pairs) == ["t1", "t2"]
    assert ("t1", 0) in asked, "the stale first attempt was never looked at"
    assert a.running + b.running == 2
    assert len(queue) == 0


def test_drain_with_nothing_queued_or_no_workers() -> None:
    assert PendingQueue().drain([worker("w")], always) == []
    queue = queue_of(("a", 0, 1, "t1"))
    assert queue.drain([], always) == []
    assert len(queue) == 1


# -- properties -----------------------------------------------------------------------------

TYPES = ("a", "b", "c")


@dataclass(frozen=True)
class QueuedTask:
    task_id: str
    type: str
    priority: int
    seq: int
    avoid: str | None
    cancelled: bool
    duplicated: bool


WORKERS = st.lists(
    st.tuples(
        st.integers(0, 4),  # slots
        st.frozensets(st.sampled_from(TYPES)),
        st.integers(0, 4),  # running, capped at slots
        st.booleans(),  # eligible
    ),
    max_size=6,
)
TASKS = st.lists(
    st.tuples(
        st.sampled_from((*TYPES, "unrunnable")),
        st.integers(-2, 2),  # priority
        st.integers(-1, 5),  # index of the worker to avoid, if any
        st.sampled_from((False, False, True)),  # cancelled
        st.booleans(),  # queued twice
    ),
    max_size=25,
)


@st.composite
def scenario_st(draw: st.DrawFn) -> tuple[list[Slotted], list[QueuedTask]]:
    workers = [
        Slotted(f"w{i}", slots, types, min(running, slots), eligible)
        for i, (slots, types, running, eligible) in enumerate(draw(WORKERS))
    ]
    tasks = [
        QueuedTask(
            task_id=f"t{seq}",
            type=task_type,
            priority=priority,
            seq=seq,
            avoid=f"w{avoid}" if avoid >= 0 else None,
            cancelled=cancelled,
            duplicated=duplicated,
        )
        for seq, (task_type, priority, avoid, cancelled, duplicated) in enumerate(draw(TASKS))
    ]
    # Input order must not matter: ties are broken by id.
    return draw(st.permutations(workers)), tasks


def _can_run(w: Slotted, running: int, task_type: str) -> bool:
    return w.eligible and running < w.slots and task_type in w.types


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(scenario_st())
def test_drain_properties(scenario: tuple[list[Slotted], list[QueuedTask]]) -> None:
    workers, tasks = scenario
    queue = PendingQueue()
    for task in tasks:
        # A duplicated task also has a stale entry from an earlier attempt.
        for attempts in (0, 1) if task.duplicated else (0,):
            job = Job(task.task_id, task.seq, task.priority)
            queue.push(lane_key(task.type), job, attempts, task.avoid)
    by_id = {t.task_id: t for t in tasks}
    cancelled = {t.task_id for t in tasks if t.cancelled}
    initial = {w.id: w.running for w in workers}

    def is_current(task_id: str, attempts: int) -> bool:
        task = by_id[task_id]
        return not task.cancelled and attempts == (1 if task.duplicated else 0)

    pairs = queue.drain(workers, is_current)

    running = dict(initial)
    remaining = {t.task_id for t in tasks if not t.cancelled}
    for task_id, chosen in pairs:
        task = by_id[task_id]
        # Only live, not yet handed out tasks, each at most once.
        assert task.task_id in remaining
        remaining.discard(task.task_id)
        # The worker could run it: eligible, right type, a free slot at the time.
        assert _can_run(chosen, running[chosen.id], task.type)
        # It was the best candidate: avoided worker last, then least load, then id.
        candidates = [w for w in workers if _can_run(w, running[w.id], task.type)]
        best = min(candidates, key=lambda w: (w.id == task.avoid, running[w.id] / w.slots, w.id))
        assert chosen is best
        if chosen.id == task.avoid:
            assert candidates == [chosen]
        # And the task was the best one that could run anywhere: priority, then FIFO.
        for other_id in remaining:
            other = by_id[other_id]
            if any(_can_run(w, running[w.id], other.type) for w in workers):
                assert (-task.priority, task.seq) < (-other.priority, other.seq)
        running[chosen.id] += 1

    for w in workers:
        # drain keeps running up to date and never exceeds slots.
        assert w.running == running[w.id]
        assert w.running <= w.slots
        assert w.running == initial[w.id] or w.eligible
    # Nothing runnable is left behind.
    for task_id in remaining:
        task = by_id[task_id]
        assert not any(_can_run(w, w.running, task.type) for w in workers), task
    # Cancelled entries never come out; the queue still holds every remaining live task.
    assert not {task_id for task_id, _ in pairs} & cancelled
    assert len(queue) >= len(remaining)
    depth = queue.depth_by_type()
    assert sum(depth.values()) == len(queue)


_WORKER_ST = st.builds(
    Slotted,
    id=st.sampled_from("abcdefgh"),
    slots=st.integers(0, 4),
    types=st.sampled_from([frozenset({"a"}), frozenset({"b"}), frozenset({"a", "b"})]),
    running=st.integers(0, 5),
    eligible=st.booleans(),
    window=st.integers(0, 3),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(_WORKER_ST, max_size=8, unique_by=lambda w: w.id), st.integers(0, 40))
def test_one_lane_drains_as_pick_worker_would_one_task_at_a_time(
    workers: list[Slotted], n: int
) -> None:
    """A lane drained alone ranks its workers in a heap; the choices are those of
    pick_worker, asked again before every task."""
    queue = queue_of(*(("a", 0, seq, f"t{seq}") for seq in range(n)))
    copies = [
        Slotted(w.id, w.slots, w.types, w.running, w.eligible, window=w.window) for w in workers
    ]
    expected = []
    for seq in range(n):
        chosen = pick_worker(copies, A, None, prefetch=True)
        if chosen is None:
            break
        chosen.running += 1
        expected.append((f"t{seq}", chosen.id))
    assert ids(queue.drain(workers, always)) == expected
