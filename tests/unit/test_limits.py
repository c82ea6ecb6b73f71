"""Rate limits, concurrency caps, quotas and resources in the engine (sans-IO, fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from mutirao.errors import TooManyRequestsError, ValidationError
from mutirao.orchestrator.engine import Engine
from mutirao.orchestrator.limits import LimitSpec, Rate, limit
from mutirao.orchestrator.tasks import decode_snapshot
from mutirao.protocol import TaskSpec, TaskState
from tests.unit.test_engine import HEARTBEAT, Harness, assigned, replay


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.hello("w1", 0.0, slots=50)
    return harness


def spec(**options: Any) -> TaskSpec:
    return TaskSpec(type="echo", **options)


def restored(h: Harness) -> Engine:
    engine = Engine(HEARTBEAT)
    engine.load(decode_snapshot(h.engine.table.snapshot()))
    return engine


def starts(h: Harness, until: float, step: float = 0.01) -> list[float]:
    """Drive the engine's timer as the service does (fire at each due time, or every
    ``step``), heartbeats included; the times tasks were assigned."""
    times: list[float] = []
    now = 0.0
    while now <= until:
        h.heartbeat("w1", now)
        for refs in assigned(h._keep(h.engine.fire(now))).values():
            times.extend([now] * len(refs))
        due = h.engine.next_due()
        now = round(max(now + step, due if due is not None and due > now else now + step), 6)
    return times


# -- the rate itself --------------------------------------------------------------------------


def test_a_rate_of_5_over_20_tasks_spans_3_8_s_never_more_than_5_a_second() -> None:
    rate, now, times = Rate(5.0, 5, 100.0), 100.0, []
    while len(times) < 20:
        if rate.ready(now):
            rate.take(now)
            times.append(now)
        else:
            now = rate.when(now)
    assert times[-1] - times[0] >= 3.8 - 1e-9
    for i in range(len(times) - 5):
        assert times[i + 5] - times[i] >= 1.0 - 1e-9, "six starts within one second"


def test_an_idle_rate_bursts_but_never_past_the_burst_in_a_second() -> None:
    rate = Rate(2.0, 6, 0.0)
    now = 10.0  # idle long enough to fill the burst
    taken = 0
    while rate.ready(now):
        rate.take(now)
        taken += 1
    assert taken == 6
    # The allowance is back to one in half a second, but 6 started in this second: the
    # next waits for the second to pass, then the rate paces the rest.
    assert rate.when(now) == pytest.approx(now + 1.0)
    assert not rate.ready(now + 0.5)
    for _ in range(2):  # the allowance grew by 2 meanwhile
        assert rate.ready(now + 1.0)
        rate.take(now + 1.0)
    assert rate.when(now + 1.0) == pytest.approx(now + 1.5)


def test_limits_are_checked() -> None:
    with pytest.raises(ValidationError) as info:
        limit("echo", LimitSpec())
    assert info.value.field == "rate"
    assert limit("echo", LimitSpec(rate=10, burst=5)).burst == 5  # at most 5 a second
    with pytest.raises(ValidationError) as info:
        limit("echo", LimitSpec(burst=5))
    assert info.value.field == "burst"
    assert limit("echo", LimitSpec(rate=2.5)).burst == 3


# -- in the engine ---------------------------------------------------------------------------


def test_a_rate_limit_paces_dispatch_and_wakes_the_timer(h: Harness) -> None:
    h.engine.record({"e": "limit", "l": {"type": "echo", "rate": 5.0, "burst": 5}})
    tasks, effects = h.submit(*[spec() for _ in range(20)], now=0.0)
    assert len(assigned(effects)["w1"]) == 1
    assert h.engine.next_due() == pytest.approx(0.2)
    times = starts(h, 5.0)
    times = [0.0, *times]
    assert len(times) == 20
    assert times[-1] - times[0] >= 3.8 - 1e-6
    for i in range(len(times) - 5):
        assert times[i + 5] - times[i] >= 1.0 - 1e-6
    pending = [t for t in tasks if t.state is TaskState.PENDING]
    assert not pending


def test_a_rate_limited_task_says_why_it_waits(h: Harness) -> None:
    h.engine.record({"e": "limit", "l": {"type": "echo", "rate": 1.0, "burst": 1}})
    (first, second), _ = h.submit(spec(), spec(), now=0.0)
    assert first.state is TaskState.ASSIGNED
    reason = h.engine.view(second, 0.1)["pending_reason"]
    assert reason == "task type 'echo' is at its rate limit (1/s)"


def test_a_concurrency_cap_holds_tasks_until_one_ends(h: Harness) -> None:
    h.engine.record({"e": "limit", "l": {"type": "echo", "concurrency": 2}})
    tasks, effects = h.submit(*[spec() for _ in range(5)], now=0.0)
    assert len(assigned(effects)["w1"]) == 2
    assert "concurrency cap (2)" in str(h.engine.view(tasks[2], 0.0)["pending_reason"])
    effects = h.result("w1", tasks[0], 1, 1.0)
    assert assigned(effects) == {"w1": [(tasks[2].id, 1)]}
    # The cap lifted: everything left goes at once.
    effects = h._keep(h.engine.record({"e": "unlimit", "type": "echo"}))
    assert h.engine.earlier
    assert len(assigned(h._keep(h.engine.fire(1.5)))["w1"]) == 2


def test_max_running_and_max_pending_per_user(h: Harness) -> None:
    h.engine.record({"e": "quota", "q": {"user": "alice", "max_running": 1, "max_pending": 3}})
    (a1, a2), _ = h.submit(spec(), spec(), now=0.0)
    (b1,), _ = h.submit(spec(), now=0.0, owner="bob")
    assert (a1.state, a2.state, b1.state) == ("assigned", "pending", "assigned")
    assert h.engine.view(a2, 0)["pending_reason"] == "user alice is at its max_running quota (1)"
    h.submit(spec(), spec(), now=0.1)  # 3 pending: at the quota
    with pytest.raises(TooManyRequestsError) as info:
        h.submit(spec(), now=0.2)
    assert info.value.field == "max_pending"
    assert info.value.status == 429
    # Bob has no quota; a default for everyone else (``*``) applies to him once set.
    h.submit(*[spec(not_before=100.0) for _ in range(5)], now=0.3, owner="bob")
    h.engine.record({"e": "quota", "q": {"user": "*", "max_pending": 1}})
    with pytest.raises(TooManyRequestsError):
        h.submit(spec(), now=0.4, owner="bob")
    # Counts follow the tasks: one of alice's ends, the next runs and a slot frees.
    h.result("w1", a1, 1, 1.0)
    assert a2.state is TaskState.ASSIGNED
    h.submit(spec(), now=1.1)


def test_limits_and_quotas_survive_replay_and_checkpoint_with_their_counts(h: Harness) -> None:
    h.engine.record({"e": "quota", "q": {"user": "alice", "max_running": 2}})
    h.records.append({"e": "quota", "q": {"user": "alice", "max_running": 2}})
    limit_record = {"e": "limit", "l": {"type": "echo", "rate": 3.0, "burst": 3, "concurrency": 9}}
    h.engine.record(limit_record)
    h.records.append(limit_record)
    h.submit(*[spec() for _ in range(4)], now=0.0)
    for engine in (replay(h.records), restored(h)):
        assert engine.table.limits == h.engine.table.limits
        assert engine.table.quotas == h.engine.table.quotas
        assert engine.gates.active_by_owner == h.engine.gates.active_by_owner == {"alice": 1}
        assert engine.gates.queued_by_owner == h.engine.gates.queued_by_owner == {"alice": 3}


def test_resources_are_taken_while_an_attempt_runs_and_given_back(h: Harness) -> None:
    h.hello("g1", 0.0, slots=4, resources={"cpu": 4.0, "gpu": 1.0})
    (t1, t2), effects = h.submit(spec(resources={"gpu": 1}), spec(resources={"gpu": 1}), now=0.0)
    assert assigned(effects) == {"g1": [(t1.id, 1)]}
    assert h.engine.view(t2, 0.0)["pending_reason"] is None  # fits g1: its turn will come
    effects = h.result("g1", t1, 1, 1.0)
    assert assigned(effects) == {"g1": [(t2.id, 1)]}
    (t3,), _ = h.submit(spec(resources={"gpu": 2}), now=1.5)
    assert h.engine.view(t3, 1.5)["pending_reason"] == (
        "no live worker that runs 'echo' on queue 'default' has room for cpu=1, gpu=2"
    )
    assert replay(h.records).workers["g1"].heavy == h.engine.workers["g1"].heavy


def test_queues_route_and_say_why_nothing_takes_them(h: Harness) -> None:
    (video,), _ = h.submit(spec(queue="video"), now=0.0)
    assert video.state is TaskState.PENDING
    assert h.engine.view(video, 0.0)["pending_reason"] == (
        "no live worker that runs 'echo' serves queue 'video'"
    )
    effects = h.hello("v1", 1.0, queues=["video"])
    assert assigned(effects) == {"v1": [(video.id, 1)]}
    assert h.engine.view(video, 1.0)["queue"] == "video"


def test_bad_resources_name_the_field(h: Harness) -> None:
    with pytest.raises(ValidationError) as info:
        h.submit(spec(), spec(resources={"memory": "lots"}), now=0.0)
    assert info.value.field == "tasks[1].resources.memory"
    assert h.engine.table.tasks == {}


def test_a_new_leader_goes_on_from_the_old_leaders_starts(h: Harness) -> None:
    """The rate's recent starts come from the assign records every replica applies: the
    standby that takes over does not start the next task sooner than the old leader would
    have (found by a SIGKILL test: a fresh allowance let one start 0.2 s too early)."""
    h._keep(h.engine.record({"e": "limit", "l": {"type": "echo", "rate": 5.0, "burst": 5}}))
    h.submit(*[spec() for _ in range(10)], now=0.0)
    assert starts(h, 0.45) == [0.2, 0.4]  # and one at 0.0, at submission
    standby = replay(h.records)
    standby.take_lead(8, "o2", 0.45)
    msg = {"op": "hello", "worker_id": "w1", "url": "", "slots": 50, "types": ["echo"],
           "running": [list(r) for r in h.engine.workers["w1"].attempts], "epoch": 7}  # fmt: skip
    effects = standby.hello(msg, 1, 0.45)  # type: ignore[arg-type]
    assert assigned(effects) == {}
    assert standby.next_due() == pytest.approx(0.6)
    assert len(assigned(standby.fire(0.6))["w1"]) == 1
