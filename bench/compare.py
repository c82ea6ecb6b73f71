"""Mutirão's figures next to Dask's and Ray's from the same run, as ratios.

The peers run in their own virtualenv (``bench/peers.py`` under ``PYTHON``); the table goes
to ``docs/benchmarks.md`` and a plot to ``docs/benchmarks/latest.png``. The page also shows
the scale workloads (:mod:`bench.scale`, Mutirão alone) and their plot, ``scale.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PEER_SIZES = {
    "tiny": ["--tasks", "500", "--large", "1000", "--latency", "20", "--kill", "60",
             "--kill-rounds", "1", "--scale", "500"],
    "full": ["--tasks", "20000", "--large", "200000", "--latency", "500", "--kill", "2000",
             "--kill-rounds", "3", "--scale", "20000"],
}  # fmt: skip
"""The same sizes as ``bench.run.SIZES`` (``large`` is its ``throughput_large``, ``scale``
its ``scale_workers``)."""

MARKDOWN = Path("docs/benchmarks.md")

CLIENT_GO_FAILOVER_S = 15.0
"""client-go's LeaderElector defaults: a 15 s lease, 10 s renew deadline, 2 s retry."""


def run_peers(python: str, size: str) -> dict[str, dict[str, Any]]:
    peers = {}
    for system in ("dask", "ray"):
        print(f"  running the same workloads on {system}...", flush=True)
        done = subprocess.run(
            [python, "bench/peers.py", system, *PEER_SIZES[size]],
            capture_output=True, text=True, check=True, timeout=1800,
        )  # fmt: skip
        peers[system] = json.loads(done.stdout.strip().splitlines()[-1])
    return peers


