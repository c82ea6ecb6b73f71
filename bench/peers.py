"""The same workloads on Dask distributed and Ray, for side-by-side ratios.

Runs in its own virtualenv (``make bench-peers`` creates ``.venv-peers`` with pinned Dask and
Ray), each system used the way its docs recommend: Dask's ``client.map``/``gather`` and
``client.submit``; Ray's ``f.remote()``/``ray.get``. Prints one JSON document on stdout.
Usage: ``python bench/peers.py dask|ray --tasks N --large N --latency N --kill N``.
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
from typing import Any

WORKER_COUNTS = (1, 2, 4, 8)
"""As in Mutirão's scale workload (``bench.scale``)."""


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


def run_dask(n: int, large_n: int, latency_n: int, kill_n: int, scale_n: int) -> dict[str, Any]:
    from dask.distributed import Client, LocalCluster

    out: dict[str, Any] = {"system": "dask"}
    import distributed

    out["version"] = distributed.__version__
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.gather(client.map(noop, range(100), pure=False))
        for key, count in (("throughput_tasks_s", n), ("throughput_large_tasks_s", large_n)):
            started = time.perf_counter()
            client.gather(client.map(noop, range(count), pure=False))
            out[key] = count / (time.perf_counter() - started)
        samples = []
        for i in range(latency_n):
            t0 = time.perf_counter()
            client.submit(noop, i, pure=False).result()
            samples.append(time.perf_counter() - t0)
        out["latency"] = _percentiles(samples)
        futures: list[Any] = []
        out["per_request_tasks_s"] = _concurrent(
            lambda i: futures.append(client.submit(noop, i, pure=False)),
            min(n, 5000),
            64,
            finish=lambda: client.gather(futures),
        )
        out["kill"] = _dask_kill(client, kill_n)
    out["scale_workers"] = {str(k): _dask_throughput(k, scale_n) for k in WORKER_COUNTS if scale_n}
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


def _dask_kill(client: Any, n: int) -> dict[str, float]:
    started = time.perf_counter()
    client.gather(client.map(sleepy, range(n), pure=False))
    baseline = time.perf_counter() - started
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    futures = client.map(sleepy, range(n, 2 * n), pure=False)
    started = time.perf_counter()
    time.sleep(baseline / 3)
    os.kill(victim, signal.SIGKILL)
    results = client.gather(futures)
    elapsed = time.perf_counter() - started
    assert len(results) == n
    return {"baseline_s": baseline, "with_kill_s": elapsed, "extra_s": elapsed - baseline}


def run_ray(n: int, large_n: int, latency_n: int, kill_n: int, scale_n: int) -> dict[str, Any]:
    import ray

    out: dict[str, Any] = {"system": "ray", "version": ray.__version__}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote_noop = ray.remote(noop)
        ray.get([remote_noop.remote(i) for i in range(100)])
        for key, count in (("throughput_tasks_s", n), ("throughput_large_tasks_s", large_n)):
            started = time.perf_counter()
            ray.get([remote_noop.remote(i) for i in range(count)])
            out[key] = count / (time.perf_counter() - started)
        samples = []
        for i in range(latency_n):
            t0 = time.perf_counter()
            ray.get(remote_noop.remote(i))
            samples.append(time.perf_counter() - t0)
        out["latency"] = _percentiles(samples)
        refs: list[Any] = []
        out["per_request_tasks_s"] = _concurrent(
            lambda i: refs.append(remote_noop.remote(i)),
            min(n, 5000),
            64,
            finish=lambda: ray.get(refs),
        )
        out["kill"] = _ray_kill(ray, kill_n)
    finally:
        ray.shutdown()
    out["scale_workers"] = {
        str(k): _ray_throughput(ray, k, scale_n) for k in WORKER_COUNTS if scale_n
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


def _ray_kill(ray: Any, n: int) -> dict[str, float]:
    remote_sleepy = ray.remote(max_retries=3)(sleepy)
    started = time.perf_counter()
    ray.get([remote_sleepy.remote(i) for i in range(n)])
    baseline = time.perf_counter() - started
    pid_of = ray.remote(worker_pid)
    refs = [remote_sleepy.remote(i) for i in range(n, 2 * n)]
    started = time.perf_counter()
    time.sleep(baseline / 3)
    os.kill(ray.get(pid_of.remote()), signal.SIGKILL)
    results = ray.get(refs)
    elapsed = time.perf_counter() - started
    assert len(results) == n
    return {"baseline_s": baseline, "with_kill_s": elapsed, "extra_s": elapsed - baseline}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("system", choices=["dask", "ray"])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000, help="the large throughput run")
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--kill", type=int, default=2_000)
    parser.add_argument(
        "--scale", type=int, default=20_000, help="tasks per worker count (1, 2, 4, 8); 0: skip"
    )
    args = parser.parse_args()
    run = run_dask if args.system == "dask" else run_ray
    print(json.dumps(run(args.tasks, args.large, args.latency, args.kill, args.scale)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
