"""Where the orchestrator's CPU goes per task: the batched throughput workload with the
orchestrator under :mod:`cProfile`.

The figure is the orchestrator's CPU per task from ``/proc`` in a run without the profiler
(the profiler slows every Python call, so it only apportions); the detail has the share of
that CPU by area (the engine and scheduler, the API, the worker links, metrics, the journal,
aiohttp, the event loop), from the profile's own time per function.
``python -m bench.run --only profile`` runs it alone; ``docs/scaling.md`` reads its cost
model from it. ``BENCH_PROFILE_OUT=FILE`` keeps the profile (``python -m pstats FILE``).
"""

from __future__ import annotations

import asyncio
import os
import pstats
import signal
import sys
from pathlib import Path

from tests.integration.cluster import LocalCluster, Proc

from bench.dag import cpu_seconds
from bench.run import Result, no_op_batches

AREAS = (
    ("engine and scheduler", ("mutirao/orchestrator/engine", "mutirao/orchestrator/scheduler",
                              "mutirao/orchestrator/tasks", "mutirao/orchestrator/limits")),
    ("journal and replication", ("mutirao/orchestrator/journal", "mutirao/ha/")),
    ("HTTP API, intake, waiters", ("mutirao/orchestrator/api", "mutirao/orchestrator/intake",
                                   "mutirao/orchestrator/service", "mutirao/protocol",
                                   "mutirao/auth", "mutirao/serving")),
    ("worker links", ("mutirao/orchestrator/links",)),
    ("metrics", ("metrics", "prometheus_client")),
    ("aiohttp (HTTP, websockets)", ("aiohttp/", "multidict", "yarl")),
    ("asyncio event loop", ("asyncio/", "selectors")),
)  # fmt: skip
"""Where a function's time is counted: the first area one of whose path parts its file
contains; the rest is ``other``. C functions (encoding, dict and list methods) count for
their callers' areas."""


async def profile(root: Path, n: int) -> Result:
    """N no-op tasks on 2 workers of 256 slots: once plain (the CPU figure), once with the
    orchestrator under cProfile (the breakdown)."""
    cpu_us = await _cpu_per_task(root / "plain", n, profiled=None)
    out = Path(os.environ.get("BENCH_PROFILE_OUT", root / "orchestrator.prof"))
    await _cpu_per_task(root / "profiled", n, profiled=out)
    shares = _shares(pstats.Stats(str(out)))
    note = ", ".join(f"{area} {share:.0%}" for area, share in shares.items() if share >= 0.02)
    return Result(
        f"orchestrator CPU per task, {n:,} no-op tasks in batches (profiled)",
        cpu_us,
        "µs/task",
        {"tasks": n, "shares": shares, "note": note},
        key="orchestrator_cpu_us_per_task",
    )


async def _cpu_per_task(root: Path, n: int, *, profiled: Path | None) -> float:
    root.mkdir(parents=True)  # noqa: ASYNC240 (nothing runs yet to block)
    cluster = LocalCluster(root)
    cluster.env_extra["MUTIRAO_LOG_LEVEL"] = "WARNING"
    try:
        if profiled is None:
            orchestrator = cluster.start_orchestrator()
        else:
            args = ["orchestrator", "--port", str(cluster.port), "--data-dir",
                    str(cluster.data_dir)]  # fmt: skip
            argv = [sys.executable, "-m", "cProfile", "-o", str(profiled), "-m", "mutirao", *args]
            orchestrator = Proc("orchestrator", argv, root / "orchestrator.out",
                                cluster.orchestrator_env()).start()  # fmt: skip
            cluster.procs.append(orchestrator)
        await cluster.wait_ready()
        for wid in ("W1", "W2"):
            cluster.start_worker(wid, slots=256)
        await cluster.wait_workers("W1", "W2")
        async with cluster.client() as client:
            before = cpu_seconds(orchestrator.pid)
            await no_op_batches(client, n)
            used = cpu_seconds(orchestrator.pid) - before
        if profiled is not None:
            # A clean exit, so that cProfile writes its file.
            orchestrator.signal(signal.SIGTERM)
            assert orchestrator.popen is not None
            await asyncio.to_thread(orchestrator.popen.wait, 60)
    finally:
        cluster.stop()
    return used / n * 1e6


IDLE = ("select.epoll", "poll' of")
"""The event loop waiting for I/O: wall time in the profile, not CPU."""


def _shares(stats: pstats.Stats) -> dict[str, float]:
    """The profile's own time by area (see ``AREAS``), as shares of the total. A built-in
    (``dict.get``, ``list.append``...) counts for the areas of its callers, in proportion to
    the time each call site spent in it; waiting in ``epoll`` counts for none."""
    table = stats.stats  # type: ignore[attr-defined]
    by_area: dict[str, float] = {}

    def area(func: tuple[str, int, str]) -> str:
        where = f"{func[0]}:{func[2]}"
        return next((a for a, parts in AREAS if any(p in where for p in parts)), "other")

    for func, (_, _, own, _, callers) in table.items():
        where = f"{func[0]}:{func[2]}"
        if all(part in where for part in IDLE):
            continue
        if func[0] == "~" and callers:
            for caller, (_, _, spent, _) in callers.items():
                by_area[area(caller)] = by_area.get(area(caller), 0.0) + spent
        else:
            by_area[area(func)] = by_area.get(area(func), 0.0) + own
    total = sum(by_area.values()) or 1.0
    return {a: t / total for a, t in sorted(by_area.items(), key=lambda kv: -kv[1])}
