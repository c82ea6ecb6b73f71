"""Who runs what, on real processes: a type no worker runs waits for one; queues keep
workers apart; a ``gpu`` task only where there is one, never two at once on one gpu; a
rate limit exact across two workers and across a SIGKILL of the active; fair share between
two users; quotas answered with 429; a worker stopped with SIGTERM drains and loses
nothing."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from mutirao.client.http import ApiError
from mutirao.protocol import TaskView
from tests.integration.cluster import LocalCluster, UpCluster, eventually
from tests.integration.test_cli import Cli, cli_env


def _assigned(view: TaskView) -> float:
    """When the leader dispatched the task's last attempt (its own clock: what a rate
    limit paces)."""
    return float(view["attempts"][-1]["assigned_at"])


def _intervals(views: list[TaskView]) -> list[tuple[float, float]]:
    out = []
    for view in views:
        attempt = view["attempts"][-1]
        out.append((float(attempt["started_at"]), float(attempt["ended_at"])))
    return sorted(out)


async def _metric(url: str, name: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    return [line for line in text.splitlines() if line.startswith(name)]


async def test_a_type_no_worker_runs_waits_for_one(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    async with cluster.client() as client:
        task = await client.submit("echo", "patience")
        assert task["state"] == "pending"
        assert task["pending_reason"] == "no live worker runs task type 'echo'"
        cli = Cli(
            cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token()), tmp_path
        )
        status = await cli("status", task["id"])
        assert "waiting: no live worker runs task type 'echo'" in status.out, status
        assert 'mutirao_queue_depth{priority="0",type="echo"} 1.0' in await _metric(
            cluster.url, "mutirao_queue_depth"
        )
        assert await _metric(cluster.url, "mutirao_queue_pending{") == [
            'mutirao_queue_pending{queue="default"} 1.0'
        ]
        cluster.start_worker("W1")
        view = await client.wait(task["id"], timeout=20)
    assert (view["state"], view["result"]) == ("succeeded", "patience")


async def test_queues_and_resources_decide_where_tasks_run(cluster: LocalCluster) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("CPU", slots=4)
    cluster.start_worker(
        "GPU", slots=4, extra=("--queues", "default,render", "--resources", "gpu=1")
    )
    await cluster.wait_workers("CPU", "GPU")
    async with cluster.client() as client:
        render = await client.submit_batch(
            [{"type": "sleep", "payload": 0.2, "queue": "render"} for _ in range(4)]
        )
        gpu = await client.submit_batch(
            [{"type": "sleep", "payload": 0.2, "resources": {"gpu": 1}} for _ in range(4)]
        )
        plain = await client.submit_batch([{"type": "echo", "payload": i} for i in range(8)])
        two_gpus = await client.submit("echo", "x", resources={"gpu": 2})
        render_views = await client.wait_many([t["id"] for t in render], timeout=20)
        gpu_views = await client.wait_many([t["id"] for t in gpu], timeout=20)
        await client.wait_many([t["id"] for t in plain], timeout=20)
        waiting = await client.get(two_gpus["id"])
    assert {v["attempts"][-1]["worker"] for v in render_views} == {"GPU"}, "queue isolation"
    assert {v["attempts"][-1]["worker"] for v in gpu_views} == {"GPU"}, "only where a gpu is"
    for (_, end), (start, _) in itertools.pairwise(_intervals(gpu_views)):
        assert start >= end - 0.01, "two tasks held the one gpu at once"
    assert waiting["state"] == "pending"
    assert waiting["pending_reason"] == (
        "no live worker that runs 'echo' on queue 'default' has room for cpu=1, gpu=2"
    )


async def test_a_rate_limit_is_exact_across_workers_and_a_failover(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """5/s with a burst of 5 over 20 tasks and two workers: the starts span at least 3.8 s
    and never are there more than 5 in one second, also when the active is SIGKILLed in
    the middle (its standby knows the limit from the journal)."""
    await cluster.start_ha("W1", "W2")
    cli = Cli(
        cli_env(tmp_path, MUTIRAO_URL=",".join(cluster.urls), MUTIRAO_TOKEN=cluster.token()),
        tmp_path,
    )
    run = await cli("limit", "set", "sleep", "--rate", "5", "--burst", "5")
    assert run.code == 0, run
    async with cluster.client(retry_for=30) as client:
        # Each runs 0.3 s: the next start finds W1 busier than W2, and the two share them.
        tasks = await client.submit_batch([{"type": "sleep", "payload": 0.3} for _ in range(20)])

        async def some_ran() -> bool:
            views = await client.wait_many([t["id"] for t in tasks], timeout=0)
            return sum(v["state"] == "succeeded" for v in views) >= 6

        await eventually(some_ran, timeout=10, what="six rate-limited tasks done")
        cluster.proc("orchestrator").kill()
        views = await client.wait_many([t["id"] for t in tasks], timeout=40)
        limits = await client.request("GET", "/v1/limits")
    assert [v["state"] for v in views] == ["succeeded"] * 20, views
    assert all(len(v["attempts"]) == 1 for v in views), "each ran once"
    assert {v["attempts"][0]["worker"] for v in views} == {"W1", "W2"}
    starts = sorted(_assigned(v) for v in views)
    assert starts[-1] - starts[0] >= 3.8, starts
    for first, sixth in zip(starts, starts[5:], strict=False):
        assert sixth - first >= 1.0, f"six starts within a second: {starts}"
    assert limits == {"limits": [{"type": "sleep", "rate": 5.0, "burst": 5, "concurrency": None}]}
    listed = await cli("limit", "list")
    assert "sleep" in listed.out, listed
    assert (await cli("limit", "rm", "sleep")).code == 0


async def test_fair_share_between_two_users(cluster: LocalCluster) -> None:
    """Alice queues 400 tasks, then Bob 60: of the next 100 to finish, each has 40 or
    more, though Alice's were all queued first."""
    await cluster.start("W1", slots=2)
    alice, bob = cluster.token("alice", admin=False), cluster.token("bob", admin=False)
    work = [{"type": "sleep", "payload": 0.02} for _ in range(400)]
    async with cluster.client(alice) as a, cluster.client(bob) as b:
        alices = await a.submit_batch(work)
        since = time.time()
        bobs = await b.submit_batch(work[:60])
        await b.wait_many([t["id"] for t in bobs], timeout=60)
        views = await a.wait_many([t["id"] for t in alices[:200]], timeout=60)
        bob_views = await b.wait_many([t["id"] for t in bobs], timeout=1)
        for task in alices[200:]:
            try:
                await a.request("POST", f"/v1/tasks/{task['id']}/cancel")
            except ApiError as exc:
                if exc.status != 409:  # 409: it finished meanwhile
                    raise
    ended = sorted(
        (float(v["attempts"][-1]["ended_at"]), owner)
        for owner, group in (("alice", views), ("bob", bob_views))
        for v in group
        if v["state"] == "succeeded" and float(v["attempts"][-1]["ended_at"]) > since
    )
    first_100 = [owner for _, owner in ended[:100]]
    assert first_100.count("alice") >= 40, first_100
    assert first_100.count("bob") >= 40, first_100


