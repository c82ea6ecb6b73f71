"""The benchmarks run once at a tiny size so they cannot rot; no figure is asserted here
(performance targets live in ``make bench``, not in timed tests)."""

from __future__ import annotations

from bench.run import main_async


async def test_every_benchmark_runs_at_tiny_size() -> None:
    results = await main_async("tiny")
    assert [r.workload.split(",")[0] for r in results] == [
        "throughput",
        "throughput",
        "one task per request",
        "latency",
        "worker SIGKILL mid-run",
        "failover",
    ]
    assert all(r.figure > 0 for r in results)
