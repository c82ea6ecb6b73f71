"""The benchmarks run once at a tiny size so they cannot rot; no figure is asserted here
(performance targets live in ``make bench``, not in timed tests). The scale workloads run in
a test of their own, so each test stays within the suite's per-test timeout."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.run import Result, _document, _merged, main_async, select, workloads


async def test_every_benchmark_runs_at_tiny_size() -> None:
    results = await main_async("tiny", ["throughput", "per-request", "latency", "kill", "failover"])
    assert [r.workload.split(",")[0] for r in results] == [
        "throughput",
        "throughput",
        "throughput",
        "one task per request",
        "latency",
        "worker SIGKILL mid-run",
        "failover",
    ]
    _plausible(results)


async def test_every_scale_benchmark_runs_at_tiny_size() -> None:
    results = await main_async("tiny", ["scale"])
    assert [r.key for r in results] == [
        "scale_workers_1",
        "scale_workers_2",
        "scale_workers_4",
        "scale_workers_8",
        "scale_slots_1",
        "scale_slots_4",
        "scale_slots_16",
        "scale_pending_2000",
        "scale_pending_5000",
        "scale_retention_rss_mb",
        "scale_recovery_s",
    ]
    _plausible(results)


def _plausible(results: list[Result]) -> None:
    """Rates and durations are positive; differences (extra time after a kill, memory grown
    by a few thousand tasks) may come out at or below zero on a noisy machine, so those are
    only finite: nothing here is a performance claim."""
    for r in results:
        assert math.isfinite(r.figure), (r.workload, r.figure)
        if r.unit in ("tasks/s", "ms") or r.key == "scale_recovery_s":
            assert r.figure > 0, (r.workload, r.figure)


def test_only_selects_workloads_and_groups() -> None:
    names = list(workloads("tiny"))
    assert select(names, None) == names
    assert select(names, ["latency"]) == ["latency"]
    assert select(names, ["throughput"]) == [
        "throughput",
        "throughput-standby",
        "throughput-large",
    ]
    assert select(names, ["scale"]) == [n for n in names if n.startswith("scale-")]
    assert select(names, ["scale-memory", "kill"]) == ["kill", "scale-memory"]


def test_only_results_replace_theirs_in_the_full_document(tmp_path: Path) -> None:
    timings = {"p50_ms": 3.0, "p99_ms": 5.0}
    latency = Result("latency", 3.0, "ms", {**timings, "http": timings}, name="latency")
    old = _document("full", [latency, Result("scale: restart", 20.0, "s", key="scale_recovery_s",
                                              name="scale-recovery")])  # fmt: skip
    old["peers"] = {"ray": {"version": "x"}}
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(old))
    new = _document("full", [Result("scale: restart", 21.0, "s", key="scale_recovery_s",
                                    name="scale-recovery")])  # fmt: skip
    merged = _merged(path, new)
    assert merged["figures"] == {
        "latency_p50": 3.0,
        "latency_p99": 5.0,
        "latency_p50_http": 3.0,
        "scale_recovery_s": 21.0,
    }
    assert [r["figure"] for r in merged["results"]] == [3.0, 21.0]
    assert merged["peers"] == {"ray": {"version": "x"}}
    assert merged["rerun"] == {"scale-recovery": new["when"]}
