"""Scale benchmarks: how Mutirão's figures move with workers, slots and the size of its state.

The questions someone sizing a cluster asks, answered on real local processes (an
orchestrator and workers on loopback, journal fsynced, through :func:`bench.run._cluster`):

- does batched throughput follow the number of workers, or does the orchestrator saturate
  first (on a 2-CPU machine more worker processes mostly compete for the same CPUs);
- how much a worker's slot count, which bounds its tasks in flight, limits throughput;
- how much memory each pending task costs the orchestrator, which keeps its whole task
  table in memory;
- whether that memory comes back once finished tasks expire (``MUTIRAO_TASKS_RETENTION``);
- how long an orchestrator takes to come back from a checkpoint plus journal tail of a
  million tasks, since that is the outage a crash costs without a standby;
- whether the cost per task stays flat as the cluster grows (1 to 32 workers) and as a run
  grows (10,000 to 1,000,000 tasks): the orchestrator's CPU per task, read from ``/proc``,
  and the wall time per task (the curve).

The workloads are registered in :func:`bench.run.workloads` under ``scale-*`` names; run them
alone with ``python -m bench.run --only scale`` (or one, e.g. ``--only scale-memory``).
Memory is the orchestrator's resident set size from ``/proc`` (Linux), what the OOM killer
and a container's memory limit see.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from tests.integration.cluster import LocalCluster, Proc, eventually

from bench.dag import cpu_seconds
from bench.peers import MIB, rss
from bench.run import Result, Workload, _cluster, no_op_batches
from mutirao.client.http import ApiError, Client

WORKER_COUNTS = (1, 2, 4, 8)
SLOT_COUNTS = (1, 4, 16)
RETENTION_S = 1
ROUNDS = 2
EXPIRY_TIMEOUT_S = 15.0
"""How long the retention workload waits for finished tasks to be forgotten, beyond the
retention itself: an orchestrator that sweeps expired tasks should be done well within it."""
_UNFINISHED = ("pending", "assigned", "running")


def workloads(n: Mapping[str, int]) -> dict[str, Workload]:
    """The scale workloads by ``--only`` name, sized from ``bench.run.SIZES``."""
    return {
        "scale-workers": lambda root: by_workers(root, n["scale_workers"]),
        "scale-slots": lambda root: by_slots(root, n["scale_slots"]),
        "scale-memory": lambda root: pending_memory(root, n["pending_first"], n["pending"]),
        "scale-retention": lambda root: retention(root, n["retention"]),
        "scale-recovery": lambda root: recovery(root, n["recovery"]),
        "scale-curve": lambda root: curve(root, n["curve_workers"], n["curve_tasks"]),
    }


@contextlib.asynccontextmanager
async def _running(
    root: Path, *, workers: int, slots: int, env: Mapping[str, str] | None = None
) -> AsyncIterator[LocalCluster]:
    """:func:`bench.run._cluster` (no standby) in ``root``, created, and stopped whatever
    happens."""
    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (nothing runs yet to block)
    cluster = await _cluster(root, standby=False, slots=slots, workers=workers, env=env)
    try:
        yield cluster
    except BaseException:
        print(cluster.dump_logs(), flush=True)  # the logs go with the temporary directory
        raise
    finally:
        cluster.stop()


def _newest(cluster: LocalCluster, name: str) -> Proc:
    """The newest process called ``name`` (a restart appends a new one)."""
    return [p for p in cluster.procs if p.name == name][-1]


async def _held(client: Client) -> dict[str, int]:
    """Tasks the orchestrator holds, by state (the admin cluster view counts them)."""
    counts: dict[str, int] = (await client.cluster())["tasks"]
    return counts


async def _rate(root: Path, n: int, *, workers: int, slots: int) -> Result:
    async with _running(root, workers=workers, slots=slots) as cluster, cluster.client() as c:
        seconds = await no_op_batches(c, n)
    detail = {"tasks": n, "workers": workers, "slots": slots, "seconds": seconds}
    return Result(
        f"scale: throughput, {n:,} no-op tasks, {workers} worker(s) x {slots} slot(s)",
        n / seconds,
        "tasks/s",
        {**detail, "note": f"{seconds:.2f} s"},
    )


async def _cost(root: Path, n: int, *, workers: int, key: str) -> Result:
    """Orchestrator CPU per task (the figure) and wall time per task for ``n`` no-op tasks
    in batches, on ``workers`` workers of 256 slots."""
    async with _running(root, workers=workers, slots=256) as cluster, cluster.client() as c:
        pid = cluster.proc("orchestrator").pid
        before = cpu_seconds(pid)
        seconds = await no_op_batches(c, n)
        cpu = cpu_seconds(pid) - before
    cpu_us, wall_us = cpu / n * 1e6, seconds / n * 1e6
    return Result(
        f"scale: orchestrator CPU per task, {n:,} tasks, {workers} worker(s)",
        cpu_us,
        "µs/task",
        {"tasks": n, "workers": workers, "seconds": seconds, "cpu_s": cpu,
         "wall_us_per_task": wall_us, "tasks_s": n / seconds,
         "note": f"{wall_us:.1f} µs/task wall, {n / seconds:,.0f} tasks/s"},
        key=key,
    )  # fmt: skip


async def curve(root: Path, most_workers: int, most_tasks: int) -> list[Result]:
    """Cost per task with 1, 2, 4 ... ``most_workers`` workers (``most_tasks`` / 10 tasks
    each), then with 2 workers and ``most_tasks`` / 100, / 10 and ``most_tasks`` tasks."""
    results = []
    counts = [2**i for i in range(most_workers.bit_length()) if 2**i <= most_workers]
    for count in counts:
        results.append(await _cost(root / f"curve-w{count}", most_tasks // 10, workers=count,
                                   key=f"scale_curve_workers_{count}"))  # fmt: skip
    for n in (most_tasks // 100, most_tasks // 10, most_tasks):
        results.append(await _cost(root / f"curve-t{n}", n, workers=2,
                                   key=f"scale_curve_tasks_{n}"))  # fmt: skip
    return results


async def by_workers(root: Path, n: int) -> list[Result]:
    """Batched throughput with 1, 2, 4 and 8 workers of 256 slots each."""
    results = []
    for count in WORKER_COUNTS:
        result = await _rate(root / f"workers-{count}", n, workers=count, slots=256)
        result.key = f"scale_workers_{count}"
        results.append(result)
    return results


async def by_slots(root: Path, n: int) -> list[Result]:
    """Batched throughput with 2 workers of 1, 4 and 16 slots: the slots bound the tasks in
    flight, so with few of them every task waits a round trip to the worker and back."""
    results = []
    for slots in SLOT_COUNTS:
        result = await _rate(root / f"slots-{slots}", n, workers=2, slots=slots)
        result.key = f"scale_slots_{slots}"
        results.append(result)
    return results


@contextlib.asynccontextmanager
async def _idle(root: Path, env: Mapping[str, str] | None = None) -> AsyncIterator[LocalCluster]:
    """An orchestrator whose only worker announced its task types and was then SIGKILLed.

    Submissions of a type no worker ever announced are refused, and announced types are
    journaled, so this orchestrator accepts ``echo`` tasks and keeps them all pending: its
    memory and its journal hold the queue and nothing else."""
    async with _running(root, workers=1, slots=1, env=env) as cluster:
        _newest(cluster, "worker-W1").kill()
        async with cluster.client() as client:

            async def noticed() -> bool:
                return all(w["state"] != "alive" for w in await client.workers())

            await eventually(noticed, timeout=30, what="the killed worker to be noticed")
        yield cluster


async def _fill(client: Client, n: int, batch: int) -> AsyncIterator[tuple[int, list[str]]]:
    """Submit N no-op tasks in batches; yields how many are in after each batch, and the
    batch's task ids."""
    done = 0
    while done < n:
        size = min(batch, n - done)
        tasks = await client.submit_batch([{"type": "echo"}] * size)
        done += size
        yield done, [t["id"] for t in tasks]


