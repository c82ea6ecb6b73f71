"""Mutirão's figures next to Dask's, Ray's and Celery's from the same run, as ratios.

The peers run in their own virtualenv (``bench/peers.py`` under ``PYTHON``); the table goes
to ``docs/benchmarks.md`` and a plot to ``docs/benchmarks/latest.png``. The page also shows
the scale workloads (:mod:`bench.scale`, Mutirão alone) and their plot, ``scale.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PEER_FLAGS = {
    "--tasks": "throughput", "--large": "throughput_large", "--latency": "latency",
    "--kill": "kill", "--kill-rounds": "kill_rounds", "--scale": "scale_workers",
    "--slots": "scale_slots", "--pending-first": "pending_first", "--pending": "pending",
    "--dag-chains": "dag_chains",
}  # fmt: skip
"""``bench/peers.py``'s size flags, each set from the size of the same name in
``bench.run.SIZES`` so that every system runs the same workloads."""

PEER_TIMEOUT_S = 3600
SYSTEMS = ("dask", "ray", "celery")

MARKDOWN = Path("docs/benchmarks.md")

CLIENT_GO_FAILOVER_S = 15.0
"""client-go's LeaderElector defaults: a 15 s lease, 10 s renew deadline, 2 s retry."""


def run_peers(python: str, sizes: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Each peer's results, from ``bench/peers.py`` under ``python``; its progress lines
    are shown as they come, the rest of its stderr (Ray's logging) only if it fails."""
    flags = [part for flag, size in PEER_FLAGS.items() for part in (flag, str(sizes[size]))]
    peers = {}
    for system in SYSTEMS:
        print(f"  running the same workloads on {system}...", flush=True)
        with subprocess.Popen(
            [python, "bench/peers.py", system, *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            assert proc.stderr is not None
            watchdog = threading.Timer(PEER_TIMEOUT_S, proc.kill)
            watchdog.start()
            logged: deque[str] = deque(maxlen=40)
            # stdout is one JSON line at the end, so reading stderr first cannot block it.
            for line in proc.stderr:
                if line.startswith("progress: "):
                    print(f"    {system}: {line.removeprefix('progress: ')}", end="", flush=True)
                else:
                    logged.append(line)
            result = proc.stdout.read()
            code = proc.wait()
            watchdog.cancel()
        if code != 0:
            raise RuntimeError(
                f"bench/peers.py {system} exited with {code} (killed after "
                f"{PEER_TIMEOUT_S} s if negative); its last lines:\n{''.join(logged)}"
            )
        peers[system] = json.loads(result.strip().splitlines()[-1])
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
        row("worker SIGKILL: extra time (Celery: acks_late)", "s", figures["kill_extra"],
            "kill.extra_s", "lower"),
        *([row("worker SIGKILL: tasks lost (Celery: default acks, early)", "tasks", 0.0,
               "kill_default.lost", "lower")]
          if any("kill_default" in p for p in peers.values()) else []),
        *([row("workflow: 100,010-task graph (chains of 10, fan-in of 1,000)", "tasks/s",
               figures["dag_tasks_s"], "dag_tasks_s", "higher")]
          if "dag_tasks_s" in figures else []),
        *(row(f"throughput, batches, {k} worker(s)", "tasks/s", figure,
              f"scale_workers.{k}", "higher")
          for k, figure in series(figures, "scale_workers_")),
        *(row(f"throughput, batches, 2 workers x {k} slot(s)", "tasks/s", figure,
              f"scale_slots.{k}", "higher")
          for k, figure in series(figures, "scale_slots_")),
        *(row(f"memory per pending task, {n:,} pending", "B/task", figure,
              f"pending_bytes_per_task.{n}", "lower")
          for n, figure in series(figures, "scale_pending_")),
        *([row("memory still held after finished tasks were let go", "MiB",
               figures["scale_retention_held_mb"], "retention_held_mb", "lower")]
          if "scale_retention_held_mb" in figures else []),
    ]  # fmt: skip


def series(figures: Mapping[str, float], prefix: str) -> Iterator[tuple[int, float]]:
    """Figures named ``<prefix><n>``, in the order of n."""
    found = [(k.removeprefix(prefix), v) for k, v in figures.items() if k.startswith(prefix)]
    yield from sorted((int(n), v) for n, v in found if n.isdigit())


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
        "Celery has no equivalent of the failover and the restart rows (no scheduler, tasks",
        "in Redis) nor of the retention row (results expire in Redis). At a few hundred tasks",
        "a second it skips the 200,000-task batch and fills at most 200,000 pending tasks",
        "(sent without awaiting results: awaited ones slowed its client to a stall).",
        *_reruns(doc),
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
        "| workload | unit | Mutirão | Dask | Ray | Celery | ratio vs Ray |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in doc["comparison"]:
        cells = [_fmt(row.get(s)) for s in ("mutirao", *SYSTEMS)]
        ratio = row["ratio_vs_ray"]
        lines.append(
            f"| {row['workload']} | {row['unit']} | {' | '.join(cells)} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} |"
        )
    figures = doc["figures"]
    lines.append(
        f"| failover (SIGKILL of the active) | s | {figures['failover_ms'] / 1000:.2f} | "
        "no scheduler HA | restart and reload | no scheduler to fail over (Redis is the "
        "single point) | client-go defaults: up to "
        f"{CLIENT_GO_FAILOVER_S:.0f} s |"
    )
    if "scale_recovery_s" in figures:
        lines.append(
            f"| restart after SIGKILL with {_recovered(doc)} tasks -> ready | s | "
            f"{figures['scale_recovery_s']:.2f} | no durable task state: a scheduler's death "
            "loses its tasks | the owner's death loses its tasks; GCS fault tolerance restores "
            "cluster metadata, not tasks | as durable as Redis is configured (here: in memory) "
            "| - |"
        )
    lines += [
        "",
        "How each runs: 2 workers (Dask: 2 one-thread worker processes; Ray: 2 CPUs; Celery:",
        "one worker of 2 prefork processes, Redis as broker and result backend, in memory",
        "only), Mutirão's journal fsynced. Throughput: Mutirão submits 1,000-task batches, up",
        "to 4 in flight, collecting each batch's results as soon as it is acknowledged; Dask",
        "`client.map` then `gather`; Ray `.remote()` in a loop then `ray.get`; Celery one",
        "`group` then `.get()`; each after 100 unmeasured tasks. One task per call: 64",
        "concurrent submitters (Mutirão: coroutines over one client session, or one HTTP",
        "request per task; the peers: threads, Celery's `delay`). Latency: one task at a time,",
        "submit to result. Worker SIGKILL: 2,000 x 10 ms tasks on 2 one-slot workers, three",
        "rounds of a batch without a kill and one with a worker process killed a third of the",
        "way in; the figure is the median with minus the median without (one batch varies by",
        "~0.1 s, so a figure near 0 means no extra time measurable). Mutirão runs under",
        "`mutirao up`, which hands the dead worker's id to a warm spare; Dask's nanny restarts",
        "its worker; Ray's raylet replaces its worker process; Celery's pool replaces its",
        "process. Celery runs it twice: with `acks_late` and `reject_on_worker_lost` (the task",
        "is delivered again, the extra-time row) and with its default early acknowledgement,",
        "where the task the killed process ran fails with `WorkerLostError` (the tasks-lost",
        "row; Mutirão's workload asserts every task succeeded exactly once). Failover: the",
        "active orchestrator is SIGKILLed while tasks stream in; the figure is the time until",
        "a submission is accepted again. Workflow graph: Dask one graph, Ray refs as",
        "arguments, Celery chains of `add` in the headers of chords into `total`.",
        "",
        "Scale: workers and slots as throughput, each on a fresh cluster (Dask: one-thread",
        "worker processes, then 2 workers of 1/4/16 threads; Ray: `num_cpus` of 1-8, then",
        "2 x 1/4/16, as Ray runs one task at a time per worker process and starts one per",
        "CPU; Celery: `--concurrency` 1-8, then 2/8/32 prefork processes). Memory per pending",
        "task: RSS growth of what holds the queue while tasks wait for a worker (Mutirão: the",
        "orchestrator, whose only worker was killed; Dask: a scheduler process with no worker;",
        "Ray: the driver, which owns the tasks it submits, plus `gcs_server` and `raylet`,",
        "with tasks asking for a resource no node has; Celery: `redis-server`, the broker,",
        "before any worker started). Memory still held: RSS growth once finished tasks'",
        "results are gone (Mutirão: 2 x 100,000 tasks with `MUTIRAO_TASKS_RETENTION=1`; Dask:",
        "the 200,000-task throughput run's futures released, client and scheduler being one",
        "process; Ray: its refs dropped, driver plus control processes; Celery: none, its",
        "results live in Redis until they expire). The sizes differ: the peers held 200,000",
        "results at once and their allocators keep that high-water mark, where Mutirão's",
        "rounds of 100,000 expire within 1 s, so this ratio flatters Mutirão. Restart:",
        "Mutirão's orchestrator SIGKILLed and started again on its data dir (details below);",
        "no peer keeps tasks on disk here.",
        "",
        "![same-run comparison](benchmarks/latest.png)",
        "",
        *_scale(doc),
    ]
    return "\n".join(lines)


def _reruns(doc: dict[str, Any]) -> list[str]:
    """A line naming the workloads measured again alone after the same-run comparison."""
    rerun = doc.get("rerun", {})
    if not rerun:
        return []
    names = ", ".join(f"`{name}` ({when})" for name, when in sorted(rerun.items()))
    return [f"Measured again alone afterwards (`--only`), against the same peers' run: {names}."]


def _scale(doc: dict[str, Any]) -> list[str]:
    """The scale workloads' section: one row per result, with each result's own note."""
    rows = [r for r in doc["results"] if str(r.get("name", "")).startswith("scale-")]
    if not rows:
        return []
    when = max(doc.get("rerun", {}).get(r["name"], doc["when"]) for r in rows)
    lines = [
        "## Scale, Mutirão's details",
        "",
        f"Measured {when} on the same {doc['machine']['cpus']}-CPU machine (shared and",
        "noisy; `python -m bench.run --size full --only scale` runs these alone):",
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


def _recovered(doc: dict[str, Any]) -> str:
    tasks = [r["detail"]["tasks"] for r in doc["results"] if r.get("key") == "scale_recovery_s"]
    return f"{tasks[0]:,}" if tasks else "N"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def write(doc: dict[str, Any], out: Path) -> None:
    out.write_text(json.dumps(doc, indent=2) + "\n")
    MARKDOWN.write_text(markdown(doc))
    plot(out)


def plot(out: Path) -> None:
    """PNGs beside ``out`` (``bench.plot`` in this Python: requirements-bench.txt)."""
    png = out.with_suffix(".png")
    subprocess.run([sys.executable, "-m", "bench.plot", str(out), str(png)], check=True)
    print(f"plotted {png.parent}/*.png")
