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

from bench import compare

SIZES = {
    "tiny": {"throughput": 500, "latency": 20, "failover": 100, "per_request": 200, "kill": 60},
    "full": {
        "throughput": 20_000,
        "latency": 500,
        "failover": 2_000,
        "per_request": 5_000,
        "kill": 2_000,
    },
}


@dataclass
class Result:
    workload: str
    figure: float
    unit: str
    detail: dict[str, Any] = field(default_factory=dict)


async def _cluster(root: Path, *, standby: bool, slots: int) -> LocalCluster:
    """An orchestrator (+ standby) and workers W1, W2, logging warnings only."""
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
                task = await client.submit("echo", None, wait=30)
                assert task["state"] == "succeeded"
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


async def per_request(root: Path, n: int, lanes: int = 64) -> Result:
    """N tasks, one per HTTP request, from ``lanes`` concurrent submitters; then all results."""
    cluster = await _cluster(root, standby=False, slots=256)
    try:
        async with cluster.client() as client:
            ids: list[str] = []
            pending = iter(range(n))

            async def lane() -> None:
                for _ in pending:
                    ids.append((await client.submit("echo", None))["id"])

            started = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(lanes)))
            for offset in range(0, n, 1000):
                await client.wait_many(ids[offset : offset + 1000], timeout=300)
            elapsed = time.perf_counter() - started
    finally:
        cluster.stop()
    return Result(f"one task per request, {lanes} submitters", n / elapsed, "tasks/s",
                  {"tasks": n, "lanes": lanes, "seconds": elapsed})  # fmt: skip


async def worker_kill(root: Path, n: int) -> Result:
    """N 10 ms tasks over 2 one-slot workers; SIGKILL one a third of the way in and restart
    it. The figure is the extra time over the same batch without a kill."""
    cluster = await _cluster(root, standby=False, slots=1)
    try:
        async with cluster.client() as client:
            batch = [{"type": "sleep", "payload": 0.01}] * n
            started = time.perf_counter()
            ids = [t["id"] for t in await client.submit_batch(batch)]
            await client.wait_many(ids, timeout=300)
            baseline = time.perf_counter() - started
            started = time.perf_counter()
            ids = [t["id"] for t in await client.submit_batch(batch)]
            await asyncio.sleep(baseline / 3)
            next(p for p in cluster.procs if p.name == "worker-W1").kill()
            # A supervisor brings the worker back (as `mutirao up`, Dask's nanny and Ray's
            # raylet do), so the figure measures detection and redistribution, not a
            # permanently halved cluster.
            cluster.start_worker("W1", slots=1)
            views = await client.wait_many(ids, timeout=300)
            with_kill = time.perf_counter() - started
    finally:
        cluster.stop()
    once = [v for v in views if [a["outcome"] for a in v["attempts"]].count("succeeded") == 1]
    assert len(once) == n, f"{n - len(once)} task(s) lost or recorded twice"
    return Result(f"worker SIGKILL mid-run, {n:,} x 10 ms tasks: extra time",
                  with_kill - baseline, "s",
                  {"baseline_s": baseline, "with_kill_s": with_kill,
                   "redistributed": sum(len(v["attempts"]) > 1 for v in views)})  # fmt: skip


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
        lambda root: per_request(root, n["per_request"]),
        lambda root: latency(root, n["latency"]),
        lambda root: worker_kill(root, n["kill"]),
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
    parser.add_argument(
        "--peers", metavar="PYTHON", help="also run Dask and Ray under this Python and compare"
    )
    args = parser.parse_args()
    print(f"Mutirão benchmarks ({args.size})", flush=True)
    results = asyncio.run(main_async(args.size))
    print(_table(results))
    doc = _document(args.size, results)
    if args.peers:
        doc["peers"] = compare.run_peers(args.peers, args.size)
        doc["comparison"] = compare.comparison(doc["figures"], doc["peers"])
        print(compare.markdown(doc))
    if args.size == "full":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.peers:
            compare.write(doc, args.peers, args.out)
        else:
            args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0


def _document(size: str, results: list[Result]) -> dict[str, Any]:
    by_name = {r.workload.split(",")[0]: r for r in results}
    throughputs = [r for r in results if r.workload.startswith("throughput")]
    figures = {
        "throughput": throughputs[0].figure,
        "throughput_standby": throughputs[1].figure,
        "per_request": by_name["one task per request"].figure,
        "latency_p50": by_name["latency"].detail["p50_ms"],
        "latency_p99": by_name["latency"].detail["p99_ms"],
        "kill_extra": by_name["worker SIGKILL mid-run"].figure,
        "failover_ms": by_name["failover"].figure,
    }
    machine = {
        "python": platform.python_version(),
        "cpus": _cpus(),
        "platform": platform.platform(),
    }
    return {
        "size": size,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine,
        "figures": figures,
        "results": [r.__dict__ for r in results],
    }


if __name__ == "__main__":
    sys.exit(main())
