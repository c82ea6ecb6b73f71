"""The same workloads on Dask distributed and Ray, for side-by-side ratios.

Runs in its own virtualenv (``make bench-peers`` creates ``.venv-peers`` with pinned Dask and
Ray), each system used the way its docs recommend: Dask's ``client.map``/``gather`` and
``client.submit``; Ray's ``f.remote()``/``ray.get``. Prints one JSON document on stdout.
Usage: ``python bench/peers.py dask|ray [--tasks N --large N --latency N --kill N ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WORKER_COUNTS = (1, 2, 4, 8)
"""As in Mutirão's scale workload (``bench.scale``)."""


@dataclass(frozen=True)
class Sizes:
    """How many tasks each workload runs (as ``bench.run.SIZES``)."""

    tasks: int
    large: int
    latency: int
    kill: int
    kill_rounds: int
    scale: int


def noop(x: Any) -> Any:
    return x


def sleepy(x: Any) -> Any:
    time.sleep(0.01)
    return x


def worker_pid() -> int:
    return os.getpid()


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
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.gather(client.map(noop, range(100), pure=False))
        for key, count in (
            ("throughput_tasks_s", size.tasks),
            ("throughput_large_tasks_s", size.large),
        ):
            started = time.perf_counter()
            client.gather(client.map(noop, range(count), pure=False))
            out[key] = count / (time.perf_counter() - started)
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
    out["scale_workers"] = {
        str(k): _dask_throughput(k, size.scale) for k in WORKER_COUNTS if size.scale
    }
    return out


def _dask_throughput(workers: int, n: int) -> float:
    """Batched throughput on a fresh cluster of ``workers`` one-thread worker processes."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.gather(client.map(noop, range(100), pure=False))
        started = time.perf_counter()
        client.gather(client.map(noop, range(n), pure=False))
        return n / (time.perf_counter() - started)


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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote_noop = ray.remote(noop)
        ray.get([remote_noop.remote(i) for i in range(100)])
        for key, count in (
            ("throughput_tasks_s", size.tasks),
            ("throughput_large_tasks_s", size.large),
        ):
            started = time.perf_counter()
            ray.get([remote_noop.remote(i) for i in range(count)])
            out[key] = count / (time.perf_counter() - started)
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
    finally:
        ray.shutdown()
    out["scale_workers"] = {
        str(k): _ray_throughput(ray, k, size.scale) for k in WORKER_COUNTS if size.scale
    }
    return out


def _ray_throughput(ray: Any, workers: int, n: int) -> float:
    """Batched throughput with ``workers`` worker processes (Ray starts one per CPU)."""
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote_noop = ray.remote(noop)
        ray.get([remote_noop.remote(i) for i in range(100)])
        started = time.perf_counter()
        ray.get([remote_noop.remote(i) for i in range(n)])
        return n / (time.perf_counter() - started)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("system", choices=["dask", "ray"])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000, help="the large throughput run")
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--kill", type=int, default=2_000)
    parser.add_argument("--kill-rounds", type=int, default=3)
    parser.add_argument(
        "--scale", type=int, default=20_000, help="tasks per worker count (1, 2, 4, 8); 0: skip"
    )
    args = parser.parse_args()
    run = run_dask if args.system == "dask" else run_ray
    size = Sizes(args.tasks, args.large, args.latency, args.kill, args.kill_rounds, args.scale)
    print(json.dumps(run(size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
