"""``/metrics`` of a live local cluster (real processes), parsed with prometheus_client's
parser: after a known workload the counters and gauges hold the expected values; a
SIGKILLed worker shows up as dead with a growing heartbeat age and its task redistributed;
the active and the standby tell their roles apart, and a takeover is counted."""

from __future__ import annotations

import aiohttp

from tests.integration.cluster import SIGKILL, LocalCluster, eventually
from tests.integration.scrape import Samples, scrape, total, value

N = 40


async def _ha(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/ha") as resp:
        doc: dict[str, object] = await resp.json()
        return doc


async def test_counters_and_gauges_after_a_workload_and_a_sigkilled_worker(
    cluster: LocalCluster,
) -> None:
    await cluster.start("W1", "W2")
    async with cluster.client() as client:
        tasks = await client.submit_batch([{"type": "echo", "payload": i} for i in range(N)])
        views = await client.wait_many([t["id"] for t in tasks], timeout=20)
        assert all(v["state"] == "succeeded" for v in views)
        workers = {w["id"]: w["url"] for w in await client.workers()}

    m = await scrape(cluster.url)
    assert value(m, "mutirao_tasks_submitted_total", type="echo") == N
    assert value(m, "mutirao_tasks_completed_total", type="echo") == N
    assert value(m, "mutirao_tasks_failed_total", type="echo") == 0
    assert value(m, "mutirao_tasks", state="succeeded") == N
    assert value(m, "mutirao_tasks", state="pending") == 0
    assert value(m, "mutirao_task_queue_wait_seconds_count", type="echo") == N
    assert (
        value(m, "mutirao_task_run_duration_seconds_count", type="echo", outcome="succeeded") == N
    )
    # Alive, or suspect for an instant on a loaded machine: not dead.
    assert value(m, "mutirao_workers", state="dead") == 0
    assert total(m, "mutirao_workers") == 2
    assert value(m, "mutirao_worker_slots", worker="W1") == 4
    assert (value(m, "mutirao_heartbeats_received_total") or 0) > 0
    assert (value(m, "mutirao_journal_fsync_duration_seconds_count") or 0) > 0
    assert value(m, "mutirao_orchestrator_leader") == 1
    ran = [await scrape(url) for url in workers.values()]
    assert (
        sum(total(r, "mutirao_runner_tasks_executed_total", outcome="succeeded") for r in ran) == N
    )
    assert all(value(r, "mutirao_runner_connected") == 1 for r in ran)
    assert all(value(r, "mutirao_runner_slots") == 4 for r in ran)

    # A long task on each worker, then SIGKILL the one running the first.
    async with cluster.client() as client:
        long = await client.submit_batch([{"type": "sleep", "payload": 30}] * 2)

        async def holder() -> str | None:
            view = await client.get(long[0]["id"])
            return view["attempts"][-1]["worker"] if view["state"] == "running" else None

        victim = await eventually(holder, timeout=10, what="the long task running")
    proc = next(p for p in cluster.procs if p.name == f"worker-{victim}")
    proc.signal(SIGKILL)

    async def dead() -> Samples | None:
        m = await scrape(cluster.url)
        return m if value(m, "mutirao_worker_state", worker=victim, state="dead") == 1 else None

    m = await eventually(dead, timeout=10, what=f"{victim} dead in /metrics")
    assert value(m, "mutirao_workers", state="dead") == 1
    assert (value(m, "mutirao_workers_declared_dead_total", cause="disconnected") or 0) >= 1
    assert (value(m, "mutirao_tasks_redistributed_total", cause="worker_dead") or 0) >= 1
    assert (value(m, "mutirao_tasks_retried_total", type="sleep") or 0) >= 1
    first_age = value(m, "mutirao_worker_heartbeat_age_seconds", worker=victim)
    assert first_age is not None

    async def older() -> float | None:
        age = value(
            await scrape(cluster.url), "mutirao_worker_heartbeat_age_seconds", worker=victim
        )
        return age if age is not None and age > first_age + 0.2 else None

    await eventually(older, timeout=5, what=f"{victim}'s heartbeat age to grow")


async def test_leader_and_standby_report_their_roles_and_a_takeover_is_counted(
    cluster: LocalCluster,
) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_backup()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")

    async def synced() -> Samples | None:
        m = await scrape(cluster.url)
        return m if value(m, "mutirao_replication_standby_synced", standby="backup") == 1 else None

    active = await eventually(synced, timeout=20, what="the standby in sync")
    standby = await scrape(cluster.backup_url)  # public: no token on either
    ha = await _ha(cluster.url)
    assert value(active, "mutirao_orchestrator_leader") == 1
    assert value(active, "mutirao_orchestrator_role", role="active") == 1
    assert value(active, "mutirao_orchestrator_epoch") == ha["epoch"]
    assert value(active, "mutirao_orchestrator_degraded") == 0
    assert value(active, "mutirao_replication_lag_batches", standby="backup") is not None
    assert value(standby, "mutirao_orchestrator_leader") == 0
    assert value(standby, "mutirao_orchestrator_role", role="standby") == 1
    assert value(standby, "mutirao_orchestrator_epoch") == (await _ha(cluster.backup_url))["epoch"]
    assert value(standby, "mutirao_orchestrator_takeovers_total") == 0
    assert "mutirao_tasks" not in standby  # only the active reports the cluster

    primary = next(p for p in cluster.procs if p.name == "orchestrator")
    primary.signal(SIGKILL)

    async def took_over() -> Samples | None:
        m = await scrape(cluster.backup_url)
        return m if value(m, "mutirao_orchestrator_leader") == 1 else None

    leader = await eventually(took_over, timeout=20, what="the standby to take over")
    assert value(leader, "mutirao_orchestrator_takeovers_total") == 1
    new_epoch = (await _ha(cluster.backup_url))["epoch"]
    assert isinstance(new_epoch, int)
    assert new_epoch > int(str(ha["epoch"]))
    assert value(leader, "mutirao_orchestrator_epoch") == new_epoch
    assert value(leader, "mutirao_orchestrator_degraded") == 1  # its standby is gone
    # The failover is logged once, at WARNING, with the reason.
    takeovers = [
        line
        for line in (cluster.root / "backup.out").read_text().splitlines()
        if "now the active orchestrator" in line
    ]
    assert len(takeovers) == 1, takeovers
    assert "WARNING" in takeovers[0]
    assert "orchestrator (epoch 1) stopped holding the lease" in takeovers[0], takeovers
