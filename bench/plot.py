"""Plot docs/benchmarks/latest.json as a PNG (run by the peers' Python, which has matplotlib)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(source: Path, target: Path) -> None:
    doc = json.loads(source.read_text())
    rows = doc["comparison"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6))
    for ax, row in zip(axes, rows, strict=True):
        systems = [s for s in ("mutirao", "dask", "ray") if row.get(s) is not None]
        ax.bar(systems, [row[s] for s in systems], color=["#2a9d8f", "#e9c46a", "#e76f51"])
        ax.set_title(row["workload"], fontsize=9)
        ax.set_ylabel(row["unit"])
    fig.suptitle(f"Mutirão vs Dask vs Ray, same run ({doc['when']}, {doc['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