async def test_quotas_refuse_with_429_and_cap_what_runs(cluster: LocalCluster) -> None:
    await cluster.start("W1", slots=4)
    carol = cluster.token("carol", admin=False)
    async with cluster.client() as admin, cluster.client(carol, retry_for=0) as client:
        quota = await admin.request("PUT", "/v1/quotas/carol", {"max_running": 1, "max_pending": 3})
        assert quota == {"user": "carol", "weight": 1.0, "max_running": 1, "max_pending": 3}
        # Three wait (one of them then runs, max_running 1), a fourth waits beside two...
        tasks = await client.submit_batch([{"type": "sleep", "payload": 0.3} for _ in range(3)])
        tasks.append(await client.submit("sleep", 0.3))
        # ...and a fifth would make four waiting.
        try:
            await client.submit("echo", "one too many")
        except ApiError as exc:
            refused: Any = exc
        else:
            raise AssertionError("a submission past max_pending was accepted")
        views = await client.wait_many([t["id"] for t in tasks], timeout=20)
        with_viewer = await client.request("GET", "/v1/quotas")
    assert (refused.status, refused.body["field"]) == (429, "max_pending"), refused.body
    assert "max_pending quota is 3" in refused.body["message"]
    for (_, end), (start, _) in itertools.pairwise(_intervals(views)):
        assert start >= end - 0.01, "two of carol's tasks ran at once (max_running 1)"
    assert with_viewer == {"quotas": [quota]}