def _batch(n: int) -> int:
    """Submission batch for a fill: the largest the API takes (10,000) at full size, smaller
    at tiny size so there are several batches to journal and to report progress on."""
    return 10_000 if n >= 100_000 else 1_000


async def pending_memory(root: Path, first: int, n: int) -> list[Result]:
    """Orchestrator RSS growth per pending task, measured at ``first`` and N pending tasks."""
    results = []
    async with _idle(root) as cluster, cluster.client() as client:
        pid = _newest(cluster, "orchestrator").pid
        base = rss(pid)
        started = time.perf_counter()
        async for done, _ in _fill(client, n, _batch(n)):
            grown = rss(pid) - base
            if done % max(n // 10, 1) == 0:
                rate = done / (time.perf_counter() - started)
                per_task = f"{grown / MIB:,.0f} MiB ({grown / done:,.0f} B/task)"
                print(f"    {done:>9,} pending: RSS +{per_task}, {rate:,.0f}/s", flush=True)
            if done in (first, n):
                held = sum((await _held(client)).values())
                assert held == done, f"the orchestrator holds {held} tasks, not {done}"
                note = f"RSS {base / MIB:,.0f} -> {(base + grown) / MIB:,.0f} MiB"
                results.append(Result(
                    f"scale: orchestrator memory, {done:,} pending tasks",
                    grown / done, "B/task",
                    {"tasks": done, "rss_before_mb": base / MIB,
                     "rss_after_mb": (base + grown) / MIB, "note": note},
                    key=f"scale_pending_{done}",
                ))  # fmt: skip
    return results


async def retention(root: Path, n: int) -> Result:
    """N no-op tasks run to completion, twice, with ``MUTIRAO_TASKS_RETENTION=1``: does the
    orchestrator forget finished tasks, as it must to run for months, and reuse their memory?

    CPython seldom hands freed memory back to the OS, so RSS barely falls when tasks are
    forgotten; the sign that memory is bounded is the second round not raising it again.
    Results may be forgotten before anyone asks for them, so completion is read from the
    cluster view's counts rather than awaited per task. Tasks still held after a bounded wait
    are reported as such (and end the workload early)."""
    env = {"MUTIRAO_TASKS_RETENTION": str(RETENTION_S)}
    async with _running(root, workers=2, slots=256, env=env) as cluster, cluster.client() as client:
        pid = _newest(cluster, "orchestrator").pid
        before = rss(pid)
        after: list[int] = []
        first, held = "", 0
        for _ in range(ROUNDS):
            async for _, ids in _fill(client, n, 1000):
                first = first or ids[0]

            async def finished() -> bool:
                counts = await _held(client)
                return not any(counts.get(state) for state in _UNFINISHED)

            await eventually(finished, timeout=300, what=f"{n:,} tasks to finish", every=0.2)
            held = await _forget(client)
            after.append(rss(pid))
            if held:
                break
        status = await _status(client, first)
    rounds = ", ".join(f"{r / MIB:,.0f}" for r in after)
    note = (f"RSS {before / MIB:,.0f} MiB before; {rounds} MiB once each round expired; "
            f"{held:,} task(s) still held; GET of a forgotten task: HTTP {status}")  # fmt: skip
    print(f"    {note}", flush=True)
    return Result(
        f"scale: orchestrator memory still held after {len(after)} x {n:,} tasks expired "
        f"(retention {RETENTION_S} s)",
        (after[-1] - before) / MIB,
        "MiB",
        {"tasks": n, "rounds": len(after), "retention_s": RETENTION_S,
         "rss_before_mb": before / MIB, "rss_after_mb": [r / MIB for r in after],
         "held_after": held, "get_forgotten_status": status, "note": note},
        key="scale_retention_held_mb",
    )  # fmt: skip


async def _forget(client: Client) -> int:
    """Wait (bounded) until the orchestrator holds no task; returns how many it still holds."""

    async def forgotten() -> bool:
        return sum((await _held(client)).values()) == 0

    try:
        await eventually(
            forgotten,
            timeout=RETENTION_S + EXPIRY_TIMEOUT_S,
            what=f"the orchestrator to forget tasks finished over "
            f"MUTIRAO_TASKS_RETENTION={RETENTION_S} s ago",
            every=0.2,
        )
    except AssertionError as exc:
        print(f"    {exc}", flush=True)
    return sum((await _held(client)).values())


async def _status(client: Client, task_id: str) -> int:
    """HTTP status of GET /v1/tasks/<id> (404 once the orchestrator forgot the task)."""
    try:
        await client.get(task_id)
    except ApiError as exc:
        return exc.status
    return 200


async def recovery(root: Path, n: int) -> Result:
    """Restart after a SIGKILL, from a checkpoint of ~N tasks plus a journal tail of N/20
    more: seconds from the restart until /readyz answers 200, and every task still there.

    The orchestrator checkpoints once ``checkpoint_min_records`` journal records accumulate;
    one record per submitted batch, so setting it to the fill's batch count makes exactly one
    checkpoint near the end of the fill (the startup records count too). The tail then stays
    in the journal. The time includes the interpreter's start, as a supervisor sees it.

    The checkpoint of a million tasks is encoded in pieces with the event loop running in
    between, so requests keep being served and the lease renewed (the default 5 s lease); the
    longest any request waited during fill and checkpoint is reported, as is any step-down."""
    batch = _batch(n)
    tail = max(n // 20, 1)
    env = {
        "MUTIRAO_JOURNAL_CHECKPOINT_MIN_RECORDS": str(max(n // batch, 1)),
        "MUTIRAO_JOURNAL_CHECKPOINT_INTERVAL": "86400",
    }
    async with _idle(root, env) as cluster:
        checkpoint = cluster.data_dir / "state_checkpoint.json"
        started = last = time.perf_counter()
        stall = 0.0
        async with cluster.client() as client:
            async for done, _ in _fill(client, n, batch):
                stall, last = max(stall, time.perf_counter() - last), time.perf_counter()
                if done % max(n // 5, 1) == 0:
                    rate = done / (time.perf_counter() - started)
                    print(f"    {done:>9,} tasks in, {rate:,.0f}/s", flush=True)

            async def checkpointed() -> bool:
                nonlocal stall
                asked = time.perf_counter()
                await _held(client)
                stall = max(stall, time.perf_counter() - asked)
                return checkpoint.exists()

            await eventually(checkpointed, timeout=120, every=0.2, what="a checkpoint")
            async for _ in _fill(client, tail, batch):
                pass
        killed = _newest(cluster, "orchestrator")
        killed.kill()
        stepdowns = killed.output().count("stepping down")
        checkpoint_bytes = checkpoint.stat().st_size
        # Records only: a segment left by a SIGKILL still ends in its reserved space (zeros).
        journal_bytes = sum(
            len(p.read_bytes().rstrip(b"\0")) for p in cluster.data_dir.glob("journal-*.log")
        )
        restarted = time.perf_counter()
        cluster.start_orchestrator()
        await cluster.wait_ready(timeout=600)
        seconds = time.perf_counter() - restarted
        async with cluster.client() as client:
            held = sum((await _held(client)).values())
        memory = rss(_newest(cluster, "orchestrator").pid)
    assert held == n + tail, f"{held:,} tasks after the restart, not {n + tail:,}"
    note = (
        f"checkpoint {checkpoint_bytes / MIB:,.0f} MiB + journal {journal_bytes / MIB:,.1f} "
        f"MiB; {held:,} tasks back; RSS {memory / MIB:,.0f} MiB after; longest wait for a "
        f"request during fill and checkpoint {stall:.1f} s"
        + (f"; {stepdowns} step-down(s)" if stepdowns else "")
    )
    print(f"    {note}", flush=True)
    return Result(
        f"scale: restart after SIGKILL, {n + tail:,} tasks (checkpoint + journal tail) "
        "-> ready",
        seconds,
        "s",
        {"tasks": held, "tail_tasks": tail, "checkpoint_mb": checkpoint_bytes / MIB,
         "journal_mb": journal_bytes / MIB, "rss_mb": memory / MIB, "stall_s": stall,
         "stepdowns": stepdowns, "note": note},
        key="scale_recovery_s",
    )  # fmt: skip
