"""Time on real processes: retry backoff measured from the attempts' own timestamps, a
``not_before`` honoured to 50 ms, the CLI's ``--countdown``, and scheduled tasks that
outlive a SIGKILL of the active orchestrator and run once, on time, on its standby."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from mutirao.protocol import TaskView
from tests.integration.cluster import LocalCluster, eventually
from tests.integration.test_cli import Cli, cli_env

EARLY = 0.05
"""How late a scheduled start may be (the issue's bound)."""


def _started_late(view: TaskView, not_before: float) -> float:
    started = view["attempts"][0]["started_at"]
    assert started is not None, view
    return float(started) - not_before


async def test_retries_back_off_between_attempts(cluster: LocalCluster) -> None:
    await cluster.start("W1")
    async with cluster.client() as client:
        task = await client.submit(
            "fail", "again", max_attempts=4, retry={"delay": 0.3, "backoff": 2.0}
        )
        view = await client.wait(task["id"], timeout=20)
    assert view["state"] == "failed", view
    attempts = view["attempts"]
    gaps = [
        float(nxt["started_at"]) - float(prev["ended_at"])
        for prev, nxt in itertools.pairwise(attempts)
    ]
    assert len(gaps) == 3, attempts
    for gap, wanted in zip(gaps, [0.3, 0.6, 1.2], strict=True):
        assert wanted <= gap <= wanted + 0.25, (gaps, attempts)


async def test_a_handler_asks_for_its_retry_delay(cluster: LocalCluster) -> None:
    """``raise mutirao.Retry(delay=...)`` in a plain handler (a slot process) and an async
    one (the worker's loop): the next attempt waits that long, whatever the backoff."""
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("W1", extra=("--tasks", "tests.integration.fixtures.user_tasks"))
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        tasks = [
            await client.submit(kind, 0.4, max_attempts=2)
            for kind in ("retry-later", "async-retry-later")
        ]
        views = await client.wait_many([t["id"] for t in tasks], timeout=20)
    for view in views:
        first, second = view["attempts"]
        assert first["error"] == "Retry: asked to retry in 0.4 s: not yet", view
        assert float(second["started_at"]) - float(first["ended_at"]) >= 0.4, view


async def test_not_before_is_honoured_and_the_cli_counts_down(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    await cluster.start("W1")
    async with cluster.client() as client:
        not_before = time.time() + 1.0
        task = await client.submit("echo", 1, not_before=not_before)
        assert task["state"] == "scheduled"
        assert task["not_before"] == not_before
        listed = await client.tasks(state="scheduled")
        view = await client.wait(task["id"], timeout=10)
    assert [t["id"] for t in listed] == [task["id"]]
    assert 0 <= _started_late(view, not_before) <= EARLY, view

    cli = Cli(cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token()), tmp_path)
    before = time.time()
    run = await cli("submit", "echo", "--payload", '"later"', "--countdown", "0.8", "--wait")
    assert run.code == 0, run
    assert run.out.strip() == '"later"'
    assert time.time() - before >= 0.8
    bad = await cli("submit", "echo", "--at", "next tuesday")
    assert bad.code != 0
    assert "--at 'next tuesday' is neither ISO 8601" in bad.err, bad


async def test_scheduled_tasks_survive_a_sigkill_of_the_active_and_run_once(
    cluster: LocalCluster,
) -> None:
    await cluster.start_ha("W1")
    async with cluster.client(retry_for=30) as client:
        not_before = time.time() + 3.0
        batch = await client.submit_batch(
            [{"type": "echo", "payload": i, "not_before": not_before} for i in range(20)]
        )
        backoff = await client.submit(
            "fail", "x", max_attempts=2, retry={"delay": 2.5, "backoff": 1.0}
        )

        async def backing_off() -> bool:
            return (await client.get(backoff["id"]))["state"] == "scheduled"

        await eventually(backing_off, timeout=10, what="the failed task backing off")
        cluster.proc("orchestrator").kill()
        views = await client.wait_many([t["id"] for t in batch], timeout=30)
        retried = await client.wait(backoff["id"], timeout=30)
        info = await client.cluster()
    assert info["node"] == "backup"
    for view in views:
        assert view["state"] == "succeeded", view
        assert [a["outcome"] for a in view["attempts"]] == ["succeeded"], view
        assert _started_late(view, not_before) >= 0, view
    assert [a["outcome"] for a in retried["attempts"]] == ["failed", "failed"], retried
    first, second = retried["attempts"]
    assert float(second["started_at"]) - float(first["ended_at"]) >= 2.5, retried
