"""The same workloads on Dask distributed, Ray and Celery, for side-by-side ratios.

Runs in its own virtualenv (``make bench-peers`` creates ``.venv-peers`` with pinned Dask, Ray
and Celery), each system used the way its docs recommend: Dask's ``client.map``/``gather``
and ``client.submit``; Ray's ``f.remote()``/``ray.get``; Celery's ``group``, ``delay`` and
``chord`` over a Redis broker and result backend (Debian's ``redis-server``, started here
on a free loopback port). Prints one JSON document on stdout, and progress on long work to
stderr as lines starting with ``progress:``.
Usage: ``python bench/peers.py dask|ray|celery [--tasks N --large N --latency N ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER_COUNTS = (1, 2, 4, 8)
SLOT_COUNTS = (1, 4, 16)
"""As in Mutirão's scale workloads (``bench.scale``)."""
MIB = 1024 * 1024
FILL_BATCH = 100_000
RAY_CONTROL = ("gcs_server", "raylet")
"""Ray's processes that hold cluster state, beside the driver, which owns the tasks it
submits (pending task specs and small results live in the owner)."""


@dataclass(frozen=True)
class Sizes:
    """How many tasks each workload runs (as ``bench.run.SIZES``)."""

    tasks: int
    large: int
    latency: int
    kill: int
    kill_rounds: int
    scale: int
    slots: int
    pending_first: int
    pending: int
    dag_chains: int = 0


DAG_CHAIN = 10
DAG_FAN_IN = 1_000
"""As in Mutirão's workflow workload (``bench.dag``)."""


def noop(x: Any) -> Any:
    return x


def add(a: float, b: float) -> float:
    return a + b


def total(*values: float) -> float:
    return sum(values)


def _dag_expected(chains: int) -> list[int]:
    return [DAG_CHAIN * min(DAG_FAN_IN, chains - i) for i in range(0, chains, DAG_FAN_IN)]


def _dask_dag(client: Any, chains: int) -> float:
    """Tasks per second for the workflow graph, as one task graph (Dask's fastest way)."""
    started = time.perf_counter()
    graph: dict[Any, Any] = {}
    for c in range(chains):
        graph[("step", c, 0)] = (add, 0, 1)
        for k in range(1, DAG_CHAIN):
            graph[("step", c, k)] = (add, ("step", c, k - 1), 1)
    sums = []
    for j, i in enumerate(range(0, chains, DAG_FAN_IN)):
        ends = [("step", c, DAG_CHAIN - 1) for c in range(i, min(i + DAG_FAN_IN, chains))]
        graph[("sum", j)] = (total, *ends)
        sums.append(("sum", j))
    results = client.get(graph, sums)
    elapsed = time.perf_counter() - started
    assert list(results) == _dag_expected(chains), results
    return len(graph) / elapsed


def _ray_dag(ray: Any, chains: int) -> float:
    """Tasks per second for the workflow graph, object refs passed as arguments."""
    remote_add, remote_total = ray.remote(add), ray.remote(total)
    started = time.perf_counter()
    ends = []
    for _ in range(chains):
        ref = remote_add.remote(0, 1)
        for _ in range(1, DAG_CHAIN):
            ref = remote_add.remote(ref, 1)
        ends.append(ref)
    sums = [remote_total.remote(*ends[i : i + DAG_FAN_IN]) for i in range(0, chains, DAG_FAN_IN)]
    results = ray.get(sums)
    elapsed = time.perf_counter() - started
    assert results == _dag_expected(chains), results
    return (chains * DAG_CHAIN + len(sums)) / elapsed


def sleepy(x: Any) -> Any:
    time.sleep(0.01)
    return x


def worker_pid() -> int:
    return os.getpid()


def progress(message: str) -> None:
    """A line ``bench.compare`` shows while this runs (stdout is the JSON result)."""
    print(f"progress: {message}", file=sys.stderr, flush=True)


def rss(*pids: int) -> int:
    """Resident set size of the processes, in bytes (``VmRSS`` in ``/proc/<pid>/status``);
    also :mod:`bench.scale`'s measure (this module needs only the standard library)."""
    return sum(_rss(pid) for pid in pids)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid} (a zombie?)")