def comparison(figures: dict[str, Any], peers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per workload: each system's figure, and Mutirão's ratio to Ray's."""

    def row(workload: str, unit: str, ours: float, key: str, better: str) -> dict[str, Any]:
        theirs = {s: _dig(peers[s], key) for s in peers}
        ray = theirs.get("ray")
        # A ratio to a figure at or below 0 (an extra time within the noise) means nothing.
        ratio = None
        if ray and ours > 0:
            ratio = ours / ray if better == "higher" else ray / ours
        return {"workload": workload, "unit": unit, "mutirao": ours, **theirs,
                "ratio_vs_ray": ratio, "better": better}  # fmt: skip

    return [
        row("throughput, batches, 20,000 tasks", "tasks/s", figures["throughput"],
            "throughput_tasks_s", "higher"),
        row("throughput, batches, sync standby", "tasks/s", figures["throughput_standby"],
            "throughput_tasks_s", "higher"),
        row("throughput, batches, 200,000 tasks", "tasks/s",
            figures["throughput_large"], "throughput_large_tasks_s", "higher"),
        row("one task per call, 64 submitters (Mutirão: session)", "tasks/s",
            figures["per_request"], "per_request_tasks_s", "higher"),
        row("one task per call, 64 submitters (Mutirão: HTTP request)", "tasks/s",
            figures.get("per_request_http", 0.0), "per_request_tasks_s", "higher"),
        row("latency p50 (Mutirão: session)", "ms", figures["latency_p50"], "latency.p50_ms",
            "lower"),
        row("latency p99 (Mutirão: session)", "ms", figures["latency_p99"], "latency.p99_ms",
            "lower"),
        row("latency p50 (Mutirão: HTTP request)", "ms", figures.get("latency_p50_http", 0.0),
            "latency.p50_ms", "lower"),
        row("worker SIGKILL: extra time", "s", figures["kill_extra"], "kill.extra_s", "lower"),
        *(row(f"throughput, batches, {k} worker(s)", "tasks/s", figures[f"scale_workers_{k}"],
              f"scale_workers.{k}", "higher")
          for k in (1, 2, 4, 8) if f"scale_workers_{k}" in figures),
    ]  # fmt: skip


def _dig(doc: dict[str, Any], key: str) -> float | None:
    value: Any = doc
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def markdown(doc: dict[str, Any]) -> str:
    machine = doc["machine"]
    versions = ", ".join(f"{p['system']} {p['version']}" for p in doc["peers"].values())
    lines = [
        "# Benchmarks",
        "",
        f"Measured {doc['when']} on {machine['cpus']} CPUs ({machine['platform']}, Python "
        f"{machine['python']}), every system in the same run: Mutirão, {versions}.",
        "Reproduce with `make bench-peers` (it creates `.venv-peers` with the pinned peers);",
        "`make bench` runs Mutirão's side alone. The machine is shared and noisy: only ratios",
        "taken in one run mean much. Ratio: Mutirão's advantage over Ray (> 1 is better).",
        "",
        "`python -m bench.run --size full --only NAME[,NAME]` runs some workloads alone (names",
        "in `--help`; `scale` selects every scale workload, `throughput` all three of those)",
        "and replaces their results in `docs/benchmarks/latest.json` and on this page, keeping",
        "the others; every run redraws `docs/benchmarks/latest.png` and `scale.png`",
        "(matplotlib, installed into `.venv` from `requirements-bench.txt` by both targets).",
        "",
        "| workload | unit | Mutirão | Dask | Ray | ratio vs Ray |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in doc["comparison"]:
        cells = [_fmt(row.get(s)) for s in ("mutirao", "dask", "ray")]
        ratio = row["ratio_vs_ray"]
        lines.append(
            f"| {row['workload']} | {row['unit']} | {' | '.join(cells)} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} |"
        )
    failover = doc["figures"]["failover_ms"] / 1000
    lines += [
        f"| failover (SIGKILL of the active) | s | {failover:.2f} | no scheduler HA | "
        f"restart and reload | client-go defaults: up to {CLIENT_GO_FAILOVER_S:.0f} s |",
        "",
        "How each runs: 2 workers (Dask: 2 one-thread worker processes; Ray: 2 CPUs), the",
        "journal fsynced. Throughput: Mutirão submits 1,000-task batches, up to 4 in flight,",
        "collecting each batch's results as soon as it is acknowledged; Dask `client.map` then",
        "`gather`; Ray `.remote()` in a loop then `ray.get`; each after 100 unmeasured tasks.",
        "One task per call: 64 concurrent submitters (Mutirão: coroutines over one client",
        "session, or one HTTP request per task; Dask, Ray: threads). Latency: one task at a",
        "time, submit to result. Worker SIGKILL: 2,000 x 10 ms tasks on 2 one-slot workers,",
        "three rounds of a batch without a kill and one with a worker process killed a third",
        "of the way in; the figure is the median with minus the median without (one batch",
        "varies by ~0.1 s, so a figure near 0 means no extra time measurable). Mutirão runs",
        "under `mutirao up`, which hands the dead worker's id to a warm spare; Dask's nanny",
        "restarts its worker; Ray's raylet replaces its worker process. Failover: the active",
        "orchestrator is SIGKILLed while tasks stream in; the figure is the time until a",
        "submission is accepted again.",
        "",
        "![same-run comparison](benchmarks/latest.png)",
        "",
        *_scale(doc),
    ]
    return "\n".join(lines)


def _scale(doc: dict[str, Any]) -> list[str]:
    """The scale workloads' section: one row per result, with each result's own note."""
    rows = [r for r in doc["results"] if str(r.get("name", "")).startswith("scale-")]
    if not rows:
        return []
    when = max(doc.get("rerun", {}).get(r["name"], doc["when"]) for r in rows)
    lines = [
        "## Scale",
        "",
        f"Mutirão alone, measured {when} on the same {doc['machine']['cpus']}-CPU machine",
        "(shared and noisy; `python -m bench.run --size full --only scale` runs these alone):",
        "real orchestrator and worker processes on loopback, journal fsynced. More workers",
        "than CPUs add processes that compete with the orchestrator for the CPUs, not",
        "capacity. Memory is the orchestrator's RSS; pending tasks are queued on an",
        "orchestrator whose only worker was killed after announcing `echo`. Retention:",
        "`MUTIRAO_TASKS_RETENTION=1`, two rounds (CPython keeps freed memory for reuse, so",
        "the sign of a bound is a flat second round). Restart: SIGKILL, then a new process on",
        "the same data dir (default 5 s lease; the checkpoint is encoded in pieces with the",
        "loop serving requests in between, so it holds no request for long).",
        "",
        "| workload | figure | notes |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        label = r["workload"].removeprefix("scale: ")
        note = r["detail"].get("note", "")
        lines.append(f"| {label} | {_fmt(r['figure'])} {r['unit']} | {note} |")
    return [*lines, "", "![scale](benchmarks/scale.png)", ""]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def write(doc: dict[str, Any], out: Path) -> None:
    out.write_text(json.dumps(doc, indent=2) + "\n")
    MARKDOWN.write_text(markdown(doc))
    plot(out)


def plot(out: Path) -> None:
    """PNGs beside ``out`` (``bench/plot.py`` in this Python: requirements-bench.txt)."""
    png = out.with_suffix(".png")
    subprocess.run([sys.executable, "bench/plot.py", str(out), str(png)], check=True)
    print(f"plotted {png.parent}/*.png")
