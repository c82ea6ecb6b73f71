"""Durable schedules on real processes: made and managed with the CLI, a one-second
schedule firing once per tick across a SIGKILL of the active orchestrator, and the ticks
missed while the whole cluster was down caught up as ``catch_up`` says."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
from pathlib import Path
from typing import Any

from mutirao.client.http import Client
from mutirao.protocol import TaskView
from tests.integration.cluster import LocalCluster, eventually
from tests.integration.test_cli import Cli, assert_clean_error, cli_env


async def _fires(client: Client, name: str) -> list[TaskView]:
    """The tasks schedule ``name`` submitted, oldest tick first."""
    tasks = await client.tasks(limit=10_000)
    return sorted(
        (t for t in tasks if (t["key"] or "").startswith(f"{name}@")), key=lambda t: t["key"]
    )


def _tick(view: TaskView) -> float:
    stamp = (view["key"] or "").split("@", 1)[1].removesuffix("Z")
    return datetime.datetime.fromisoformat(stamp + "+00:00").timestamp()


async def _at_least(client: Client, name: str, n: int, timeout: float = 20) -> list[TaskView]:
    async def enough() -> list[TaskView]:
        fired = await _fires(client, name)
        return fired if len(fired) >= n else []

    return await eventually(enough, timeout=timeout, what=f"{n} fires of {name}")


def _contiguous(fired: list[TaskView], every: float) -> None:
    ticks = [_tick(v) for v in fired]
    assert len(set(ticks)) == len(ticks), "a tick fired twice"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert all(abs(g - every) < 1e-6 for g in gaps), ticks


async def test_the_cli_adds_lists_pauses_resumes_and_removes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    await cluster.start("W1")
    cli = Cli(cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token()), tmp_path)
    added = await cli("schedule", "add", "beat", "echo", "--every", "1", "--payload", '"tick"')
    assert added.code == 0, added
    assert "schedule beat added; next tick" in added.err
    bad = await cli("schedule", "add", "bad", "echo", "--cron", "61 * * * *")
    assert_clean_error(bad, "cron", "not a cron expression")
    async with cluster.client() as client:
        fired = await _at_least(client, "beat", 2)
        assert all(v["payload"] == "tick" for v in fired)
        listed = await cli("schedule", "list")
        assert listed.code == 0, listed
        assert "beat" in listed.out
        assert "every 1 s" in listed.out
        assert (await cli("schedule", "pause", "beat")).code == 0
        paused = len(await _fires(client, "beat"))
        await asyncio.sleep(2.2)  # two ticks that must not fire
        assert len(await _fires(client, "beat")) == paused
        assert (await cli("schedule", "resume", "beat")).code == 0
        await _at_least(client, "beat", paused + 1)
        assert (await cli("schedule", "rm", "beat")).code == 0
        assert (await client.request("GET", "/v1/schedules"))["schedules"] == []
    gone = await cli("schedule", "rm", "beat")
    assert_clean_error(gone, "no schedule 'beat'")


async def test_a_one_second_schedule_fires_once_per_tick_across_a_sigkill_of_the_active(
    cluster: LocalCluster,
) -> None:
    await cluster.start_ha("W1")
    body: dict[str, Any] = {
        "name": "beat",
        "every": 1,
        "catch_up": "all",
        "task": {"type": "echo", "payload": "tick"},
    }
    async with cluster.client(retry_for=30) as client:
        await client.request("POST", "/v1/schedules", body)
        before = len(await _at_least(client, "beat", 3))
        cluster.proc("orchestrator").kill()
        fired = await _at_least(client, "beat", before + 4, timeout=30)
        done = await client.wait_many([v["id"] for v in fired], timeout=20)
        info = await client.cluster()
    assert info["node"] == "backup"
    _contiguous(fired, 1.0)
    for view in done:
        assert [a["outcome"] for a in view["attempts"]] == ["succeeded"], view


async def test_ticks_missed_while_the_cluster_was_down_are_caught_up(
    cluster: LocalCluster,
) -> None:
    await cluster.start("W1")
    async with cluster.client(retry_for=30) as client:
        for name, catch_up in (("all", "all"), ("last", "last"), ("none", "none")):
            body = {"name": name, "every": 1, "catch_up": catch_up, "task": {"type": "echo"}}
            await client.request("POST", "/v1/schedules", body)
        for name in ("all", "last", "none"):
            await _at_least(client, name, 1)
        cluster.proc("orchestrator").kill()
        killed_at = time.time()
        await asyncio.sleep(5)  # the downtime: about five ticks with nobody to fire them
        cluster.start_orchestrator()
        await cluster.wait_ready()
        all_fired = await _at_least(client, "all", 7)

        async def fired_after_downtime() -> list[list[TaskView]]:
            fired = [await _fires(client, name) for name in ("last", "none")]
            late = all(any(_tick(v) > killed_at + 3 for v in f) for f in fired)
            return fired if late else []

        last_fired, none_fired = await eventually(
            fired_after_downtime, timeout=10, what="last and none firing after the downtime"
        )
        views = {v["name"]: v for v in (await client.request("GET", "/v1/schedules"))["schedules"]}
    _contiguous(all_fired, 1.0)
    # "last" fired the newest missed tick at once, "none" none of them: both then go on.
    for fired in (last_fired, none_fired):
        gaps = [_tick(b) - _tick(a) for a, b in itertools.pairwise(fired)]
        assert max(gaps) >= 3, (gaps, fired)
    assert views["none"]["misses"] >= 3
    assert views["last"]["misses"] >= 2
    assert views["all"]["misses"] == 0
