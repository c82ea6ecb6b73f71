"""Pieces of the hot path that replace per-task work with per-batch work: each must give
the same answer as the straightforward version it replaced."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from mutirao.metrics import DURATION_BUCKETS, observe_many
from mutirao.orchestrator.links import coalesce
from mutirao.orchestrator.service import _both


def test_observe_many_matches_observing_each_amount() -> None:
    registry = CollectorRegistry()
    one = Histogram("one", "each", ["t"], buckets=DURATION_BUCKETS, registry=registry)
    many = Histogram("many", "batch", ["t"], buckets=DURATION_BUCKETS, registry=registry)
    rng = random.Random(7)
    amounts = [rng.choice(DURATION_BUCKETS) for _ in range(50)]  # bucket bounds exactly
    amounts += [rng.uniform(0, 5000) for _ in range(500)] + [0.0, float("inf")]
    amounts += [-0.5, -3.0]  # clocks that disagree: counted as 0
    rng.shuffle(amounts)
    for amount in amounts:
        one.labels("x").observe(max(0.0, amount))
    observe_many(many.labels("x"), amounts[:300])
    observe_many(many.labels("x"), amounts[300:])
    observe_many(many.labels("x"), [])
    for bound in [*map(str, DURATION_BUCKETS), "+Inf"]:
        labels = {"t": "x", "le": bound}
        assert registry.get_sample_value("many_bucket", labels) == registry.get_sample_value(
            "one_bucket", labels
        )
    assert registry.get_sample_value("many_count", {"t": "x"}) == len(amounts)
    assert registry.get_sample_value("many_sum", {"t": "x"}) == pytest.approx(
        registry.get_sample_value("one_sum", {"t": "x"})
    )


def test_coalesce_joins_runs_of_assigns_and_acks_in_order() -> None:
    a1 = {"op": "assign", "epoch": 1, "items": [("a", 1, "echo", None, 1.0)]}
    a2 = {"op": "assign", "epoch": 1, "items": [("b", 1, "echo", None, 1.0)]}
    a3 = {"op": "assign", "epoch": 2, "items": [("c", 1, "echo", None, 1.0)]}
    k1 = {"op": "ack", "attempts": [("a", 1)]}
    k2 = {"op": "ack", "attempts": [("b", 1)]}
    cancel = {"op": "cancel", "epoch": 2, "attempts": [("c", 1)]}
    out = coalesce([a1, a2, a3, k1, k2, cancel, k1])
    assert out == [
        {
            "op": "assign",
            "epoch": 1,
            "items": [("a", 1, "echo", None, 1.0), ("b", 1, "echo", None, 1.0)],
        },
        a3,
        {"op": "ack", "attempts": [("a", 1), ("b", 1)]},
        cancel,
        k1,
    ]
    # The messages given are left as they were.
    assert a1["items"] == [("a", 1, "echo", None, 1.0)]
    assert k1["attempts"] == [("a", 1)]
    assert coalesce([]) == []


async def test_both_is_the_local_future_when_replication_is_done() -> None:
    loop = asyncio.get_running_loop()
    local: asyncio.Future[None] = loop.create_future()
    done: asyncio.Future[None] = loop.create_future()
    done.set_result(None)
    assert _both(local, done) is local


async def test_both_waits_for_local_then_replicated() -> None:
    loop = asyncio.get_running_loop()
    local: asyncio.Future[None] = loop.create_future()
    replicated: asyncio.Future[None] = loop.create_future()
    both = _both(local, replicated)
    replicated.set_result(None)
    await asyncio.sleep(0)
    assert not both.done()
    local.set_result(None)
    await asyncio.wait_for(both, 1)


async def test_both_fails_with_local_first_then_replicated() -> None:
    loop = asyncio.get_running_loop()
    local: asyncio.Future[None] = loop.create_future()
    replicated: asyncio.Future[None] = loop.create_future()
    both = _both(local, replicated)
    local.set_exception(OSError("disk"))
    with pytest.raises(OSError, match="disk"):
        await asyncio.wait_for(both, 1)
    replicated.set_exception(ConnectionError("stepped down"))  # retrieved, not logged

    local = loop.create_future()
    replicated = loop.create_future()
    both = _both(local, replicated)
    replicated.set_exception(ConnectionError("stepped down"))
    await asyncio.sleep(0)
    assert not both.done()  # the local write still decides first
    local.set_result(None)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(both, 1)


async def test_attempt_deadlines_time_out_only_late_attempts() -> None:
    """One timer serves every attempt's deadline: a short one times out while a longer one,
    started before it, still runs; a cancel stays a cancel; the timer follows the earliest."""
    from mutirao.protocol import ResultItem
    from mutirao.registry import Registry
    from mutirao.worker.runner import Runner

    registry = Registry()

    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    registry.register("nap", nap)
    results: dict[str, ResultItem] = {}
    runner = Runner(registry, 4, allow_crash=False, on_result=lambda r: results.update({r[0]: r}))
    runner.start(("long", 1, "nap", 0.3, 5.0))
    runner.start(("late", 1, "nap", 5, 0.05))
    runner.start(("quick", 1, "nap", 0.0, 0.02))
    runner.start(("gone", 1, "nap", 5, 0.1))
    await asyncio.sleep(0.01)
    runner.cancel(("gone", 1))
    for _ in range(100):
        if len(results) == 3 and not runner.running:
            break
        await asyncio.sleep(0.02)
    # (task, attempt, ok, value, error, started_at, ended_at)
    assert results["quick"][2:4] == (True, 0.0)
    assert results["long"][2:4] == (True, 0.3)
    assert results["late"][2:5] == (False, None, "timed out after 0.05s")
    assert "gone" not in results  # cancelled: no result
    assert runner.running == {}
    await runner.close()


async def test_attempts_forget_themselves_however_they_end() -> None:
    """Without a done callback per attempt, every way out still leaves ``running`` empty:
    done, failed, cancelled while running, and cancelled before its first step."""
    from mutirao.registry import Registry
    from mutirao.worker.runner import Runner

    registry = Registry()

    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def boom(_: object) -> None:
        raise ValueError("no")

    registry.register("nap", nap)
    registry.register("boom", boom)
    runner = Runner(registry, 4, allow_crash=False, on_result=lambda _: None)
    runner.start(("done", 1, "nap", 0, 5.0))
    runner.start(("failed", 1, "boom", 0, 5.0))
    runner.start(("unstarted", 1, "nap", 5, 5.0))
    runner.cancel(("unstarted", 1))  # before the loop ever ran it
    runner.start(("running", 1, "nap", 5, 5.0))
    await asyncio.sleep(0.01)
    runner.cancel(("running", 1))
    async with asyncio.timeout(5):
        while runner.running:  # noqa: ASYNC110 (the runner signals nothing else)
            await asyncio.sleep(0.01)
    await runner.close()


async def test_a_runner_starts_prefetched_attempts_as_slots_free_and_times_them_from_then() -> None:
    """One slot, four attempts: one runs, the rest wait in order (one cancelled and one
    withdrawn while they wait never start); each starts when the one before ends, and its
    time limit counts from its start, not from its assignment."""
    from mutirao.protocol import AttemptRef, ResultItem
    from mutirao.registry import Registry
    from mutirao.worker.runner import Runner

    registry = Registry()
    gates: dict[str, asyncio.Event] = {}

    async def hold(name: str) -> str:
        await gates.setdefault(name, asyncio.Event()).wait()
        return name

    registry.register("hold", hold)
    results: list[ResultItem] = []
    starts: list[AttemptRef] = []
    runner = Runner(
        registry, 1, allow_crash=False, on_result=results.append, on_start=starts.append
    )
    for name in ("a", "b", "c", "d"):
        runner.start((name, 1, "hold", name, 0.5))
    runner.start(("b", 1, "hold", "b", 0.5))  # a duplicate assignment changes nothing
    assert (list(runner.running), list(runner.waiting)) == (
        [("a", 1)],
        [("b", 1), ("c", 1), ("d", 1)],
    )
    assert runner.held() == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    runner.cancel(("c", 1))
    assert runner.withdraw([("d", 1), ("a", 1)]) == [("d", 1)], "a has started: it stays"
    await asyncio.sleep(0.3)
    gates.setdefault("a", asyncio.Event()).set()
    await asyncio.sleep(0.3)  # 0.6 s after b was assigned, 0.3 s after it started
    gates.setdefault("b", asyncio.Event()).set()
    for _ in range(100):
        if len(results) == 2:
            break
        await asyncio.sleep(0.01)
    assert [(r[0], r[2]) for r in results] == [("a", True), ("b", True)]
    assert starts == [("a", 1), ("b", 1)]
    assert runner.held() == []
    await runner.close()
