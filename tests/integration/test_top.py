"""``mutirao top`` as a user runs it, against a live cluster: one screen with ``--once``; on
a terminal (a pty) it redraws in place, through a pipe it prints screen after screen; Ctrl-C
(SIGINT) exits 0 either way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from mutirao.client.top import CLEAR_HOME
from tests.integration.cluster import LocalCluster, eventually
from tests.integration.test_cli import cli_env, mutirao

TOP = [sys.executable, "-m", "mutirao", "top"]


async def _watch(
    env: dict[str, str], cwd: Path, out: int, ready: Callable[[], Awaitable[bool]]
) -> int:
    """Run ``mutirao top --interval 0.2`` writing to ``out`` until ``ready()``, then press
    Ctrl-C (SIGINT); its exit code."""
    proc = await asyncio.create_subprocess_exec(
        *TOP, "--interval", "0.2", stdout=out, stderr=out, env=env, cwd=cwd
    )
    try:
        await eventually(ready, timeout=15, what="mutirao top to refresh")
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(5):
            return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_top_shows_workers_queue_and_leader_and_stops_on_ctrl_c(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    # No prefetch: the third task stays queued instead of waiting on W1.
    await cluster.start("W1", slots=2, extra=("--prefetch", "0"))
    async with cluster.client() as client:
        await client.submit_batch([{"type": "sleep", "payload": 30}] * 3)
    env = cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token())

    async def busy() -> bool:
        run = await mutirao("top", "--once", env=env, cwd=tmp_path)
        assert run.code == 0, run
        return "2/2" in run.out and "queue: 1 pending (sleep 1)" in run.out

    await eventually(busy, timeout=15, what="W1 running 2 tasks with 1 queued", every=0.2)
    run = await mutirao("top", "--once", env=env, cwd=tmp_path)
    assert f"leader: orchestrator at {cluster.url}, epoch 1" in run.out, run
    assert "tasks: waiting 0  scheduled 0  pending 1  assigned 0  running 2" in run.out, run
    [w1] = [line.split() for line in run.out.splitlines() if line.startswith("W1 ")]
    assert w1[2:5] == ["2/2", "[##########]", "100%"], run
    assert w1[1] in ("alive", "suspect"), run  # suspect: a heartbeat late on a loaded machine
    assert CLEAR_HOME not in run.out  # not a terminal

    plain = cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token("bob", False))
    run = await mutirao("top", "--once", env=plain, cwd=tmp_path)
    assert run.code == 1, run  # the cluster view, worker URLs included, is for admins
    assert "for admins (field Authorization) [HTTP 403]" in run.err, run
    assert "W1" not in run.out + run.err, run

    # Through a pipe: one screen after the other; Ctrl-C exits 0.
    out_path = tmp_path / "top.out"
    with out_path.open("wb") as out:

        async def screens() -> bool:
            return out_path.read_text().count("mutirao top:") >= 3

        assert await _watch(env, tmp_path, out.fileno(), screens) == 0
    assert CLEAR_HOME not in out_path.read_text()

    # On a terminal: each screen clears the previous one.
    controller, terminal = pty.openpty()
    os.set_blocking(controller, False)
    seen = b""

    async def redrawn() -> bool:
        nonlocal seen
        with contextlib.suppress(BlockingIOError, OSError):
            seen += os.read(controller, 65536)
        return seen.count(CLEAR_HOME.encode()) >= 2

    try:
        assert await _watch(env, tmp_path, terminal, redrawn) == 0
    finally:
        os.close(terminal)
        os.close(controller)
    assert b"W1" in seen
    assert b"Traceback" not in seen
