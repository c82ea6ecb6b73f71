"""A workflow at scale: chains of 10 tasks, each taking the last one's result as its input,
and a fan-in of 1,000 chain ends into one sum; against the same number of independent
tasks, in the same cluster, measured the same way.

Each chain step is ``sum([{"$result": previous}, 1])``, so a chain ends at 10 and each sum of
1,000 chains at 10,000: the figures are for a graph that computed the right answer. The
cost is the wall time from the first submission to the last result, and the
orchestrator's CPU time (user + system, from ``/proc``) per edge of the graph; the issue's
target is at most twice the cost of the independent tasks.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from tests.integration.cluster import LocalCluster

from bench.run import Result, _cluster
from mutirao.client.http import Client

CHAIN = 10
FAN_IN = 1_000
CHAINS_PER_BATCH = 100
"""1,000 tasks per batch: a batch's ``#N`` refs stay inside it."""


def graph_size(chains: int) -> tuple[int, int]:
    """Tasks and edges of the graph with ``chains`` chains."""
    sums = -(-chains // FAN_IN)
    return chains * CHAIN + sums, chains * (CHAIN - 1) + chains


def _chains(count: int) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for _ in range(count):
        start = len(specs)
        specs.append({"type": "sum", "payload": [0, 1]})
        for step in range(1, CHAIN):
            specs.append({"type": "sum", "payload": [{"$result": f"#{start + step - 1}"}, 1]})
    return specs


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run_dag(client: Client, chains: int) -> tuple[float, list[Any]]:
    """Seconds to submit and run the graph; the results of its sums."""
    started = time.perf_counter()
    ends: list[str] = []
    in_flight = asyncio.Semaphore(4)

    async def batch(count: int) -> list[str]:
        async with in_flight:
            tasks = await client.submit_batch(_chains(count))
        return [t["id"] for t in tasks[CHAIN - 1 :: CHAIN]]

    sizes = [min(CHAINS_PER_BATCH, chains - i) for i in range(0, chains, CHAINS_PER_BATCH)]
    for found in await asyncio.gather(*(batch(size) for size in sizes)):
        ends.extend(found)
    sums = [
        {"type": "sum", "payload": [{"$result": end} for end in ends[i : i + FAN_IN]]}
        for i in range(0, len(ends), FAN_IN)
    ]
    ids = [t["id"] for t in await client.submit_batch(sums)]
    results = await client.results(ids, timeout=600)
    elapsed = time.perf_counter() - started
    return elapsed, [r["result"] for r in results]


async def _run_flat(client: Client, n: int) -> float:
    """Seconds to submit and run ``n`` independent tasks, in the same batches."""
    started = time.perf_counter()
    in_flight = asyncio.Semaphore(4)

    async def batch(count: int) -> None:
        async with in_flight:
            tasks = await client.submit_batch([{"type": "sum", "payload": [0, 1]}] * count)
        results = await client.results([t["id"] for t in tasks], timeout=600)
        assert all(r["state"] == "succeeded" for r in results)

    size = CHAINS_PER_BATCH * CHAIN
    await asyncio.gather(*(batch(min(size, n - i)) for i in range(0, n, size)))
    return time.perf_counter() - started


async def _measured(cluster: LocalCluster, run: Any) -> tuple[float, float, Any]:
    pid = cluster.proc("orchestrator").pid
    cpu = cpu_seconds(pid)
    elapsed, out = await run
    return elapsed, cpu_seconds(pid) - cpu, out


async def dag(root: Path, chains: int) -> list[Result]:
    tasks, edges = graph_size(chains)
    cluster = await _cluster(root, standby=False, slots=256)
    try:
        async with cluster.client() as client:
            await _run_flat(client, 1000)  # warm up
            flat_s, flat_cpu, _ = await _measured(cluster, _with_none(_run_flat(client, tasks)))
            dag_s, dag_cpu, sums = await _measured(cluster, _run_dag(client, chains))
    finally:
        cluster.stop()
    expected = [CHAIN * min(FAN_IN, chains - i) for i in range(0, chains, FAN_IN)]
    assert sums == expected, f"the graph computed {sums}, not {expected}"
    detail = {
        "tasks": tasks,
        "edges": edges,
        "seconds": dag_s,
        "orchestrator_cpu_s": dag_cpu,
        "cpu_us_per_edge": dag_cpu / edges * 1e6,
        "independent_seconds": flat_s,
        "independent_cpu_s": flat_cpu,
        "time_ratio": dag_s / flat_s,
        "cpu_ratio": dag_cpu / flat_cpu,
    }
    label = f"{tasks:,} tasks: chains of {CHAIN}, fan-in of {FAN_IN:,}"
    return [
        Result(f"workflow, {label}", tasks / dag_s, "tasks/s", detail, key="dag_tasks_s"),
        Result(
            f"workflow, {label}: orchestrator CPU per edge",
            detail["cpu_us_per_edge"],
            "µs",
            detail,
            key="dag_cpu_us_per_edge",
        ),
        Result(
            f"workflow, {label}: time / same number of independent tasks",
            detail["time_ratio"],
            "×",
            detail,
            key="dag_time_ratio",
        ),
    ]


async def _with_none(run: Any) -> tuple[float, None]:
    return await run, None
