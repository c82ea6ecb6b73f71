"""Mutirão's own benchmarks on real local processes.

Each workload starts a fresh local cluster (orchestrator, optional hot standby, workers) on
loopback with the journal fsynced, measures, and tears it down. Results print as a table and
are written to ``docs/benchmarks/latest.json``. ``--size tiny`` runs everything once, small,
so the suite cannot rot (the test suite does that); figures only mean something at
``--size full`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.cluster import LocalCluster, eventually

SIZES = {
    "tiny": {"throughput": 500, "latency": 20, "failover": 100},
    "full": {"throughput": 20_000, "latency": 500, "failover": 2_000},
}


@dataclass
class Result:
    workload: str
    figure: float
    unit: str
    detail: dict[str, Any] = field(default_factory=dict)


async def _cluster(root: Path, *, standby: bool, slots: int) -> LocalCluster:
    cluster = LocalCluster(root)
    cluster.env_extra["MUTIRAO_LOG_LEVEL"] = "WARNING"
    cluster.start_orchestrator()
    await cluster.wait_ready()
    if standby:
        cluster.start_backup()
        async with cluster.client() as client:

            async def synced() -> bool:
                return any(s["synced"] for s in (await client.cluster())["standbys"])

            await eventually(synced, timeout=30, what="standby in sync")
    for wid in ("W1", "W2"):
        cluster.start_worker(wid, slots=slots)
    await cluster.wait_workers("W1", "W2")
    return cluster


async def throughput(root: Path, n: int, *, standby: bool) -> Result:
    """N no-op tasks, 2 workers, batches of 1,000: submit -> all results."""
    cluster = await _cluster(root, standby=standby, slots=256)
    try:
        async with cluster.client() as client:
            started = time.perf_counter()
            ids: list[str] = []
            for offset in range(0, n, 1000):
                batch = [{"type": "echo"}] * min(1000, n - offset)
                ids += [t["id"] for t in await client.submit_batch(batch)]
            done = 0
            for offset in range(0, n, 1000):
                views = await client.wait_many(ids[offset : offset + 1000], timeout=300)
                done += sum(v["state"] == "succeeded" for v in views)
            elapsed = time.perf_counter() - started
    finally:
        cluster.stop()
    assert done == n, f"only {done} of {n} tasks succeeded"
    label = "with synchronous standby" if standby else "no standby"
    return Result(
        f"throughput, {n:,} no-op tasks, batches ({label})",
        n / elapsed,
        "tasks/s",
        {"seconds": elapsed, "tasks": n, "standby": standby},
    )


async def latency(root: Path, n: int) -> Result:
    """One task at a time: submit, then long-poll its result."""
    cluster = await _cluster(root, standby=False, slots=4)
    samples: list[float] = []
    try:
        async with cluster.client() as client:
            for _ in range(n):
                started = time.perf_counter()
                task = await client.submit("echo", None)
                await client.wait(task["id"], timeout=30)
                samples.append(time.perf_counter() - started)
    finally:
        cluster.stop()
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return Result(
        "latency, submit -> result, sequential (p50)",
        p50 * 1000,
        "ms",
        {"p50_ms": p50 * 1000, "p99_ms": p99 * 1000, "samples": n},
    )


async def failover(root: Path, n: int) -> Result:
    """SIGKILL the active orchestrator (file lease) while N tasks stream in."""
    cluster = await _cluster(root, standby=True, slots=8)
    primary = next(p for p in cluster.procs if p.name == "orchestrator")
    try:
        async with cluster.client(retry_for=60) as client:
            ids: list[str] = []
            killed_at = accepted_at = 0.0
            for i in range(n):
                task = await client.submit("echo", i, key=f"fo-{i}")
                ids.append(task["id"])
                if killed_at and not accepted_at:
                    accepted_at = time.perf_counter()
                    first = await client.wait(task["id"], timeout=30)
                    completed_at = time.perf_counter()
                    assert first["state"] == "succeeded"
                if i == n // 3:
                    primary.kill()
                    killed_at = time.perf_counter()
            views = await client.wait_many(ids, timeout=120)
    finally:
        cluster.stop()
    once = [v for v in views if [a["outcome"] for a in v["attempts"]].count("succeeded") == 1]
    assert len(once) == n, f"{n - len(once)} task(s) not completed exactly once"
    return Result(
        "failover, SIGKILL of the active (file lease) -> submissions accepted",
        (accepted_at - killed_at) * 1000,
        "ms",
        {"first_completion_ms": (completed_at - killed_at) * 1000, "tasks": n},
    )


def _table(results: list[Result]) -> str:
    width = max(len(r.workload) for r in results)
    lines = [f"{'workload'.ljust(width)}  figure"]
    lines += [f"{r.workload.ljust(width)}  {r.figure:,.1f} {r.unit}" for r in results]
    return "\n".join(lines)


async def main_async(size: str) -> list[Result]:
    n = SIZES[size]
    workloads: list[Callable[[Path], Awaitable[Result]]] = [
        lambda root: throughput(root, n["throughput"], standby=False),
        lambda root: throughput(root, n["throughput"], standby=True),
        lambda root: latency(root, n["latency"]),
        lambda root: failover(root, n["failover"]),
    ]
    results = []
    for workload in workloads:
        with tempfile.TemporaryDirectory(prefix="mutirao-bench-") as tmp:
            result = await workload(Path(tmp))
        print(f"  {result.workload}: {result.figure:,.1f} {result.unit}", flush=True)
        results.append(result)
    return results


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/latest.json"))
    args = parser.parse_args()
    print(f"Mutirão benchmarks ({args.size})", flush=True)
    results = asyncio.run(main_async(args.size))
    print(_table(results))
    if args.size == "full":
        _write(args.out, args.size, results)
        print(f"written to {args.out}")
    return 0


def _write(out: Path, size: str, results: list[Result]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "cpus": _cpus(),
        "platform": platform.platform(),
    }
    doc = {
        "size": size,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine,
        "results": [r.__dict__ for r in results],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
