"""Dispatch with routing on: the batched no-op throughput of :func:`bench.run.throughput`
with every task in one of 4 queues, asking for resources, from two users sharing by
weighted fair share (weights 2 and 1), measured on the same cluster, in alternation with
plain tasks (default queue, no resources, one user); the issue's target is a ratio of at
least 0.8."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.run import Result, _cluster, no_op_batches

QUEUES = ("q0", "q1", "q2", "q3")
ROUTED = tuple(
    {"type": "echo", "queue": queue, "resources": {"cpu": 1, "memory": "64Mi"}} for queue in QUEUES
)
ROUNDS = 2


async def routing(root: Path, n: int) -> Result:
    worker_args = ("--queues", ",".join(("default", *QUEUES)), "--resources", "memory=64Gi")
    cluster = await _cluster(root, standby=False, slots=256, worker_args=worker_args)
    try:
        async with cluster.client() as admin:
            await admin.request("PUT", "/v1/quotas/alice", {"weight": 2})
            await admin.request("PUT", "/v1/quotas/bob", {"weight": 1})
        alice = cluster.client(cluster.token("alice", admin=False))
        bob = cluster.client(cluster.token("bob", admin=False))
        plain_s: list[float] = []
        routed_s: list[float] = []
        async with cluster.client() as client, alice, bob:
            for _ in range(ROUNDS):
                plain_s.append(await no_op_batches(client, n))
                started = asyncio.get_running_loop().time()
                await asyncio.gather(
                    no_op_batches(alice, n // 2, specs=ROUTED),
                    no_op_batches(bob, n - n // 2, specs=ROUTED),
                )
                routed_s.append(asyncio.get_running_loop().time() - started)
    finally:
        cluster.stop()
    plain, routed = n / min(plain_s), n / min(routed_s)
    return Result(
        f"throughput with routing, {n:,} no-op tasks over 4 queues with resources, two "
        "users by fair share",
        routed,
        "tasks/s",
        {"plain_tasks_s": round(plain), "ratio": round(routed / plain, 3), "rounds": ROUNDS},
        key="throughput_routing",
    )
