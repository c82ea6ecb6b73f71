"""User task modules on a real worker, and the logs that let one follow a task everywhere."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.integration.cluster import LocalCluster, Proc, children_of, eventually

MODULE = "tests.integration.fixtures.user_tasks"


async def test_the_mutirao_script_finds_task_modules_in_the_working_directory(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """``mutirao worker --tasks greetings`` run where greetings.py is, as one runs Celery's
    ``-A``: no PYTHONPATH needed, for the worker and its slot processes alike."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "greetings.py").write_text(
        "import mutirao\n\n\n@mutirao.task('greet')\ndef greet(name):\n    return f'olá, {name}'\n"
    )
    cluster.start_orchestrator()
    await cluster.wait_ready()
    script = str(Path(sys.executable).parent / "mutirao")
    argv = [script, "worker", "--id", "W1", "--url", cluster.url, "--tasks", "greetings"]
    env = {k: v for k, v in cluster._env().items() if k != "PYTHONPATH"}
    worker = Proc("worker-W1", argv, tmp_path / "worker.out", env, cwd=project)
    cluster.procs.append(worker.start())
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        view = await client.result((await client.submit("greet", "mundo"))["id"], wait=20)
    assert view["result"] == "olá, mundo", view


async def test_user_task_module_sync_async_and_raising_handlers(cluster: LocalCluster) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("W1", extra=("--tasks", MODULE))
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        square = await client.submit("blocking-square", 7)
        upper = await client.submit("async-upper", "mutirão")
        bad = await client.submit("raises", 3, max_attempts=1)
        views = {v["type"]: v for v in await client.wait_many(
            [square["id"], upper["id"], bad["id"]], timeout=20)}  # fmt: skip
    assert views["blocking-square"]["result"]["square"] == 49
    # Blocking handlers run in a slot process, not on the worker's event loop.
    worker = next(p for p in cluster.procs if p.name == "worker-W1")
    assert views["blocking-square"]["result"]["pid"] != worker.pid
    assert views["async-upper"]["result"] == "MUTIRÃO"
    assert views["raises"]["state"] == "failed"
    assert views["raises"]["attempts"][0]["error"] == "ValueError: bad value 3"


async def test_a_time_limit_stops_a_blocking_handler_and_frees_its_slot(
    cluster: LocalCluster,
) -> None:
    """Six 20 s blocking handlers with a 1 s time limit on a 2-slot worker: each attempt's
    process is killed at its limit (reported in the error), so quick tasks submitted next
    run at once on fresh processes instead of waiting for the stuck threads of old."""
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("W1", slots=2, extra=("--tasks", MODULE))
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        stuck = await client.submit_batch(
            [{"type": "blocking-sleep", "payload": 20, "timeout": 1, "max_attempts": 1}] * 6
        )
        views = await client.wait_many([t["id"] for t in stuck], timeout=30)
        assert {v["state"] for v in views} == {"failed"}
        errors = {v["attempts"][0]["error"] for v in views}
        assert errors == {"timed out after 1.0s; its process was killed"}, errors
        started = time.monotonic()
        quick = await client.submit_batch([{"type": "blocking-sleep", "payload": 0.1}] * 6)
        done = await client.wait_many([t["id"] for t in quick], timeout=30)
        took = time.monotonic() - started
    assert {v["state"] for v in done} == {"succeeded"}
    # Six 0.1 s tasks on two slots: ~0.3 s plus process starts; a stuck thread would
    # have held each slot for the rest of its 20 s.
    assert took < 10, f"quick tasks took {took:.1f}s behind killed ones"
    # The killed processes are reaped: what is left is at most one process per slot (and
    # multiprocessing's resource tracker).
    worker = next(p for p in cluster.procs if p.name == "worker-W1")
    assert len(children_of(worker.pid)) <= 3, children_of(worker.pid)


async def test_with_pool_threads_a_thread_past_its_time_limit_holds_its_slot(
    cluster: LocalCluster,
) -> None:
    """--pool threads cannot stop a thread: two 3 s handlers time out after 0.5 s, and their
    threads hold both slots of W1 until they return. The orchestrator is told (W1 shows
    stuck 2), so quick tasks submitted meanwhile all run at once on W2 instead of queueing
    behind the stuck threads; once the threads return, W1 takes tasks again."""
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("W1", slots=2, extra=("--tasks", MODULE, "--pool", "threads"))
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        slow = await client.submit_batch(
            [{"type": "blocking-sleep", "payload": 3, "timeout": 0.5, "max_attempts": 1}] * 2
        )
        views = await client.wait_many([t["id"] for t in slow], timeout=20)
        errors = {v["attempts"][0]["error"] for v in views}
        assert len(errors) == 1, errors
        assert "its thread could not be stopped and runs on, holding a slot" in errors.pop()
        w1 = next(w for w in await client.workers() if w["id"] == "W1")
        assert (w1["stuck"], w1["slots"], w1["load"]) == (2, 2, 1.0), w1
        cluster.start_worker("W2", slots=4, extra=("--tasks", MODULE))
        await cluster.wait_workers("W1", "W2")
        quick = await client.submit_batch([{"type": "blocking-sleep", "payload": 0.05}] * 4)
        done = await client.wait_many([t["id"] for t in quick], timeout=20)
        assert {v["attempts"][0]["worker"] for v in done} == {"W2"}

        async def freed() -> bool:
            workers = await client.workers()
            return next(w for w in workers if w["id"] == "W1")["stuck"] == 0

        await eventually(freed, timeout=10, what="W1's threads to return")
    assert {v["state"] for v in done} == {"succeeded"}


async def test_one_task_can_be_followed_across_processes_in_json_logs(
    cluster: LocalCluster,
) -> None:
    cluster.env_extra["MUTIRAO_LOG_FORMAT"] = "json"
    await cluster.start("W1")
    async with cluster.client() as client:
        task = await client.submit("echo", "trace me")
        await client.wait(task["id"], timeout=10)
    cluster.stop()  # flush: every line about the task is written before the process ends
    logs = cluster.root / "logs"
    files = {p.name: p for p in logs.glob("*.log")}
    assert {"orchestrator-orchestrator.log", "worker-W1.log"} <= set(files)
    seen: dict[str, list[dict[str, object]]] = {}
    for name, path in files.items():
        for line in path.read_text().splitlines():
            entry = json.loads(line)  # every line is one JSON object
            assert {"time", "level", "component", "node", "message"} <= entry.keys()
            if entry.get("task") == task["id"]:
                seen.setdefault(name, []).append(entry)
    assert "orchestrator-orchestrator.log" in seen, "the orchestrator logged the task"
    worker_lines = seen["worker-W1.log"]
    assert {e["attempt"] for e in worker_lines} == {1}
    assert any("succeeded" in str(e["message"]) for e in worker_lines)
