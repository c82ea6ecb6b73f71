"""Mutirão's own benchmarks on real local processes.

Each workload starts a fresh local cluster (orchestrator, optional hot standby, workers) on
loopback with the journal fsynced, measures, and tears it down. Results print as a table and
are written to ``docs/benchmarks/latest.json``. ``--size tiny`` runs everything once, small,
so the suite cannot rot (the test suite does that); figures only mean something at
``--size full`` on a quiet machine. ``--only NAME[,NAME]`` runs some workloads (``--help``
lists the names) and, at full size, folds their results into the existing
``latest.json``. The scale workloads live in :mod:`bench.scale`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.integration.cluster import LocalCluster, UpCluster, eventually

from bench import compare
from mutirao.client.http import Client
from mutirao.protocol import TaskView

SIZES = {
    "tiny": {
        "throughput": 500,
        "throughput_large": 1_000,
        "latency": 20,
        "failover": 100,
        "per_request": 200,
        "kill": 60,
        "kill_rounds": 1,
        "scale_workers": 500,
        "scale_slots": 200,
        "curve_workers": 2,
        "curve_tasks": 20_000,
        "pending_first": 2_000,
        "pending": 5_000,
        "retention": 2_000,
        "recovery": 5_000,
        "dag_chains": 200,
        "delayed": 2_000,
        "schedules": 20,
    },
    "full": {
        "throughput": 20_000,
        "throughput_large": 200_000,
        "latency": 500,
        "failover": 2_000,
        "per_request": 5_000,
        "kill": 2_000,
        "kill_rounds": 3,
        "scale_workers": 20_000,
        "scale_slots": 5_000,  # 20,000 would take ~15 s with 1-slot workers
        "curve_workers": 32,
        "curve_tasks": 1_000_000,
        "pending_first": 100_000,
        "pending": 1_000_000,
        "retention": 100_000,
        "recovery": 1_000_000,
        "dag_chains": 10_000,
        "delayed": 100_000,
        "schedules": 1_000,
    },
}


@dataclass
class Result:
    workload: str
    figure: float
    unit: str
    detail: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    """Name of the figure in ``latest.json``'s figures, for workloads reporting several."""
    name: str = ""
    """The workload (``--only`` name) that measured it; set by :func:`main_async`."""


async def _cluster(
    root: Path,
    *,
    standby: bool,
    slots: int,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    worker_args: tuple[str, ...] = (),
) -> LocalCluster:
    """An orchestrator (+ standby) and workers W1..W<workers>, logging warnings only;
    ``env`` adds settings (``MUTIRAO_*``) for every process, ``worker_args`` flags to the
    workers'."""
    cluster = LocalCluster(root)
    cluster.env_extra["MUTIRAO_LOG_LEVEL"] = "WARNING"
    cluster.env_extra.update(env or {})
    try:
        await _start(cluster, standby=standby, slots=slots, workers=workers, extra=worker_args)
    except BaseException:
        cluster.stop()  # a cluster that never came up is not the caller's to stop
        raise
    return cluster


async def _start(
    cluster: LocalCluster, *, standby: bool, slots: int, workers: int, extra: tuple[str, ...]
) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    if standby:
        cluster.start_backup()
        async with cluster.client() as client:

            async def synced() -> bool:
                return any(s["synced"] for s in (await client.cluster())["standbys"])

            await eventually(synced, timeout=30, what="standby in sync")
    ids = [f"W{i}" for i in range(1, workers + 1)]
    for wid in ids:
        cluster.start_worker(wid, slots=slots, extra=extra)
    await cluster.wait_workers(*ids, timeout=20 + 5 * workers)


NO_OP = ({"type": "echo"},)


