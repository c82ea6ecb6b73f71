"""Time at scale: what 100,000 tasks scheduled for later cost while they wait (the
orchestrator's CPU, from ``/proc``), and how late 1,000 one-second schedules fire: from
each tick (read from the fire's ``NAME@<tick>`` key) to the moment a worker started the
task it submitted, an upper bound of the fire's own lag (the engine stamps every fire of
one pass with the same time, so ``created_at`` would hide the time the pass takes)."""

from __future__ import annotations

import asyncio
import datetime
import statistics
import time
from pathlib import Path

from bench.dag import cpu_seconds
from bench.run import Result, _cluster

IDLE_S = 5.0
SCHEDULE_RUN_S = 6.0


async def delayed(root: Path, n: int) -> Result:
    cluster = await _cluster(root, standby=False, slots=16, workers=1)
    try:
        async with cluster.client() as client:
            later = time.time() + 3600
            for start in range(0, n, 10_000):
                size = min(10_000, n - start)
                await client.submit_batch([{"type": "echo", "not_before": later}] * size)
            scheduled = (await client.cluster())["tasks"]["scheduled"]
            assert scheduled == n, f"{scheduled} of {n} tasks scheduled"
            pid = cluster.proc("orchestrator").pid
            await asyncio.sleep(1.0)  # the submissions' own work settles
            cpu = cpu_seconds(pid)
            await asyncio.sleep(IDLE_S)
            used = cpu_seconds(pid) - cpu
    finally:
        cluster.stop()
    return Result(
        f"delayed start, {n:,} tasks scheduled for later: orchestrator CPU while they wait",
        used / IDLE_S * 100,
        "% of a CPU",
        {"tasks": n, "seconds": IDLE_S, "cpu_s": used},
        key="delayed_cpu_percent",
    )


def _tick(key: str) -> float:
    stamp = key.split("@", 1)[1].removesuffix("Z")
    return datetime.datetime.fromisoformat(stamp + "+00:00").timestamp()


async def schedules(root: Path, n: int) -> Result:
    cluster = await _cluster(root, standby=False, slots=256, workers=1)
    try:
        async with cluster.client() as client:
            in_flight = asyncio.Semaphore(32)

            async def add(i: int) -> None:
                body = {"name": f"s{i}", "every": 1, "task": {"type": "echo"}}
                async with in_flight:
                    await client.request("POST", "/v1/schedules", body)

            await asyncio.gather(*(add(i) for i in range(n)))
            started = time.time()
            await asyncio.sleep(SCHEDULE_RUN_S)
            tasks = await client.tasks(limit=10_000)
    finally:
        cluster.stop()
    lags = sorted(
        t["attempts"][0]["started_at"] - _tick(t["key"])
        for t in tasks
        if t["key"]
        and t["attempts"]
        and t["attempts"][0]["started_at"]
        # Ticks after every schedule exists, and not the last one (perhaps not started).
        and started + 1 < _tick(t["key"]) < started + SCHEDULE_RUN_S - 1
    )
    assert lags, "no schedule fired"
    p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))]
    detail = {
        "schedules": n,
        "fires": len(lags),
        "p50_ms": statistics.median(lags) * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": lags[-1] * 1000,
    }
    return Result(
        f"schedules, {n:,} every second: tick to task started, p99",
        p99 * 1000,
        "ms",
        detail,
        key="schedule_lag_p99_ms",
    )
