"""User task modules on a real worker, and the logs that let one follow a task everywhere."""

from __future__ import annotations

import json

from tests.integration.cluster import LocalCluster

MODULE = "tests.integration.fixtures.user_tasks"


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
    # Blocking handlers run in the worker's thread pool, not on its event loop.
    assert views["blocking-square"]["result"]["thread"].startswith("task")
    assert views["async-upper"]["result"] == "MUTIRÃO"
    assert views["raises"]["state"] == "failed"
    assert views["raises"]["attempts"][0]["error"] == "ValueError: bad value 3"


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
