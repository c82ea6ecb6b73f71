"""The seed's scenarios, on real processes over loopback: basic execution, balancing, worker
failure (crash flag and SIGKILL), a silent (SIGSTOPped) worker, and an orchestrator restart."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import time
from collections import Counter

import pytest

from mutirao.client.http import ApiError, Client
from mutirao.orchestrator.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from mutirao.protocol import TaskView
from tests.integration.cluster import HEARTBEAT_TIMEOUT, LocalCluster, eventually, standby_synced


def _succeeded_once(view: TaskView) -> bool:
    outcomes = [a["outcome"] for a in view["attempts"]]
    return view["state"] == "succeeded" and outcomes.count("succeeded") == 1


async def test_basic_execution(cluster: LocalCluster) -> None:
    await cluster.start("W1")
    async with cluster.client() as client:
        cases = {
            "echo": ({"hello": "world"}, {"hello": "world"}),
            "sum": ([1, 2, 3.5], 6.5),
            "sha256": ("abc", hashlib.sha256(b"abc").hexdigest()),
            "wordcount": ("a b a", {"a": 2, "b": 1}),
        }
        submitted = {k: await client.submit(k, payload) for k, (payload, _) in cases.items()}
        for kind, task in submitted.items():
            view = await client.wait(task["id"], timeout=10)
            assert view["state"] == "succeeded", view
            assert view["result"] == cases[kind][1]
            assert [a["worker"] for a in view["attempts"]] == ["W1"]
        # Submit and wait in one request: the answer is the finished task.
        done = await client.submit("sum", [2, 3], wait=10)
        assert done["state"] == "succeeded"
        assert done["result"] == 5


async def test_least_load_follows_slots_not_round_robin(cluster: LocalCluster) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("small", slots=1)
    cluster.start_worker("big", slots=4)
    await cluster.wait_workers("small", "big")
    async with cluster.client() as client:
        tasks = await client.submit_batch([{"type": "sleep", "payload": 0.3}] * 20)
        views = await client.wait_many([t["id"] for t in tasks], timeout=30)
    assert all(v["state"] == "succeeded" for v in views)
    per_worker = Counter(v["attempts"][0]["worker"] for v in views)
    # Capacity is 1:4, so least load gives about 4 and 16; round robin would give 10 and 10.
    assert per_worker["small"] <= 6, per_worker
    assert per_worker["big"] >= 14, per_worker
    for worker, slots in (("small", 1), ("big", 4)):
        spans = [
            (v["attempts"][0]["started_at"], v["attempts"][0]["ended_at"])
            for v in views
            if v["attempts"][0]["worker"] == worker
        ]
        peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
        assert peak <= slots, f"{worker} ran {peak} tasks at once with {slots} slot(s)"


async def test_crash_flag_kills_worker_and_task_completes_elsewhere(
    cluster: LocalCluster,
) -> None:
    await cluster.start("W1", "W2")
    async with cluster.client() as client:
        task = await client.submit("echo", {"crash": True, "n": 1})
        view = await client.wait(task["id"], timeout=15)
    assert _succeeded_once(view), view
    assert view["result"] == {"crash": True, "n": 1}
    first, second = view["attempts"]
    assert first["outcome"] == "lost"
    assert second["outcome"] == "succeeded"
    assert first["worker"] != second["worker"]
    crashed = next(p for p in cluster.procs if p.name == f"worker-{first['worker']}")
    assert crashed.popen is not None
    assert crashed.popen.wait(5) == 70


async def test_crash_refused_without_opt_in(cluster: LocalCluster) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    worker = cluster.start_worker("prod", crash=False)
    await cluster.wait_workers("prod")
    async with cluster.client() as client:
        task = await client.submit("echo", {"crash": True}, max_attempts=1)
        view = await client.wait(task["id"], timeout=10)
    assert view["state"] == "failed"
    assert "--allow-crash" in (view["attempts"][0]["error"] or "")
    assert worker.popen is not None
    assert worker.popen.poll() is None, "the worker must survive"


async def test_task_that_keeps_killing_workers_fails_with_reason(cluster: LocalCluster) -> None:
    await cluster.start("W1", "W2")
    async with cluster.client() as client:
        task = await client.submit("echo", {"crash": "always"}, max_attempts=2)
        view = await client.wait(task["id"], timeout=15)
    assert view["state"] == "failed"
    assert [a["outcome"] for a in view["attempts"]] == ["lost", "lost"]
    assert "lost 2 time(s)" in (view["error"] or ""), view["error"]


async def test_sigkilled_worker_tasks_redistributed_and_complete_once(
    cluster: LocalCluster,
) -> None:
    await cluster.start("victim", "survivor")
    victim = next(p for p in cluster.procs if p.name == "worker-victim")
    async with cluster.client() as client:
        tasks = await client.submit_batch([{"type": "sleep", "payload": 1.0}] * 8)
        ids = [t["id"] for t in tasks]

        async def victim_busy() -> bool:
            views = [await client.get(i) for i in ids]
            return (
                sum(
                    v["state"] == "running" and v["attempts"][-1]["worker"] == "victim"
                    for v in views
                )
                >= 3
            )

        await eventually(victim_busy, timeout=10, what="victim running 3+ tasks")
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()

        async def redistributed() -> bool:
            views = [await client.get(i) for i in ids]
            return all(v["attempts"][-1]["worker"] == "survivor" for v in views)

        await eventually(redistributed, timeout=HEARTBEAT_TIMEOUT + 1, what="redistribution")
        detected = time.monotonic() - killed_at
        views = await client.wait_many(ids, timeout=20)
    assert detected <= HEARTBEAT_TIMEOUT + 1
    assert all(_succeeded_once(v) for v in views), views
    moved = [v for v in views if len(v["attempts"]) == 2]
    assert len(moved) >= 3
    assert all(v["attempts"][0]["outcome"] == "lost" for v in moved)


async def test_silent_worker_declared_dead_and_late_result_ignored(
    cluster: LocalCluster,
) -> None:
    await cluster.start("sleepy", "awake")
    sleepy = next(p for p in cluster.procs if p.name == "worker-sleepy")
    async with cluster.client() as client:
        tasks = await client.submit_batch([{"type": "sleep", "payload": 0.5}] * 4)
        ids = [t["id"] for t in tasks]

        async def sleepy_running() -> str | None:
            for i in ids:
                v = await client.get(i)
                if v["state"] == "running" and v["attempts"][-1]["worker"] == "sleepy":
                    return i
            return None

        stalled = await eventually(sleepy_running, timeout=10, what="a task on sleepy")
        sleepy.signal(signal.SIGSTOP)

        async def declared_dead() -> bool:
            states = {w["id"]: w["state"] for w in await client.workers()}
            return states.get("sleepy") == "dead"

        await eventually(declared_dead, timeout=HEARTBEAT_TIMEOUT + 2, what="sleepy dead")
        views = await client.wait_many(ids, timeout=15)
        sleepy.signal(signal.SIGCONT)
        # The resumed worker reconnects and re-sends its result for the reassigned attempt.
        await cluster.wait_workers("sleepy")
        final = await client.get(stalled)
    assert all(_succeeded_once(v) for v in views), views
    assert final["attempts"][0]["worker"] == "sleepy"
    assert final["attempts"][0]["outcome"] == "lost"
    assert _succeeded_once(final)
    assert len(final["attempts"]) == 2


async def test_orchestrator_restart_keeps_every_acknowledged_task(
    cluster: LocalCluster,
) -> None:
    await cluster.start("W1", "W2", slots=2)
    orchestrator = cluster.procs[0]
    async with cluster.client() as client:
        tasks = await client.submit_batch([{"type": "sleep", "payload": 0.4}] * 12)
        ids = [t["id"] for t in tasks]

        async def some_running() -> bool:
            views = [await client.get(i) for i in ids]
            return any(v["state"] == "running" for v in views)

        await eventually(some_running, timeout=10, what="tasks running")
        orchestrator.kill()
        cluster.start_orchestrator()
        await cluster.wait_ready()
        views = await client.wait_many(ids, timeout=30)
    assert all(_succeeded_once(v) for v in views), views
    await cluster.wait_workers("W1", "W2")


async def test_cancel_running_and_pending(cluster: LocalCluster) -> None:
    """A running task, one prefetched behind it (assigned to W1, not started: the worker's
    one slot is busy) and one pending (W2 takes none: --prefetch 0 and its slot is busy)."""
    await cluster.start("W1", slots=1, extra=("--prefetch", "1"))
    async with cluster.client() as client:
        running = await client.submit("sleep", 2.0)
        prefetched = await client.submit("sleep", 2.0)
        cluster.start_worker("W2", slots=1, extra=("--prefetch", "0", "--queues", "other"))
        await cluster.wait_workers("W2")
        pending = await client.submit("sleep", 2.0, queue="other")
        blocked = await client.submit("sleep", 2.0, queue="other")

        async def started() -> bool:
            states = [(await client.get(t["id"]))["state"] for t in (running, pending)]
            return states == ["running", "running"]

        await eventually(started, timeout=10, what="the first task on each worker running")
        assert (await client.get(prefetched["id"]))["state"] == "assigned"
        assert (await client.get(blocked["id"]))["state"] == "pending"
        for task in (prefetched, blocked, running, pending):
            assert (await client.cancel(task["id"]))["state"] == "cancelled"
        follow_up = await client.submit("echo", "after")
        done = await client.wait(follow_up["id"], timeout=10)
        assert done["state"] == "succeeded", "the cancelled tasks must free their slots"
        await asyncio.sleep(0)
        final = await client.get(running["id"])
        never = await client.get(prefetched["id"])
    assert final["state"] == "cancelled"
    assert final["attempts"][0]["outcome"] == "cancelled"
    assert never["attempts"][0]["outcome"] == "cancelled"
    assert never["attempts"][0]["started_at"] is None, "a prefetched attempt never started"


async def test_a_damaged_checkpoint_is_named_in_one_line_and_recovery_falls_back(
    cluster: LocalCluster,
) -> None:
    """A damaged checkpoint: the restart says so in one line naming the file and recovers
    everything from the previous checkpoint plus the journal. With both damaged and the
    journal before them compacted away, the node refuses to start, in one line, instead of
    serving a partial state."""
    cluster.start_orchestrator("--checkpoint-interval", "1")
    await cluster.wait_ready()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")
    current = cluster.data_dir / CHECKPOINT_NAME
    previous = cluster.data_dir / PREVIOUS_NAME
    ids = []
    async with cluster.client() as client:
        for batch in range(3):  # each batch is followed by a checkpoint within a second
            tasks = await client.submit_batch([{"type": "echo", "payload": batch}] * 20)
            ids += [t["id"] for t in tasks]
            await client.wait_many(ids, timeout=20)
            written = current.stat().st_mtime_ns if current.exists() else 0

            async def newer(since: int = written) -> bool:
                return current.exists() and current.stat().st_mtime_ns > since

            await eventually(newer, timeout=10, what=f"a checkpoint after batch {batch}")
        assert previous.exists()
        cluster.procs[0].kill()
        raw = bytearray(current.read_bytes())
        raw[len(raw) // 2] ^= 0x20  # one flipped bit in the middle of the state
        current.write_bytes(bytes(raw))
        restarted = cluster.start_orchestrator()
        await cluster.wait_ready()
        views = await client.wait_many(ids, timeout=20)
    assert [v["result"] for v in views] == [n for n in range(3) for _ in range(20)]
    output = restarted.output()
    assert f"checkpoint {current} is damaged" in output
    assert "Traceback" not in output

    restarted.kill()
    for path in (current, previous):
        path.write_bytes(path.read_bytes()[:100])
    refused = cluster.start_orchestrator()
    assert refused.popen is not None
    assert refused.popen.wait(timeout=30) != 0
    lines = [ln for ln in refused.output().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, refused.output()[-2000:]
    assert "cannot recover" in lines[0]
    assert "compacted away" in lines[0]
    assert "Traceback" not in refused.output()


async def test_a_standby_whose_state_is_damaged_copies_it_back_from_the_leader(
    cluster: LocalCluster,
) -> None:
    """The standby's checkpoint is damaged and its journal before it compacted away: it
    cannot recover on its own, but the lease names a leader holding the state, so it moves
    the damaged files aside (kept), starts empty, never leads before it has the leader's
    snapshot, gets it, and then takes over from a SIGKILLed leader with every task."""
    await cluster.start_ha("W1")
    backup_data = cluster.root / "backup-data"
    async with cluster.client(retry_for=30) as client:
        before = await client.submit_batch([{"type": "echo", "payload": n} for n in range(30)])
        await client.wait_many([t["id"] for t in before], timeout=20)
        cluster.proc("backup").kill()
        damaged = backup_data / CHECKPOINT_NAME
        broken = damaged.read_bytes()[:100]
        damaged.write_bytes(broken)
        restarted = cluster.start_backup()

        async def copied() -> bool:
            return "copied back from the leader" in restarted.output()

        await eventually(copied, timeout=20, what="the standby to copy the state back")
        await standby_synced(client, "backup")
        after = await client.submit_batch([{"type": "echo", "payload": n} for n in range(30, 40)])
        cluster.proc("orchestrator").kill()
        views = await client.wait_many([t["id"] for t in before + after], timeout=30)
        info = await client.cluster()
    assert info["node"] == "backup"
    assert [v["result"] for v in views] == list(range(40))
    assert all(_succeeded_once(v) for v in views)
    output = restarted.output()
    assert "A peer holds the cluster's state: starting empty to copy it" in output
    assert "Traceback" not in output
    (aside,) = backup_data.glob("damaged-*")
    assert (aside / CHECKPOINT_NAME).read_bytes() == broken, "kept as it was, for a look"


async def test_restart_recovers_from_checkpoint_plus_journal_tail(cluster: LocalCluster) -> None:
    cluster.start_orchestrator("--checkpoint-interval", "1")
    await cluster.wait_ready()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")
    checkpoint = cluster.data_dir / "state_checkpoint.json"
    async with cluster.client() as client:
        before = await client.submit_batch([{"type": "echo", "payload": n} for n in range(50)])
        await client.wait_many([t["id"] for t in before], timeout=20)

        async def checkpointed() -> bool:
            return checkpoint.exists()

        await eventually(checkpointed, timeout=10, what="a checkpoint")
        after = await client.submit_batch([{"type": "echo", "payload": n} for n in range(50, 60)])
        cluster.procs[0].kill()
        segments = sorted(p.name for p in cluster.data_dir.glob("journal-*.log"))
        cluster.start_orchestrator()
        await cluster.wait_ready()
        ids = [t["id"] for t in before + after]
        views = await client.wait_many(ids, timeout=30)
    assert len(segments) >= 1, "records after the checkpoint live in a later segment"
    recoveries = re.findall(
        r"recovered (\d+) task\(s\) at epoch \d+ from \S+ \((\d+) journal record",
        cluster.procs[-1].output(),
    )
    tasks, replayed = map(int, recoveries[-1])
    assert tasks == 60
    assert replayed < 60, "most of the state came from the checkpoint, not the journal"
    assert [v["result"] for v in views] == list(range(60))
    assert all(_succeeded_once(v) for v in views)


async def test_finished_tasks_are_forgotten_after_the_retention_period(
    cluster: LocalCluster,
) -> None:
    """``--retention 1``: a finished task and its result leave memory about a second after it
    finished (the API then answers 404 saying why), also across a restart (the expiry is
    journaled), while a task still waiting for a worker stays."""
    cluster.start_orchestrator("--retention", "1", "--checkpoint-interval", "1")
    await cluster.wait_ready()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        done = await client.submit_batch([{"type": "echo", "payload": n} for n in range(20)])
        views = await client.wait_many([t["id"] for t in done], timeout=10)
        assert [v["result"] for v in views] == list(range(20))
        cluster.procs[-1].kill()  # the only worker: the next task waits
        await eventually(
            lambda: _dead(client, "W1"), timeout=HEARTBEAT_TIMEOUT + 5, what="W1 declared dead"
        )
        waiting = await client.submit("echo", "later")

        async def forgotten() -> bool:
            try:
                await client.get(done[0]["id"])
            except ApiError as exc:
                return exc.status == 404 and "forgotten after 1 s" in str(exc)
            return False

        await eventually(forgotten, timeout=10, what="the finished task to expire")

        async def all_forgotten() -> bool:
            counts = (await client.cluster())["tasks"]
            return (counts["succeeded"], counts["pending"]) == (0, 1)

        # The others finished a little later: a later sweep (every 0.25 s) takes them.
        await eventually(all_forgotten, timeout=10, what="every finished task to expire")

        # Restarted with the default retention (a day): they stay forgotten, as journaled.
        cluster.procs[0].kill()
        cluster.start_orchestrator()
        await cluster.wait_ready()
        assert (await client.get(waiting["id"]))["state"] == "pending"
        for task in done:
            with pytest.raises(ApiError) as info:
                await client.get(task["id"])
            assert info.value.status == 404
        counts = (await client.cluster())["tasks"]
    assert (counts["succeeded"], counts["pending"]) == (0, 1), counts


async def _dead(client: Client, wid: str) -> bool:
    return any(w["id"] == wid and w["state"] == "dead" for w in await client.workers())
