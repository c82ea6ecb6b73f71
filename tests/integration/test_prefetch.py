"""Prefetch on real processes: a worker holds a window of attempts beyond its slots and
starts each as a slot frees. What it holds survives a SIGKILL of the active orchestrator
(the standby adopts it from the worker's hello) and is redistributed when the worker itself
is SIGKILLed; attempts waiting behind a long task move to a worker that is idle."""

from __future__ import annotations

from typing import Any

from mutirao.client.http import Client
from tests.integration.cluster import LocalCluster, eventually, standby_synced


def _once(views: list[Any]) -> list[str]:
    """Ids of the tasks that did not succeed exactly once."""
    wrong = []
    for view in views:
        outcomes = [a["outcome"] for a in view["attempts"]]
        if view["state"] != "succeeded" or outcomes.count("succeeded") != 1:
            wrong.append(view["id"])
    return wrong


async def _held(client: Client, wid: str) -> int:
    return next((w["running"] for w in await client.workers() if w["id"] == wid), 0)


async def test_a_window_survives_a_sigkill_of_the_active_then_of_its_worker(
    cluster: LocalCluster,
) -> None:
    """W1 (one slot, a window of 8) holds 9 of 30 tasks; the active is SIGKILLed, the
    standby leads and W1 goes on with what it holds; then W1 is SIGKILLed and W2 runs the
    rest. Every task succeeds exactly once."""
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_backup()
    cluster.start_worker("W1", slots=1, extra=("--prefetch", "8"))
    await cluster.wait_workers("W1")
    async with cluster.client(retry_for=30) as client:
        await standby_synced(client, "backup")
        tasks = await client.submit_batch([{"type": "sleep", "payload": 0.15}] * 30)
        ids = [t["id"] for t in tasks]

        async def window_full() -> bool:
            return await _held(client, "W1") == 9

        await eventually(window_full, timeout=10, what="W1 holding one slot and 8 prefetched")
        cluster.proc("orchestrator").kill()

        async def adopted() -> bool:
            info = await client.request("GET", "/v1/ha")
            return info["node"] == "backup" and await _held(client, "W1") > 1

        await eventually(adopted, timeout=20, what="the standby leading, W1's window adopted")
        cluster.start_worker("W2", slots=2, extra=("--prefetch", "0"))
        await cluster.wait_workers("W2")

        async def some_done() -> bool:
            views = await client.wait_many(ids, timeout=0)
            return sum(v["state"] == "succeeded" for v in views) >= 12

        await eventually(some_done, timeout=20, what="a dozen tasks done after the failover")
        cluster.proc("worker-W1").kill()
        views = await client.wait_many(ids, timeout=60)
    assert not _once(views), [v for v in views if v["id"] in _once(views)]
    lost = [v for v in views if v["attempts"][0]["outcome"] == "lost"]
    assert lost, "W1 held attempts when it was killed: they ran again elsewhere"
    assert all(v["attempts"][-1]["worker"] == "W2" for v in lost)


async def test_tasks_prefetched_behind_a_long_one_move_to_an_idle_worker(
    cluster: LocalCluster,
) -> None:
    """W1 (one slot) runs a 4 s task with three short ones prefetched behind it; W2 joins
    idle: the orchestrator asks W1 back for the three, and W2 runs them long before the
    long task ends."""
    await cluster.start("W1", slots=1, extra=("--prefetch", "4"))
    async with cluster.client() as client:
        long = await client.submit("sleep", 4.0)
        short = await client.submit_batch([{"type": "sleep", "payload": 0.1}] * 3)
        assert await _held(client, "W1") == 4
        cluster.start_worker("W2", slots=2, extra=("--prefetch", "0"))
        await cluster.wait_workers("W2")
        views = await client.wait_many([t["id"] for t in short], timeout=10)
        still = await client.get(long["id"])
        final = await client.wait(long["id"], timeout=20)
    assert still["state"] == "running", "the short tasks finished before the long one"
    assert not _once([*views, final])
    for view in views:
        assert [a["outcome"] for a in view["attempts"]] == ["released", "succeeded"], view
        assert [a["worker"] for a in view["attempts"]] == ["W1", "W2"], view
        assert view["attempts"][0]["started_at"] is None, "it had not started on W1"