def wait_until(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _pending_memory(
    submit: Callable[[range], list[Any]], holds: Callable[[int], bool], size: Sizes,
    pids: list[int],
) -> dict[str, float]:  # fmt: skip
    """RSS growth of ``pids`` per pending task at ``size.pending_first`` and ``size.pending``
    tasks, submitted in batches of ``FILL_BATCH``; ``holds(n)`` tells when the scheduler has
    taken in n tasks. The references are kept so that no task is released meanwhile."""
    base = rss(*pids)
    refs: list[Any] = []
    out: dict[str, float] = {}
    started = time.perf_counter()
    for mark in sorted({size.pending_first, size.pending}):
        while len(refs) < mark:
            refs += submit(range(len(refs), min(mark, len(refs) + FILL_BATCH)))
            count = len(refs)
            wait_until(functools.partial(holds, count), f"{count:,} pending tasks", timeout=600)
            grown = rss(*pids) - base
            rate = count / (time.perf_counter() - started)
            progress(f"{count:>9,} pending: +{grown / MIB:,.0f} MiB "
                     f"({grown / count:,.0f} B/task), {rate:,.0f}/s")  # fmt: skip
        out[str(mark)] = (rss(*pids) - base) / mark
    return out


def _retention(
    pids: list[int], run: Callable[[], float], released: Callable[[], bool]
) -> tuple[float, float]:
    """``run()``, a throughput run, and the MiB of RSS it leaves ``pids`` holding once its
    tasks are released (``released`` is polled until they are)."""
    before = rss(*pids)
    rate = run()
    wait_until(released, "the finished tasks to be released")
    return rate, (rss(*pids) - before) / MIB


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
    }


def _concurrent(
    call: Callable[[int], Any], total: int, lanes: int, finish: Callable[[], Any]
) -> float:
    """``total`` tasks submitted one per call from ``lanes`` threads, then all results
    collected; returns tasks/s."""
    counter = iter(range(total))
    lock = threading.Lock()

    def lane() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            call(i)

    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finish()
    return total / (time.perf_counter() - started)


def run_dask(size: Sizes) -> dict[str, Any]:
    from dask.distributed import Client, LocalCluster

    out: dict[str, Any] = {"system": "dask"}
    import distributed

    out["version"] = distributed.__version__
    progress("throughput, latency, one task per call, worker SIGKILL")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.gather(client.map(noop, range(100), pure=False))
        out["throughput_tasks_s"] = _dask_rate(client, size.tasks)
        # The scheduler runs in this process (LocalCluster's default), beside the client.
        out["throughput_large_tasks_s"], out["retention_held_mb"] = _retention(
            [os.getpid()],
            lambda: _dask_rate(client, size.large),
            lambda: client.run_on_scheduler(_task_count) == 0,
        )
        samples = []
        for i in range(size.latency):
            t0 = time.perf_counter()
            client.submit(noop, i, pure=False).result()
            samples.append(time.perf_counter() - t0)
        out["latency"] = _percentiles(samples)
        futures: list[Any] = []
        out["per_request_tasks_s"] = _concurrent(
            lambda i: futures.append(client.submit(noop, i, pure=False)),
            min(size.tasks, 5000),
            64,
            finish=lambda: client.gather(futures),
        )
        out["kill"] = _dask_kill(client, size.kill, size.kill_rounds)
        if size.dag_chains:
            progress("workflow graph")
            out["dag_tasks_s"] = _dask_dag(client, size.dag_chains)
    progress("scale: workers, slots")
    out["scale_workers"] = {
        str(k): _dask_throughput(k, 1, size.scale) for k in WORKER_COUNTS if size.scale
    }
    out["scale_slots"] = {
        str(k): _dask_throughput(2, k, size.slots) for k in SLOT_COUNTS if size.slots
    }
    if size.pending:
        progress("scale: memory per pending task")
        out["pending_bytes_per_task"] = _dask_pending(size)
    return out


