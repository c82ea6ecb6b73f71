"""``make demo`` / ``python -m mutirao.demo``: a local cluster doing the seed's scenarios.

It starts ``mutirao up`` (orchestrator, hot standby, 2 workers that accept crash drills) in
a scratch directory, runs sample tasks, shows least-load balancing, crashes a worker
mid-task and shows the task finishing elsewhere, fails a task on purpose, measures batched
throughput, kills the active orchestrator and shows the standby taking over, and stops the
cluster with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mutirao.client.commands import worker_table
from mutirao.client.credentials import CLUSTER_FILE
from mutirao.client.http import Client


def _pid_listening(url: str) -> int:
    """The process serving ``url`` on this machine, found through /proc (Linux)."""
    port = int(url.rsplit(":", 1)[1])
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        is_orchestrator = b"orchestrator" in args or b"backup" in args
        on_port = b"--port" in args and args[args.index(b"--port") + 1 :][:1] == [
            str(port).encode()
        ]
        if is_orchestrator and on_port:
            return int(cmdline.parent.name)
    raise RuntimeError(f"no orchestrator process found for {url}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


async def scenarios(client: Client, throughput_tasks: int) -> None:
    _step("basic execution: one task of each built-in type")
    samples = [
        ("echo", {"hello": "mutirão"}),
        ("sum", [1, 2, 3, 4]),
        ("sha256", "collaborative work"),
        ("wordcount", "a mutirão is a mutirão"),
    ]
    for kind, payload in samples:
        task = await client.submit(kind, payload)
        view = await client.wait(task["id"], timeout=30)
        shown_in = json.dumps(payload, ensure_ascii=False)
        shown_out = json.dumps(view["result"], ensure_ascii=False)
        print(f"  {kind:<10} {shown_in:<28} -> {shown_out} on {view['attempts'][-1]['worker']}")

    _step("least-load balancing: 16 sleep(0.3) tasks over 2 workers with 4 slots each")
    batch = await client.submit_batch([{"type": "sleep", "payload": 0.3}] * 16)
    views = await client.wait_many([t["id"] for t in batch], timeout=60)
    spread = Counter(v["attempts"][-1]["worker"] for v in views)
    print("  tasks per worker: " + ", ".join(f"{w}={n}" for w, n in sorted(spread.items())))

    _step('worker failure: a task with {"crash": true} kills its worker mid-task')
    task = await client.submit("echo", {"crash": True, "note": "redistributed"})
    view = await client.wait(task["id"], timeout=60)
    for attempt in view["attempts"]:
        print(
            f"  attempt {attempt['attempt']} on {attempt['worker']}: {attempt['outcome']}"
            + (f" ({attempt['error']})" if attempt["error"] else "")
        )
    print(f"  final state {view['state']}, result {json.dumps(view['result'])}")

    _step("a handler that raises: retried, then failed with the error text")
    task = await client.submit("fail", {"message": "bad input row 7"}, max_attempts=2)
    view = await client.wait(task["id"], timeout=30)
    print(f"  {view['state']}: {view['error']}")

    _step(f"throughput: {throughput_tasks:,} echo tasks submitted in batches of 1,000")
    started = time.perf_counter()
    ids: list[str] = []
    for offset in range(0, throughput_tasks, 1000):
        count = min(1000, throughput_tasks - offset)
        ids += [t["id"] for t in await client.submit_batch([{"type": "echo"}] * count)]
    print(f"  submitted {len(ids):,} in {time.perf_counter() - started:.2f}s", flush=True)
    done = 0
    for offset in range(0, len(ids), 1000):
        views = await client.wait_many(ids[offset : offset + 1000], timeout=120)
        done += sum(v["state"] == "succeeded" for v in views)
    elapsed = time.perf_counter() - started
    print(
        f"  {done:,}/{throughput_tasks:,} succeeded in {elapsed:.2f}s = "
        f"{throughput_tasks / elapsed:,.0f} tasks/s (submit to last result)"
    )

    _step("failover: SIGKILL the active orchestrator while tasks run")
    info = await client.cluster()
    running = await client.submit_batch([{"type": "sleep", "payload": 0.5}] * 8)
    pid = _pid_listening(info["url"])
    os.kill(pid, signal.SIGKILL)
    killed = time.perf_counter()
    task = await client.submit("echo", "accepted after failover")
    print(
        f"  killed {info['node']} (epoch {info['epoch']}, pid {pid}); the next submission "
        f"was accepted {1000 * (time.perf_counter() - killed):.0f} ms later"
    )
    views = await client.wait_many([t["id"] for t in running] + [task["id"]], timeout=60)
    after = await client.cluster()
    print(
        f"  {sum(v['state'] == 'succeeded' for v in views)}/{len(views)} tasks succeeded; "
        f"{after['node']} now leads with epoch {after['epoch']}"
    )

    async def rejoined() -> list[dict[str, object]]:
        for _ in range(100):
            standbys: list[dict[str, object]] = (await client.cluster())["standbys"]
            if any(s["synced"] for s in standbys):
                return standbys
            await asyncio.sleep(0.1)
        return []

    for standby in await rejoined():
        print(f"  {standby['node']} was restarted by `mutirao up` and rejoined as the standby")

    _step("workers now (the crashed one was restarted by `mutirao up`)")
    print(worker_table(await client.workers()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, help="keep data and logs here [a temp dir]")
    parser.add_argument("--tasks", type=int, default=10_000, help="throughput run size [10000]")
    parser.add_argument(
        "--port", type=int, help="orchestrator port (the standby takes the next) [a free one]"
    )
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="mutirao-demo-"))
    data, logs = root / "data", root / "logs"
    port = args.port or _free_port()
    print(f"starting a local cluster on port {port} (data {data}, logs {logs})", flush=True)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mutirao",
            "up",
            "--workers",
            "2",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--log-dir",
            str(logs),
            "--allow-crash",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (data / CLUSTER_FILE).exists():
            if up.poll() is not None or time.monotonic() > deadline:
                print("error: the cluster did not start; see the log above", file=sys.stderr)
                return 1
            time.sleep(0.1)
        info = json.loads((data / CLUSTER_FILE).read_text())

        async def run() -> None:
            async with Client(info["urls"], info["token"]) as client:
                await scenarios(client, args.tasks)

        asyncio.run(run())
        print(f"\nlogs of every process are in {logs}; follow one task with grep <task id>")
        return 0
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=20)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    sys.exit(main())
