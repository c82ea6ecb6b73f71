"""Who runs what, in the pure scheduler: queues, resources, fair share between owners."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mutirao import resources
from mutirao.errors import ValidationError
from mutirao.orchestrator.scheduler import PendingQueue, Slotted
from tests.unit.test_scheduler import Job, always, lane_key


def worker(
    wid: str,
    slots: int = 4,
    *,
    queues: tuple[str, ...] = ("default",),
    room: dict[str, float] | None = None,
) -> Slotted:
    return Slotted(wid, slots, frozenset({"a"}), queues=frozenset(queues), room=room)


# -- resources, the parsing ------------------------------------------------------------------


def test_quantities_read_as_kubernetes_writes_them() -> None:
    assert resources.quantity("4Gi", "m") == 4 * 2**30
    assert resources.quantity("500m", "c") == 0.5
    assert resources.quantity("2k", "x") == 2000
    assert resources.quantity(3, "x") == 3.0
    for bad in ("lots", "-1", "4 GB", True, None, float("inf")):
        with pytest.raises(ValidationError) as info:
            resources.quantity(bad, "resources.memory")
        assert info.value.field == "resources.memory"


def test_a_demand_asks_one_cpu_unless_it_says_otherwise() -> None:
    assert resources.demand(None) == (("cpu", 1.0),)
    assert resources.demand({"gpu": 1}) == (("cpu", 1.0), ("gpu", 1.0))
    assert resources.demand({"cpu": 0, "licence": 2}) == (("licence", 2.0),)
    with pytest.raises(ValidationError) as info:
        resources.demand({"GPU!": 1}, "tasks[3].resources")
    assert info.value.field == "tasks[3].resources.GPU!"


def test_a_worker_offers_cpu_as_slots_unless_it_says_otherwise() -> None:
    assert resources.capacity([], 4) == {"cpu": 4.0}
    assert resources.capacity(["gpu=1", "memory=16Gi", "cpu=2"], 8) == {
        "cpu": 2.0,
        "gpu": 1.0,
        "memory": 16 * 2**30,
    }
    with pytest.raises(ValidationError, match="NAME=QUANTITY"):
        resources.capacity(["gpu"], 1)


# -- queues and resources in the drain ------------------------------------------------------


def test_a_worker_takes_only_its_queues_tasks() -> None:
    queue = PendingQueue()
    queue.push(lane_key("a", "u", "video"), Job("v1", 1))
    queue.push(lane_key("a", "u"), Job("d1", 2))
    plain, video = worker("plain"), worker("video", queues=("video",))
    pairs = queue.drain([plain], always)
    assert [(task_id, w.id) for task_id, w in pairs] == [("d1", "plain")]
    assert {lane.queue: len(lane) for lane in queue.lanes() if lane} == {"video": 1}
    pairs = queue.drain([plain, video], always)
    assert [(task_id, w.id) for task_id, w in pairs] == [("v1", "video")]


def test_a_task_goes_only_where_its_resources_fit_and_takes_them() -> None:
    gpu = resources.demand({"gpu": 1})
    queue = PendingQueue()
    for n in range(3):
        queue.push(lane_key("a", "u", demand=gpu), Job(f"g{n}", n))
    without = worker("cpu-only")
    with_gpu = worker("gpu", room={"cpu": 4.0, "gpu": 1.0})
    pairs = queue.drain([without, with_gpu], always)
    # One gpu: one task, however many slots are free; none on the worker without one.
    assert [(task_id, w.id) for task_id, w in pairs] == [("g0", "gpu")]
    assert with_gpu.room == {"cpu": 3.0, "gpu": 0.0}
    assert len(queue) == 2


def test_cpu_heavy_tasks_use_up_a_plain_workers_slots_by_cpu() -> None:
    """A worker that declared nothing has as many cpu as slots: two 2-cpu tasks fill 4."""
    two_cpu = resources.demand({"cpu": 2})
    queue = PendingQueue()
    for n in range(3):
        queue.push(lane_key("a", "u", demand=two_cpu), Job(f"t{n}", n))
    w = worker("w", slots=4)
    pairs = queue.drain([w], always)
    assert [task_id for task_id, _ in pairs] == ["t0", "t1"]
    assert w.running == 2
    assert w.room == {"cpu": 0.0}


# -- fair share -----------------------------------------------------------------------------


def _two_owners(big: int, small: int) -> PendingQueue:
    queue = PendingQueue()
    seq = 0
    for owner, n in (("big", big), ("small", small)):
        for _ in range(n):
            seq += 1
            queue.push(lane_key("a", owner), Job(f"{owner}-{seq}", seq))
    return queue


def test_owners_alternate_however_much_one_of_them_queued() -> None:
    queue = _two_owners(10_000, 10)
    pairs = queue.drain([worker("w", slots=20)], always)
    owners = [task_id.split("-")[0] for task_id, _ in pairs]
    assert owners.count("small") == 10, "the user with 10 tasks is not starved"
    assert owners[:4] in (["big", "small", "big", "small"], ["small", "big", "small", "big"])


class Weights:
    """A gate that holds nothing back and weighs owners."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = weights

    def admits(self, task_type: str, owner: str, now: float) -> bool:
        return True

    def took(self, task_type: str, owner: str, now: float) -> None:
        pass

    def weight(self, owner: str) -> float:
        return self.weights.get(owner, 1.0)

    def limited(self, task_type: str) -> bool:
        return False


def test_a_heavier_owner_gets_its_share() -> None:
    queue = _two_owners(1_000, 1_000)
    pairs = queue.drain([worker("w", slots=300)], always, Weights({"big": 2.0}))
    owners = [task_id.split("-")[0] for task_id, _ in pairs]
    assert owners.count("big") == 200
    assert owners.count("small") == 100


def test_an_owner_coming_back_gets_no_credit_for_its_idle_time() -> None:
    queue = _two_owners(100, 0)
    w = worker("w", slots=50)
    queue.drain([w], always)  # big alone: 50 dispatches
    for seq in range(1000, 1020):
        queue.push(lane_key("a", "small"), Job(f"small-{seq}", seq))
    w.running = 0
    pairs = queue.drain([w], always)
    owners = [task_id.split("-")[0] for task_id, _ in pairs[:10]]
    assert 4 <= owners.count("small") <= 6, owners


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.dictionaries(st.sampled_from("abcde"), st.integers(1, 60), min_size=1),
    st.integers(1, 40),
)
def test_fair_share_properties(queued: dict[str, int], slots: int) -> None:
    """Whatever each owner queued, a drain gives each owner with work left at the end no
    fewer than any other owner got, minus one (equal weights)."""
    queue = PendingQueue()
    seq = 0
    for owner, n in queued.items():
        for _ in range(n):
            seq += 1
            queue.push(lane_key("a", owner), Job(f"{owner}-{seq}", seq))
    pairs = queue.drain([worker("w", slots=slots)], always)
    got = {owner: 0 for owner in queued}
    for task_id, _ in pairs:
        got[task_id.split("-")[0]] += 1
    assert sum(got.values()) == min(slots, sum(queued.values()))
    most = max(got.values())
    for owner, n in got.items():
        if n < queued[owner]:  # still had work: got its share
            assert n >= most - 1, (got, queued)
