"""Plot docs/benchmarks/latest.json as PNGs (matplotlib: requirements-bench.txt):
``python -m bench.plot latest.json latest.png``.

``latest.png``: the same-run comparison with Dask, Ray and Celery. ``scale.png`` beside it: the
scale workloads (bench/scale.py), when the document has them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.compare import SYSTEMS, series

COLOURS = ["#2a9d8f", "#e9c46a", "#e76f51", "#264653"]


def main(source: Path, target: Path) -> None:
    doc = json.loads(source.read_text())
    if "comparison" in doc:
        comparison(doc, target)
    if any(str(k).startswith("scale_") for k in doc["figures"]):
        scale(doc, target.with_name("scale.png"))


def comparison(doc: dict[str, Any], target: Path) -> None:
    rows = doc["comparison"]
    columns = min(len(rows), 5)
    lines = -(-len(rows) // columns)
    fig, grid = plt.subplots(lines, columns, figsize=(4 * columns, 3.6 * lines), squeeze=False)
    axes = grid.flatten()
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    for ax, row in zip(axes, rows, strict=False):
        systems = [s for s in ("mutirao", *SYSTEMS) if row.get(s) is not None]
        ax.bar(systems, [row[s] for s in systems], color=COLOURS[: len(systems)])
        ax.set_title(row["workload"], fontsize=9)
        ax.set_ylabel(row["unit"])
    fig.suptitle(
        f"Mutirão vs Dask, Ray and Celery, same run ({doc['when']}, {doc['machine']['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def scale(doc: dict[str, Any], target: Path) -> None:
    """One panel per scale question: workers, slots, memory per pending task, restart; and
    below, when measured, the cost per task as workers and tasks grow (the curve)."""
    figures = doc["figures"]
    panels = [
        ("throughput by workers (256 slots)", "workers", "tasks/s", "scale_workers_"),
        ("throughput by slots (2 workers)", "slots per worker", "tasks/s", "scale_slots_"),
        ("orchestrator RSS per pending task", "pending tasks", "bytes", "scale_pending_"),
    ]
    curves = [
        ("cost per task by workers (256 slots each)", "workers", "scale_curve_workers_"),
        ("cost per task by tasks in the run (2 workers)", "tasks", "scale_curve_tasks_"),
    ]
    curves = [c for c in curves if any(series(figures, c[2]))]
    rows = 2 if curves else 1
    fig, grid = plt.subplots(rows, len(panels) + 1, figsize=(16, 3.6 * rows), squeeze=False)
    axes = grid[0]
    for ax, (title, xlabel, unit, prefix) in zip(axes, panels, strict=False):
        found = list(series(figures, prefix))
        labels, values = [f"{n:,}" for n, _ in found], [v for _, v in found]
        ax.bar(labels, values, color=COLOURS[0])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(unit)
    for r in doc["results"]:
        if r.get("key") == "scale_recovery_s":
            axes[-1].bar([f"{r['detail']['tasks']:,} tasks"], [r["figure"]], color=COLOURS[2])
    axes[-1].set_title("restart after SIGKILL -> ready (checkpoint + journal)", fontsize=9)
    axes[-1].set_ylabel("s")
    for ax in grid[1][len(curves) :] if curves else []:
        ax.set_visible(False)
    walls = {r["key"]: r["detail"]["wall_us_per_task"] for r in doc["results"]
             if str(r.get("key", "")).startswith("scale_curve_")}  # fmt: skip
    for ax, (title, xlabel, prefix) in zip(grid[1] if curves else [], curves, strict=False):
        found = list(series(figures, prefix))
        xs = [n for n, _ in found]
        ax.plot(xs, [v for _, v in found], "o-", color=COLOURS[0], label="orchestrator CPU")
        ax.plot(xs, [walls.get(f"{prefix}{n}", 0.0) for n in xs], "s--", color=COLOURS[2],
                label="wall time")  # fmt: skip
        ax.set_xscale("log", base=2 if "workers" in prefix else 10)
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("µs per task")
        ax.legend(fontsize=8)
    fig.suptitle(f"Mutirão at scale ({doc['machine']['cpus']} CPUs, real processes)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