async def test_a_worker_stopped_with_sigterm_drains_and_loses_nothing(
    cluster: LocalCluster,
) -> None:
    """Scale-down: SIGTERM makes a worker finish what runs (results acknowledged), take
    nothing new, and hand back what outlasts its drain timeout; every task ends once,
    none of them charged an attempt for it."""
    cluster.env_extra["MUTIRAO_WORKER_DRAIN_TIMEOUT"] = "1.5"
    await cluster.start("W1", "W2", slots=2)
    async with cluster.client() as client:
        # Dispatched in order, least load first: W1 and W2 each get a long task and a short,
        # then a short each to prefetch.
        long = await client.submit_batch(
            [{"type": "sleep", "payload": 4.0, "max_attempts": 1} for _ in range(2)]
        )
        short = await client.submit_batch(
            [{"type": "sleep", "payload": 0.6, "max_attempts": 1} for _ in range(4)]
        )

        async def all_running() -> bool:
            views = await client.wait_many([t["id"] for t in [*short, *long]], timeout=0)
            return sum(v["state"] == "running" for v in views) == 4

        await eventually(all_running, timeout=10, what="four tasks running on two workers")
        cluster.proc("worker-W1").signal(signal.SIGTERM)

        async def draining() -> bool:
            return any(w["state"] == "draining" for w in await client.workers())

        await eventually(draining, timeout=5, what="W1 draining")
        views = await client.wait_many([t["id"] for t in [*short, *long]], timeout=30)
        exit_code = await asyncio.to_thread(cluster.proc("worker-W1").popen.wait, 10)  # type: ignore[union-attr]
    assert exit_code == 0, cluster.dump_logs()
    assert [v["state"] for v in views] == ["succeeded"] * 6, views
    outcomes = [[a["outcome"] for a in v["attempts"]] for v in views]
    assert all(o[-1] == "succeeded" for o in outcomes), outcomes
    handed_back = [v for v in views if len(v["attempts"]) == 2]
    # W1's long task, and the short one prefetched behind it if it had not started yet.
    [w1_long] = [v for v in views[4:] if v["attempts"][0]["worker"] == "W1"]
    assert w1_long in handed_back, outcomes
    assert len(handed_back) <= 2, outcomes
    for view in handed_back:
        assert view["attempts"][0]["outcome"] == "released", view
        assert view["attempts"][1]["worker"] == "W2", view
    assert "drained" in cluster.proc("worker-W1").output()


async def test_up_autoscales_from_zero_and_back(tmp_path: Path) -> None:
    """``mutirao up --autoscale 0:2``: no worker until work waits, then as many as it
    needs (capped), then down one at a time after the cool-down, each draining; from zero
    again for the next task. Nothing is lost on the way."""
    up = UpCluster(tmp_path, cli_env(tmp_path))
    try:
        await up.start(
            "--autoscale", "0:2", "--autoscale-cooldown", "1.5", "--slots", "2", "--no-backup"
        )
        async with up.client() as client:
            assert await client.workers() == []
            tasks = await client.submit_batch([{"type": "sleep", "payload": 1.0}] * 8)
            views = await client.wait_many([t["id"] for t in tasks], timeout=40)
            assert [v["state"] for v in views] == ["succeeded"] * 8, views
            # The first worker up prefetches what its slots cannot run; the second takes
            # those it has not started over.
            assert {v["attempts"][-1]["worker"] for v in views} == {"W1", "W2"}

            async def scaled_to_zero() -> bool:
                return all(w["state"] == "dead" for w in await client.workers())

            await eventually(scaled_to_zero, timeout=20, what="the workers stopped, idle")
            again = await client.submit("echo", "from zero")
            view = await client.wait(again["id"], timeout=30)
        assert view["result"] == "from zero", view
        output = up.proc_output()
        assert "autoscale: 8 task(s) waiting" in output, output
        assert "worker W2 drains and stops (1 left)" in output, output
        assert "worker W1 drains and stops (0 left)" in output, output
    finally:
        up.stop()


async def test_queued_routes_limits_and_quotas_survive_a_sigkill_of_the_active(
    cluster: LocalCluster,
) -> None:
    """Tasks queued for a queue nobody serves yet, a user's quota and a type's concurrency
    cap, all acknowledged by the active, then SIGKILL: the standby leads with all three,
    and the tasks run once each, one at a time, when a worker for their queue joins."""
    await cluster.start_ha("W1")
    async with cluster.client(retry_for=30) as admin:
        await admin.request("PUT", "/v1/quotas/dave", {"max_pending": 5})
        await admin.request("PUT", "/v1/limits/sleep", {"concurrency": 1})
    async with cluster.client(cluster.token("dave", admin=False), retry_for=30) as client:
        tasks = await client.submit_batch(
            [{"type": "sleep", "payload": 0.2, "queue": "render"} for _ in range(5)]
        )
        cluster.proc("orchestrator").kill()
        try:
            await client.submit("sleep", 0.2, queue="render")
        except ApiError as exc:
            refused: Any = exc
        else:
            raise AssertionError("the new leader forgot dave's max_pending quota")
        cluster.start_worker("R", extra=("--queues", "render"))
        views = await client.wait_many([t["id"] for t in tasks], timeout=30)
        info = await client.request("GET", "/v1/ha")
    assert info["node"] == "backup", info
    assert (refused.status, refused.body["field"]) == (429, "max_pending")
    assert [v["state"] for v in views] == ["succeeded"] * 5, views
    assert all(len(v["attempts"]) == 1 and v["attempts"][0]["worker"] == "R" for v in views)
    for (_, end), (start, _) in itertools.pairwise(_intervals(views)):
        assert start >= end - 0.01, "the concurrency cap of 1 was lost in the failover"