async def no_op_batches(
    client: Client, n: int, batch: int = 1000, specs: Sequence[dict[str, Any]] = NO_OP
) -> float:
    """Seconds for N no-op tasks in batches, up to 4 batches in flight (as an async client
    would), each batch's results collected as soon as it is acknowledged. 100 tasks go
    through first, unmeasured, as the peers' benchmarks warm up. The tasks are ``specs``
    in turn."""

    def tasks(size: int) -> list[dict[str, Any]]:
        return [specs[i % len(specs)] for i in range(size)]

    await client.results([t["id"] for t in await client.submit_batch(tasks(100))])
    in_flight = asyncio.Semaphore(4)

    async def one(size: int) -> int:
        async with in_flight:
            ids = [t["id"] for t in await client.submit_batch(tasks(size))]
        results = await client.results(ids, timeout=300)
        return sum(r["state"] == "succeeded" for r in results)

    started = time.perf_counter()
    sizes = [min(batch, n - offset) for offset in range(0, n, batch)]
    done = sum(await asyncio.gather(*(one(size) for size in sizes)))
    elapsed = time.perf_counter() - started
    assert done == n, f"only {done} of {n} tasks succeeded"
    return elapsed


async def throughput(root: Path, n: int, *, standby: bool) -> Result:
    """N no-op tasks, 2 workers: submit -> all results (:func:`no_op_batches`)."""
    cluster = await _cluster(root, standby=standby, slots=256)
    try:
        async with cluster.client() as client:
            elapsed = await no_op_batches(client, n)
    finally:
        cluster.stop()
    label = "with synchronous standby" if standby else "no standby"
    return Result(
        f"throughput, {n:,} no-op tasks, batches ({label})",
        n / elapsed,
        "tasks/s",
        {"seconds": elapsed, "tasks": n, "standby": standby},
    )


async def latency(root: Path, n: int) -> Result:
    """One task at a time, submitted with ``wait`` (the answer is the finished task): over a
    client session (the figure), and with one HTTP request each (in the detail)."""
    cluster = await _cluster(root, standby=False, slots=4)
    try:
        async with cluster.client() as client:
            over_http = await _sequential(client.submit, n)
            async with client.session() as session:
                over_session = await _sequential(session.submit, n)
    finally:
        cluster.stop()
    return Result(
        "latency, submit -> result, sequential (p50)",
        over_session["p50_ms"],
        "ms",
        {**over_session, "samples": n, "http": over_http},
    )


async def _sequential(submit: Callable[..., Awaitable[TaskView]], n: int) -> dict[str, float]:
    samples: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        task = await submit("echo", None, wait=30)
        assert task["state"] == "succeeded"
        samples.append(time.perf_counter() - started)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {"p50_ms": statistics.median(samples) * 1000, "p99_ms": p99 * 1000}


async def per_request(root: Path, n: int, lanes: int = 64) -> Result:
    """N tasks submitted one per call from ``lanes`` concurrent submitters, then all results:
    once over a client session (one websocket message per task, the figure), once with one
    HTTP request per task (in the detail)."""
    cluster = await _cluster(root, standby=False, slots=256)
    try:
        async with cluster.client() as client:
            over_http = await _one_by_one(client, client.submit, n, lanes)
            async with client.session() as session:
                over_session = await _one_by_one(client, session.submit, n, lanes)
    finally:
        cluster.stop()
    return Result(f"one task per request, {lanes} submitters", n / over_session, "tasks/s",
                  {"tasks": n, "lanes": lanes, "seconds": over_session,
                   "http_tasks_s": n / over_http, "http_seconds": over_http})  # fmt: skip


async def _one_by_one(
    client: Client, submit: Callable[..., Awaitable[TaskView]], n: int, lanes: int
) -> float:
    """Seconds for N no-op tasks submitted one per ``submit`` call by ``lanes`` coroutines,
    until every result is in."""
    ids: list[str] = []
    pending = iter(range(n))

    async def lane() -> None:
        for _ in pending:
            ids.append((await submit("echo", None))["id"])

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    for offset in range(0, n, 1000):
        await client.results(ids[offset : offset + 1000], timeout=300)
    return time.perf_counter() - started