def _task_count(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def _dask_rate(client: Any, n: int) -> float:
    started = time.perf_counter()
    client.gather(client.map(noop, range(n), pure=False))
    return n / (time.perf_counter() - started)


def _dask_throughput(workers: int, threads: int, n: int) -> float:
    """Batched throughput on a fresh cluster of ``workers`` worker processes of ``threads``
    threads each."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.gather(client.map(noop, range(100), pure=False))
        return _dask_rate(client, n)


def _dask_pending(size: Sizes) -> dict[str, float]:
    """Pending tasks on a scheduler process of its own with no worker: they wait in its
    ``no-worker`` state. Its RSS is measured alone (the client's futures are not in it)."""
    from dask.distributed import Client

    with tempfile.TemporaryDirectory(prefix="dask-bench-") as tmp:
        address_file = os.path.join(tmp, "scheduler.json")
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--no-dashboard", "--scheduler-file", address_file],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with Client(scheduler_file=address_file, timeout=60) as client:
                return _pending_memory(
                    lambda keys: client.map(noop, keys, pure=False),
                    lambda n: client.run_on_scheduler(_task_count) >= n,
                    size,
                    [scheduler.pid],
                )
        finally:
            scheduler.kill()
            scheduler.wait()


def _dask_kill(client: Any, n: int, rounds: int) -> dict[str, Any]:
    def run(kill_after: float | None) -> float:
        client.wait_for_workers(2, timeout=60)  # the nanny restarted the one killed last
        victim = sorted(client.run(os.getpid).values())[0]
        started = time.perf_counter()
        futures = client.map(sleepy, range(n), pure=False)
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(victim, signal.SIGKILL)
        assert len(client.gather(futures)) == n
        return time.perf_counter() - started

    return _kill_rounds(run, rounds)


def _kill_rounds(run: Callable[[float | None], float], rounds: int) -> dict[str, Any]:
    """As Mutirão's kill workload: ``rounds`` batches without a kill and with a worker
    process killed a third of the way in; extra time = difference of the medians."""
    baselines: list[float] = []
    with_kill: list[float] = []
    for _ in range(rounds):
        baselines.append(run(None))
        with_kill.append(run(statistics.median(baselines) / 3))
    extra = statistics.median(with_kill) - statistics.median(baselines)
    return {"baseline_s": baselines, "with_kill_s": with_kill, "extra_s": extra}


def run_ray(size: Sizes) -> dict[str, Any]:
    import ray

    out: dict[str, Any] = {"system": "ray", "version": ray.__version__}
    progress("throughput, latency, one task per call, worker SIGKILL")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote_noop = ray.remote(noop)
        ray.get([remote_noop.remote(i) for i in range(100)])
        out["throughput_tasks_s"] = _ray_rate(ray, remote_noop, size.tasks)
        # Results are freed as soon as their references go: nothing to wait for.
        out["throughput_large_tasks_s"], out["retention_held_mb"] = _retention(
            _ray_state_pids(), lambda: _ray_rate(ray, remote_noop, size.large), lambda: True
        )
        samples = []
        for i in range(size.latency):
            t0 = time.perf_counter()
            ray.get(remote_noop.remote(i))
            samples.append(time.perf_counter() - t0)
        out["latency"] = _percentiles(samples)
        refs: list[Any] = []
        out["per_request_tasks_s"] = _concurrent(
            lambda i: refs.append(remote_noop.remote(i)),
            min(size.tasks, 5000),
            64,
            finish=lambda: ray.get(refs),
        )
        out["kill"] = _ray_kill(ray, size.kill, size.kill_rounds)
        if size.dag_chains:
            progress("workflow graph")
            out["dag_tasks_s"] = _ray_dag(ray, size.dag_chains)
    finally:
        ray.shutdown()
    progress("scale: workers, slots")
    out["scale_workers"] = {
        str(k): _ray_throughput(ray, k, size.scale) for k in WORKER_COUNTS if size.scale
    }
    # Ray runs one task at a time per worker process and starts one per CPU it is given.
    out["scale_slots"] = {
        str(k): _ray_throughput(ray, 2 * k, size.slots) for k in SLOT_COUNTS if size.slots
    }
    if size.pending:
        progress("scale: memory per pending task")
        out["pending_bytes_per_task"] = _ray_pending(ray, size)
    return out


def _ray_state_pids() -> list[int]:
    """The driver (this process) and Ray's control processes (``RAY_CONTROL``)."""
    import psutil  # a dependency of Ray and of Dask

    found = [p.pid for p in psutil.Process().children(recursive=True) if p.name() in RAY_CONTROL]
    assert len(found) == len(RAY_CONTROL), f"found {found}, expected {RAY_CONTROL}"
    return [os.getpid(), *found]


def _ray_rate(ray: Any, remote_noop: Any, n: int) -> float:
    started = time.perf_counter()
    ray.get([remote_noop.remote(i) for i in range(n)])
    return n / (time.perf_counter() - started)


def _ray_throughput(ray: Any, cpus: int, n: int) -> float:
    """Batched throughput with ``cpus`` worker processes (Ray starts one per CPU)."""
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        remote_noop = ray.remote(noop)
        ray.get([remote_noop.remote(i) for i in range(100)])
        return _ray_rate(ray, remote_noop, n)
    finally:
        ray.shutdown()


def _ray_pending(ray: Any, size: Sizes) -> dict[str, float]:
    """Pending tasks that ask for a resource no node has: Ray keeps them queued as
    infeasible, their specs in the driver that owns them."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        waiting = ray.remote(noop).options(resources={"unavailable": 1})
        return _pending_memory(
            lambda keys: [waiting.remote(i) for i in keys], lambda n: True, size,
            _ray_state_pids(),
        )  # fmt: skip
    finally:
        ray.shutdown()


def _ray_kill(ray: Any, n: int, rounds: int) -> dict[str, Any]:
    remote_sleepy = ray.remote(max_retries=3)(sleepy)
    pid_of = ray.remote(worker_pid)

    def run(kill_after: float | None) -> float:
        started = time.perf_counter()
        refs = [remote_sleepy.remote(i) for i in range(n)]
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(ray.get(pid_of.remote()), signal.SIGKILL)
        assert len(ray.get(refs)) == n
        return time.perf_counter() - started

    return _kill_rounds(run, rounds)


HERE = Path(__file__).resolve().parent


class Redis:
    """Debian's ``redis-server`` on a free loopback port, in memory only (no snapshots, no
    append-only file: Celery's broker as most run it, and not fsynced as Mutirão's journal
    is), stopped on exit."""

    def __init__(self, workdir: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, f"redis-server on port {self.port}", timeout=20)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class CeleryWorker:
    """``celery worker`` with ``concurrency`` prefork processes (Celery's default pool, one
    task at a time per process), on the tasks of ``bench/celery_app.py``."""

    def __init__(self, redis: Redis, concurrency: int, name: str) -> None:
        env = {**os.environ, "BENCH_REDIS_URL": redis.url}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--loglevel", "WARNING", "-n", f"{name}@bench",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


CELERY_MOST_PENDING = 200_000
"""Celery's client sends a few thousand tasks a second and slows as they pile up: a million
would take most of an hour, so its memory per pending task is measured up to this many."""


def run_celery(size: Sizes) -> dict[str, Any]:
    """Celery's figures; the 200,000-task throughput run is left out at full size (at a few
    hundred tasks a second it would take ~10 minutes), and pending tasks stop at
    ``CELERY_MOST_PENDING``; ``sizes`` says what ran."""
    import celery

    out: dict[str, Any] = {"system": "celery", "version": celery.__version__}
    with tempfile.TemporaryDirectory(prefix="celery-bench-") as tmp:
        redis = Redis(tmp)
        os.environ["BENCH_REDIS_URL"] = redis.url
        sys.path.insert(0, str(HERE))
        import celery_app as tasks  # reads BENCH_REDIS_URL

        try:
            pending = min(size.pending, CELERY_MOST_PENDING)
            out["sizes"] = {
                "pending": pending,
                "large": 0 if size.large > size.tasks else size.large,
            }
            if size.pending:
                progress(f"scale: memory per pending task (no worker yet), up to {pending:,}")
                sized = dataclasses.replace(size, pending=pending)
                out["pending_bytes_per_task"] = _celery_pending(tasks, redis, sized)
                tasks.app.control.purge()  # else the worker would run them all first
            progress("throughput, latency, one task per call, worker SIGKILL")
            with _celery_worker(redis, 2, "main"):
                _celery_rate(tasks, 100)
                out["throughput_tasks_s"] = _celery_rate(tasks, size.tasks)
                if out["sizes"]["large"]:
                    out["throughput_large_tasks_s"] = _celery_rate(tasks, size.large)
                samples = []
                for i in range(size.latency):
                    t0 = time.perf_counter()
                    tasks.noop.delay(i).get(timeout=60)
                    samples.append(time.perf_counter() - t0)
                out["latency"] = _percentiles(samples)
                results: list[Any] = []
                out["per_request_tasks_s"] = _concurrent(
                    lambda i: results.append(tasks.noop.delay(i)),
                    min(size.tasks, 5000),
                    64,
                    finish=lambda: [r.get(timeout=600) for r in results],
                )
                out["kill"] = _celery_kill(tasks, tasks.sleepy_late, size.kill, size.kill_rounds)
                out["kill_default"] = _celery_kill(tasks, tasks.sleepy, size.kill, size.kill_rounds)
                if size.dag_chains:
                    progress("workflow graph")
                    out["dag_tasks_s"] = _celery_dag(tasks, size.dag_chains)
            progress("scale: workers, slots")
            out["scale_workers"] = {
                str(k): _celery_throughput(tasks, redis, k, size.scale)
                for k in WORKER_COUNTS
                if size.scale
            }
            # One task at a time per prefork process, as Ray's worker processes.
            out["scale_slots"] = {
                str(k): _celery_throughput(tasks, redis, 2 * k, size.slots)
                for k in SLOT_COUNTS
                if size.slots
            }
        finally:
            redis.stop()
    return out


@contextlib.contextmanager
def _celery_worker(redis: Redis, concurrency: int, name: str) -> Iterator[CeleryWorker]:
    """A running :class:`CeleryWorker`, ready once it ran a task, stopped on exit."""
    import celery_app as tasks

    worker = CeleryWorker(redis, concurrency, name)
    try:
        tasks.noop.delay(0).get(timeout=60)
        yield worker
    finally:
        worker.stop()


def _celery_children(tasks: Any, count: int) -> list[int]:
    """The worker's prefork processes, once it has ``count`` of them (a killed one is
    replaced), from its remote control ``stats``."""
    found: list[int] = []

    def ready() -> bool:
        nonlocal found
        stats = tasks.app.control.inspect(timeout=2).stats() or {}
        found = sorted(pid for s in stats.values() for pid in s["pool"]["processes"])
        return len(found) == count

    wait_until(ready, f"{count} Celery worker processes", timeout=60)
    return found


def _celery_rate(tasks: Any, n: int) -> float:
    """Tasks per second for ``n`` no-op tasks as one ``group``, then all their results."""
    from celery import group

    started = time.perf_counter()
    results = group(tasks.noop.s(i) for i in range(n)).apply_async().get(timeout=3600)
    elapsed = time.perf_counter() - started
    assert len(results) == n
    return n / elapsed


def _celery_throughput(tasks: Any, redis: Redis, processes: int, n: int) -> float:
    with _celery_worker(redis, processes, f"scale{processes}"):
        _celery_rate(tasks, 100)
        return _celery_rate(tasks, n)


def _celery_pending(tasks: Any, redis: Redis, size: Sizes) -> dict[str, float]:
    """Tasks sent while no worker runs: they wait in the broker, whose RSS is measured."""
    import redis as redis_client

    broker = redis_client.Redis(port=redis.port)
    # No result wanted: sending a task whose result is awaited also subscribes its client to
    # the result's channel, and that slows every later send (a stall past 400,000 here).
    return _pending_memory(
        lambda keys: [tasks.noop.apply_async((i,), ignore_result=True) for i in keys],
        lambda n: broker.llen("celery") >= n,
        size,
        [redis.proc.pid],
    )


def _celery_kill(tasks: Any, sleepy_task: Any, n: int, rounds: int) -> dict[str, Any]:
    """As the others' kill workload, one prefork process SIGKILLed (Celery starts another);
    ``lost`` counts the tasks that failed with it instead of running again."""
    lost = 0

    def run(kill_after: float | None) -> float:
        nonlocal lost
        victim = _celery_children(tasks, 2)[0]
        started = time.perf_counter()
        results = [sleepy_task.delay(i) for i in range(n)]
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(victim, signal.SIGKILL)
        for result in results:
            result.get(timeout=600, propagate=False)
        lost += sum(not r.successful() for r in results)
        return time.perf_counter() - started

    return {**_kill_rounds(run, rounds), "lost": lost}


def _celery_dag(tasks: Any, chains: int) -> float:
    """The workflow graph as chains of ``add`` in the headers of chords into ``total``."""
    from celery import chain, chord

    started = time.perf_counter()
    sums = []
    for i in range(0, chains, DAG_FAN_IN):
        header = [
            chain(tasks.add.s(0, 1), *(tasks.add.s(1) for _ in range(1, DAG_CHAIN)))
            for _ in range(i, min(i + DAG_FAN_IN, chains))
        ]
        sums.append(chord(header)(tasks.total.s()))
    results = [s.get(timeout=3600) for s in sums]
    elapsed = time.perf_counter() - started
    assert results == _dag_expected(chains), results
    return (chains * DAG_CHAIN + len(sums)) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("system", choices=["dask", "ray", "celery"])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000, help="the large throughput run")
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--kill", type=int, default=2_000)
    parser.add_argument("--kill-rounds", type=int, default=3)
    parser.add_argument(
        "--scale", type=int, default=20_000, help="tasks per worker count (1, 2, 4, 8); 0: skip"
    )
    parser.add_argument(
        "--slots", type=int, default=5_000, help="tasks per slot count (1, 4, 16); 0: skip"
    )
    parser.add_argument("--pending-first", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=1_000_000, help="pending tasks to fill")
    parser.add_argument(
        "--dag-chains", type=int, default=10_000, help="chains of the workflow graph; 0: skip"
    )
    args = parser.parse_args()
    run = {"dask": run_dask, "ray": run_ray, "celery": run_celery}[args.system]
    size = Sizes(args.tasks, args.large, args.latency, args.kill, args.kill_rounds, args.scale,
                 args.slots, args.pending_first, args.pending, args.dag_chains)  # fmt: skip
    print(json.dumps(run(size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
