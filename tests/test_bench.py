"""The benchmarks run once at a tiny size so they cannot rot; no figure is asserted here
(performance targets live in ``make bench``, not in timed tests). The scale workloads run in
a test of their own, so each test stays within the suite's per-test timeout."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.compare import comparison, markdown
from bench.run import Result, _document, _merged, main_async, select, workloads


async def test_every_benchmark_runs_at_tiny_size() -> None:
    results = await main_async(
        "tiny",
        [
            "throughput",
            "per-request",
            "latency",
            "kill",
            "failover",
            "dag",
            "routing",
            "delayed",
            "schedules",
        ],
    )
    assert [r.workload.split(",")[0] for r in results] == [
        "throughput",
        "throughput",
        "throughput",
        "one task per request",
        "latency",
        "worker SIGKILL mid-run",
        "failover",
        "workflow",
        "workflow",
        "workflow",
        "throughput with routing",
        "delayed start",
        "schedules",
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
        "scale_retention_held_mb",
        "scale_recovery_s",
        "scale_curve_workers_1",
        "scale_curve_workers_2",
        "scale_curve_tasks_200",
        "scale_curve_tasks_2000",
        "scale_curve_tasks_20000",
    ]
    _plausible(results)


async def test_the_profile_runs_at_tiny_size() -> None:
    [result] = await main_async("tiny", ["profile"])
    assert result.key == "orchestrator_cpu_us_per_task"
    shares = result.detail["shares"]
    assert math.isclose(sum(shares.values()), 1.0), shares
    assert "engine and scheduler" in shares, shares
    _plausible([result])


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


def test_comparison_rows_and_ratios() -> None:
    """Pure table logic: each row's ratio to Ray points the right way (higher or lower is
    better), series follow their numbers, and a figure at or below 0 gets no ratio."""
    figures = {
        "throughput": 30_000.0, "throughput_standby": 20_000.0, "throughput_large": 25_000.0,
        "per_request": 6_000.0, "latency_p50": 1.0, "latency_p99": 2.0, "kill_extra": -0.1,
        "failover_ms": 150.0, "scale_workers_10": 40_000.0, "scale_workers_2": 30_000.0,
        "scale_slots_1": 2_000.0, "scale_pending_100000": 800.0,
        "scale_retention_held_mb": 40.0, "scale_recovery_s": 7.0,
    }  # fmt: skip
    ray = {
        "system": "ray", "version": "2", "throughput_tasks_s": 1_000,
        "throughput_large_tasks_s": 500, "per_request_tasks_s": 1_000,
        "latency": {"p50_ms": 2.0, "p99_ms": 5.0},
        "kill": {"extra_s": 0.5}, "scale_workers": {"2": 1_000, "10": 800},
        "scale_slots": {"1": 1_000}, "pending_bytes_per_task": {"100000": 8_000},
        "retention_held_mb": 20.0,
    }  # fmt: skip
    celery = {"system": "celery", "version": "5", "kill_default": {"lost": 3}}
    rows = comparison(figures, {"dask": {"version": "1"}, "ray": ray, "celery": celery})
    ratios = {r["workload"]: r["ratio_vs_ray"] for r in rows}
    [lost] = [r for r in rows if r["workload"].startswith("worker SIGKILL: tasks lost")]
    assert (lost["mutirao"], lost["celery"], lost["ray"]) == (0.0, 3.0, None)
    assert ratios["throughput, batches, 20,000 tasks"] == 30
    assert ratios["throughput, batches, 200,000 tasks"] == 50
    assert ratios["latency p50 (Mutirão: session)"] == 2
    assert ratios["worker SIGKILL: extra time (Celery: acks_late)"] is None
    assert [w for w in ratios if "worker(s)" in w] == [
        "throughput, batches, 2 worker(s)",
        "throughput, batches, 10 worker(s)",
    ]
    assert ratios["throughput, batches, 2 workers x 1 slot(s)"] == 2
    assert ratios["memory per pending task, 100,000 pending"] == 10
    assert ratios["memory still held after finished tasks were let go"] == 0.5
    assert all(r["dask"] is None for r in rows)  # Dask ran nothing here: no figure, no error
    restart = Result("scale: restart", 7.0, "s", {"tasks": 1_050}, key="scale_recovery_s")
    doc = {**_document("full", [restart]), "figures": figures, "comparison": rows,
           "peers": {"ray": ray}}  # fmt: skip
    page = markdown(doc)
    assert "| restart after SIGKILL with 1,050 tasks -> ready | s | 7.00 |" in page
    row = "| memory per pending task, 100,000 pending | B/task | 800 | - | 8,000 | - | 10.00x |"
    assert row in page