async def worker_kill(root: Path, n: int, rounds: int) -> Result:
    """N 10 ms tasks over 2 one-slot workers of ``mutirao up``, ``rounds`` times without a
    kill and with worker W1 SIGKILLed a third of the way in; the figure is the median with a
    kill minus the median without (one batch varies by ~0.1 s from run to run, as much as
    what is measured). ``mutirao up`` brings the worker back from its warm spare, as Dask's
    nanny and Ray's raylet replace theirs, so the figure measures detection, redistribution
    and replacement, not a halved cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUTIRAO_")}
    cluster = UpCluster(root, env)
    try:
        await cluster.start("--workers", "2", "--slots", "1", "--no-backup",
                            "--worker-port", "0", "--log-level", "WARNING")  # fmt: skip
        async with cluster.client() as client:
            batch = [{"type": "sleep", "payload": 0.01}] * n
            redistributed = 0

            async def run(kill_after: float | None) -> float:
                nonlocal redistributed
                started = time.perf_counter()
                ids = [t["id"] for t in await client.submit_batch(batch)]
                if kill_after is not None:
                    await asyncio.sleep(kill_after)
                    os.kill(await _worker_pid(client, "W1"), signal.SIGKILL)
                views = await client.wait_many(ids, timeout=300)
                elapsed = time.perf_counter() - started
                outcomes = [[a["outcome"] for a in v["attempts"]] for v in views]
                once = sum(o.count("succeeded") == 1 for o in outcomes)
                assert once == n, f"{n - once} task(s) lost or recorded twice"
                redistributed += sum(len(o) > 1 for o in outcomes)
                return elapsed

            baselines: list[float] = []
            with_kill: list[float] = []
            for _ in range(rounds):
                baselines.append(await run(None))
                with_kill.append(await run(statistics.median(baselines) / 3))
        from_spare = cluster.proc_output().count("a warm spare took its place")
    finally:
        cluster.stop()
    return Result(f"worker SIGKILL mid-run, {n:,} x 10 ms tasks: extra time",
                  statistics.median(with_kill) - statistics.median(baselines), "s",
                  {"baseline_s": baselines, "with_kill_s": with_kill, "rounds": rounds,
                   "replaced_from_spare": from_spare,
                   "redistributed": redistributed})  # fmt: skip


async def _worker_pid(client: Client, worker_id: str) -> int:
    """The process id of a worker, from its status endpoint."""
    [url] = [w["url"] for w in await client.workers() if w["id"] == worker_id]
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/status") as resp:
        pid: int = (await resp.json())["pid"]
        return pid


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


Workload = Callable[[Path], Awaitable[Result | list[Result]]]


def workloads(size: str) -> dict[str, Workload]:
    """Every workload by its ``--only`` name, in the order ``make bench`` runs them."""
    # Imported here: these build on this module's helpers.
    from bench import dag, profile, routing, scale, timing

    n = SIZES[size]
    return {
        "throughput": lambda root: throughput(root, n["throughput"], standby=False),
        "throughput-standby": lambda root: throughput(root, n["throughput"], standby=True),
        "throughput-large": lambda root: throughput(root, n["throughput_large"], standby=False),
        "per-request": lambda root: per_request(root, n["per_request"]),
        "latency": lambda root: latency(root, n["latency"]),
        "kill": lambda root: worker_kill(root, n["kill"], n["kill_rounds"]),
        "failover": lambda root: failover(root, n["failover"]),
        "dag": lambda root: dag.dag(root, n["dag_chains"]),
        "routing": lambda root: routing.routing(root, n["throughput"]),
        "profile": lambda root: profile.profile(root, n["throughput_large"]),
        "delayed": lambda root: timing.delayed(root, n["delayed"]),
        "schedules": lambda root: timing.schedules(root, n["schedules"]),
        **scale.workloads(n),
    }


def select(names: Sequence[str], only: Sequence[str] | None) -> list[str]:
    """The workloads ``only`` names, in their usual order; a name followed by ``-...``
    also selects a group (``scale`` is every ``scale-*`` workload)."""
    if only is None:
        return list(names)
    return [n for n in names if any(n == o or n.startswith(o + "-") for o in only)]


async def main_async(size: str, only: Sequence[str] | None = None) -> list[Result]:
    table = workloads(size)
    results = []
    for name in select(list(table), only):
        with tempfile.TemporaryDirectory(prefix="mutirao-bench-") as tmp:
            measured = await table[name](Path(tmp))
        for result in measured if isinstance(measured, list) else [measured]:
            result.name = name
            print(f"  {result.workload}: {result.figure:,.1f} {result.unit}", flush=True)
            results.append(result)
    return results


def _cpus() -> int:
    return os.cpu_count() or 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/latest.json"))
    parser.add_argument(
        "--peers", metavar="PYTHON", help="also run Dask and Ray under this Python and compare"
    )
    names = list(workloads("tiny"))
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        type=lambda value: [v.strip() for v in value.split(",") if v.strip()],
        help=f"run only these workloads ({', '.join(names)}; a prefix before '-' names a "
        "group: scale) and, at full size, fold their results into --out",
    )
    args = parser.parse_args()
    if args.only is not None:
        unknown = [o for o in args.only if not select(names, [o])]
        if unknown or not args.only:
            parser.error(f"--only: no workload named {', '.join(unknown) or '(none given)'}")
        if args.peers:
            parser.error("--peers compares every workload in one run; it excludes --only")
    print(f"Mutirão benchmarks ({args.size})", flush=True)
    results = asyncio.run(main_async(args.size, args.only))
    print(_table(results))
    doc = _document(args.size, results)
    if args.only is not None and args.size == "full":
        doc = _merged(args.out, doc)
        if "peers" in doc:  # the same-run peers' figures, against the figures measured again
            doc["comparison"] = compare.comparison(doc["figures"], doc["peers"])
    if args.peers:
        doc["peers"] = compare.run_peers(args.peers, SIZES[args.size])
        doc["comparison"] = compare.comparison(doc["figures"], doc["peers"])
        print(compare.markdown(doc))
    if args.size == "full":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.peers:
            compare.write(doc, args.out)
        else:
            args.out.write_text(json.dumps(doc, indent=2) + "\n")
            if "comparison" in doc:  # --only folded into a peers run: keep the page in step
                compare.MARKDOWN.write_text(compare.markdown(doc))
                print(f"written to {compare.MARKDOWN}")
            compare.plot(args.out)
        print(f"written to {args.out}")
    return 0


_FIGURES: dict[str, tuple[str, Callable[[Result], float]]] = {
    "throughput": ("throughput", lambda r: r.figure),
    "throughput_standby": ("throughput-standby", lambda r: r.figure),
    "throughput_large": ("throughput-large", lambda r: r.figure),
    "per_request": ("per-request", lambda r: r.figure),
    "per_request_http": ("per-request", lambda r: float(r.detail["http_tasks_s"])),
    "latency_p50": ("latency", lambda r: float(r.detail["p50_ms"])),
    "latency_p99": ("latency", lambda r: float(r.detail["p99_ms"])),
    "latency_p50_http": ("latency", lambda r: float(r.detail["http"]["p50_ms"])),
    "kill_extra": ("kill", lambda r: r.figure),
    "failover_ms": ("failover", lambda r: r.figure),
}
"""The figures of the workloads that report one result: name -> (workload, how to read it)."""


def _document(size: str, results: list[Result]) -> dict[str, Any]:
    by_name = {r.name: r for r in results if not r.key}
    figures = {f: read(by_name[name]) for f, (name, read) in _FIGURES.items() if name in by_name}
    figures.update({r.key: r.figure for r in results if r.key})
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


def _merged(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc``, from an ``--only`` run, folded into the full run already at ``path``: its
    results replace those of the same workloads and all else (peers, comparison) is kept,
    so one workload can be measured again without the others. ``rerun`` records when."""
    if not path.exists():
        return doc
    old: dict[str, Any] = json.loads(path.read_text())
    if old.get("size") != doc["size"]:
        return doc
    ran = {r["name"] for r in doc["results"]}
    labels = {r["workload"] for r in doc["results"]}
    kept = [r for r in old["results"] if r.get("name") not in ran and r["workload"] not in labels]
    old["results"] = kept + doc["results"]
    old["figures"].update(doc["figures"])
    old.setdefault("rerun", {}).update(dict.fromkeys(sorted(ran), doc["when"]))
    return old


if __name__ == "__main__":
    sys.exit(main())
